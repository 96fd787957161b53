"""GOES XRS: class boundaries, scaling policy, the image-time and forecast labels."""

import datetime as dt
import os

import astropy.units as u
import numpy as np
import pytest
import sunpy.data.test
from astropy.io import fits
from sunkit_instruments.goes_xrs import flux_to_flareclass

from tfds_aia import goes

TEST_DIR = os.path.dirname(sunpy.data.test.__file__)
GO15 = os.path.join(TEST_DIR, "go1520110607.fits")


@pytest.mark.parametrize("flux", [
    5e-9, 1e-8, 9.999e-8, 1e-7, 1.0001e-7, 9.99e-7, 1e-6, 3.3e-6, 9.999e-6, 1e-5, 2.5e-5,
    9.9e-5, 1e-4, 1.5e-4, 2e-3])
def test_flux_to_class_matches_sunkit(flux):
  reference = flux_to_flareclass(flux * u.W / u.m**2)
  index, subclass = goes.flux_to_class(flux)
  assert goes.FLARE_CLASSES[int(index)] == reference[0]
  assert float(subclass) == pytest.approx(float(reference[1:]), rel=5e-3)  # sunkit rounds.
  assert float(subclass) == pytest.approx(flux / goes.CLASS_BASES_W_M2[int(index)], rel=1e-12)


