"""The synthetic AIA 171 archive against sunpy's real AIA 171 frame, sunpy's differential
rotation, and the archive's own time structure (persistent regions, classes, GOES file)."""

import datetime as dt
import glob
import os
import warnings

import numpy as np
import pytest

from tfds_aia import goes, synthetic, synthetic_sun

RINGS = np.round(np.arange(0.2, 1.31, 0.1), 2)


def _disc_stats(image, cy, cx, radius):
  yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
  r = np.hypot(yy - cy, xx - cx) / radius
  rings = [np.median(image[(r >= lo) & (r < hi)])
           for lo, hi in zip(RINGS[:-1], RINGS[1:], strict=True)]
  return np.array(rings), np.percentile(image[r < 1.0], [5, 50, 95])


def _fits_stats(path):
  """Ring medians and on-disc percentiles (DN / EXPTIME) of a FITS frame, from its header."""
  from astropy.io import fits
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with fits.open(path) as hdul:
      h, data = hdul[0].header, hdul[0].data.astype(np.float64)
  cy = h["CRPIX2"] - 1 - h["CRVAL2"] / h["CDELT2"]
  cx = h["CRPIX1"] - 1 - h["CRVAL1"] / h["CDELT1"]
  return _disc_stats(data / h["EXPTIME"], cy, cx, h["RSUN_OBS"] / h["CDELT1"])


@pytest.fixture(scope="module")
def archive_128(tmp_path_factory):
  """20 frames at 128 px (the real file's size and plate scale in solar radii), 3 years."""
  root = tmp_path_factory.mktemp("syn128")
  synthetic.write_archive(str(root), num_images=20, image_size=128, seed=1)
  return root


def test_radial_profile_and_percentiles_match_sunpy_aia_171(archive_128):
  from sunpy.data.test import get_test_filepath
  real_rings, real_pct = _fits_stats(get_test_filepath("aia_171_level1.fits"))
  stats = [_fits_stats(p) for p in sorted(glob.glob(str(archive_128 / "aia/171/*.fits")))]
  assert len(stats) == 20
  rings = np.median([s[0] for s in stats], axis=0)
  pct = np.median([s[1] for s in stats], axis=0)
  np.testing.assert_array_less(np.abs(rings / real_rings - 1), 0.3, "ring medians 0.2-1.3 R")
  np.testing.assert_array_less(np.abs(pct / real_pct - 1), 0.3, "on-disc 5/50/95th percentiles")


def test_differential_rotation_matches_sunpy():
  import astropy.units as u
  from sunpy.sun.models import differential_rotation
  lat = np.linspace(-70, 70, 15)
  for days in (0.3, 2.0, 11.0):
    for frame_time in ("synodic", "sidereal"):
      ours = synthetic_sun.differential_rotation_deg(days * 86400.0, lat, frame_time)
      ref = differential_rotation(days * u.day, lat * u.deg, model="howard",
                                  frame_time=frame_time).to_value(u.deg)
      np.testing.assert_allclose(np.mod(ours, 360.0), ref, atol=1e-6)
  # Regions of the scene move by exactly that amount.
  scene, times, *_ = synthetic.simulate(40, seed=2)
  reg = scene.regions
  k = int(np.flatnonzero(reg.alive(times[0]))[0])
  dt_s = 3 * 86400.0
  moved = reg.lon_at(times[0] + dt_s)[k] - reg.lon_at(times[0])[k]
  ref = differential_rotation(dt_s * u.s, reg.lat[k] * u.deg, frame_time="synodic").to_value(u.deg)
  assert np.mod(moved - ref + 180.0, 360.0) - 180.0 == pytest.approx(0.0, abs=1e-6)


