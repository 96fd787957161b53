"""Builds from a small zarr store in the SDOML v2 layout (tfds_aia.sdoml), local and by URL."""

import datetime as dt
import os

import fsspec
import numcodecs
import numpy as np
import pytest
import sunpy.data.test
import tensorflow_datasets as tfds
import zarr
from astropy.io import fits

from configs import aia171
from tfds_aia import builder as aia_builder
from tfds_aia import preprocess, sdoml

GO15 = os.path.join(os.path.dirname(sunpy.data.test.__file__), "go1520110607.fits")
SIZE, RESOLUTION, CADENCE_S = 32, 8, 360.0
CEILING = 1e4  # DN/s per stored pixel: above every stored value, so no pixel is clipped.
# Frame times per year: 06:00:09.34 + k * 6 min, k = 0..11 (the M2.5 flare of 2011-06-07 peaks
# near 06:41; the GOES file of 2012 is the same file shifted by a year).
FIRST = {"2011": "2011-06-07T06:00:09.34Z", "2012": "2012-06-07T06:00:09.34Z"}
N = 12
MISSING_193 = ("2011", 3)  # No 193 A frame at the time of 171 A frame 3.
FLAGGED_171 = ("2011", 5)  # QUALITY 0x400 (a 171 A frame flagged in its attributes).
FLAGGED_193 = ("2012", 8)  # QUALITY 0x4: the 171 A frame of that time has no usable partner.
NAN_171 = ("2012", 2)  # Two NaN pixels.


def _times(year):
  t0 = dt.datetime.fromisoformat(FIRST[year].replace("Z", "+00:00")).timestamp()
  return t0 + CADENCE_S * np.arange(N)


def _t_obs(t):
  return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4] + "Z"


def write_store(root: str) -> dict:
  """An SDOML v2 layout: <year>/<wavelength>A arrays [frames, SIZE, SIZE] float32 in DN/s,
  chunked along the frames, Blosc zstd, with one attribute list per FITS keyword. Returns the
  stored values {(year, wavelength, index): frame}."""
  rng = np.random.default_rng(0)
  compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
  group = zarr.open_group(root, mode="w", zarr_format=2)
  stored = {}
  for year in FIRST:
    year_group = group.create_group(year)
    for w in (171, 193):
      keep = [i for i in range(N) if not (w == 193 and (year, i) == MISSING_193)]
      times = _times(year)[keep] + (2.0 if w == 193 else 0.0)  # 193 A: 2 s after 171 A.
      frames = rng.gamma(2.0, 40.0, (len(keep), SIZE, SIZE)).astype(np.float32)
      if w == 171 and year == NAN_171[0]:
        frames[NAN_171[1], 3, 4] = frames[NAN_171[1], 10, 11] = np.nan
      array = year_group.create_array(f"{w}A", shape=frames.shape, chunks=(5, SIZE, SIZE),
                                      dtype="f4", compressors=compressor)
      array[:] = frames
      quality = [0] * len(keep)
      if w == 171 and year == FLAGGED_171[0]:
        quality[FLAGGED_171[1]] = 0x400
      if w == 193 and year == FLAGGED_193[0]:
        quality[keep.index(FLAGGED_193[1])] = 0x4
      array.attrs.update({
          "T_OBS": [_t_obs(t) for t in times], "DATE-OBS": [_t_obs(t - 1.0) for t in times],
          "EXPTIME": [2.0] * len(keep), "QUALITY": quality, "WAVELNTH": [w] * len(keep),
          "DEG_COR": [0.9] * len(keep), "PIXLUNIT": ["DN/s"] * len(keep)})
      for k, i in enumerate(keep):
        stored[(year, w, i)] = frames[k]
  return stored


def write_goes(folder: str) -> None:
  """The GOES-15 test file for 2011-06-07, and the same data dated a year later (folder: a path
  or an fsspec URL)."""
  import io
  fs, path = fsspec.core.url_to_fs(folder)
  fs.makedirs(path, exist_ok=True)
  with open(GO15, "rb") as f:
    fs.pipe(f"{path}/go1520110607.fits", f.read())
  out = io.BytesIO()
  with fits.open(GO15) as hdul:
    hdul[0].header["DATE-OBS"] = "07/06/2012"
    hdul.writeto(out)
  fs.pipe(f"{path}/go1520120607.fits", out.getvalue())