def test_boundaries_exact():
  bases = np.array(goes.CLASS_BASES_W_M2)
  np.testing.assert_array_equal(goes.flux_to_class(bases)[0], [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(goes.flux_to_class(np.nextafter(bases[1:], 0))[0], [0, 1, 2, 3])
  assert goes.class_name(2.5e-5) == "M2.5"


def _independent_go15():
  """Times and 1-8 A fluxes of the GOES-15 FITS file read with astropy only."""
  with fits.open(GO15) as hdul:
    start = dt.datetime.strptime(hdul[0].header["DATE-OBS"], "%d/%m/%Y").replace(tzinfo=dt.UTC)
    seconds = np.asarray(hdul[2].data["TIME"][0], np.float64)
    flux = np.asarray(hdul[2].data["FLUX"][0][:, 0], np.float64)
  good = flux > 0
  return start.timestamp() + seconds[good], flux[good]


def test_goes15_fits_policy_and_label():
  t, flux = _independent_go15()
  noaa = goes.read_goes([GO15], "noaa_0.7")
  science = goes.read_goes([GO15], "science")
  assert noaa.satellite[0] == "GOES-15" and science.policy == "science"
  np.testing.assert_allclose(science.flux_w_m2, noaa.flux_w_m2 / 0.7)
  peak_time = t[np.argmax(flux)] + 0.5  # Between two samples: linear interpolation.
  label = goes.label_image(noaa, peak_time, tolerance_s=10, forecast_window_s=3600)
  assert label.flux_w_m2 == pytest.approx(np.interp(peak_time, t, flux), rel=1e-6)
  assert goes.FLARE_CLASSES[label.flare_class] == "M"
  assert label.subclass == pytest.approx(2.55, 0.01)
  before = goes.label_image(noaa, peak_time - 3 * 3600, tolerance_s=10, forecast_window_s=4 * 3600)
  assert before.flare_class < 3 and before.forecast_class == 3
  sci = goes.label_image(science, peak_time, tolerance_s=10, forecast_window_s=60)
  assert sci.flux_w_m2 == pytest.approx(label.flux_w_m2 / 0.7) and sci.policy == "science"


def test_netcdf_flags_and_gap():
  path = os.path.join(TEST_DIR, "sci_xrsf-l2-avg1m_g16_d20210101_truncated.nc")
  data = goes.read_goes_file(path, "science")
  assert data.satellite[0] == "GOES-16" and (data.flux_w_m2 > 0).all()
  noaa = goes.read_goes_file(path, "noaa_0.7")
  np.testing.assert_allclose(noaa.flux_w_m2, data.flux_w_m2 * 0.7)
  with pytest.raises(goes.GoesGapError, match="within 60 s"):
    goes.flux_at(data, data.time_unix_s[-1] + 3600, 60.0)
  series = goes.GoesFlux(np.array([0.0, 100.0, 1000.0]), np.array([1e-6, 3e-6, 1e-4]),
                         np.array(["GOES-16"] * 3), "science")
  assert goes.flux_at(series, 50.0, 60.0)[0] == pytest.approx(2e-6)
  with pytest.raises(goes.GoesGapError):
    goes.flux_at(series, 500.0, 60.0)


def test_netcdf_quality_follows_the_files_own_good_data_mask(tmp_path):
  """1-minute averages flag the electron correction in bits above good_data's mask (7 on
  GOES-15, 3 on GOES-16): those samples are good data; bits inside the mask are not."""
  import shutil

  import h5py
  for name, mask in (("sci_xrsf-l2-avg1m_g15_d20190102_truncated.nc", 7),
                     ("sci_xrsf-l2-avg1m_g16_d20210101_truncated.nc", 3)):
    path = str(tmp_path / name)
    shutil.copy(os.path.join(TEST_DIR, name), path)
    assert goes.good_data_mask(path) == mask
    with h5py.File(path, "r+") as f:
      n = f["xrsb_flag"].shape[0]
      flags = np.array([0, 1, 2, 4, 8, 16, 32, 64, 17, 48], np.int64)[np.arange(n) % 10]
      f["xrsb_flag"][...] = flags.astype(f["xrsb_flag"].dtype)
      flux = np.asarray(f["xrsb_flux"][...], np.float64)
    data = goes.read_goes_file(path, "science")
    keep = ((flags & mask) == 0) & np.isfinite(flux) & (flux > 0)
    assert 0 < len(data) == keep.sum() < n
    np.testing.assert_allclose(np.sort(data.flux_w_m2), np.sort(flux[keep]))
  # The untouched GOES-15 averages: every sample is flagged 16 (electron correction), all kept.
  untouched = goes.read_goes_file(
      os.path.join(TEST_DIR, "sci_xrsf-l2-avg1m_g15_d20190102_truncated.nc"), "science")
  assert len(untouched) == 51


def _series(times, flux, satellite):
  times = np.asarray(times, np.float64)
  return goes.GoesFlux(times, np.asarray(flux, np.float64) * np.ones(len(times)),
                       np.array([satellite] * len(times)), "science")


def test_merge_takes_each_time_from_one_satellite_and_fills_gaps():
  a_t = np.concatenate([np.arange(0, 2000, 60.0), np.arange(3020, 6000, 60.0)])  # A gap of 17 min.
  a = _series(a_t, 1e-6, "GOES-15")
  b = _series(np.arange(1, 8000, 60.0), 1.1e-6, "GOES-13")  # Interleaved with A, 10 % higher.
  merged = goes.merge([b, a])
  # GOES-13 has data in more minutes (it covers A's gap and goes on after A): it is the primary.
  assert set(merged.satellite) == {"GOES-13"}
  np.testing.assert_array_equal(merged.time_unix_s, b.time_unix_s)
  preferred = goes.merge([b, a], prefer=["GOES-15"])
  # Independently: every A sample; a B sample only where no A sample is within 60 s.
  near_a = np.array([np.min(np.abs(a_t - t)) <= 60.0 for t in b.time_unix_s])
  want_t = np.sort(np.concatenate([a_t, b.time_unix_s[~near_a]]))
  np.testing.assert_array_equal(preferred.time_unix_s, want_t)
  from_b = preferred.satellite == "GOES-13"
  np.testing.assert_array_equal(preferred.time_unix_s[from_b], b.time_unix_s[~near_a])
  assert from_b.any() and (preferred.time_unix_s[from_b] > 1900).all()  # Only in gaps or after.
  np.testing.assert_array_equal(preferred.flux_w_m2[~from_b], 1e-6)
  # Between two GOES-15 samples the label interpolates GOES-15 only (no saw-tooth).
  assert goes.flux_at(preferred, 630.5)[0] == pytest.approx(1e-6)
  assert goes.merge([b, a], prefer=["15"]).time_unix_s.tolist() == want_t.tolist()


def test_merge_prefers_the_finer_cadence_of_one_satellite():
  fine = _series(np.arange(0, 3600, 2.0), 2e-6, "GOES-15")
  minute = _series(np.arange(30, 3600, 60.0), 2.2e-6, "GOES-15")
  merged = goes.merge([minute, fine])
  np.testing.assert_array_equal(merged.time_unix_s, fine.time_unix_s)
  np.testing.assert_array_equal(merged.flux_w_m2, 2e-6)


def test_merge_of_files_without_valid_samples_is_empty():
  empty = goes.GoesFlux(np.zeros(0), np.zeros(0), np.zeros(0, str), "science")
  merged = goes.merge([empty, empty])
  assert len(merged) == 0 and merged.policy == "science"
  with pytest.raises(goes.GoesGapError):
    goes.flux_at(merged, 0.0, 60.0)


def test_native_scale_of_goes16_and_later_files_is_the_true_flux():
  # GOES-16+ XRS data never carried NOAA's 0.7 factor, whatever their processing level.
  assert goes.native_scale({}, "OR_XRSF-L1b_G16_s20172511200000_e20172511200009.nc") == "science"
  assert goes.native_scale({}, "some_xrs_file.nc", "GOES-18") == "science"
  assert goes.native_scale({"platform": "g17"}, "xrs_20201016.nc") == "science"
  # GOES <= 15 operational data are 0.7-scaled; their reprocessed L2 science files are not.
  assert goes.native_scale({}, "g15_xrs_2s_20110607_20110607.nc") == "noaa_0.7"
  assert goes.native_scale({}, "go1520110607.fits", "GOES-15") == "noaa_0.7"
  assert goes.native_scale({}, "sci_gxrs-l2-irrad_g15_d20131028.nc", "GOES-15") == "science"


def test_forecast_window_coverage_counts_intervals_with_data():
  t = np.concatenate([np.arange(0, 6 * 3600, 60.0), np.arange(12 * 3600, 18 * 3600, 20.0)])
  series = _series(t, 1e-6, "GOES-15")  # Data in hours 0-6 and 12-18 (20 s cadence there).
  assert goes.window_coverage(series, 0.0, 24 * 3600) == pytest.approx(0.5)
  assert goes.window_coverage(series, 0.0, 6 * 3600) == pytest.approx(1.0)
  assert goes.window_coverage(series, 3 * 3600, 12 * 3600) == pytest.approx(0.5)
  assert goes.window_coverage(series, 19 * 3600, 3600) == 0.0
  label = goes.label_image(series, 17 * 3600, tolerance_s=60, forecast_window_s=24 * 3600)
  assert label.forecast_coverage == pytest.approx(1 / 24)  # Only 17-18 h has data.
  sparse = _series(np.arange(0, 24 * 3600, 1800.0), 1e-6, "GOES-15")  # Half-hourly samples.
  assert goes.window_coverage(sparse, 0.0, 24 * 3600) == pytest.approx(1 / 3)


def test_goes15_forecast_coverage_against_the_file():
  t, _ = _independent_go15()
  noaa = goes.read_goes([GO15], "noaa_0.7")
  start = t[0] + 6.5 * 3600
  bins = np.unique(np.floor(t[(t >= np.floor(start / 600) * 600)] / 600))
  label = goes.label_image(noaa, start, tolerance_s=10, forecast_window_s=24 * 3600)
  assert label.forecast_coverage == pytest.approx(len(bins) / 144)
  assert 0.6 < label.forecast_coverage < 0.8  # The file ends at midnight.
