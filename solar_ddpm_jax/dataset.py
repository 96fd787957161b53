"""The built `aia_flares` dataset: where it lives, building it once per job, and reading a split's
label columns (or, for evaluation, a bounded sample of its images) without the training stream.

    config -> dataset_dirs -> build_dataset (a prepared TFDS builder)
           -> label_columns (no images) / load_split_arrays (at most data.max_real_examples)

Training streams its batches through input_pipeline (loaders.py); nothing here holds more than a
split's label columns and, for evaluation, at most data.max_real_examples images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from absl import logging

from solar_ddpm_jax import errors, loaders, tf_setup

ARRAY_FIELDS = ("image", "flare_class", "forecast_class", "forecast_coverage", "subclass",
                "goes_flux_w_m2", "time_unix_s")
FORECAST_LABELS = ("forecast_class", "forecast_binary")  # Labels of the forecast window's peak.


def _base_data_dir(config) -> str:
  return os.path.expanduser(config.data.data_dir or os.environ.get("TFDS_DATA_DIR")
                            or "~/tensorflow_datasets")


def _synthetic_fingerprint(data_config) -> str:
  s = data_config.synthetic
  spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
  spec["channels"] = [int(c) for c in data_config.channels]
  from tfds_aia import synthetic_sun
  spec["generator_version"] = synthetic_sun.GENERATOR_VERSION
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def dataset_dirs(config) -> tuple[str, str]:
  """(TFDS data_dir, manual_dir) of config.data; manual_dir is "" when a manual source has none.

  Synthetic archives live in <data_dir>/aia_flares_synthetic/<fingerprint of the synthetic
  settings>/archive, their datasets next to them under tfds_<fingerprint of the build settings>,
  so differently configured archives and builds never collide.
  """
  from tfds_aia import builder as aia_builder
  base = _base_data_dir(config)
  if config.data.source == "synthetic":
    root = os.path.join(base, "aia_flares_synthetic", _synthetic_fingerprint(config.data))
    settings = aia_builder.settings_fingerprint(aia_builder.settings_from_config(config.data))
    return os.path.join(root, f"tfds_{settings}"), os.path.join(root, "archive")
  if config.data.source not in ("manual", "sdoml"):
    raise ValueError(f"Unknown data.source {config.data.source!r}; use 'manual', 'sdoml' or "
                     "'synthetic'.")
  # Reading a built dataset needs only data_dir; manual_dir is checked when a build needs it.
  # (With data.source="sdoml" it holds the GOES XRS files; a folder or an fsspec URL.)
  manual_dir = config.data.manual_dir
  if manual_dir and "://" not in manual_dir:
    manual_dir = os.path.expanduser(manual_dir)
  return base, manual_dir or ""


def _write_synthetic_archive(config, archive_dir: str) -> None:
  """Writes the archive into a temporary folder and renames it (safe against parallel builds)."""
  from tfds_aia import synthetic
  if os.path.exists(os.path.join(archive_dir, "SYNTHETIC_ARCHIVE.txt")):
    return
  parent = os.path.dirname(archive_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="archive.incomplete.", dir=parent)
  logging.info("Writing the synthetic AIA archive (%d frames) to %s",
               config.data.synthetic.num_images, archive_dir)
  synthetic.write_from_config(config.data, tmp)
  try:
    os.rename(tmp, archive_dir)
  except OSError:  # Written meanwhile by another process.
    shutil.rmtree(tmp, ignore_errors=True)


def _builder(config):
  from tfds_aia import builder as aia_builder
  data_dir, _ = dataset_dirs(config)
  return aia_builder.make_builder(config.data, data_dir=data_dir)


def _check_settings(builder, config) -> None:
  """A dataset built with other preprocessing settings must not be read as this one."""
  from tfds_aia import builder as aia_builder
  path = os.path.join(os.fspath(builder.data_dir), aia_builder.SETTINGS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    built = json.load(f).get("fingerprint")
  wanted = aia_builder.settings_fingerprint(aia_builder.settings_from_config(config.data))
  if built != wanted:
    raise errors.SettingsError(
        f"The dataset in {builder.data_dir} was built with other data settings (fingerprint "
        f"{built}, config {wanted}); set data.data_dir to another folder or delete that one to "
        "rebuild.")


def _build_here(config, builder, manual_dir: str, data_dir: str):
  """Builds the dataset of `builder` from `manual_dir` in this process; returns the builder."""
  from tfds_aia import builder as aia_builder
  if config.data.source == "synthetic":
    _write_synthetic_archive(config, manual_dir)
  elif "://" not in manual_dir and (not os.path.isdir(manual_dir) or not os.listdir(manual_dir)):
    raise errors.SettingsError(
        f"data.manual_dir={manual_dir} does not exist or is empty, and there is no dataset in "
        f"data.data_dir={data_dir}: give a folder of AIA FITS and GOES XRS files "
        "(python -m tfds_aia.fetch writes one).")
  try:
    aia_builder.build(builder, manual_dir)
  except OSError:
    builder = _builder(config)  # Another process finished the same build first.
    if not builder.is_prepared():
      raise
  skipped = aia_builder.read_manifest(builder)
  logging.info("Built %s in %s: %s; %d files skipped (%s)", builder.info.full_name, data_dir,
               {k: v.num_examples for k, v in builder.info.splits.items()}, len(skipped),
               os.path.join(os.fspath(builder.data_dir), aia_builder.SKIP_MANIFEST))
  return builder


def _on_every_process(step: str, here: bool, fn, default):
  """Runs fn() on the processes where `here` is true (default elsewhere), then tells every
  process of the job whether it failed anywhere: the failing process raises its own error and
  every other one an error naming it, so that none is left waiting in a later collective for a
  process that has stopped. Collective: every process calls it, in the same order.
  """
  import jax
  from jax.experimental import multihost_utils
  error, result = None, default
  if here:
    try:
      result = fn()
    except Exception as e:  # Raised below, once the others know.
      error = e
  ok = np.asarray(multihost_utils.process_allgather(np.int32(error is None))).reshape(-1)
  if error is not None:
    raise error
  failed = [i for i, flag in enumerate(ok) if not flag]
  if failed:
    raise RuntimeError(
        f"Process {jax.process_index()}: {step} failed on process {', '.join(map(str, failed))} "
        "(its log has the error); this process stops too.")
  return result


def build_dataset(config, workdir: str | None = None):
  """Builds the dataset of config.data when it is absent (writing the synthetic archive first
  for data.source == "synthetic"); returns the prepared TFDS builder. `workdir` is unused: the
  data live where config.data says, shared by every run.

  In a multi-host job process 0 builds and the others wait for it. A process that still finds no
  dataset afterwards has a data_dir of its own (the default ~/tensorflow_datasets is on each
  host's local disk): it builds its own copy from the same inputs, which gives the same records.
  """
  del workdir
  tf_setup.hide_accelerators_from_tensorflow()
  import jax
  data_dir, manual_dir = dataset_dirs(config)
  builder = _builder(config)
  if not manual_dir:  # Nothing to build from: each process reads its data_dir or stops.
    def find():
      if not builder.is_prepared():
        raise errors.SettingsError(
            f"No {builder.info.full_name} dataset in data.data_dir={data_dir}, and data.source="
            "'manual' needs data.manual_dir to build it: a folder of AIA FITS and GOES XRS files "
            "(python -m tfds_aia.fetch writes one). Pass --config.data.manual_dir=FOLDER, or "
            "point data.data_dir at the built dataset, or use data.source='synthetic'.")
    if jax.process_count() == 1:
      find()
    else:  # A host without the dataset stops every host (the others would wait for it).
      _on_every_process("finding the dataset", True, find, None)
  elif jax.process_count() == 1:
    if not builder.is_prepared():
      builder = _build_here(config, builder, manual_dir, data_dir)
  else:  # Process 0 builds; every process learns its outcome before any goes on.
    builder = _on_every_process(
        "building the dataset",
        jax.process_index() == 0 and not builder.is_prepared(),
        lambda: _build_here(config, builder, manual_dir, data_dir), builder)
    builder = _builder(config)
    local = not builder.is_prepared()
    if local:
      logging.warning("Process %d does not see the dataset process 0 built (data.data_dir=%s is "
                      "not shared between hosts); building a local copy.", jax.process_index(),
                      data_dir)

    def build_local_copy():
      try:
        return _build_here(config, builder, manual_dir, data_dir)
      except Exception as e:
        raise RuntimeError(
            f"Process {jax.process_index()}: the dataset is not in data.data_dir={data_dir} on "
            f"this host, and building it here from {manual_dir} failed ({type(e).__name__}: {e})."
            " Put data.data_dir on storage every host reads (a gs:// bucket, NFS), or the raw "
            "files in the same data.manual_dir on every host.") from e

    builder = _on_every_process("building a host's local copy of the dataset", local,
                                build_local_copy, builder)
  if jax.process_count() > 1:
    # A host whose data_dir holds a dataset of other settings stops all (its error says which).
    _on_every_process("checking the dataset's data settings", True,
                      lambda: _check_settings(builder, config), None)
  else:
    _check_settings(builder, config)
  return builder


def prepared_builder(config):
  """The TFDS builder of config.data, its dataset built (or found) and its settings checked."""
  import jax
  builder = _builder(config)
  # build_dataset's barriers are collective: in a multi-host job every process passes them, also
  # one that reaches this point after process 0 has finished the build and so finds the dataset.
  if jax.process_count() > 1 or not builder.is_prepared():
    return build_dataset(config)  # Which checks the settings.
  _check_settings(builder, config)
  return builder


_prepared_builder = prepared_builder


def check_split(builder, split: str) -> None:
  """ValueError naming the dataset's splits when it has no `split` (no frames in its range)."""
  if split not in builder.info.splits:
    raise ValueError(f"The dataset in {builder.data_dir} has no {split!r} split (no frames in "
                     f"its time range); it has {list(builder.info.splits)}.")


_COLUMNS_CACHE: dict = {}


def label_columns(builder, split: str, *, time_order: bool = True) -> dict:
  """Every column but the image of `split` ([N] arrays: loaders.LABEL_COLUMNS), read once per
  process and kept (about 40 bytes an example: 18 MB for 440,000 frames). In time order, or with
  time_order=False in the order of the split's files (the order of tfds's reads and of the
  examples' indices in a random-access source). Read-only."""
  check_split(builder, split)
  key = (os.fspath(builder.data_dir), split)
  if key not in _COLUMNS_CACHE:
    if is_array_record(builder):  # tfds reads ArrayRecord by random access only.
      cols = loaders.source_label_columns(loaders.ArrayRecordExamples(builder, split))
    else:
      cols = loaders.label_columns(builder, split, time_order=False)
    order = np.argsort(cols["time_unix_s"], kind="stable")
    for v in cols.values():
      v.flags.writeable = False
    if len(_COLUMNS_CACHE) > 16:
      _COLUMNS_CACHE.clear()
    _COLUMNS_CACHE[key] = (cols, order)
  cols, order = _COLUMNS_CACHE[key]
  if not time_order:
    return dict(cols)
  out = {k: v[order] for k, v in cols.items()}
  for v in out.values():
    v.flags.writeable = False
  return out


def is_array_record(builder) -> bool:
  """Whether the dataset is written as ArrayRecord (random access) rather than TFRecord."""
  return builder.info.file_format.value == "array_record"


def time_order(builder, split: str) -> np.ndarray:
  """The split's file-order example indices sorted by time ([N] int): position i of the time
  order is example time_order[i] of the files (and of a random-access source)."""
  label_columns(builder, split, time_order=False)
  return _COLUMNS_CACHE[(os.fspath(builder.data_dir), split)][1]


def max_real_examples(data_config) -> int:
  """data.max_real_examples: the most examples of a split that load_split_arrays holds (0: all)."""
  return int(data_config.max_real_examples or 0)


_ARRAYS_CACHE: dict = {}


def load_split_arrays(config, split: str, label: str | None = None) -> dict:
  """A split as numpy arrays, for evaluation and the classifier: image [N,R,R,C] float32 in
  [-1,1], flare_class [N], forecast_class [N], forecast_coverage [N], subclass [N],
  goes_flux_w_m2 [N], time_unix_s [N] (in time order).

  At most data.max_real_examples examples (0: the whole split): a larger split gives that many,
  spread evenly over its time range (loaders.evenly_in_time), read in one streaming pass; so the
  memory held is bounded by the setting, not by the archive (split_sample_size says how many of how
  many). Training never reads this: it streams (input_pipeline).

  With a forecast `label` (forecast_class, forecast_binary) only the rows whose forecast window
  GOES data cover (forecast_rows). The arrays are read-only and shared by every caller in the
  process (one copy of the split in memory, however often it is asked for); copy one before
  changing it.
  """
  tf_setup.hide_accelerators_from_tensorflow()
  builder = prepared_builder(config)
  check_split(builder, split)
  cap = max_real_examples(config.data)
  key = (os.fspath(builder.data_dir), split, cap)
  if key not in _ARRAYS_CACHE:
    num = builder.info.splits[split].num_examples
    if cap and num > cap:
      arrays = _read_sample(builder, split, cap)
      logging.info("Read %d of the %d %s examples, evenly in time (data.max_real_examples=%d).",
                   len(arrays["time_unix_s"]), num, split, cap)
    else:
      arrays = _read_whole(builder, split)
    arrays["flare_class"] = arrays["flare_class"].astype(np.int32)
    arrays["forecast_class"] = arrays["forecast_class"].astype(np.int32)
    for v in arrays.values():
      v.flags.writeable = False
    if len(_ARRAYS_CACHE) > 8:
      _ARRAYS_CACHE.clear()
    _ARRAYS_CACHE[key] = arrays
  if label not in FORECAST_LABELS:
    return dict(_ARRAYS_CACHE[key])
  need = _forecast_min_coverage(config.data)
  if key + (need,) not in _ARRAYS_CACHE:  # One copy of the covered rows too.
    _ARRAYS_CACHE[key + (need,)] = forecast_rows(_ARRAYS_CACHE[key], config.data, split)
  return dict(_ARRAYS_CACHE[key + (need,)])


def split_sample_size(config, split: str) -> dict:
  """{"examples": the split's size, "read": how many load_split_arrays holds, "max_real_examples":
  the cap}: recorded next to every metric computed on a capped sample."""
  builder = prepared_builder(config)
  check_split(builder, split)
  num, cap = int(builder.info.splits[split].num_examples), max_real_examples(config.data)
  read = num if not cap or num <= cap else len(loaders.evenly_in_time(np.zeros(num), cap))
  return {"examples": num, "read": read, "max_real_examples": cap}


def _read_whole(builder, split: str) -> dict:
  """Every example of `split`, in time order."""
  import tensorflow_datasets as tfds
  if is_array_record(builder):  # Random-access files.
    examples = list(builder.as_data_source(split=split))
    arrays = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in ARRAY_FIELDS}
  else:
    ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
    arrays = tfds.as_numpy(ds)
    arrays = {k: np.asarray(arrays[k]) for k in ARRAY_FIELDS}
  order = np.argsort(arrays["time_unix_s"], kind="stable")
  return {k: v[order] for k, v in arrays.items()}


