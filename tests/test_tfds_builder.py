"""The aia_flares builder on sunpy's real test files, and on bad input."""

import datetime as dt
import os
import shutil

import numpy as np
import pytest
import sunpy.data.test
import tensorflow_datasets as tfds
from astropy.io import fits

from configs import aia171
from tfds_aia import builder as aia_builder
from tfds_aia import cache, fits_io, frames, goes, preprocess, synthetic

TEST_DIR = os.path.dirname(sunpy.data.test.__file__)
AIA = os.path.join(TEST_DIR, "aia_171_level1.fits")
GO15 = os.path.join(TEST_DIR, "go1520110607.fits")
IMAGE_TIME = "2011-06-07T06:41:25.000"  # Near the peak of the M2.5 flare.


def _data_config(resolution=16, frame_px=128):  # sunpy's AIA test file is 128 x 128.
  config = aia171.get_config("test").data
  config.source, config.frame_px = "manual", frame_px
  config.resolution = resolution
  config.train_end, config.val_end, config.split_gap_hours = "2011-06-07T12:00", "2011-06-08", 1.0
  config.goes_tolerance_s = 10.0
  config.goes_scaling = "noaa_0.7"
  return config


def test_frame_px_setting():
  synthetic = {"source": "synthetic", "synthetic": {"image_size": 256}, "frame_px": 4096}
  assert aia_builder.settings_from_config(synthetic)["frame_px"] == 256  # The archive's size.
  assert aia_builder.settings_from_config(aia171.get_config("paper").data)["frame_px"] == 4096
  assert aia_builder.settings_from_config({"frame_px": 1024})["frame_px"] == 1024
  for bad in (0, None, 2.5):
    with pytest.raises(ValueError, match=f"data.frame_px={bad}"):
      aia_builder.settings_from_config({"frame_px": bad})


def _shifted_copy(out_path, t_obs, **changes):
  with fits.open(AIA) as hdul:
    header, data = hdul[0].header.copy(), hdul[0].data.astype(np.float64)
  header["T_OBS"] = t_obs + "Z"
  header["DATE-OBS"] = t_obs
  for key, value in changes.items():
    if value is None:
      del header[key]
    else:
      header[key] = value
  fits.writeto(out_path, data, header, overwrite=True)
  return data, header


def _independent_goes15():
  """Times and 1-8 A fluxes of the valid samples of the GOES-15 file, read with astropy only."""
  with fits.open(GO15) as hdul:
    start = dt.datetime.strptime(hdul[0].header["DATE-OBS"], "%d/%m/%Y").replace(tzinfo=dt.UTC)
    t = start.timestamp() + np.asarray(hdul[2].data["TIME"][0], np.float64)
    flux = np.asarray(hdul[2].data["FLUX"][0][:, 0], np.float64)
  good = flux > 0
  return t[good], flux[good]


def _build(config, manual_dir, data_dir):
  b = aia_builder.make_builder(config, data_dir=str(data_dir))
  return aia_builder.build(b, str(manual_dir))


def test_real_sunpy_files_build_and_read_back(tmp_path):
  manual = tmp_path / "manual"
  os.makedirs(manual / "goes")
  shutil.copy(GO15, manual / "goes")
  data, header = _shifted_copy(manual / "aia_171_shifted.fits", IMAGE_TIME)
  config = _data_config()
  b = _build(config, manual, tmp_path / "tfds")
  assert b.info.splits["train"].num_examples == 1
  ex = next(iter(tfds.as_numpy(b.as_dataset(split="train"))))
  # Independent: DN / EXPTIME, 8x8 block sums, clip to 3000 DN/s x 64, log stretch.
  dn_per_s = data / header["EXPTIME"]
  blocks = np.add.reduceat(np.add.reduceat(dn_per_s, np.arange(0, 128, 8), 0),
                           np.arange(0, 128, 8), 1)
  ceiling = 3000.0 * 64
  expected = 2 * np.log1p(np.clip(blocks, 0, ceiling)) / np.log1p(ceiling) - 1
  assert ex["image"].shape == (16, 16, 1)
  np.testing.assert_allclose(ex["image"][..., 0], expected, rtol=1e-5, atol=1e-6)
  t_unix = dt.datetime.fromisoformat(IMAGE_TIME).replace(tzinfo=dt.UTC).timestamp()
  goes_t, goes_flux = _independent_goes15()
  flux = float(np.interp(t_unix, goes_t, goes_flux))
  assert 1e-5 <= flux < 1e-4  # The M2.5 flare.
  assert ex["flare_class"] == 3 and ex["subclass"] == pytest.approx(flux / 1e-5, rel=1e-5)
  assert ex["goes_flux_w_m2"] == pytest.approx(flux, rel=1e-5)
  assert ex["time_unix_s"] == pytest.approx(t_unix, abs=1e-3)
  assert ex["satellite"] == b"GOES-15" and ex["scaling_policy"] == b"noaa_0.7"
  # The file ends at midnight: 17.3 h of the 24 h window.
  bins = np.unique(np.floor(goes_t[goes_t >= np.floor(t_unix / 600) * 600] / 600))
  assert ex["forecast_coverage"] == pytest.approx(len(bins) / 144, rel=1e-6)
  assert ex["source_file"] == b"aia_171_shifted.fits"
  assert aia_builder.read_manifest(b) == []


