"""The test run keeps to its own folders: no library data, config or cache in the user's home."""

import os

from tests import conftest
from tests._helpers import isolation


def _inside(path, root=conftest.SCRATCH) -> bool:
  return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == \
      os.path.realpath(root)


def test_every_library_folder_is_in_the_run_s_temporary_folder():
  import keras.src.backend.config as keras_config
  import matplotlib
  import sunpy
  import sunpy.util.config
  import tensorflow_datasets as tfds
  from astropy.config import paths as astropy_paths

  from configs import aia171
  from solar_ddpm_jax import input_pipeline
  for name in isolation.FOLDERS:
    assert _inside(os.environ[name]), (name, os.environ[name])
  assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
  config = aia171.get_config("test")
  assert config.data.data_dir == ""  # The default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  folders = {
      "the code's default data.data_dir": input_pipeline._base_data_dir(config),
      "TFDS's default data dir": tfds.core.constants.DATA_DIR,
      "Keras (keras.json)": keras_config.keras_home(),
      "matplotlib's cache": matplotlib.get_cachedir(),
      "matplotlib's config": matplotlib.get_configdir(),
      "sunpy's config": sunpy.util.config._get_user_configdir(),
      "sunpy's cache": sunpy.util.config.CACHE_DIR,
      "sunpy's downloads": sunpy.util.config.get_and_create_download_dir(),
      "sunpy's data manager": sunpy.config.get("downloads", "remote_data_manager_dir"),
      "sunpy's sample data": sunpy.config.get("downloads", "sample_dir"),
      "astropy's cache": astropy_paths.get_cache_dir(),
      "astropy's config": astropy_paths.get_config_dir(),
  }
  outside = {k: v for k, v in folders.items() if not _inside(v)}
  assert not outside, outside


def test_astropy_never_downloads_time_tables():
  from astropy.utils import iers
  assert not iers.conf.auto_download


def test_writes_into_the_home_folders_are_recorded(tmp_path):
  """The run's guard watches the folders the libraries default to, and the repository."""
  home = os.path.expanduser("~")
  watched = [os.path.join(home, "tensorflow_datasets", "x"), os.path.join(home, ".keras", "k.json"),
             os.path.join(home, ".cache", "astropy", "db"), os.path.join(conftest.REPO, "workdir")]
  for path in watched:  # The audit events a write would raise, without writing there.
    conftest.WRITES._hook("open", (path, "w", 0))
  conftest.WRITES._hook("open", (watched[0], "r", 0))  # Reading is no write.
  conftest.WRITES._hook("open", (os.path.join(conftest.SCRATCH, "x"), "w", 0))
  conftest.WRITES._hook("os.mkdir", (os.path.join(conftest.REPO, "tests", "__pycache__"), 0o777,
                                     -1))
  recorded = conftest.WRITES.take()  # Taken: this test's own records do not fail it.
  assert [r.split()[1] for r in recorded] == watched
  assert all("test_writes_into_the_home_folders_are_recorded" in r for r in recorded)


def test_recorder_sees_real_writes_and_renames(tmp_path, monkeypatch):
  import shutil
  (tmp_path / "elsewhere" / "batches").mkdir(parents=True)
  (tmp_path / "elsewhere" / "batches" / "000000.npz").write_bytes(b"")
  recorder = isolation.WriteRecorder([tmp_path / "watched"], ignored=[tmp_path / "watched" / "ok"])
  (tmp_path / "watched").mkdir()
  recorder.start()
  try:
    (tmp_path / "watched" / "a.txt").write_text("a")
    (tmp_path / "watched" / "a.txt").read_text()
    os.replace(tmp_path / "watched" / "a.txt", tmp_path / "b.txt")
    os.makedirs(tmp_path / "watched" / "ok" / "deeper")
    (tmp_path / "elsewhere.txt").write_text("e")
    monkeypatch.chdir(tmp_path / "watched")  # rmtree unlinks by name relative to a folder's fd.
    shutil.rmtree(tmp_path / "elsewhere" / "batches")
  finally:
    recorder.stop()
  (tmp_path / "watched" / "after.txt").write_text("stopped")
  assert [r.split()[:2] for r in recorder.take()] == [
      ["open", str(tmp_path / "watched" / "a.txt")],
      ["os.rename", str(tmp_path / "watched" / "a.txt")]]  # os.replace too; not the ignored folder.