def _read_sample(builder, split: str, cap: int) -> dict:
  """`cap` examples of `split` evenly in time: label columns first, then only the chosen images."""
  cols = label_columns(builder, split)
  pick = loaders.evenly_in_time(cols["time_unix_s"], cap)
  arrays = {k: np.array(cols[k][pick]) for k in ARRAY_FIELDS if k != "image"}
  if not is_array_record(builder):
    arrays["image"] = loaders.read_examples(builder, split, arrays["time_unix_s"])["image"]
    return arrays
  source, index = loaders.ArrayRecordExamples(builder, split), time_order(builder, split)[pick]
  arrays["image"] = np.stack([np.asarray(e["image"], np.float32) for start in
                              range(0, len(index), 256) for e in
                              source.__getitems__(index[start:start + 256].tolist())])
  return arrays


_COVERAGE_LOGGED: set = set()


def _forecast_min_coverage(data_config) -> float:
  return float(data_config.forecast_min_coverage)


def forecast_rows(arrays: dict, data_config, split: str = "") -> dict:
  """The rows whose forecast window has GOES data in at least data.forecast_min_coverage of its
  10-minute intervals: elsewhere (the last day of the archive, GOES gaps) the window's peak can
  miss a flare, so the forecast label is a lower bound, not a label. The other labels keep every
  row."""
  need = _forecast_min_coverage(data_config)
  keep = np.asarray(arrays["forecast_coverage"]) >= need
  if keep.all():
    return arrays
  if (split, need, len(keep)) not in _COVERAGE_LOGGED:
    _COVERAGE_LOGGED.add((split, need, len(keep)))
    logging.warning("Forecast labels: %d of %d %s frames left out, their %g h window has GOES "
                    "data in fewer than %g of its 10-minute intervals "
                    "(data.forecast_min_coverage).",
                    int((~keep).sum()), len(keep), split or "",
                    float(data_config.forecast_window_hours), need)
  out = {k: v[keep] for k, v in arrays.items()}
  for v in out.values():
    v.flags.writeable = False
  return out