def test_bad_input_goes_to_skip_manifest(tmp_path):
  manual = tmp_path / "manual"
  os.makedirs(manual / "goes")
  shutil.copy(GO15, manual / "goes")
  good = [f"good_{i}.fits" for i in range(3)]
  for i, name in enumerate(good):
    _shifted_copy(manual / name, f"2011-06-07T0{2 + i}:00:00.000")
  data, _ = _shifted_copy(manual / "truncated.fits", "2011-06-07T06:00:00.000")
  raw = (manual / "truncated.fits").read_bytes()
  (manual / "truncated.fits").write_bytes(raw[: len(raw) // 2])
  _shifted_copy(manual / "nans.fits", "2011-06-07T07:00:00.000")
  with fits.open(manual / "nans.fits", mode="update") as hdul:
    hdul[0].data[:77] = np.nan  # 60% of the image: above data.max_nan_fraction=0.5 below.
  _shifted_copy(manual / "wrong_wavelength.fits", "2011-06-07T08:00:00.000", WAVELNTH=193)
  os.makedirs(manual / "sub")  # The same name in another folder: a row of its own.
  _shifted_copy(manual / "sub" / "wrong_wavelength.fits", "2011-06-07T08:30:00.000", WAVELNTH=193)
  _shifted_copy(manual / "no_exptime.fits", "2011-06-07T09:00:00.000", EXPTIME=None)
  # Pixels that are no image of the Sun (checked in DN/s before downsampling).
  _, header = _shifted_copy(manual / "zero.fits", "2011-06-07T01:00:00.000")
  fits.writeto(manual / "zero.fits", np.zeros_like(data), header, overwrite=True)
  fits.writeto(manual / "saturated.fits", np.full_like(data, 16383.0),
               _shifted_copy(manual / "saturated.fits", "2011-06-07T01:10:00.000")[1],
               overwrite=True)
  fits.writeto(manual / "too_bright.fits", data * 1e5,  # ~1e7 DN/s on the disc.
               _shifted_copy(manual / "too_bright.fits", "2011-06-07T01:20:00.000")[1],
               overwrite=True)
  yy, xx = np.mgrid[:128, :128]
  nan_disc = np.where(np.hypot(yy - 63.5, xx - 63.5) < 0.38 * 128, np.nan, data)  # 45% of it.
  fits.writeto(manual / "nan_disc.fits", nan_disc,
               _shifted_copy(manual / "nan_disc.fits", "2011-06-07T01:30:00.000")[1],
               overwrite=True)
  (manual / "goes" / "damaged_xrs.nc").write_bytes(b"not netCDF" * 100)  # Error names the path.
  _shifted_copy(manual / "goes_gap.fits", "2011-06-09T10:00:00.000")  # After the GOES file.
  _, header = _shifted_copy(manual / "binned.fits", "2011-06-07T10:00:00.000")
  fits.writeto(manual / "binned.fits", data.reshape(64, 2, 64, 2).mean(axis=(1, 3)), header,
               overwrite=True)  # A 2x2-binned frame: another clip ceiling, so not in this set.
  bad_goes = "goes/" + _all_flagged_goes(manual / "goes")
  config = _data_config()
  config.max_nan_fraction = 0.5  # So that the on-disc check sees nan_disc.fits.
  b = _build(config, manual, tmp_path / "tfds")
  manifest = aia_builder.read_manifest(b)
  reasons = {row["file"]: row["reason"] for row in manifest}
  assert len(reasons) == len(manifest)  # One row per file, keyed by its path in manual_dir.
  assert set(reasons) == {"truncated.fits", "nans.fits", "wrong_wavelength.fits",
                          "sub/wrong_wavelength.fits", "no_exptime.fits", "goes_gap.fits",
                          "binned.fits", bad_goes, "goes/damaged_xrs.nc", "zero.fits",
                          "saturated.fits", "too_bright.fits", "nan_disc.fits"}
  text = (b.data_path / aia_builder.SKIP_MANIFEST).read_text()
  assert str(tmp_path) not in text and os.path.realpath(tmp_path) not in text
  assert "damaged_xrs.nc" in reasons["goes/damaged_xrs.nc"]  # Named, not by its absolute path.
  assert "at or below data.pixel_floor_dn_s=0 DN/s" in reasons["zero.fits"]
  assert "every pixel is saturated" in reasons["saturated.fits"]
  assert "above data.max_disc_median_dn_s=1e+06 for 171 A" in reasons["too_bright.fits"]
  assert "0.0% of the on-disc pixels are finite" in reasons["nan_disc.fits"]
  assert "without a valid 1-8 A sample" in reasons[bad_goes]
  assert "64x64" in reasons["binned.fits"] and "data.frame_px=128" in reasons["binned.fits"]
  assert "truncated" in reasons["truncated.fits"] or "unreadable" in reasons["truncated.fits"]
  assert "NaN" in reasons["nans.fits"]
  assert "193" in reasons["wrong_wavelength.fits"] and "193" in reasons[
      "sub/wrong_wavelength.fits"]
  assert "EXPTIME" in reasons["no_exptime.fits"]
  assert "GOES" in reasons["goes_gap.fits"]
  names = [ex["source_file"].decode()
           for ex in tfds.as_numpy(b.as_dataset(split="train", shuffle_files=False))]
  assert sorted(names) == good


def _all_flagged_goes(folder):
  """A copy of sunpy's GOES-16 1-minute averages with every 1-8 A sample flagged bad data."""
  import h5py
  name = "sci_xrsf-l2-avg1m_g16_d20210101_truncated.nc"
  shutil.copy(os.path.join(TEST_DIR, name), folder / name)
  with h5py.File(folder / name, "r+") as f:
    f["xrsb_flag"][...] = 2  # bad_data
  return name


def test_no_valid_goes_sample_stops_the_build_naming_the_folder(tmp_path):
  manual = tmp_path / "manual"
  os.makedirs(manual / "goes")
  _all_flagged_goes(manual / "goes")
  _shifted_copy(manual / "aia.fits", IMAGE_TIME)
  with pytest.raises(ValueError, match=f"None of the 1 GOES XRS files under {manual}"):
    _build(_data_config(), manual, tmp_path / "tfds")


def test_synthetic_archive_headers_and_keys(tmp_path):
  import sunpy.map
  summary = synthetic.write_archive(str(tmp_path / "a"), num_images=6, image_size=64, seed=3,
                                    compress=True)  # Rice-compressed image in HDU 1, as AIA.
  assert sum(summary["class_counts"]) == 6
  path = sorted((tmp_path / "a" / "aia" / "171").iterdir())[0]
  with fits.open(path) as hdul:
    assert isinstance(hdul[1], fits.CompImageHDU)
  m = sunpy.map.Map(str(path))
  assert type(m).__name__ == "AIAMap" and int(m.wavelength.value) == 171
  assert m.scale.axis1.value == pytest.approx(0.6 * 4096 / 64)
  config = _data_config(16, frame_px=64)
  config.train_end, config.val_end = "2013-01-01", "2014-01-01"
  b1 = _build(config, tmp_path / "a", tmp_path / "t1")
  shutil.copytree(tmp_path / "a", tmp_path / "moved" / "elsewhere")
  b2 = _build(config, tmp_path / "moved", tmp_path / "t2")
  # TFDS orders a split's records by the hash of their keys: the same order in both builds says
  # the keys are the same, so no path is in them.
  order = lambda b: [  # noqa: E731
      f"{ex['time_unix_s']:.3f}" for s in ("train", "validation", "test")
      for ex in tfds.as_numpy(b.as_dataset(split=s, shuffle_files=False))]
  assert order(b1) == order(b2) and len(order(b1)) + len(aia_builder.read_manifest(b1)) == 6
  header = fits_io.AiaHeader(path=str(tmp_path / "moved" / "x.fits"), wavelength=171,
                             time_unix_s=1e9, exptime_s=2.0, quality=0, shape=(64, 64))
  label = goes.Label(1e-6, 2, 1.0, 2, "GOES-15", "science")
  key, _ = aia_builder.example_of((1e9, [header], label), np.zeros((16, 16, 1), np.float32))
  assert key == "20010909T014640.000_171"


def test_process_pool_build_equals_single_process(tmp_path, monkeypatch):
  import concurrent.futures
  pools = []

  class CountingPool(concurrent.futures.ProcessPoolExecutor):
    def __init__(self, *args, **kwargs):
      pools.append(args)
      super().__init__(*args, **kwargs)

  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CountingPool)
  synthetic.write_archive(str(tmp_path / "a"), num_images=12, image_size=64, seed=5)
  config = _data_config(16, frame_px=64)
  config.train_end, config.val_end = "2016-01-01", "2017-01-01"
  examples = []
  for workers in (1, 2):
    config.num_workers, config.max_in_flight = workers, 3
    b = _build(config, tmp_path / "a", tmp_path / f"t{workers}")
    examples.append(list(tfds.as_numpy(b.as_dataset(split="train", shuffle_files=False))))
    assert b.settings["num_workers"] == workers
  assert len(examples[0]) == 12 and [p[0] for p in pools] == [2]  # Only the second used a pool.
  key = lambda e: e["time_unix_s"]  # noqa: E731
  for e1, e2 in zip(sorted(examples[0], key=key), sorted(examples[1], key=key), strict=True):
    np.testing.assert_array_equal(e1["image"], e2["image"])
    assert e1["flare_class"] == e2["flare_class"] and e1["source_file"] == e2["source_file"]


def test_multichannel_hek_selection_and_array_record(tmp_path):
  import json
  synthetic.write_archive(str(tmp_path / "a"), num_images=10, image_size=32, seed=7,
                          wavelengths=(171, 193), class_weights=(0, 0, 0, 1, 0))
  os.remove(sorted((tmp_path / "a" / "aia" / "193").iterdir())[0])  # One frame lacks 193 A.
  times = sorted(p.name for p in (tmp_path / "a" / "aia" / "171").iterdir())
  peak = dt.datetime.strptime(times[1][-20:-5], "%Y%m%d_%H%M%S").isoformat()
  events = tmp_path / "events.json"  # One HEK flare peak, at the second frame.
  events.write_text(json.dumps([{"event_starttime": peak, "event_peaktime": peak,
                                 "event_endtime": peak, "fl_goescls": "M1.0"}]))
  config = _data_config(8, frame_px=32)
  config.channels, config.dn_ceiling = (171, 193), (3000.0, 6000.0)
  config.train_end, config.val_end = "2016-01-01", "2017-01-01"
  config.hek_events, config.file_format = str(events), "array_record"
  config.goes_scaling = "science"  # The synthetic GOES file is science data: M stays M.
  b = _build(config, tmp_path / "a", tmp_path / "t")
  assert b.builder_config.name == "res8_171_193"
  assert any(f.name.endswith("array_record-00000-of-00001") or "array_record" in f.name
             for f in b.data_path.iterdir())
  examples = list(b.as_data_source(split="train"))  # Random access (array_record).
  assert len(examples) == 1 and examples[0]["image"].shape == (8, 8, 2)
  assert examples[0]["source_file"].decode().split(",") == [
      times[1], times[1].replace("171a", "193a")]
  reasons = [row["reason"] for row in aia_builder.read_manifest(b)]
  assert sum("no 193 A frame" in r for r in reasons) == 1
  assert sum("no HEK flare peak" in r for r in reasons) == 8


def _records(b):
  """{shard file: [tf.train.Example]} of a built dataset, parsed: protobuf writes the feature map
  in an order of its own per process, so equal examples are not always equal bytes."""
  import tensorflow as tf
  out = {}
  for path in sorted(b.data_path.glob("*.tfrecord-*")):
    out[path.name] = [tf.train.Example.FromString(r.numpy())
                      for r in tf.data.TFRecordDataset(os.fspath(path))]
  return out


def _archive_with_bad_files(root, num_images, image_size=32, seed=11):
  """A Rice-compressed synthetic archive (one file gzipped too) plus files that fail in each stage
  of the build: a header of another channel (header stage), truncated data and NaN pixels
  (preprocessing, in workers). The truncated file is a copy of a frame that sorts before the good
  one (same header, same time)."""
  import gzip
  synthetic.write_archive(str(root), num_images=num_images, image_size=image_size, seed=seed,
                          compress=True)
  paths = sorted((root / "aia" / "171").iterdir())
  paths[4].with_suffix(".fits.gz").write_bytes(gzip.compress(paths[4].read_bytes()))
  os.remove(paths[4])
  raw = paths[1].read_bytes()
  (root / "aia" / "0_truncated.fits").write_bytes(raw[: len(raw) - 2880])  # Same header and time.
  with fits.open(paths[2]) as hdul:
    data, header = hdul[1].data.astype(np.float32), hdul[1].header.copy()
  data[:4, :4] = np.nan
  fits.writeto(root / "aia" / "nans.fits", data, header)
  os.remove(paths[2])
  with fits.open(paths[3]) as hdul:
    hdul[1].header["WAVELNTH"] = 193
    hdul.writeto(root / "aia" / "wrong_wavelength.fits")
  os.remove(paths[3])


def test_one_process_pool_and_beam_build_the_same(tmp_path):
  from apache_beam.runners.portability.fn_api_runner import FnApiRunner
  runs = []

  class Runner(FnApiRunner):
    """The DirectRunner's batch engine, named directly: Beam 2.77's DirectRunner would first try
    Prism, which downloads a binary. The PTransforms are those run on Dataflow, Flink or Spark."""
    def run_pipeline(self, pipeline, options):
      runs.append(pipeline)
      return super().run_pipeline(pipeline, options)

  _archive_with_bad_files(tmp_path / "a", num_images=14)
  config = _data_config(16, frame_px=32)
  config.train_end, config.val_end, config.max_in_flight = "2013-06-01", "2014-06-01", 3
  ways = {"one process": (1, {}), "pool": (2, {}), "beam": (1, {"beam_runner": Runner()})}
  built = {}
  for name, (workers, beam) in ways.items():
    config.num_workers = workers
    b = aia_builder.build(aia_builder.make_builder(config, data_dir=str(tmp_path / name)),
                          str(tmp_path / "a"), **beam)
    built[name] = (_records(b), aia_builder.read_manifest(b), b.decoded_files,
                   {s: v.num_examples for s, v in b.info.splits.items()})
    assert not list(b.data_path.glob(aia_builder.BEAM_FILE_PREFIX + "*"))  # Work files removed.
    assert len(runs) == (name == "beam")
  records, manifest, decoded, counts = built["one process"]
  assert sum(counts.values()) == 12 and len(counts) == 3 and len(records) == 3
  reasons = {row["file"]: row["reason"] for row in manifest}
  assert set(reasons) == {"aia/0_truncated.fits", "aia/nans.fits", "aia/wrong_wavelength.fits"}
  good_copy = "aia/171/" + sorted(os.listdir(tmp_path / "a" / "aia" / "171"))[1]
  assert reasons["aia/0_truncated.fits"].startswith(f"duplicate of {good_copy} (the same 171 A")
  assert "this copy is unusable: unreadable or truncated" in reasons["aia/0_truncated.fits"]
  assert len(decoded) == 14  # Every usable header's file once: the 12 frames and 2 bad files.
  for name in ("pool", "beam"):
    assert built[name] == built["one process"], name  # Same shards, records, manifest, decoded.


def test_incremental_build_decodes_only_new_files(tmp_path, monkeypatch):
  import astropy.io.fits

  from tfds_aia import fits_io
  synthetic.write_archive(str(tmp_path / "a"), num_images=12, image_size=32, seed=13,
                          compress=True)
  paths = sorted((tmp_path / "a" / "aia" / "171").iterdir())  # Names sort by time.
  new = paths[-3:]  # The latest month arrives later.
  os.makedirs(tmp_path / "later")
  for p in new:
    shutil.move(p, tmp_path / "later" / p.name)
  config = _data_config(16, frame_px=32)
  config.train_end, config.val_end, config.num_workers = "2013-06-01", "2014-06-01", 1
  b = aia_builder.build(aia_builder.make_builder(config, data_dir=str(tmp_path / "t")),
                        str(tmp_path / "a"))
  assert b.decoded_files == [p.name for p in paths[:-3]]
  for p in new:
    shutil.move(tmp_path / "later" / p.name, p)
  os.utime(paths[0], ns=(10**18, 10**18))  # Touched, not changed: hashed again, not decoded.
  opened, read = [], []
  real_open, real_read = astropy.io.fits.open, fits_io.read_bytes
  monkeypatch.setattr(astropy.io.fits, "open", lambda f, *a, **k: opened.append(
      os.path.basename(f) if isinstance(f, str | os.PathLike) else "<bytes>") or real_open(
          f, *a, **k))
  monkeypatch.setattr(fits_io, "read_bytes", lambda f: read.append(os.path.basename(f)) or
                      real_read(f))
  b = aia_builder.build(aia_builder.make_builder(config, data_dir=str(tmp_path / "t")),
                        str(tmp_path / "a"), overwrite=True)
  names = sorted(p.name for p in new)
  assert b.decoded_files == names
  assert sorted(read) == sorted([*names, paths[0].name])
  assert sorted(o for o in opened if o != "<bytes>") == sorted([*names, paths[0].name])  # Headers.
  assert opened.count("<bytes>") == len(names)  # Pixels decoded from memory: new files only.
  monkeypatch.undo()
  config.cache_dir = "off"
  scratch = aia_builder.build(aia_builder.make_builder(config, data_dir=str(tmp_path / "s")),
                              str(tmp_path / "a"))
  assert not os.path.exists(tmp_path / "s" / aia_builder.CACHE_DIR_NAME)
  assert _records(b) == _records(scratch) and sum(len(r) for r in _records(b).values()) == 12
  assert aia_builder.read_manifest(b) == aia_builder.read_manifest(scratch)
  config.cache_dir, config.dn_ceiling = "", (2000.0,)  # Other settings: other cache keys.
  b = aia_builder.build(aia_builder.make_builder(config, data_dir=str(tmp_path / "t")),
                        str(tmp_path / "a"), overwrite=True)
  assert len(b.decoded_files) == 12


def test_pool_size_and_in_flight_bound(tmp_path, monkeypatch):
  import concurrent.futures
  sizes = []

  class RecordingPool(concurrent.futures.ThreadPoolExecutor):
    def __init__(self, workers, **kwargs):
      sizes.append(workers)
      super().__init__(workers)

  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
  b = aia_builder.Builder(data_dir=str(tmp_path), runtime={"num_workers": 8, "max_in_flight": 3})
  b._start_pool(100)
  assert sizes == [3]  # No more workers (decoded images at once) than max_in_flight.
  started = []
  for i, result in enumerate(b._in_order(lambda job: started.append(job) or job * job,
                                         list(range(40)), (), in_flight=3)):
    assert result == i * i and len(started) <= i + 3  # Submitted, not yet written: <= 3.
  b._stop_pool()
  b = aia_builder.Builder(data_dir=str(tmp_path), runtime={"num_workers": 8, "max_in_flight": 3})
  b._start_pool(11)  # Fewer than 4 frames per worker: one process.
  assert b._pool is None and sizes == [3]


def test_degradation_table_frames_outside_its_epochs_are_skipped(tmp_path):
  from tests._helpers.tables import aiapy_table
  manual = tmp_path / "manual"
  os.makedirs(manual / "goes")
  shutil.copy(GO15, manual / "goes")
  _shifted_copy(manual / "inside.fits", "2011-06-07T02:00:00.000")
  _shifted_copy(manual / "outside.fits", "2011-06-07T04:00:00.000")
  base = dict(DATE="2020-01-01T00:00:00", VER_NUM=10, WAVE_STR="171_THIN", WAVELNTH=171,
              EFF_WVLN=171.0, EFFA_P1=0.0, EFFA_P2=0.0, EFFA_P3=0.0)
  table = aiapy_table(tmp_path / "table.txt", [
      dict(base, T_START="2010-03-24T00:00:00", T_STOP="2011-06-07T03:00:00", EFF_AREA=2.0)])
  config = _data_config()
  config.degradation_table = table
  b = _build(config, manual, tmp_path / "tfds")
  reasons = {row["file"]: row["reason"] for row in aia_builder.read_manifest(b)}
  assert list(reasons) == ["outside.fits"] and "No valid calibration epoch" in reasons[
      "outside.fits"] and "data.degradation_table table.txt" in reasons["outside.fits"]
  assert str(tmp_path) not in (b.data_path / aia_builder.SKIP_MANIFEST).read_text()
  (tmp_path / "other.csv").write_text("wavelength,time,factor\n193,2011-01-01T00:00:00,0.9\n")
  config.degradation_table = str(tmp_path / "other.csv")
  with pytest.raises(ValueError, match=r"other.csv has no entries for the channel\(s\) \[171\]"):
    _build(config, manual, tmp_path / "tfds3")
  config.degradation_table, config.max_disc_median_dn_s = "", (1e6, 2e6)
  with pytest.raises(ValueError, match=r"data.max_disc_median_dn_s has 2 values .*\(171,\)"):
    _build(config, manual, tmp_path / "tfds4")
  config.max_disc_median_dn_s = (1e6,)
  (tmp_path / "bad.csv").write_text("channel,when\n171,2011\n")
  config.degradation_table = str(tmp_path / "bad.csv")
  with pytest.raises(ValueError, match="bad.csv has columns"):
    _build(config, manual, tmp_path / "tfds2")


def test_a_damaged_copy_sorting_first_does_not_lose_the_frame(tmp_path):
  """frames.preprocess_frame tries the copies of a frame in order: the first that decodes and
  passes every check is kept, the others are duplicates of it (no TFDS build here)."""
  _shifted_copy(tmp_path / "b.fits", IMAGE_TIME)
  raw = (tmp_path / "b.fits").read_bytes()
  (tmp_path / "a.fits").write_bytes(raw[: len(raw) // 2])  # Same header, half the pixels.
  shutil.copy(tmp_path / "b.fits", tmp_path / "c.fits")
  a, b, c = (fits_io.read_header(str(tmp_path / n)) for n in ("a.fits", "b.fits", "c.fits"))
  assert a.time_unix_s == b.time_unix_s == c.time_unix_s
  settings = aia_builder.settings_from_config(_data_config())
  image, skips, decoded, kept = frames.preprocess_frame([[a, b, c]], settings, 16)
  assert image.shape == (16, 16, 1) and kept == [b] and decoded == ("a.fits", "b.fits")
  assert [path for path, _ in skips] == [a.path, c.path]  # c is not decoded: b was usable.
  assert skips[0][1].startswith(f"duplicate of {b.path} (the same 171 A frame of 2011-06-07T06:")
  assert "this copy is unusable: unreadable or truncated FITS data" in skips[0][1]
  assert skips[1][1].startswith(f"duplicate of {b.path} (") and "unusable" not in skips[1][1]
  image, skips, _, kept = frames.preprocess_frame([[a]], settings, 16)
  assert image is None and kept is None and skips[0][0] == a.path
  assert skips[0][1].startswith("unreadable or truncated")  # No usable copy: its own reason.


def test_pixel_checks_are_part_of_the_plane_cache_key(tmp_path):
  _, header = _shifted_copy(tmp_path / "zero.fits", IMAGE_TIME)
  fits.writeto(tmp_path / "zero.fits", np.zeros((128, 128)), header, overwrite=True)
  h = fits_io.read_header(str(tmp_path / "zero.fits"))
  settings = aia_builder.settings_from_config(_data_config())
  cache_dir = str(tmp_path / "cache")
  # A plane cached by a build without the checks (key of the settings alone) is not reused.
  sha = cache.sha256_bytes((tmp_path / "zero.fits").read_bytes())
  cache.store_plane(cache_dir, cache.plane_key(sha, cache.plane_fingerprint(settings, 16, 3000.0)),
                    np.zeros((16, 16), np.float32))
  image, skips, decoded, _ = frames.preprocess_frame([[h]], settings, 16, cache_dir)
  assert image is None and decoded == ("zero.fits",) and "pixel_floor_dn_s" in skips[0][1]
  image, skips, decoded, _ = frames.preprocess_frame([[h]], settings, 16, cache_dir)
  assert decoded == () and "pixel_floor_dn_s" in skips[0][1]  # The reason is cached.
  settings["pixel_floor_dn_s"] = -1.0  # Other thresholds: decoded and checked again.
  image, skips, decoded, _ = frames.preprocess_frame([[h]], settings, 16, cache_dir)
  assert image is not None and decoded == ("zero.fits",) and not skips


def test_pixel_check_defaults_keep_the_fingerprint_of_datasets_built_before():
  settings = aia_builder.settings_from_config(aia171.get_config("paper").data)
  assert {k: settings[k] for k in aia_builder.LATER_SETTINGS} == preprocess.PIXEL_CHECK_DEFAULTS
  before = {k: v for k, v in settings.items() if k not in aia_builder.LATER_SETTINGS}
  assert aia_builder.settings_fingerprint(settings) == cache.settings_fingerprint(before)
  for key, value in (("saturation_dn", 14000.0), ("max_disc_median_dn_s", (1e6, 2e6)),
                     ("pixel_floor_dn_s", 1.0), ("min_finite_disc_fraction", 0.5)):
    assert aia_builder.settings_fingerprint({**settings, key: value}) != (
        cache.settings_fingerprint(before)), key
  config = aia171.get_config("multichannel").data
  config.max_disc_median_dn_s = (1e6, 1e6, 1e6, 1000000)  # Ints or floats, one per channel.
  assert aia_builder.settings_from_config(config)["max_disc_median_dn_s"] == (1e6,) * 4
  assert frames.pixel_checks({**settings, "max_disc_median_dn_s": (1.0, 2.0)}, 1)[
      "max_disc_median_dn_s"] == 2.0


def test_skip_manifest_names_files_relative_to_manual_dir(tmp_path):
  manual = str(tmp_path / "manual")
  assert aia_builder.manifest_file(f"{manual}/aia/171/x.fits", manual) == "aia/171/x.fits"
  assert aia_builder.manifest_file("/elsewhere/y.fits", manual) == "y.fits"
  reason = (f"duplicate of {manual}/aia/x.fits; unreadable (OSError: [Errno 5] '/var/tmp/z.fits'"
            ") at 3000 DN/s/pixel, 1-8 A")
  assert aia_builder.manifest_reason(reason, manual) == (
      "duplicate of aia/x.fits; unreadable (OSError: [Errno 5] 'z.fits') at 3000 DN/s/pixel, 1-8 A")
  rows = [{"file": "b/x.fits", "reason": "r2"}, {"file": "a/x.fits", "reason": "r1"},
          {"file": "b/x.fits", "reason": "r1"}, {"file": "b/x.fits", "reason": "r2"}]
  aia_builder.write_manifest(str(tmp_path), rows, dict(aia_builder.DEFAULT_SETTINGS))
  assert aia_builder.read_manifest(str(tmp_path)) == [
      {"file": "a/x.fits", "reason": "r1"}, {"file": "b/x.fits", "reason": "r1; r2"}]


def test_manual_dir_as_an_fsspec_url_builds_the_same_dataset(tmp_path):
  """FITS and GOES files read through fsspec ("memory://", "file://") by the build itself."""
  import fsspec
  manual = tmp_path / "manual"
  os.makedirs(manual / "goes")
  os.makedirs(manual / "aia")
  shutil.copy(GO15, manual / "goes")
  _shifted_copy(manual / "aia" / "good.fits", IMAGE_TIME)
  _shifted_copy(manual / "aia" / "truncated.fits", "2011-06-07T06:00:00.000")
  raw = (manual / "aia" / "truncated.fits").read_bytes()
  (manual / "aia" / "truncated.fits").write_bytes(raw[: len(raw) // 2])
  config = _data_config()
  config.num_workers, config.cache_dir = 1, "off"
  local = _build(config, manual, tmp_path / "tfds")
  fs = fsspec.filesystem("memory")
  for file in sorted(p for p in manual.rglob("*") if p.is_file()):
    fs.pipe(f"/fits_test/{file.relative_to(manual)}", file.read_bytes())
  try:
    for url, data_dir in (("memory://fits_test", "tfds_memory"),
                          (f"file://{manual}", "tfds_file")):
      b = _build(config, url, tmp_path / data_dir)
      got = list(tfds.as_numpy(b.as_dataset(split="train")))
      want = list(tfds.as_numpy(local.as_dataset(split="train")))
      assert len(got) == len(want) == 1
      np.testing.assert_array_equal(got[0]["image"], want[0]["image"])
      assert got[0]["source_file"] == b"good.fits" and got[0]["flare_class"] == 3
      assert aia_builder.read_manifest(b) == aia_builder.read_manifest(local) == [
          {"file": "aia/truncated.fits", "reason": aia_builder.read_manifest(local)[0]["reason"]}]
      assert aia_builder.read_manifest(b)[0]["reason"].startswith("unreadable")
  finally:
    fs.rm("/fits_test", recursive=True)
