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
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from tfds_aia import cache, fits_io, frames, hek, labelling, preprocess, sdoml
from tfds_aia.beam_build import (
    BEAM_FILE_PREFIX,
    beam_examples,
    beam_options_from_string,
    read_beam_reports,
)
from tfds_aia.build_settings import (
    ALL_DEFAULTS,
    DEFAULT_SETTINGS,
    LATER_SETTINGS,
    RUNTIME_SETTINGS,
    SDOML_SETTINGS,
    settings_fingerprint,
    settings_from_config,
)
from tfds_aia.example import example_of, features
from tfds_aia.manifest import (
    SETTINGS_FILE,
    SKIP_MANIFEST,
    manifest_file,
    manifest_reason,
    read_manifest,
    write_manifest,
)
from tfds_aia.manual_files import AIA_PATTERNS, GOES_PATTERNS, find_files

# Where callers import the build's pieces from (tfds_aia.builder is the package's entry point).
__all__ = [
    "AIA_PATTERNS", "BEAM_FILE_PREFIX", "CACHE_DIR_NAME", "DEFAULT_SETTINGS", "GOES_PATTERNS",
    "LATER_SETTINGS", "RUNTIME_SETTINGS", "SDOML_SETTINGS", "SETTINGS_FILE", "SKIP_MANIFEST",
    "AiaFlaresConfig", "Builder", "beam_options_from_string", "build", "config_name",
    "example_of", "find_files", "make_builder", "manifest_file", "manifest_reason",
    "read_manifest", "settings_fingerprint", "settings_from_config", "write_manifest"]

