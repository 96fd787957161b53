"""The TFDS builder `aia_flares`: AIA FITS + GOES XRS (+ HEK events) -> sharded records.

    builder = make_builder(config.data, data_dir=...)   # settings from config.data
    build(builder, manual_dir=...)                       # download_and_prepare + skip manifest

manual_dir holds AIA level-1 FITS files (any sub-folders; *.fits, *.fits.gz, *.fts) and GOES XRS
files (go1[0-5]*.fits[.gz], *xrs*.nc). One BuilderConfig per resolution and channel set,
"res{R}_{w1}_{w2}..." (res64_171). Keys are the observation time and channels, never paths.
Files that cannot be used are listed with the reason in <dataset dir>/skipped.json.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import json
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfds_aia import FLARE_CLASSES, fits_io, frames, goes, hek, splits

SKIP_MANIFEST = "skipped.json"
SETTINGS_FILE = "build_settings.json"
AIA_PATTERNS = ("*.fits", "*.fits.gz", "*.fts", "*.fit", "*.fts.gz")
GOES_PATTERNS = ("go[01][0-9]*.fits", "go[01][0-9]*.fits.gz", "*xrs*.nc", "g1[0-9]_xrs*.nc")

# Settings taken from config.data (defaults = configs/aia171.py); they change the output bytes.
DEFAULT_SETTINGS = dict(
    downsample="sum", dn_ceiling=(3000.0,), stretch="log", asinh_a=0.01, register=False,
    degradation_table="", goes_scaling="science", goes_tolerance_s=60.0,
    forecast_window_hours=24.0, train_end="2014-01-01", val_end="2015-01-01",
    split_gap_hours=12.0, hek_events="", hek_window_minutes=30.0, hek_min_class="M",
    max_nan_fraction=0.0, allowed_quality=0, channel_match_s=60.0, file_format="tfrecord")
# Settings that change how, not what, is built (left out of the fingerprint).
RUNTIME_SETTINGS = dict(num_workers=1, max_in_flight=4)


def config_name(resolution: int, channels) -> str:
  """BuilderConfig name: res64_171, res64_171_193_211_304."""
  return f"res{int(resolution)}_" + "_".join(str(int(w)) for w in channels)


@dataclasses.dataclass(eq=False)
class AiaFlaresConfig(tfds.core.BuilderConfig):
  """One resolution and channel set."""
  resolution: int = 64
  channels: tuple = (171,)


def _config(resolution, channels) -> AiaFlaresConfig:
  return AiaFlaresConfig(
      name=config_name(resolution, channels), resolution=int(resolution),
      channels=tuple(int(c) for c in channels),
      description=f"{resolution}x{resolution} px, AIA channels {tuple(channels)} A.")


def settings_from_config(data_config) -> dict:
  """The builder settings of a config.data group (missing fields take the defaults)."""
  out = {}
  for key, default in DEFAULT_SETTINGS.items():
    value = data_config.get(key, default) if hasattr(data_config, "get") else default
    out[key] = tuple(value) if isinstance(default, tuple) else type(default)(value)
  return out


def settings_fingerprint(settings: dict) -> str:
  """Short hash of the settings that change the built bytes."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _iso(t: float) -> str:
  return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def find_files(manual_dir: str) -> tuple[list[str], list[str]]:
  """(AIA FITS paths, GOES XRS paths) under manual_dir, sorted."""
  aia, goes_files = [], []
  for root, _, names in os.walk(manual_dir):
    for name in names:
      path = os.path.join(root, name)
      lower = name.lower()
      if any(fnmatch.fnmatch(lower, p) for p in GOES_PATTERNS):
        goes_files.append(path)
      elif any(fnmatch.fnmatch(lower, p) for p in AIA_PATTERNS):
        aia.append(path)
  return sorted(aia), sorted(goes_files)


