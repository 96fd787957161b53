"""fetch: the offline error path (nothing is downloaded in tests)."""

import pytest

from tfds_aia import fetch


def test_offline_error_is_clear(tmp_path, monkeypatch):
  for name in fetch.PROXY_VARIABLES:  # No proxy: the direct check runs, and nothing is fetched.
    monkeypatch.delenv(name, raising=False)
  # A reserved TEST-NET address on a closed port: unreachable without any network.
  with pytest.raises(fetch.OfflineError, match="manual_dir"):
    fetch.fetch("2011-06-07", "2011-06-08", str(tmp_path), host="192.0.2.1")
  assert not any(tmp_path.iterdir())


def test_truncated_downloads_are_removed_and_whole_files_kept(tmp_path):
  import numpy as np
  from astropy.io import fits
  data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
  fits.writeto(tmp_path / "whole.fits", data)
  fits.writeto(tmp_path / "cut.fits", data)
  raw = (tmp_path / "cut.fits").read_bytes()
  (tmp_path / "cut.fits").write_bytes(raw[: len(raw) // 2])  # A download killed half way.
  (tmp_path / "headless.fits").write_bytes(raw[:100])
  fits.CompImageHDU(data).writeto(tmp_path / "compressed.fits")
  assert not fetch.is_truncated_fits(str(tmp_path / "whole.fits"))
  assert not fetch.is_truncated_fits(str(tmp_path / "compressed.fits"))
  assert fetch.remove_truncated(str(tmp_path)) == ["cut.fits", "headless.fits"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["compressed.fits", "whole.fits"]


def test_no_direct_connection_check_behind_a_proxy(monkeypatch):
  for name in fetch.PROXY_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(fetch.OfflineError):
    fetch.check_online("192.0.2.1", timeout_s=0.5)
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
  fetch.check_online("192.0.2.1", timeout_s=0.5)  # Fido's requests go through the proxy.


def test_goes_query_names_the_satellite_and_cadence(tmp_path, monkeypatch):
  from sunpy.net import Fido
  from sunpy.net.dataretriever import XRSClient
  queries = []

  class Fetched(list):
    errors = []

  monkeypatch.setattr(fetch, "check_online", lambda host: None)
  monkeypatch.setattr(Fido, "search", lambda *attrs: queries.append(attrs) or attrs)
  monkeypatch.setattr(Fido, "fetch", lambda result, **kwargs: Fetched())
  fetch.fetch("2011-06-07", "2011-06-08", str(tmp_path), wavelengths=(171,), goes_satellite=15,
              goes_resolution="avg1m")
  goes_query = queries[-1]
  assert XRSClient._can_handle_query(*goes_query)  # sunpy's XRS client takes the query as is.
  names = {type(x).__name__: getattr(x, "value", None) for x in goes_query}
  assert names["SatelliteNumber"] == 15 and names["Resolution"] == "avg1m"
  fetch.fetch("2011-06-07", "2011-06-08", str(tmp_path), wavelengths=(171,))
  assert {type(x).__name__ for x in queries[-1]} == {"Time", "Instrument"}