CACHE_DIR_NAME = "aia_flares_cache"  # Default cache folder, in the TFDS data dir.

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
    self.settings = {**ALL_DEFAULTS, **RUNTIME_SETTINGS, **(settings or {}),
                     **(runtime or {})}
    self.skipped: list[dict] = []
    self._manual_dir = ""  # manual_dir of the running build (skip rows are relative to it).
    self._manual_url = ""  # manual_dir when it is an fsspec URL (TFDS takes local paths only).
    self.decoded_files: list[str] = []  # FITS files decoded by the last build (not from the cache).
    self._pool = None  # The build's process pool, while one runs.
    self._beam = False  # Whether this build runs on Apache Beam.
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=features(cfg.resolution, len(cfg.channels)),
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
    """Settings checked, input files found, frames read and labelled (tfds_aia.labelling), then
    one example generator per split."""
    manual_dir = self._manual_url or os.fspath(dl_manager.manual_dir)
    self._manual_dir = manual_dir
    self._check_settings()
    aia_paths, goes_paths = self._input_files(manual_dir)
    s = self.settings
    xrs, goes_skips = labelling.goes_series(goes_paths, s, where=manual_dir)
    for path, reason in goes_skips:
      self._skip(path, reason)
    events = hek.load_events(s["hek_events"]) if s["hek_events"] else None
    if s["frame_source"] == "sdoml":
      headers = self._sdoml_frames()
    else:
      # Locally the pool preprocesses the frames too; on Beam it reads headers only (~ms each).
      self._start_pool(len(aia_paths), min_files_per_worker=500 if self._beam else 4)
      headers = self._frames(aia_paths)
    by_split = self._labelled_splits(headers, xrs, events)
    if self._beam:
      self._stop_pool()  # Beam's workers preprocess the frames.
    return {split: self._generate_examples(members, split) for split, members in by_split.items()
            if members}

  def _check_settings(self) -> None:
    """Settings that cannot build this dataset stop the build before any frame is read."""
    limits = np.ravel(self.settings["max_disc_median_dn_s"])
    if len(limits) not in (1, len(self.builder_config.channels)):
      raise ValueError(f"data.max_disc_median_dn_s has {len(limits)} values for the channels "
                       f"{self.builder_config.channels}: give one for all, or one per channel.")
    if self.settings["frame_source"] == "sdoml":
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

  def _input_files(self, manual_dir: str) -> tuple[list[str], list[str]]:
    """(AIA FITS, GOES XRS) files under manual_dir; a build without the ones it needs stops."""
    aia_paths, goes_paths = find_files(manual_dir)
    kinds = (("GOES XRS", goes_paths),) if self.settings["frame_source"] == "sdoml" else (
        ("AIA FITS", aia_paths), ("GOES XRS", goes_paths))
    for kind, found in kinds:
      if not found:
        raise FileNotFoundError(f"No {kind} files under {manual_dir}."
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return aia_paths, goes_paths

  def _labelled_splits(self, headers, xrs, events) -> dict:
    """{split: labelled frames}: channels paired, GOES (and HEK) labels, time splits; the frames
    left out go to the skip manifest, splits without frames are left out (TFDS cannot write
    an empty split)."""
    s = self.settings
    groups, skips = labelling.group_channels(headers, self.builder_config.channels,
                                             s["channel_match_s"])
    items, label_skips = labelling.label_groups(groups, xrs, events, s)
    by_split, split_skips = labelling.split_items(items, s)
    for members, reason in skips + label_skips + split_skips:
      self._skip_copies(members, reason)
    empty = [split for split, members in by_split.items() if not members]
    if empty:
      logging.warning("No frames for split(s) %s: they are left out.", empty)
    return by_split

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
      return beam_examples(self.data_dir, items, split, self.settings,
                           self.builder_config.resolution, self._cache_dir())
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

  def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
    self.skipped, self.decoded_files = [], []
    self._beam = download_config is not None and (
        download_config.beam_runner is not None or download_config.beam_options is not None)
    try:
      super()._download_and_prepare(dl_manager, download_config, **kwargs)
    finally:
      self._stop_pool()
    if self._beam:
      skips, decoded = read_beam_reports(self.data_dir)
      for file, reason in skips:
        self._skip(file, reason)
      self.decoded_files.extend(decoded)
    self.decoded_files = sorted(set(self.decoded_files))  # A file of two frames counts once.
    if self.settings["frame_source"] == "sdoml":
      logging.info("%s: frames read from the SDOML store %s; %d skip records.",
                   self.info.full_name, self.settings["sdoml_store"], len(self.skipped))
    else:
      logging.info("%s: %d FITS files decoded (others from the build cache: %s); %d skip "
                   "records.", self.info.full_name, len(self.decoded_files),
                   self._cache_dir() or "(off)", len(self.skipped))
    keys = ALL_DEFAULTS if self.settings["frame_source"] == "sdoml" else DEFAULT_SETTINGS
    write_manifest(self.data_dir, self.skipped, {k: self.settings[k] for k in keys})


def make_builder(data_config, data_dir: str | None = None, file_format: str | None = None
                 ) -> Builder:
  """The builder for config.data: its resolution, channels and preprocessing settings."""
  resolution, channels = int(data_config.resolution), tuple(int(c) for c in data_config.channels)
  name = config_name(resolution, channels)
  known = {c.name: c for c in Builder.BUILDER_CONFIGS}
  config = known.get(name) or _config(resolution, channels)
  file_format = file_format or data_config.file_format
  return Builder(config=config, data_dir=data_dir or data_config.data_dir or None,
                 settings=settings_from_config(data_config), file_format=file_format,
                 runtime={k: type(v)(data_config[k]) for k, v in RUNTIME_SETTINGS.items()})


def build(builder: Builder, manual_dir: str, *, beam_runner=None, beam_options=None,
          overwrite: bool = False) -> Builder:
  """download_and_prepare from manual_dir (no network); a no-op when already built, unless
  `overwrite` (a rebuild: files already in the build cache are not decoded again).

  On Apache Beam when `beam_runner` or `beam_options` (PipelineOptions or the string form) is
  given, or the builder's beam_pipeline_options setting is not empty; else one process or the pool.
  """
  if beam_runner is None and beam_options is None:
    beam_options = builder.settings["beam_pipeline_options"] or None
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
