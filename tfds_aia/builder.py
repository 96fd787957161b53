"""The TFDS builder `aia_flares`: AIA FITS + GOES XRS (+ HEK events) -> sharded records.

    builder = make_builder(config.data, data_dir=...)   # settings from config.data
    build(builder, manual_dir=...)                       # download_and_prepare + skip manifest

manual_dir holds AIA level-1 FITS files (any sub-folders; *.fits, *.fits.gz, *.fts) and GOES XRS
files (go1[0-5]*.fits[.gz], *xrs*.nc). One BuilderConfig per resolution and channel set,
"res{R}_{w1}_{w2}..." (res64_171). Keys are the observation time and channels, never paths.
Files that cannot be used are listed with the reason in <dataset dir>/skipped.json, one row per
file, named by its path relative to manual_dir (`write_manifest`).

Three ways to run the same build, with the same records and skip manifest:
  - one process (num_workers=1);
  - a process pool (num_workers > 1, or 0 for all cores; the default): headers and frames are
    read in worker processes, results stream to the writer in order, at most max_in_flight frames
    (so decoded full-resolution images) at a time;
  - Apache Beam, when beam options or a runner are given (`build(..., beam_options=...)`,
    data.beam_pipeline_options, or `tfds build --beam_pipeline_options=...`): headers are read
    and labelled here (with the pool), frames are preprocessed by the runner's workers
    (DirectRunner here; Dataflow, Flink, Spark on a cluster, which must see manual_dir, the data
    dir and the cache folder at the same paths).
All three call tfds_aia.frames and share the build cache (tfds_aia.cache), so a rebuild after new
files arrive decodes only the new files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import datetime as dt
import fnmatch
import json
import multiprocessing
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from tfds_aia import FLARE_CLASSES, cache, fits_io, frames, goes, hek, preprocess, splits

SKIP_MANIFEST = "skipped.json"
SETTINGS_FILE = "build_settings.json"
CACHE_DIR_NAME = "aia_flares_cache"  # Default cache folder, in the TFDS data dir.
BEAM_FILE_PREFIX = "aia_flares_beam_"  # Work lists and reports of a Beam build (removed after).
AIA_PATTERNS = ("*.fits", "*.fits.gz", "*.fts", "*.fit", "*.fts.gz")
GOES_PATTERNS = ("go[01][0-9]*.fits", "go[01][0-9]*.fits.gz", "*xrs*.nc", "g1[0-9]_xrs*.nc")

# Settings taken from config.data (defaults = configs/aia171.py); they change the output bytes.
DEFAULT_SETTINGS = dict(
    downsample="sum", dn_ceiling=(3000.0,), stretch="log", asinh_a=0.01, register=False,
    degradation_table="", goes_scaling="science", goes_tolerance_s=60.0, goes_satellites="",
    forecast_window_hours=24.0, train_end="2014-01-01", val_end="2015-01-01",
    split_gap_hours=12.0, hek_events="", hek_window_minutes=30.0, hek_min_class="M",
    hek_scaling="noaa_0.7",
    max_nan_fraction=0.0, allowed_quality=0, channel_match_s=60.0, file_format="tfrecord",
    frame_px=preprocess.AIA_FULL_FRAME_PX, **preprocess.PIXEL_CHECK_DEFAULTS)
# Settings added after datasets of this version were first built: fingerprinted only when set
# away from their defaults, so that a dataset built before them keeps its fingerprint (the records
# of its frames that pass the checks are the same bytes); its build_settings.json lacks them.
LATER_SETTINGS = tuple(preprocess.PIXEL_CHECK_DEFAULTS)
# Settings that change how, not what, is built (left out of the fingerprint).
RUNTIME_SETTINGS = dict(num_workers=0, max_in_flight=4, cache_dir="", beam_pipeline_options="")


def settings_fingerprint(settings: dict) -> str:
  """Short hash of the build settings (cache.settings_fingerprint), without LATER_SETTINGS that
  keep their defaults."""
  return cache.settings_fingerprint({
      k: v for k, v in settings.items()
      if not (k in LATER_SETTINGS and _same_setting(v, DEFAULT_SETTINGS[k]))})


def _same_setting(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(float(v) for v in np.ravel(value)) == tuple(float(v) for v in default)
  return float(value) == float(default)


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
    if key == "frame_px":  # Checked there, and a synthetic archive's own size.
      value = preprocess.frame_px(data_config)
    if key == "max_disc_median_dn_s":  # One float per channel, or one for all.
      value = tuple(float(v) for v in np.ravel(value))
    out[key] = tuple(value) if isinstance(default, tuple) else type(default)(value)
  return out


def _iso(t: float) -> str:
  return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


# An absolute path of two or more parts (not "DN/s": a slash after a letter does not start one).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")


def manifest_file(path: str, manual_dir: str) -> str:
  """A file's name in the skip manifest: its path relative to manual_dir, in posix form (the
  name alone for a file outside it)."""
  path = os.path.abspath(os.fspath(path))
  if not manual_dir:
    return os.path.basename(path)
  for root in dict.fromkeys((os.path.abspath(manual_dir), os.path.realpath(manual_dir))):
    rel = os.path.relpath(path, root)
    if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
      return rel.replace(os.sep, "/")
  return os.path.basename(path)


def manifest_reason(reason: str, manual_dir: str) -> str:
  """A skip reason without absolute paths: files under manual_dir by their relative path, any
  other absolute path by its last part."""
  roots = {os.path.abspath(manual_dir), os.path.realpath(manual_dir)} if manual_dir else set()
  for root in sorted(roots, key=len, reverse=True):
    reason = reason.replace(root + os.sep, "")
  return _ABSOLUTE_PATH.sub(r"\1", reason)


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
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Frames of another size than data.frame_px are skipped, so that "
                            "every image has the same clip ceiling and DN/s inverse.",
                   "1.2.0": "forecast_coverage; GOES samples good by their file's own flag "
                            "mask; one satellite at a time (data.goes_satellites)."}
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
    self._manual_dir = ""  # manual_dir of the running build (skip rows are relative to it).
    self.decoded_files: list[str] = []  # FITS files decoded by the last build (not from the cache).
    self._pool = None  # The build's process pool, while one runs.
    self._beam = False  # Whether this build runs on Apache Beam.
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
            # Fraction of the forecast window's 10-minute intervals with GOES data (1: all).
            "forecast_coverage": tfds.features.Scalar(dtype=np.float32),
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
    self.skipped.append({"file": manifest_file(str(path), self._manual_dir),
                         "reason": manifest_reason(reason, self._manual_dir)})

  def _frames(self, aia_paths: list[str]) -> list[fits_io.AiaHeader]:
    """Valid headers of the configured channels (others go to the skip manifest)."""
    cfg = self.builder_config
    headers = []
    results = self._in_order(frames.read_header, aia_paths, (self._cache_dir(),),
                             in_flight=64 * self._num_workers())
    for header, error in tfds.core.utils.tqdm(results, desc="AIA headers", unit=" files",
                                              total=len(aia_paths)):
      try:
        if error is not None:
          raise fits_io.BadFileError(*error)
        fits_io.check(header, channels=cfg.channels, resolution=cfg.resolution,
                      downsample=self.settings["downsample"],
                      frame_px=int(self.settings["frame_px"]),
                      allowed_quality=int(self.settings["allowed_quality"]))
      except fits_io.BadFileError as e:
        self._skip(e.path, e.reason)
        continue
      headers.append(header)
    return headers

  def _group_channels(self, headers):
    """[(time, [[header of each copy] per channel])]: each frame of the first channel (all its
    copies: files of the same observation time) with the copies of the nearest frame of every
    other channel within channel_match_s. Which copy is used is decided when the pixels are read
    (frames.preprocess_frame): a damaged copy does not lose the frame."""
    channels = self.builder_config.channels
    by_channel = {w: sorted((h for h in headers if h.wavelength == w), key=lambda h: h.time_unix_s)
                  for w in channels}
    copies = collections.defaultdict(list)  # Copies of the first channel's frames, in path order.
    for h in by_channel[channels[0]]:
      copies[h.time_unix_s].append(h)
    groups = []
    for time_unix_s, anchors in copies.items():
      members = [anchors]
      for w in channels[1:]:
        near = [h for h in by_channel[w]
                if abs(h.time_unix_s - time_unix_s) <= self.settings["channel_match_s"]]
        if not near:
          for anchor in anchors:
            self._skip(anchor.path,
                       f"no {w} A frame within {self.settings['channel_match_s']:g} s")
          break
        nearest = min(near, key=lambda h: abs(h.time_unix_s - time_unix_s)).time_unix_s
        members.append([h for h in near if h.time_unix_s == nearest])
      else:
        groups.append((time_unix_s, members))
    return groups

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    self._manual_dir = manual_dir
    limits = np.ravel(self.settings["max_disc_median_dn_s"])
    if len(limits) not in (1, len(self.builder_config.channels)):
      raise ValueError(f"data.max_disc_median_dn_s has {len(limits)} values for the channels "
                       f"{self.builder_config.channels}: give one for all, or one per channel.")
    if self.settings["degradation_table"]:  # Unreadable: stop before reading any frame.
      table_path = self.settings["degradation_table"]
      if not os.path.isfile(table_path):
        raise FileNotFoundError(f"data.degradation_table={table_path} does not exist.")
      table = frames.degradation_table(table_path)  # The local decodes reuse this read.
      missing = [c for c in self.builder_config.channels
                 if not preprocess.degradation_has_channel(table, c)]
      if missing:
        raise ValueError(f"data.degradation_table={table_path} has no entries for the "
                         f"channel(s) {missing} A of this dataset.")
    aia_paths, goes_paths = find_files(manual_dir)
    for kind, found in (("AIA FITS", aia_paths), ("GOES XRS", goes_paths)):
      if not found:
        raise FileNotFoundError(f"No {kind} files under {manual_dir}."
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    # Locally the pool preprocesses the frames too; on Beam it reads headers only (~ms each).
    self._start_pool(len(aia_paths), min_files_per_worker=500 if self._beam else 4)
    s = self.settings
    flux_parts = []
    for path in goes_paths:
      try:
        part = goes.read_goes_file(path, s["goes_scaling"])
      except Exception as e:
        self._skip(path, f"unreadable GOES XRS file ({fits_io.describe(e, path)})")
        continue
      if not len(part):
        self._skip(path, "GOES XRS file without a valid 1-8 A sample (all flagged bad, missing "
                   "or not positive)")
      flux_parts.append(part)
    if not sum(len(p) for p in flux_parts):
      raise ValueError(
          f"None of the {len(goes_paths)} GOES XRS files under {manual_dir} has a valid 1-8 A "
          "sample, so no image can be labelled (unreadable, or every sample flagged bad); add "
          "GOES XRS files that cover the AIA times (python -m tfds_aia.fetch).")
    prefer = [x.strip() for x in s["goes_satellites"].split(",") if x.strip()]
    xrs = goes.merge(flux_parts, prefer=prefer)
    events = hek.load_events(s["hek_events"]) if s["hek_events"] else None
    hek_factor = goes.policy_factor(s["hek_scaling"], s["goes_scaling"])
    items = []
    for time_unix_s, members in self._group_channels(self._frames(aia_paths)):
      try:
        label = goes.label_image(xrs, time_unix_s, tolerance_s=s["goes_tolerance_s"],
                                 forecast_window_s=s["forecast_window_hours"] * 3600.0)
      except goes.GoesGapError as e:
        self._skip_copies(members, f"{e} ({_iso(time_unix_s)})")
        continue
      if events is not None and label.flare_class >= goes.class_index(s["hek_min_class"]):
        if not hek.near_flare_peak(time_unix_s, events, s["hek_window_minutes"],
                                   s["hek_min_class"], hek_factor)[0]:
          self._skip_copies(members, f"{FLARE_CLASSES[label.flare_class]}-class flux but no HEK "
                            f"flare peak within {s['hek_window_minutes']:g} min")
          continue
      items.append((time_unix_s, members, label))
    names = splits.assign_splits([t for t, _, _ in items], s["train_end"], s["val_end"],
                                 s["split_gap_hours"])
    for (t, members, _), name in zip(items, names, strict=True):
      if not name:
        self._skip_copies(members, f"within {s['split_gap_hours']:g} h of a split boundary "
                          f"({_iso(t)})")
    # TFDS cannot write an empty split: splits without frames are left out (and logged).
    by_split = {split: [it for it, n in zip(items, names, strict=True) if n == split]
                for split in splits.SPLITS}
    empty = [split for split, members in by_split.items() if not members]
    if empty:
      logging.warning("No frames for split(s) %s: they are left out.", empty)
    if self._beam:
      self._stop_pool()  # Beam's workers preprocess the frames.
    return {split: self._generate_examples(members, split) for split, members in by_split.items()
            if members}

  def _skip_copies(self, members, reason: str) -> None:
    """A frame left out before its pixels are read: every copy of its first channel."""
    for header in members[0]:
      self._skip(header.path, reason)

  def _num_workers(self) -> int:
    workers = int(self.settings["num_workers"])
    return (os.cpu_count() or 1) if workers <= 0 else workers

  def _cache_dir(self) -> str:
    """The build cache folder ("" when off): cache_dir, else <data_dir>/aia_flares_cache when the
    data dir is a local or shared file system path (off for gs:// and other URLs)."""
    folder = str(self.settings["cache_dir"])
    if folder == cache.DISABLED:
      return ""
    if "://" in folder:
      raise ValueError(f"cache_dir {folder!r}: the build cache needs a file system path that every "
                       "worker sees (a local or shared disk), or 'off'.")
    root = os.fspath(self._data_dir_root)
    if not folder and "://" in root:
      return ""
    return os.path.expanduser(folder) if folder else os.path.join(root, CACHE_DIR_NAME)

  def _start_pool(self, num_files: int, min_files_per_worker: int = 4) -> None:
    """The build's process pool: min(num_workers, max_in_flight) processes, so that no more than
    max_in_flight frames are decoded at once. None (one process) for small builds (a pool costs
    ~1 s to start; more when the main module imports TensorFlow, as the `tfds` command does: the
    "spawn" workers import the main module again) and inside pool workers."""
    workers = min(self._num_workers(), max(int(self.settings["max_in_flight"]), 1))
    in_child = multiprocessing.parent_process() is not None
    if (self._pool is None and workers > 1 and num_files >= min_files_per_worker * workers
        and not in_child):
      context = multiprocessing.get_context("spawn")  # No fork after TensorFlow started threads.
      self._pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)

  def _stop_pool(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
      self._pool = None

  def _in_order(self, fn, jobs: list, common: tuple, in_flight: int):
    """fn(job, *common) for every job, in job order: in the pool when one runs, with at most
    in_flight jobs submitted and not yet consumed (memory bound); in this process otherwise.
    When the pool breaks (e.g. a script without a __main__ guard under "spawn"), the rest runs
    here."""
    done = 0
    if self._pool is not None:
      try:
        pending = collections.deque()
        for job in jobs:
          pending.append(self._pool.submit(fn, job, *common))
          if len(pending) >= in_flight:
            yield pending.popleft().result()
            done += 1
        while pending:
          yield pending.popleft().result()
          done += 1
      except concurrent.futures.process.BrokenProcessPool as e:
        logging.warning("Process pool failed (%s); running the remaining %d jobs in this "
                        "process.", e, len(jobs) - done)
        self._pool = None
    for job in jobs[done:]:
      yield fn(job, *common)

  def _generate_examples(self, items, split: str):
    """The split's examples: a generator (one process or the pool), or a Beam PTransform."""
    if self._beam:
      return self._beam_examples(items, split)
    return self._local_examples(items)

  def _local_examples(self, items):
    args = (self.settings, self.builder_config.resolution, self._cache_dir())
    results = self._in_order(frames.preprocess_frame, [members for _, members, _ in items], args,
                             in_flight=max(int(self.settings["max_in_flight"]), 1))
    for (t, _, label), (image, skips, decoded, kept) in zip(items, results, strict=True):
      self.decoded_files.extend(decoded)
      for path, reason in skips:
        self._skip(path, reason)
      if image is not None:
        yield example_of((t, kept, label), image)

  def _beam_examples(self, items, split: str):
    """A PTransform: work list -> preprocessed frames -> examples. The work list is a JSON-lines
    file in the dataset folder (not pickled into the pipeline: archives have 10^5 frames); skip
    records and decoded files go to a report file there, read back after the pipeline."""
    import apache_beam as beam
    work = epath.Path(self.data_dir) / f"{BEAM_FILE_PREFIX}work_{split}.jsonl"
    work.write_text("".join(_item_to_json(item) + "\n" for item in items))
    report = os.fspath(epath.Path(self.data_dir) / f"{BEAM_FILE_PREFIX}report_{split}.json")
    args = (self.settings, self.builder_config.resolution, self._cache_dir())

    @beam.ptransform_fn
    def examples(root):
      results = (root
                 | "ReadWorkList" >> beam.io.ReadFromText(os.fspath(work))
                 | "Spread" >> beam.Reshuffle()  # Decoding, not reading the list, is the work.
                 | "Preprocess" >> beam.Map(_preprocess_line, *args))
      _ = (results
           | "ReportRecords" >> beam.Map(lambda r: (r[2], r[3]))
           | "CollectReport" >> beam.combiners.ToList()
           | "WriteReport" >> beam.Map(_write_json, path=report))
      return results | "Examples" >> beam.FlatMap(
          lambda r: [example_of(r[0], r[1])] if r[1] is not None else [])

    return examples()  # pylint: disable=no-value-for-parameter

  def _read_beam_reports(self) -> None:
    """Skip records and decoded files of the Beam workers; removes the Beam work files."""
    folder = epath.Path(self.data_dir)
    for path in sorted(folder.glob(f"{BEAM_FILE_PREFIX}report_*.json")):
      for skips, decoded in json.loads(path.read_text()):
        for file, reason in skips:
          self._skip(file, reason)
        self.decoded_files.extend(decoded)
    for path in folder.glob(f"{BEAM_FILE_PREFIX}*"):
      path.unlink()

  def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
    self.skipped, self.decoded_files = [], []
    self._beam = download_config is not None and (
        download_config.beam_runner is not None or download_config.beam_options is not None)
    try:
      super()._download_and_prepare(dl_manager, download_config, **kwargs)
    finally:
      self._stop_pool()
    if self._beam:
      self._read_beam_reports()
    self.decoded_files = sorted(set(self.decoded_files))  # A file of two frames counts once.
    logging.info("%s: %d FITS files decoded (others from the build cache: %s); %d skip records.",
                 self.info.full_name, len(self.decoded_files), self._cache_dir() or "(off)",
                 len(self.skipped))
    write_manifest(self.data_dir, self.skipped, {k: self.settings[k] for k in DEFAULT_SETTINGS})


def example_of(item, image: np.ndarray) -> tuple[str, dict]:
  """(key, features) of one frame: the key is its time and channels, never a path."""
  time_unix_s, members, label = item
  key = dt.datetime.fromtimestamp(time_unix_s, dt.UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
  key += "_" + "_".join(str(h.wavelength) for h in members)
  return key, {
      "image": image,
      "flare_class": label.flare_class,
      "subclass": np.float32(label.subclass),
      "goes_flux_w_m2": np.float32(label.flux_w_m2),
      "forecast_class": label.forecast_class,
      "forecast_coverage": np.float32(label.forecast_coverage),
      "time_unix_s": np.float64(time_unix_s),
      "satellite": label.satellite,
      "scaling_policy": label.policy,
      "source_file": ",".join(os.path.basename(h.path) for h in members),
  }


def _item_to_json(item) -> str:
  time_unix_s, members, label = item
  return json.dumps({"time_unix_s": time_unix_s, "label": dataclasses.asdict(label),
                     "members": [[dataclasses.asdict(h) for h in copies] for copies in members]})


def _item_from_json(line: str):
  d = json.loads(line)
  members = [[fits_io.AiaHeader(**{**h, "shape": tuple(h["shape"])}) for h in copies]
             for copies in d["members"]]
  return d["time_unix_s"], members, goes.Label(**d["label"])


def _preprocess_line(line: str, settings: dict, resolution: int, cache_dir: str):
  """Beam: ((time, kept header per channel, label), image or None, skip records, decoded) of
  one work-list line."""
  time_unix_s, members, label = _item_from_json(line)
  image, skips, decoded, kept = frames.preprocess_frame(members, settings, resolution, cache_dir)
  return (time_unix_s, kept, label), image, [list(r) for r in skips], decoded


def _write_json(records, path: str) -> None:
  epath.Path(path).write_text(json.dumps(records))


def write_manifest(dataset_dir: str, skipped: list[dict], settings: dict) -> None:
  """skipped.json and build_settings.json in the dataset directory.

  skipped.json: [{"file": path relative to manual_dir (posix), "reason": why}], one row per file
  sorted by file (a file with several reasons has them joined by "; ", in sorted order).
  """
  reasons = collections.defaultdict(set)
  for row in skipped:
    reasons[row["file"]].add(row["reason"])
  rows = [{"file": file, "reason": "; ".join(sorted(reasons[file]))} for file in sorted(reasons)]
  with open(os.path.join(os.fspath(dataset_dir), SKIP_MANIFEST), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(os.fspath(dataset_dir), SETTINGS_FILE), "w") as f:
    json.dump({**settings, "fingerprint": settings_fingerprint(settings)}, f, indent=1, default=str)


def read_manifest(builder_or_dir) -> list[dict]:
  """The skip manifest of a built dataset: [{"file", "reason"}], file relative to manual_dir."""
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


def beam_options_from_string(options: str):
  """Beam PipelineOptions from "runner=DirectRunner,direct_num_workers=2" (the format of
  `tfds build --beam_pipeline_options`)."""
  from apache_beam.options.pipeline_options import PipelineOptions
  return PipelineOptions(flags=[f"--{o.strip()}" for o in options.split(",") if o.strip()])


def build(builder: Builder, manual_dir: str, *, beam_runner=None, beam_options=None,
          overwrite: bool = False) -> Builder:
  """download_and_prepare from manual_dir (no network); a no-op when already built, unless
  `overwrite` (a rebuild: files already in the build cache are not decoded again).

  On Apache Beam when `beam_runner` or `beam_options` (PipelineOptions or the string form) is
  given, or the builder's beam_pipeline_options setting is not empty; else one process or the pool.
  """
  if beam_runner is None and beam_options is None:
    beam_options = builder.settings.get("beam_pipeline_options") or None
  if isinstance(beam_options, str):
    beam_options = beam_options_from_string(beam_options)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False, download_mode=mode,
      beam_runner=beam_runner, beam_options=beam_options))
  return builder