def _goes_flux(t_unix):
  """The 1-8 A flux at a time from the test file, read with astropy only (no sunpy), shifted to
  the year of the frame: linear between the valid samples."""
  with fits.open(GO15) as hdul:
    start = dt.datetime(2011, 6, 7, tzinfo=dt.UTC).timestamp()
    t = start + np.asarray(hdul[2].data["TIME"][0], np.float64)
    flux = np.asarray(hdul[2].data["FLUX"][0][:, 0], np.float64)
  good = flux > 0
  year = dt.datetime.fromtimestamp(t_unix, dt.UTC).year
  shift = dt.datetime(year, 6, 7, tzinfo=dt.UTC).timestamp() - start
  return float(np.interp(t_unix - shift, t[good], flux[good]))


def _class_of(flux):
  """GOES class from its definition: A, B, C, M, X from 1e-8, 1e-7, 1e-6, 1e-5, 1e-4 W/m^2."""
  return sum(flux >= base for base in (1e-7, 1e-6, 1e-5, 1e-4))


def _config(store, **changes):
  config = aia171.get_config("test").data
  config.source, config.sdoml_store, config.frame_px = "sdoml", store, SIZE
  config.resolution, config.channels, config.dn_ceiling = RESOLUTION, (171, 193), (CEILING,)
  config.train_end, config.val_end, config.split_gap_hours = "2012-01-01", "2012-06-07T07:00", 0.1
  config.goes_scaling, config.goes_tolerance_s, config.num_workers = "noaa_0.7", 10.0, 1
  config.cache_dir = "off"
  for key, value in changes.items():
    config[key] = value
  return config


def _build(config, manual_dir, data_dir):
  b = aia_builder.make_builder(config, data_dir=str(data_dir))
  return aia_builder.build(b, str(manual_dir))


def _examples(b):
  out = {}
  for split in b.info.splits:
    out.update({ex["time_unix_s"]: (split, ex)
                for ex in tfds.as_numpy(b.as_dataset(split=split))})
  return out


def _expected_skips():
  gap = "within 0.1 h of a split boundary"
  rows = {"2011/171A/3": "no 193 A frame within 60 s",
          "2011/171A/5": "QUALITY flag 0x400 is not 0",
          "2012/193A/8": "QUALITY flag 0x4 is not 0",
          "2012/171A/8": "no 193 A frame within 60 s",
          "2012/171A/2": "2 NaN/inf pixels (0.20% of the image)"}
  boundary = dt.datetime(2012, 6, 7, 7, tzinfo=dt.UTC).timestamp()
  for i, t in enumerate(_times("2012")):
    if abs(t - boundary) < 360.0 and f"2012/171A/{i}" not in rows:
      when = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
      rows[f"2012/171A/{i}"] = f"{gap} ({when})"
  return rows


