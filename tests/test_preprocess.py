"""Preprocessing: block sums, ceilings, stretches and their exact inverses."""

import datetime as dt

import numpy as np
import pytest

from tests._helpers.tables import aiapy_table
from tfds_aia import preprocess


@pytest.mark.parametrize("stretch", ["log", "asinh"])
def test_inverse_round_trip_per_channel(stretch):
  rng = np.random.default_rng(0)
  ceiling = np.array([3000.0, 500.0])
  dn_per_s = rng.uniform(0, 1, (4, 8, 8, 2)) * ceiling
  x = preprocess.to_model_range(dn_per_s, ceiling, stretch, 0.01)
  assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
  back = preprocess.to_dn_per_s(x, ceiling, stretch, 0.01)
  np.testing.assert_allclose(back, dn_per_s, rtol=2e-5, atol=1e-3)
  np.testing.assert_allclose(preprocess.to_model_range(ceiling, ceiling, stretch), [1, 1])
  np.testing.assert_allclose(preprocess.to_model_range([0.0, 0.0], ceiling, stretch), [-1, -1])


def test_stretch_formulas_match_documentation():
  v, c, a = 250.0, 3000.0, 0.01
  assert preprocess.to_model_range(v, c, "log") == pytest.approx(
      2 * np.log(1 + v) / np.log(1 + c) - 1, rel=1e-6)
  assert preprocess.to_model_range(v, c, "asinh", a) == pytest.approx(
      2 * np.arcsinh(v / (a * c)) / np.arcsinh(1 / a) - 1, rel=1e-6)
  assert preprocess.to_model_range(2 * c, c, "log") == 1.0  # Clipped to the ceiling.


def test_block_sum_and_effective_ceiling():
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 10, (12, 12))
  expected = np.array([[image[i * 4:(i + 1) * 4, j * 4:(j + 1) * 4].sum() for j in range(3)]
                       for i in range(3)])
  np.testing.assert_allclose(preprocess.downsample(image, 3, "sum"), expected)
  np.testing.assert_allclose(preprocess.downsample(image, 3, "resize"), expected / 16)
  assert preprocess.effective_ceiling(3000.0, 4096, 64, "sum") == 3000.0 * 64 * 64
  assert preprocess.effective_ceiling(3000.0, 4096, 64, "resize") == 3000.0
  with pytest.raises(ValueError, match="not divisible"):
    preprocess.downsample(image, 5, "sum")
  # Non-integer resize keeps the mean (area weights sum to one) and is the exact area average:
  # the block mean of the image repeated R x R times (each block then covers H/R input pixels).
  assert preprocess.area_resize(image, 5).mean() == pytest.approx(image.mean())
  wide = rng.uniform(0, 10, (12, 1100))
  for r in (5, 7, 16):
    fine = np.kron(wide, np.ones((r, r)))
    exact = fine.reshape(r, 12, r, 1100).mean(axis=(1, 3))
    np.testing.assert_allclose(preprocess.area_resize(wide, r), exact, rtol=1e-12)
    np.testing.assert_allclose(preprocess.area_resize(wide.astype(np.float32), r), exact,
                               rtol=1e-6)


def test_preprocess_channel_and_degradation(tmp_path):
  table = tmp_path / "degradation.csv"
  table.write_text("wavelength,time,factor\n171,2010-05-01T00:00:00,1.0\n"
                   "171,2012-05-01T00:00:00,0.5\n")
  parsed = preprocess.load_degradation_table(str(table))
  mid = (parsed[171][0][0] + parsed[171][0][1]) / 2
  assert preprocess.degradation_factor(parsed, 171, mid) == pytest.approx(0.75)
  data = np.full((8, 8), 100.0)
  out = preprocess.preprocess_channel(data, 2.0, resolution=2, dn_ceiling=1000.0,
                                      degradation=0.5)
  expected = 2 * np.log1p(100 / 2 / 0.5 * 16) / np.log1p(1000 * 16) - 1
  np.testing.assert_allclose(out, np.full((2, 2), expected), rtol=1e-6)


def test_aiapy_correction_table_factor_is_the_epoch_ratio_times_the_polynomial(tmp_path):
  base = dict(DATE="2020-01-01T00:00:00", VER_NUM=10, WAVE_STR="171_THIN", WAVELNTH=171,
              EFF_WVLN=171.0)
  rows = [dict(base, T_START="2010-03-24T00:00:00", T_STOP="2011-01-01T00:00:00", EFF_AREA=2.0,
               EFFA_P1=0.0, EFFA_P2=0.0, EFFA_P3=0.0),
          dict(base, T_START="2011-01-01T00:00:00", T_STOP="2030-01-01T00:00:00", EFF_AREA=1.6,
               EFFA_P1=-1e-4, EFFA_P2=2e-8, EFFA_P3=-1e-12)]
  path = aiapy_table(tmp_path / "aia_V10_response_table.txt", rows)
  table = preprocess.load_degradation_table(path)
  assert isinstance(table, preprocess.AiapyCorrectionTable)
  t = dt.datetime(2012, 6, 1, 12, tzinfo=dt.UTC)
  days = (t - dt.datetime(2011, 1, 1, tzinfo=dt.UTC)).total_seconds() / 86400  # No leap second.
  want = 1.6 / 2.0 * (1 - 1e-4 * days + 2e-8 * days ** 2 - 1e-12 * days ** 3)
  got = preprocess.degradation_factor(table, 171, t.timestamp())
  assert got == pytest.approx(want, rel=1e-6)
  with pytest.raises(ValueError, match="193"):
    preprocess.degradation_factor(table, 193, t.timestamp())
  with pytest.raises(ValueError, match="epoch"):
    preprocess.degradation_factor(table, 171, dt.datetime(2009, 1, 1, tzinfo=dt.UTC).timestamp())