def test_active_regions_persist_between_neighbouring_frames():
  """Frames hours apart (one observing run) correlate far more than frames months apart."""
  plan = synthetic.simulate(600, seed=1)
  _, times, runs, _, _ = plan
  size = 128
  r = synthetic_sun._geometry(size)[0]
  disc = r < 0.95
  base = np.log(synthetic_sun.background_profile(r)[disc])

  def residual(i):
    image = synthetic.render_archive_frame(*plan, i, size)
    return np.log(np.maximum(image[disc], 1.0)) - base

  near = [i for i in range(len(times) - 1) if runs[i] == runs[i + 1]][::40][:6]
  gaps_h = [(times[i + 1] - times[i]) / 3600 for i in near]
  assert max(gaps_h) < 12 and len(near) == 6
  corr_near = [np.corrcoef(residual(i), residual(i + 1))[0, 1] for i in near]
  far = [(i, int(np.searchsorted(times, times[i] + 120 * 86400.0))) for i in near]
  corr_far = [np.corrcoef(residual(i), residual(j))[0, 1] for i, j in far]
  assert np.mean(corr_near) > 0.6
  assert np.mean(corr_near) > np.mean(corr_far) + 0.4, (corr_near, corr_far)


def test_class_fractions_runs_and_splits():
  weights = (0.3, 0.3, 0.25, 0.1, 0.05)
  _, times, runs, fluxes, hosts = synthetic.simulate(600, weights, seed=1)
  counts = np.bincount(goes.flux_to_class(fluxes)[0], minlength=5)
  np.testing.assert_allclose(counts / 600, weights, atol=0.01)
  assert (hosts >= 0).all()  # Every flux has a visible source region.
  gaps = np.diff(times)
  assert (gaps > 0).all() and np.median(gaps) < 12 * 3600  # Observing runs, hours apart.
  assert times[-1] - times[0] > 2.5 * 365 * 86400
  ts = lambda s: dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC).timestamp()  # noqa: E731
  gap = 12 * 3600
  splits = {"train": times < ts("2014-01-01") - gap,
            "val": (times >= ts("2014-01-01") + gap) & (times < ts("2014-07-01") - gap),
            "test": times >= ts("2014-07-01") + gap}
  for name, m in splits.items():
    assert set(goes.flux_to_class(fluxes[m])[0]) == {0, 1, 2, 3, 4}, name


def test_goes_file_carries_each_frame_flux_and_big_flares_bloom(tmp_path):
  import h5netcdf
  from astropy.io import fits
  summary = synthetic.write_archive(str(tmp_path), num_images=24, image_size=64, seed=4)
  _, times, _, fluxes, _ = synthetic.simulate(24, seed=4)
  with h5netcdf.File(glob.glob(os.path.join(tmp_path, "goes", "*.nc"))[0], "r") as f:
    g_t = np.asarray(f["time"][:], np.float64) + synthetic.EPOCH_2000.timestamp()
    g_f = np.asarray(f["xrsb_flux"][:], np.float64)
  for path in sorted(glob.glob(os.path.join(tmp_path, "aia", "171", "*.fits"))):
    h = fits.getheader(path)
    t = dt.datetime.fromisoformat(h["T_OBS"].rstrip("Z")).replace(tzinfo=dt.UTC).timestamp()
    i = int(np.argmin(np.abs(times - t)))
    assert times[i] == pytest.approx(t) and g_t[np.searchsorted(g_t, t)] == pytest.approx(t)
    np.testing.assert_allclose(g_f[np.searchsorted(g_t, t)], fluxes[i], rtol=1e-6)
  assert summary["class_counts"] == np.bincount(goes.flux_to_class(fluxes)[0], minlength=5).tolist()
  # An X flare saturates the CCD and bleeds along columns (taller than wide).
  image = synthetic_sun.render_frame(np.random.default_rng(0), 128, 3e-4)
  sat = image >= synthetic_sun.SATURATION_DN / synthetic_sun.EXPTIME_S - 1e-3
  rows, cols = np.nonzero(sat)
  assert sat.sum() > 0 and np.ptp(rows) > np.ptp(cols)
  quiet = synthetic_sun.render_frame(np.random.default_rng(0), 128, 3e-8)
  assert quiet.max() < synthetic_sun.SATURATION_DN / synthetic_sun.EXPTIME_S