def test_build_from_an_sdoml_store_local_and_by_url(tmp_path):
  stored = write_store(str(tmp_path / "sdoml.zarr"))
  write_goes(str(tmp_path / "goes"))
  b = _build(_config(str(tmp_path / "sdoml.zarr")), tmp_path / "goes", tmp_path / "tfds")
  examples = _examples(b)
  skips = {row["file"]: row["reason"] for row in aia_builder.read_manifest(b)}
  expected_skips = _expected_skips()
  assert skips == expected_skips
  # Every other 171 A frame is an example, at its T_OBS, with the 193 A frame 2 s later.
  wanted = {}
  for year in FIRST:
    for i, t in enumerate(_times(year)):
      if f"{year}/171A/{i}" not in expected_skips:
        wanted[t] = (year, i)
  assert sorted(examples) == pytest.approx(sorted(wanted), abs=1e-3)
  ceiling = preprocess.effective_ceiling(CEILING, SIZE, RESOLUTION, "sum")
  edges = np.arange(0, SIZE, SIZE // RESOLUTION)
  for t, (split, ex) in examples.items():
    year, i = wanted[min(wanted, key=lambda w: abs(w - t))]
    assert split == ("train" if year == "2011" else "validation" if t < dt.datetime(
        2012, 6, 7, 7, tzinfo=dt.UTC).timestamp() else "test")
    k = i - int(year == MISSING_193[0] and i > MISSING_193[1])  # 193 A index (one missing).
    assert ex["source_file"].decode() == f"{year}/171A/{i},{year}/193A/{k}"
    flux = _goes_flux(t)
    assert ex["flare_class"] == _class_of(flux)
    assert ex["goes_flux_w_m2"] == pytest.approx(flux, rel=1e-5)
    # Units: the inverse transform gives the block sums of the stored DN/s (no EXPTIME division,
    # no degradation factor: the store has applied both).
    dn_s = preprocess.to_dn_per_s(ex["image"], ceiling)
    for c, w in enumerate((171, 193)):
      frame = stored[(year, w, i)].astype(np.float64)
      sums = np.add.reduceat(np.add.reduceat(frame, edges, 0), edges, 1)
      np.testing.assert_allclose(dn_s[..., c], sums, rtol=2e-5)
  assert {ex["flare_class"] for _, ex in examples.values()} >= {2, 3}  # C and M frames.
  # The same store and GOES files through fsspec URLs give the same records.
  fs = fsspec.filesystem("memory")
  for path in (tmp_path / "sdoml.zarr", tmp_path / "goes"):
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
      fs.pipe(f"/sdoml_test/{file.relative_to(tmp_path)}", file.read_bytes())
  try:
    b2 = _build(_config("memory://sdoml_test/sdoml.zarr"), "memory://sdoml_test/goes",
                tmp_path / "tfds_url")
    examples2 = _examples(b2)
    assert sorted(examples2) == sorted(examples)
    for t, (split, ex) in examples.items():
      assert examples2[t][0] == split
      np.testing.assert_array_equal(examples2[t][1]["image"], ex["image"])
    assert {r["file"]: r["reason"] for r in aia_builder.read_manifest(b2)} == expected_skips
  finally:
    fs.rm("/sdoml_test", recursive=True)


def test_index_time_range_cadence_and_frame_size(tmp_path):
  store = str(tmp_path / "s.zarr")
  write_store(store)
  headers, skips, chunks = sdoml.read_index(store, (171,), "2011-06-07T06:10",
                                            "2011-06-07T06:40")
  times = _times("2011")
  inside = [i for i, t in enumerate(times)
            if dt.datetime(2011, 6, 7, 6, 10, tzinfo=dt.UTC).timestamp() <= t
            < dt.datetime(2011, 6, 7, 6, 40, tzinfo=dt.UTC).timestamp()]
  assert [h.path for h in headers] == [f"2011/171A/{i}" for i in inside]
  assert [h.quality for h in headers] == [0x400 if i == 5 else 0 for i in inside]
  assert skips == [] and chunks == {"2011/171A": 5}
  assert headers[0].time_unix_s == pytest.approx(times[inside[0]], abs=1e-6)
  # 12-minute cadence from 06:00: the frame nearest each step, each at most once.
  every, _, _ = sdoml.read_index(store, (171,), "2011-06-07T06:00", "2011-06-08")
  picked = sdoml.select_cadence(every, 171, 12.0, "2011-06-07T06:00")
  origin = dt.datetime(2011, 6, 7, 6, tzinfo=dt.UTC).timestamp()
  expected = []
  for k in range(-2, 10):  # Brute force over steps around the data.
    nearest = int(np.argmin(np.abs(times - (origin + 720.0 * k))))
    if abs(times[nearest] - (origin + 720.0 * k)) <= 360.0 and nearest not in expected:
      expected.append(nearest)
  assert expected[:6] == [0, 2, 4, 6, 8, 10]  # One per 12 minutes (and 11 for 07:12).
  assert [h.path for h in picked] == [f"2011/171A/{i}" for i in expected]
  assert len(sdoml.select_cadence(every, 171, 0.0)) == N
  # A year without a channel's array is listed; no year in range is an error naming the store.
  _, skips, _ = sdoml.read_index(store, (171, 94), "2012-01-01", "")
  assert skips == [("2012/94A", "no 94A array in the year group 2012")]
  with pytest.raises(FileNotFoundError, match="no year groups"):
    sdoml.read_index(store, (171,), "2015-01-01", "2016-01-01")
  # Frames of another size than data.frame_px stop the build before any pixel is read.
  write_goes(str(tmp_path / "goes"))
  with pytest.raises(ValueError, match=f"set --config.data.frame_px={SIZE}"):
    _build(_config(store, frame_px=4096), tmp_path / "goes", tmp_path / "tfds")
  with pytest.raises(ValueError, match="already corrected for degradation"):
    _build(_config(store, degradation_table="table.csv"), tmp_path / "goes", tmp_path / "t2")


def test_sdoml_settings_change_the_fingerprint_only_when_set():
  base = aia_builder.settings_from_config(aia171.get_config("paper").data)
  assert not set(aia_builder.SDOML_SETTINGS) & set(base)  # FITS builds: as before them.
  fingerprint = aia_builder.settings_fingerprint(base)
  # Set to their defaults they leave the fingerprint of a FITS build as it was.
  assert aia_builder.settings_fingerprint({**base, **aia_builder.SDOML_SETTINGS}) == fingerprint
  config = aia171.get_config("paper").data
  config.source = "sdoml"
  sdoml_settings = aia_builder.settings_from_config(config)
  assert sdoml_settings["frame_source"] == "sdoml"
  assert aia_builder.settings_fingerprint(sdoml_settings) != fingerprint
  config.sdoml_cadence_minutes = 12.0
  assert (aia_builder.settings_fingerprint(aia_builder.settings_from_config(config))
          != aia_builder.settings_fingerprint(sdoml_settings))


@pytest.mark.slow
def test_build_rate_and_record_size_of_a_day_of_512px_frames(tmp_path, capsys):
  """The numbers of docs/data.md ("Size and time per year of 171 A"): one process builds a local
  one-channel store of 240 frames of 512 x 512 (2011-06-07, 6 minutes apart, chunks of 15) at 64
  and 256 px; prints frames per second and bytes per record."""
  import json
  import time
  n, size = 240, 512
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size]
  disc = (np.hypot(yy - 255.5, xx - 255.5) < 0.4 * size).astype(np.float32)
  group = zarr.open_group(str(tmp_path / "day.zarr"), mode="w", zarr_format=2)
  array = group.create_group("2011").create_array(
      "171A", shape=(n, size, size), chunks=(15, size, size), dtype="f4",
      compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE))
  for i in range(0, n, 15):
    array[i:i + 15] = (disc * 500 + 20) * rng.gamma(4.0, 0.25, (15, size, size))
  t0 = dt.datetime(2011, 6, 7, tzinfo=dt.UTC).timestamp() + 9.34
  array.attrs.update({"T_OBS": [_t_obs(t0 + 360.0 * i) for i in range(n)],
                      "EXPTIME": [2.0] * n, "QUALITY": [0] * n})
  write_goes(str(tmp_path / "goes"))
  for resolution in (64, 256):
    config = _config(str(tmp_path / "day.zarr"), frame_px=size, resolution=resolution,
                     channels=(171,), dn_ceiling=(3000.0,), val_end="2013-01-01")
    start = time.perf_counter()
    b = _build(config, tmp_path / "goes", tmp_path / f"tfds_{resolution}")
    seconds = time.perf_counter() - start
    split = b.info.splits["train"]
    assert split.num_examples == n
    per_record = split.num_bytes / n
    assert resolution**2 * 4 < per_record < resolution**2 * 4 + 1000  # The image, plus labels.
    with capsys.disabled():
      print(json.dumps({"resolution": resolution, "frames": n, "seconds": round(seconds, 1),
                        "frames_per_s": round(n / seconds, 1),
                        "bytes_per_record": round(per_record, 1)}))


def test_settings_check_names_a_missing_store():
  from solar_ddpm_jax import settings
  config = aia171.get_config("paper")
  config.data.source = "sdoml"
  found = [p for p in settings.problems(config) if "sdoml" in p]
  assert len(found) == 1 and "data.sdoml_store" in found[0]
  config.data.sdoml_store = "s3://bucket/sdomlv2.zarr"
  assert not [p for p in settings.problems(config) if "data.source" in p or "sdoml" in p]


def test_the_build_command_takes_an_sdoml_source_and_a_url_manual_dir():
  from solar_ddpm_jax import input_pipeline
  config = aia171.get_config("test")
  config.data.source, config.data.sdoml_store = "sdoml", "memory://store.zarr"
  config.data.manual_dir, config.data.data_dir = "memory://goes", "/tmp/tfds_unused"
  assert input_pipeline.dataset_dirs(config) == ("/tmp/tfds_unused", "memory://goes")