class Builder(tfds.core.GeneratorBasedBuilder):
  """SDO/AIA images labelled with the GOES 1-8 A flare class at the image time."""

  name = "aia_flares"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [_config(r, (171,)) for r in (16, 32, 64, 128, 256, 512)] + [
      _config(64, (171, 193, 211, 304))]
  DEFAULT_CONFIG_NAME = "res64_171"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put AIA level-1 FITS files (any sub-folders) and GOES XRS files (go15YYYYMMDD.fits or *xrs*.nc)
  in manual_dir, e.g. with `python -m tfds_aia.fetch --start 2011-06-07 --end 2011-06-08
  --out <manual_dir>`, or write a synthetic archive with `python -m tfds_aia.synthetic --out ...`.
  """

  def __init__(self, *, settings: dict | None = None, runtime: dict | None = None, **kwargs):
    self.settings = {**DEFAULT_SETTINGS, **RUNTIME_SETTINGS, **(settings or {}), **(runtime or {})}
    self.skipped: list[dict] = []
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    r, c = self.builder_config.resolution, len(self.builder_config.channels)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(r, r, c), dtype=np.float32),
            "flare_class": tfds.features.ClassLabel(names=FLARE_CLASSES),
            "subclass": tfds.features.Scalar(dtype=np.float32),
            "goes_flux_w_m2": tfds.features.Scalar(dtype=np.float32),
            "forecast_class": tfds.features.ClassLabel(names=FLARE_CLASSES),
            # Raw bytes: TFRecord float lists are float32, too coarse for Unix seconds.
            "time_unix_s": tfds.features.Tensor(shape=(), dtype=np.float64,
                                                encoding=tfds.features.Encoding.BYTES),
            "satellite": tfds.features.Text(),
            "scaling_policy": tfds.features.Text(),
            "source_file": tfds.features.Text(),
        }),
        supervised_keys=("image", "flare_class"),
        homepage="https://arxiv.org/abs/2404.02552",
    )

  def _skip(self, path: str, reason: str) -> None:
    self.skipped.append({"file": os.path.basename(str(path)), "reason": reason})

  def _frames(self, aia_paths: list[str]) -> list[fits_io.AiaHeader]:
    """Valid headers of the configured channels (others go to the skip manifest)."""
    cfg = self.builder_config
    headers = []
    for path in tfds.core.utils.tqdm(aia_paths, desc="AIA headers", unit=" files"):
      try:
        header = fits_io.read_header(path)
        fits_io.check(header, channels=cfg.channels, resolution=cfg.resolution,
                      downsample=self.settings["downsample"],
                      allowed_quality=int(self.settings["allowed_quality"]))
      except fits_io.BadFileError as e:
        self._skip(path, e.reason)
        continue
      headers.append(header)
    return headers

  def _group_channels(self, headers):
    """[(time, [header per channel])]: each frame of the first channel with the nearest frame of
    every other channel within channel_match_s."""
    channels = self.builder_config.channels
    by_channel = {w: sorted((h for h in headers if h.wavelength == w), key=lambda h: h.time_unix_s)
                  for w in channels}
    groups, used = [], set()
    for anchor in by_channel[channels[0]]:
      if anchor.time_unix_s in used:
        self._skip(anchor.path, f"duplicate frame of {_iso(anchor.time_unix_s)}")
        continue
      used.add(anchor.time_unix_s)
      members = [anchor]
      for w in channels[1:]:
        near = [h for h in by_channel[w]
                if abs(h.time_unix_s - anchor.time_unix_s) <= self.settings["channel_match_s"]]
        if not near:
          self._skip(anchor.path, f"no {w} A frame within {self.settings['channel_match_s']:g} s")
          break
        members.append(min(near, key=lambda h: abs(h.time_unix_s - anchor.time_unix_s)))
      else:
        groups.append((anchor.time_unix_s, members))
    return groups

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    aia_paths, goes_paths = find_files(manual_dir)
    for kind, found in (("AIA FITS", aia_paths), ("GOES XRS", goes_paths)):
      if not found:
        raise FileNotFoundError(f"No {kind} files under {manual_dir}."
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    s = self.settings
    flux_parts = []
    for path in goes_paths:
      try:
        flux_parts.append(goes.read_goes_file(path, s["goes_scaling"]))
      except Exception as e:
        self._skip(path, f"unreadable GOES XRS file ({e.__class__.__name__}: {e})")
    xrs = goes.merge(flux_parts)
    events = hek.load_events(s["hek_events"]) if s["hek_events"] else None
    items = []
    for time_unix_s, members in self._group_channels(self._frames(aia_paths)):
      try:
        label = goes.label_image(xrs, time_unix_s, tolerance_s=s["goes_tolerance_s"],
                                 forecast_window_s=s["forecast_window_hours"] * 3600.0)
      except goes.GoesGapError as e:
        self._skip(members[0].path, f"{e} ({_iso(time_unix_s)})")
        continue
      if events is not None and label.flare_class >= goes.class_index(s["hek_min_class"]):
        if not hek.near_flare_peak(time_unix_s, events, s["hek_window_minutes"],
                                   s["hek_min_class"])[0]:
          self._skip(members[0].path, f"{FLARE_CLASSES[label.flare_class]}-class flux but no HEK "
                     f"flare peak within {s['hek_window_minutes']:g} min")
          continue
      items.append((time_unix_s, members, label))
    names = splits.assign_splits([t for t, _, _ in items], s["train_end"], s["val_end"],
                                 s["split_gap_hours"])
    for (t, members, _), name in zip(items, names, strict=True):
      if not name:
        self._skip(members[0].path, f"within {s['split_gap_hours']:g} h of a split boundary "
                   f"({_iso(t)})")
    # TFDS cannot write an empty split: splits without frames are left out (and logged).
    by_split = {split: [it for it, n in zip(items, names, strict=True) if n == split]
                for split in splits.SPLITS}
    empty = [split for split, members in by_split.items() if not members]
    if empty:
      logging.warning("No frames for split(s) %s: they are left out.", empty)
    return {split: self._generate_examples(members) for split, members in by_split.items()
            if members}

  def _num_workers(self) -> int:
    workers = int(self.settings["num_workers"])
    return (os.cpu_count() or 1) if workers <= 0 else workers

  def _frames_in_order(self, items):
    """(item, image, error) per item, in input order; a process pool when num_workers > 1, with
    at most max_in_flight frames submitted and not yet written (memory bound). When the pool
    cannot run (e.g. a script without a __main__ guard under "spawn"), the rest runs serially."""
    args = (self.settings, self.builder_config.resolution)
    workers = self._num_workers()
    done = 0
    in_child = multiprocessing.parent_process() is not None  # Never pools inside pool workers.
    if workers > 1 and len(items) >= 4 * workers and not in_child:  # Pools cost ~1 s to start.
      in_flight = max(int(self.settings["max_in_flight"]), workers)
      context = multiprocessing.get_context("spawn")  # No fork after TensorFlow started threads.
      try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
          pending = collections.deque()
          for item in items:
            pending.append((item, pool.submit(frames.preprocess_frame, item[1], *args)))
            while len(pending) >= in_flight or (item is items[-1] and pending):
              ready, future = pending.popleft()
              yield (ready, *future.result())
              done += 1
      except concurrent.futures.process.BrokenProcessPool as e:
        logging.warning("Process pool failed (%s); preprocessing the remaining %d frames in this "
                        "process.", e, len(items) - done)
    for item in items[done:]:
      yield (item, *frames.preprocess_frame(item[1], *args))

  def _generate_examples(self, items):
    for (time_unix_s, members, label), image, error in self._frames_in_order(items):
      if error is not None:
        self._skip(*error)
        continue
      key = dt.datetime.fromtimestamp(time_unix_s, dt.UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
      key += "_" + "_".join(str(h.wavelength) for h in members)
      yield key, {
          "image": image,
          "flare_class": label.flare_class,
          "subclass": np.float32(label.subclass),
          "goes_flux_w_m2": np.float32(label.flux_w_m2),
          "forecast_class": label.forecast_class,
          "time_unix_s": np.float64(time_unix_s),
          "satellite": label.satellite,
          "scaling_policy": label.policy,
          "source_file": ",".join(os.path.basename(h.path) for h in members),
      }

  def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
    self.skipped = []
    super()._download_and_prepare(dl_manager, download_config, **kwargs)
    write_manifest(self.data_dir, self.skipped, {k: self.settings[k] for k in DEFAULT_SETTINGS})


def write_manifest(dataset_dir: str, skipped: list[dict], settings: dict) -> None:
  """skipped.json (file, reason) and build_settings.json in the dataset directory."""
  seen, unique = set(), []
  for row in skipped:
    key = (row["file"], row["reason"])
    if key not in seen:
      seen.add(key)
      unique.append(row)
  unique.sort(key=lambda r: (r["file"], r["reason"]))
  with open(os.path.join(os.fspath(dataset_dir), SKIP_MANIFEST), "w") as f:
    json.dump(unique, f, indent=1)
  with open(os.path.join(os.fspath(dataset_dir), SETTINGS_FILE), "w") as f:
    json.dump({**settings, "fingerprint": settings_fingerprint(settings)}, f, indent=1, default=str)


def read_manifest(builder_or_dir) -> list[dict]:
  """The skip manifest of a built dataset: [{"file", "reason"}]."""
  d = getattr(builder_or_dir, "data_dir", builder_or_dir)
  with open(os.path.join(os.fspath(d), SKIP_MANIFEST)) as f:
    return json.load(f)


def make_builder(data_config, data_dir: str | None = None, file_format: str | None = None
                 ) -> Builder:
  """The builder for config.data: its resolution, channels and preprocessing settings."""
  resolution, channels = int(data_config.resolution), tuple(int(c) for c in data_config.channels)
  name = config_name(resolution, channels)
  known = {c.name: c for c in Builder.BUILDER_CONFIGS}
  config = known.get(name) or _config(resolution, channels)
  file_format = file_format or data_config.get("file_format", "tfrecord")
  return Builder(config=config, data_dir=data_dir or data_config.get("data_dir") or None,
                 settings=settings_from_config(data_config), file_format=file_format,
                 runtime={k: type(v)(data_config.get(k, v)) for k, v in RUNTIME_SETTINGS.items()})


def build(builder: Builder, manual_dir: str) -> Builder:
  """download_and_prepare from manual_dir (no network); a no-op when already built."""
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder
