"""The TFDS builder `aia_flares`: AIA FITS + GOES XRS (+ HEK events) -> sharded records.

    builder = make_builder(config.data, data_dir=...)   # settings from config.data
    build(builder, manual_dir=...)                       # download_and_prepare + skip manifest

manual_dir holds AIA level-1 FITS files (any sub-folders; *.fits, *.fits.gz, *.fts) and GOES XRS
files (go1[0-5]*.fits[.gz], *xrs*.nc). One BuilderConfig per resolution and channel set,
"res{R}_{w1}_{w2}..." (res64_171). Keys are the observation time and channels, never paths.
Files that cannot be used are listed with the reason in <dataset dir>/skipped.json, one row per
file, named by its path relative to manual_dir (`write_manifest`). manual_dir may be an fsspec URL
("s3://bucket/archive", "file:///data/archive"), read by the workers themselves.

With data.source="sdoml" the AIA frames come from an SDOML v2 zarr store instead
(data.sdoml_store, tfds_aia.sdoml) and manual_dir holds the GOES XRS files only. Both sources go
through tfds_aia.labelling (channel pairing, GOES labels, HEK selection, splits), so their labels
and skip reasons follow the same rules.

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

from tfds_aia import FLARE_CLASSES, cache, fits_io, frames, goes, hek, labelling, preprocess, sdoml

SKIP_MANIFEST = "skipped.json"
SETTINGS_FILE = "build_settings.json"
CACHE_DIR_NAME = "aia_flares_cache"  # Default cache folder, in the TFDS data dir.
BEAM_FILE_PREFIX = "aia_flares_beam_"  # Work lists and reports of a Beam build (removed after).
AIA_PATTERNS = ("*.fits", "*.fits.gz", "*.fts", "*.fit", "*.fts.gz")
GOES_PATTERNS = ("go[01][0-9]*.fits", "go[01][0-9]*.fits.gz", "*xrs*.nc", "g1[0-9]_xrs*.nc")

# Frames from an SDOML v2 store (data.source="sdoml", tfds_aia.sdoml): frame_source is "sdoml"
# there, "fits" otherwise; the frames of [sdoml_start, sdoml_end) (ISO UTC, "": the store's
# ends), one per sdoml_cadence_minutes of the first channel (0: every frame).
SDOML_SETTINGS = dict(frame_source="fits", sdoml_start="", sdoml_end="",
                      sdoml_cadence_minutes=0.0)
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
# The same for the SDOML settings, which builds from FITS files do not have (settings_from_config
# adds them for data.source="sdoml" only): a dataset built from FITS files keeps its fingerprint.
_AT_DEFAULT_LEFT_OUT = LATER_SETTINGS + tuple(SDOML_SETTINGS)
_ALL_DEFAULTS = {**DEFAULT_SETTINGS, **SDOML_SETTINGS}
# Settings that change how, not what, is built (left out of the fingerprint). The SDOML store is
# where the frames are read from, as manual_dir is for FITS files: a local copy of the public
# store builds the same dataset.
RUNTIME_SETTINGS = dict(num_workers=0, max_in_flight=4, cache_dir="", beam_pipeline_options="",
                        sdoml_store="")


def settings_fingerprint(settings: dict) -> str:
  """Short hash of the build settings (cache.settings_fingerprint), without LATER_SETTINGS and
  SDOML_SETTINGS that keep their defaults."""
  return cache.settings_fingerprint({
      k: v for k, v in settings.items()
      if not (k in _AT_DEFAULT_LEFT_OUT and _same_setting(v, _ALL_DEFAULTS[k]))})


def _same_setting(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(float(v) for v in np.ravel(value)) == tuple(float(v) for v in default)
  if isinstance(default, str):
    return str(value) == default
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
  """The builder settings of a config.data group (missing fields take the defaults; the
  SDOML_SETTINGS with data.source="sdoml" only)."""
  out = {}
  for key, default in DEFAULT_SETTINGS.items():
    value = data_config.get(key, default) if hasattr(data_config, "get") else default
    if key == "frame_px":  # Checked there, and a synthetic archive's own size.
      value = preprocess.frame_px(data_config)
    if key == "max_disc_median_dn_s":  # One float per channel, or one for all.
      value = tuple(float(v) for v in np.ravel(value))
    out[key] = tuple(value) if isinstance(default, tuple) else type(default)(value)
  if hasattr(data_config, "get") and data_config.get("source", "manual") == "sdoml":
    for key, default in SDOML_SETTINGS.items():
      out[key] = "sdoml" if key == "frame_source" else type(default)(data_config.get(key, default))
  return out


# An absolute path of two or more parts (not "DN/s": a slash after a letter does not start one).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")


def manifest_file(path: str, manual_dir: str) -> str:
  """A file's name in the skip manifest: its path relative to manual_dir, in posix form (the
  name alone for a file outside it); for a manual_dir URL, the part of the file's URL after it."""
  path = os.fspath(path)
  if sdoml.is_url(path) or sdoml.is_url(manual_dir):
    root = manual_dir.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else path.rsplit("/", 1)[-1]
  path = os.path.abspath(path)
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
  if sdoml.is_url(manual_dir):
    roots = {manual_dir.rstrip("/")}
  else:
    roots = {os.path.abspath(manual_dir), os.path.realpath(manual_dir)} if manual_dir else set()
  for root in sorted(roots, key=len, reverse=True):
    reason = reason.replace(root + ("/" if sdoml.is_url(root) else os.sep), "")
  return _ABSOLUTE_PATH.sub(r"\1", reason)


def _walk_files(folder: str):
  """Every file under a folder, or under an fsspec URL ("s3://bucket/aia", "file:///data")."""
  if not sdoml.is_url(folder):
    for root, _, names in os.walk(folder):
      yield from (os.path.join(root, name) for name in names)
    return
  import fsspec
  fs, root = fsspec.core.url_to_fs(folder, **sdoml.storage_options(folder))
  protocol = folder.split("://", 1)[0]
  for path in fs.find(root):
    yield f"{protocol}://{path.lstrip('/')}" if protocol != "file" else f"file://{path}"


def find_files(manual_dir: str) -> tuple[list[str], list[str]]:
  """(AIA FITS paths, GOES XRS paths) under manual_dir (a folder or an fsspec URL), sorted."""
  aia, goes_files = [], []
  for path in _walk_files(manual_dir):
    lower = path.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1].lower()
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
    self.settings = {**_ALL_DEFAULTS, **RUNTIME_SETTINGS, **(settings or {}),
                     **(runtime or {})}
    self.skipped: list[dict] = []
    self._manual_dir = ""  # manual_dir of the running build (skip rows are relative to it).
    self._manual_url = ""  # manual_dir when it is an fsspec URL (TFDS takes local paths only).
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
    """A skip manifest row: a file by its path relative to manual_dir; an SDOML frame or array by
    its name in the store ("2011/171A/37")."""
    sdoml_frame = (self.settings["frame_source"] == "sdoml"
                   and sdoml.FRAME_NAME.fullmatch(str(path)) is not None)
    self.skipped.append({
        "file": str(path) if sdoml_frame else manifest_file(str(path), self._manual_dir),
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

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_url or os.fspath(dl_manager.manual_dir)
    self._manual_dir = manual_dir
    limits = np.ravel(self.settings["max_disc_median_dn_s"])
    if len(limits) not in (1, len(self.builder_config.channels)):
      raise ValueError(f"data.max_disc_median_dn_s has {len(limits)} values for the channels "
                       f"{self.builder_config.channels}: give one for all, or one per channel.")
    sdoml_build = self.settings["frame_source"] == "sdoml"
    if sdoml_build:
      self._check_sdoml_settings()
    elif self.settings["degradation_table"]:  # Unreadable: stop before reading any frame.
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
    kinds = (("GOES XRS", goes_paths),) if sdoml_build else (
        ("AIA FITS", aia_paths), ("GOES XRS", goes_paths))
    for kind, found in kinds:
      if not found:
        raise FileNotFoundError(f"No {kind} files under {manual_dir}."
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    s = self.settings
    xrs, goes_skips = labelling.goes_series(goes_paths, s, where=manual_dir)
    for path, reason in goes_skips:
      self._skip(path, reason)
    events = hek.load_events(s["hek_events"]) if s["hek_events"] else None
    if sdoml_build:
      headers = self._sdoml_frames()
    else:
      # Locally the pool preprocesses the frames too; on Beam it reads headers only (~ms each).
      self._start_pool(len(aia_paths), min_files_per_worker=500 if self._beam else 4)
      headers = self._frames(aia_paths)
    groups, skips = labelling.group_channels(headers, self.builder_config.channels,
                                             s["channel_match_s"])
    items, label_skips = labelling.label_groups(groups, xrs, events, s)
    by_split, split_skips = labelling.split_items(items, s)
    for members, reason in skips + label_skips + split_skips:
      self._skip_copies(members, reason)
    # TFDS cannot write an empty split: splits without frames are left out (and logged).
    empty = [split for split, members in by_split.items() if not members]
    if empty:
      logging.warning("No frames for split(s) %s: they are left out.", empty)
    if self._beam:
      self._stop_pool()  # Beam's workers preprocess the frames.
    return {split: self._generate_examples(members, split) for split, members in by_split.items()
            if members}

  def _check_sdoml_settings(self) -> None:
    """Settings an SDOML build cannot honour stop it before any read."""
    s = self.settings
    if not s["sdoml_store"]:
      raise ValueError("data.source='sdoml' needs data.sdoml_store: the root of an SDOML v2 zarr "
                       "store (a folder, or a URL such as s3://gov-nasa-hdrl-data1/contrib/"
                       "fdl-sdoml/fdl-sdoml-v2/sdomlv2.zarr).")
    if s["degradation_table"]:
      raise ValueError(f"data.degradation_table={s['degradation_table']}: SDOML frames are "
                       "already corrected for degradation (their DEG_COR attribute); leave "
                       "data.degradation_table empty with data.source='sdoml'.")
    if s["register"]:
      raise ValueError("data.register=True: SDOML frames are already rescaled to a fixed solar "
                       "radius and centred; set data.register=False with data.source='sdoml'.")
    if self._beam:
      raise ValueError("data.source='sdoml' builds run in one process or the process pool, not on "
                       "Apache Beam: leave data.beam_pipeline_options empty.")

  def _sdoml_frames(self) -> list[fits_io.AiaHeader]:
    """The store's frames of the configured channels and time range, at data.sdoml_cadence_minutes
    (first channel), that pass the header checks (others go to the skip manifest)."""
    s, cfg = self.settings, self.builder_config
    headers, skips, _ = sdoml.read_index(s["sdoml_store"], cfg.channels, s["sdoml_start"],
                                         s["sdoml_end"])
    for path, reason in skips:
      self._skip(path, reason)
    shapes = sorted({h.shape for h in headers})
    if shapes and all(shape[0] != int(s["frame_px"]) for shape in shapes):
      raise ValueError(f"data.sdoml_store={s['sdoml_store']} holds frames of {shapes[0][0]}x"
                       f"{shapes[0][1]} px, data.frame_px={s['frame_px']}: set "
                       f"--config.data.frame_px={shapes[0][0]} (the clip ceiling and the inverse "
                       "to DN/s depend on it).")
    headers = sdoml.select_cadence(headers, cfg.channels[0], s["sdoml_cadence_minutes"],
                                   s["sdoml_start"])
    kept = []
    for header in headers:
      try:
        fits_io.check(header, channels=cfg.channels, resolution=cfg.resolution,
                      downsample=s["downsample"], frame_px=int(s["frame_px"]),
                      allowed_quality=int(s["allowed_quality"]))
      except fits_io.BadFileError as e:
        self._skip(e.path, e.reason)
        continue
      kept.append(header)
    return kept

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
    in_flight = max(int(self.settings["max_in_flight"]), 1)
    if self.settings["frame_source"] == "sdoml":  # A batch of frames per call (chunked reads).
      batches = [[members for _, members, _ in items[i:i + sdoml.BATCH_FRAMES]]
                 for i in range(0, len(items), sdoml.BATCH_FRAMES)]
      self._start_pool(len(batches), min_files_per_worker=2)
      args = (self.settings["sdoml_store"], self.settings, self.builder_config.resolution)
      results = (r for batch in self._in_order(sdoml.preprocess_batch, batches, args, in_flight)
                 for r in batch)
    else:
      args = (self.settings, self.builder_config.resolution, self._cache_dir())
      results = self._in_order(frames.preprocess_frame, [members for _, members, _ in items],
                               args, in_flight=in_flight)
    for (t, _, label), (image, skips, decoded, kept) in zip(items, results, strict=True):
      self.decoded_files.extend(decoded)
      for path, reason in skips:
        self._skip(path, reason)
      if image is not None:
        yield example_of((t, kept, label), image,
                         frame_names=self.settings["frame_source"] == "sdoml")

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
    if self.settings["frame_source"] == "sdoml":
      logging.info("%s: frames read from the SDOML store %s; %d skip records.",
                   self.info.full_name, self.settings["sdoml_store"], len(self.skipped))
    else:
      logging.info("%s: %d FITS files decoded (others from the build cache: %s); %d skip "
                   "records.", self.info.full_name, len(self.decoded_files),
                   self._cache_dir() or "(off)", len(self.skipped))
    keys = _ALL_DEFAULTS if self.settings["frame_source"] == "sdoml" else DEFAULT_SETTINGS
    write_manifest(self.data_dir, self.skipped, {k: self.settings[k] for k in keys})


def example_of(item, image: np.ndarray, frame_names: bool = False) -> tuple[str, dict]:
  """(key, features) of one frame: the key is its time and channels, never a path. source_file
  names the files (their names), or with `frame_names` the SDOML frames ("2011/171A/37")."""
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
      "source_file": ",".join(h.path if frame_names else os.path.basename(h.path)
                              for h in members),
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
  manual_dir = os.fspath(manual_dir)
  builder._manual_url = manual_dir if sdoml.is_url(manual_dir) else ""  # noqa: SLF001
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=None if builder._manual_url else manual_dir,  # noqa: SLF001
      try_download_gcs=False, download_mode=mode,
      beam_runner=beam_runner, beam_options=beam_options))
  return builder
