"""Observation times of AIA headers."""

import datetime as dt

import pytest
from astropy.time import Time

from tfds_aia import fits_io


def _unix(*args):
  return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def test_header_times_in_each_form_become_unix_seconds():
  t = _unix(2011, 6, 7, 6, 41, 25, 340000)
  for text in ("2011-06-07T06:41:25.34Z", "2011-06-07T06:41:25.34", "2011-06-07 06:41:25.340",
               "2011-06-07T06:41:25.34+00:00", "2011-06-07T08:41:25.34+02:00"):
    assert fits_io.parse_time(text) == pytest.approx(t, abs=1e-6), text


def test_a_leap_second_is_posix_times_repeated_second():
  # 2012-06-30 ended with a leap second: 23:59:60.34 UTC has the Unix time of 00:00:00.34.
  assert fits_io.parse_time("2012-06-30T23:59:60.34Z") == pytest.approx(
      _unix(2012, 7, 1, 0, 0, 0, 340000), abs=1e-6)
  assert fits_io.parse_time("2012-06-30T23:59:59.34Z") == pytest.approx(
      _unix(2012, 6, 30, 23, 59, 59, 340000), abs=1e-6)
  for text in ("2012-06-30T23:59:61.0Z", "2011-06-07T12:30:60Z"):  # Only 23:59 has a 60th second.
    with pytest.raises(ValueError, match="out of range"):
      fits_io.parse_time(text)


def test_jsoc_tai_times_are_converted_to_utc():
  # Around the leap second that ended 2016 too: TAI - UTC went from 36 to 37 s.
  for text in ("2011.06.07_06:41:25.34_TAI", "2017.03.01_00:00:37.00_TAI",
               "2016.12.31_23:59:59.00_TAI", "2017.01.01_00:00:00.00_TAI",
               "2017.01.01_00:00:36.50_TAI", "2017.01.01_00:00:37.00_TAI"):
    iso = text[:-4].replace(".", "-", 2).replace("_", "T")
    utc = Time(iso, scale="tai").utc.isot  # astropy's leap-second table.
    assert fits_io.parse_time(text) == pytest.approx(fits_io.parse_time(utc + "Z"), abs=1e-6), text


def test_cached_header_fields_of_an_older_reader_are_read_again(tmp_path):
  import json

  import numpy as np
  from astropy.io import fits

  from tfds_aia import frames
  path = tmp_path / "aia.fits"
  header = fits.Header({"WAVELNTH": 171, "EXPTIME": 2.0, "T_OBS": "2012-06-30T23:59:60.34Z"})
  fits.writeto(path, np.zeros((8, 8), np.float32), header)
  cache_dir = str(tmp_path / "cache")
  first, error = frames.read_header(str(path), cache_dir)
  assert error is None and first.time_unix_s == pytest.approx(_unix(2012, 7, 1, 0, 0, 0, 340000))
  (entry_file,) = (tmp_path / "cache").rglob("*.json")
  entry = json.loads(entry_file.read_text())
  entry["header"]["time_unix_s"] = 0.0  # What the cache says is used while the reader is the same,
  entry_file.write_text(json.dumps(entry))
  assert frames.read_header(str(path), cache_dir)[0].time_unix_s == 0.0
  del entry["header_version"]  # and read again from the file when an older reader wrote it.
  entry_file.write_text(json.dumps(entry))
  assert frames.read_header(str(path), cache_dir)[0].time_unix_s == first.time_unix_s


def test_t_obs_mid_exposure_is_the_time_and_date_obs_the_fallback(tmp_path):
  import numpy as np
  from astropy.io import fits
  path = tmp_path / "aia.fits"
  header = fits.Header({"WAVELNTH": 171, "EXPTIME": 2.0, "DATE-OBS": "2011-06-07T06:41:24.00",
                        "T_OBS": "2011-06-07T06:41:25.00Z", "QUALITY": 0})
  fits.writeto(path, np.zeros((8, 8), np.float32), header)
  assert fits_io.read_header(str(path)).time_unix_s == _unix(2011, 6, 7, 6, 41, 25)
  del header["T_OBS"]
  fits.writeto(path, np.zeros((8, 8), np.float32), header, overwrite=True)
  assert fits_io.read_header(str(path)).time_unix_s == _unix(2011, 6, 7, 6, 41, 24)


def test_quality_bits_reject_a_frame_unless_allowed(tmp_path):
  import numpy as np
  from astropy.io import fits
  path = tmp_path / "aia.fits"
  fits.writeto(path, np.zeros((16, 16), np.float32),
               fits.Header({"WAVELNTH": 171, "EXPTIME": 2.0, "T_OBS": "2011-06-07T06:41:25Z",
                            "QUALITY": 0x10}))
  header = fits_io.read_header(str(path))
  assert header.quality == 0x10
  with pytest.raises(fits_io.BadFileError, match="QUALITY flag 0x10"):
    fits_io.check(header, channels=(171,), resolution=8)
  fits_io.check(header, channels=(171,), resolution=8, allowed_quality=0x10)
  with pytest.raises(fits_io.BadFileError, match="QUALITY"):
    fits_io.check(header, channels=(171,), resolution=8, allowed_quality=0x01)


def test_reasons_name_the_file_not_its_absolute_path(tmp_path):
  import numpy as np
  from astropy.io import fits
  missing = tmp_path / "sub" / "missing.fits"
  with pytest.raises(fits_io.BadFileError) as e:
    fits_io.read_bytes(str(missing))  # The OS's message carries the full path.
  assert "FileNotFoundError" in e.value.reason and "'missing.fits'" in e.value.reason
  assert str(tmp_path) not in e.value.reason
  garbage = tmp_path / "garbage.fits"
  garbage.write_bytes(b"x" * 100)
  for read in (fits_io.read_header, fits_io.read_data):
    with pytest.raises(fits_io.BadFileError, match="unreadable") as e:
      read(str(garbage))
    assert str(tmp_path) not in e.value.reason
  path = tmp_path / "nan.fits"
  data = np.ones((8, 8), np.float32)
  data[0, 0] = np.nan
  fits.writeto(path, data, fits.Header({"WAVELNTH": 171, "EXPTIME": 2.0}))
  assert fits_io.read_data(str(path), 0.1)[0, 0] == 0.0  # Set to 0 below max_nan_fraction,
  assert np.isnan(fits_io.read_data(str(path), 0.1, fill_nonfinite=False)[0, 0])  # or kept.
  with pytest.raises(fits_io.BadFileError, match="1 NaN/inf pixels"):
    fits_io.read_data(str(path), 0.0, fill_nonfinite=False)
