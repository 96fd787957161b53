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
  with pytest.raises(ValueError, match="out of range"):
    fits_io.parse_time("2012-06-30T23:59:61.0Z")


def test_jsoc_tai_times_are_converted_to_utc():
  for text, iso in (("2011.06.07_06:41:25.34_TAI", "2011-06-07T06:41:25.34"),
                    ("2017.03.01_00:00:37.00_TAI", "2017-03-01T00:00:37.00")):
    utc = Time(iso, scale="tai").utc.to_datetime(timezone=dt.UTC)  # astropy's leap-second table.
    assert fits_io.parse_time(text) == pytest.approx(utc.timestamp(), abs=1e-6), text
