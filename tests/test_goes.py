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


def test_native_scale_of_goes16_and_later_files_is_the_true_flux():
  # GOES-16+ XRS data never carried NOAA's 0.7 factor, whatever their processing level.
  assert goes.native_scale({}, "OR_XRSF-L1b_G16_s20172511200000_e20172511200009.nc") == "science"
  assert goes.native_scale({}, "some_xrs_file.nc", "GOES-18") == "science"
  assert goes.native_scale({"platform": "g17"}, "xrs_20201016.nc") == "science"
  # GOES <= 15 operational data are 0.7-scaled; their reprocessed L2 science files are not.
  assert goes.native_scale({}, "g15_xrs_2s_20110607_20110607.nc") == "noaa_0.7"
  assert goes.native_scale({}, "go1520110607.fits", "GOES-15") == "noaa_0.7"
  assert goes.native_scale({}, "sci_gxrs-l2-irrad_g15_d20131028.nc", "GOES-15") == "science"