def label_field(config) -> str:
  """The conditioning label of config.data: "flare_class" or "forecast_class"."""
  field = config.data.label
  if field not in ("flare_class", "forecast_class"):
    raise ValueError(f"data.label must be 'flare_class' or 'forecast_class', not {field!r}.")
  if field == "forecast_class":
    warn_forecast_leakage(config.data)
  return field


_LEAKAGE_WARNED: set = set()


def warn_forecast_leakage(data_config) -> bool:
  """Warns (once) when forecast labels can see across a split boundary; True if they can.

  A frame's forecast class is the peak of the next data.forecast_window_hours: with a split gap
  shorter than that, a training frame's label can come from a flare of the validation period.
  """
  gap = float(data_config.split_gap_hours)
  window = float(data_config.forecast_window_hours)
  if gap >= window:
    return False
  if (gap, window) not in _LEAKAGE_WARNED:
    _LEAKAGE_WARNED.add((gap, window))
    logging.warning(
        "Forecast labels with data.split_gap_hours=%g < data.forecast_window_hours=%g: the "
        "labels of frames just before a split boundary look at flares after it, so one flare can "
        "label frames of two splits. Set --config.data.split_gap_hours=%g (a new dataset build) "
        "for scores without that leakage.", gap, window, window)
  return True