def test_a_degradation_table_of_another_form_names_its_columns(tmp_path):
  path = tmp_path / "other.csv"
  path.write_text("channel,when,value\n171,2011-01-01,0.9\n")
  with pytest.raises(ValueError, match=r"other.csv has columns \['channel', 'when', 'value'\]"):
    preprocess.load_degradation_table(str(path))


def _uniform(dn_per_s, size=32):
  return np.full((size, size), dn_per_s, np.float32)


def test_pixel_checks_keep_real_and_synthetic_frames():
  import os

  import sunpy.data.test
  from astropy.io import fits

  from tfds_aia import synthetic_sun as sun
  path = os.path.join(os.path.dirname(sunpy.data.test.__file__), "aia_171_level1.fits")
  with fits.open(path) as hdul:
    data, exptime = hdul[0].data.astype(np.float32), hdul[0].header["EXPTIME"]
  assert (data <= 0).any()  # Dark pixels off the disc do not make it a dark frame.
  assert preprocess.pixel_problem(data / exptime, exptime_s=exptime, wavelength=171) is None
  for flux in (1e-8, 1e-3):  # A1 to X10: the faintest and the brightest synthetic frames.
    dn = np.clip(np.round(sun.render_frame(np.random.default_rng(0), 64, flux)
                          * sun.EXPTIME_S), 0, sun.SATURATION_DN)
    assert preprocess.pixel_problem(dn / sun.EXPTIME_S, exptime_s=sun.EXPTIME_S,
                                    wavelength=171) is None
  # The on-disc circle lies inside the disc of a full-disc frame (0.397 frame widths here).
  radius = sun.RSUN_OBS_ARCSEC / (0.6 * 4096)
  assert preprocess.DISC_RADIUS_FRACTION < radius - 0.03
  mask = preprocess.disc_mask((64, 64))
  assert mask[32, 32] and not mask[32, 9] and mask[32, 10] and not mask[0, 0]


def test_pixel_checks_skip_dark_saturated_implausible_and_mostly_nan_frames():
  check = lambda x, **k: preprocess.pixel_problem(  # noqa: E731
      x, exptime_s=2.0, wavelength=193, **k)
  assert "at or below data.pixel_floor_dn_s=0 DN/s" in check(_uniform(0.0))
  assert "data.pixel_floor_dn_s" in check(_uniform(-3.0))
  one_hot = _uniform(0.0)
  one_hot[3, 3] = 1.0  # "Every pixel": one pixel above the floor passes, unless it is raised.
  assert check(one_hot) is None and "pixel_floor_dn_s=5" in check(one_hot, pixel_floor_dn_s=5)
  saturated = _uniform(16383.0 / 2.0)  # 16383 DN in a 2 s exposure.
  assert "every pixel is saturated" in check(saturated)
  assert "data.saturation_dn=15000 DN, 7500 DN/s" in check(saturated)
  saturated[0, 0] = 10.0  # Some pixels not saturated: a usable (if bright) frame.
  assert check(saturated) is None
  bright = _uniform(3e6)
  reason = check(bright)
  assert "median on-disc brightness 3e+06 DN/s" in reason and "193 A" in reason
  assert "data.max_disc_median_dn_s=1e+06" in reason
  assert "saturated" in check(bright, max_disc_median_dn_s=1e7)  # Next: 6e6 DN is >= 15000 DN.
  bright[:, :4] = 0.0  # Off the disc: the median is the disc's.
  assert "median on-disc" in check(bright)
  frame = _uniform(100.0)
  frame[preprocess.disc_mask(frame.shape)] = np.nan  # No finite pixel on the disc.
  assert "only 0.0% of the on-disc pixels are finite" in check(frame)
  assert "data.min_finite_disc_fraction=0.95" in check(frame)
  frame = _uniform(100.0)
  frame[15:17, :] = np.inf  # 44 of the 392 on-disc pixels.
  assert "only 88.8% of the on-disc" in check(frame)
  assert check(frame, min_finite_disc_fraction=0.8) is None
  assert check(_uniform(np.nan)).startswith("only 0.0%")
  assert check(_uniform(np.nan), min_finite_disc_fraction=0.0) == "no finite pixel"
  with pytest.raises(ValueError, match="one \\[H, W\\] frame"):
    check(np.zeros((2, 4, 4)))
