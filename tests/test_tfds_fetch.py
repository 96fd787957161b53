"""fetch: the offline error path (nothing is downloaded in tests)."""

import pytest

from tfds_aia import fetch


def test_offline_error_is_clear(tmp_path):
  # A reserved TEST-NET address on a closed port: unreachable without any network.
  with pytest.raises(fetch.OfflineError, match="manual_dir"):
    fetch.fetch("2011-06-07", "2011-06-08", str(tmp_path), host="192.0.2.1")
  assert not any(tmp_path.iterdir())
