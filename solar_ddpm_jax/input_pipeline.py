"""Training and validation batches for the mesh: a stream read per JAX process, global
jax.Arrays batch-sharded over the mesh, prefetched onto the devices.

    dataset.prepared_builder -> loaders (tf.data or grain, this process's rows) -> shard_batch

Nothing here holds a split: memory is a few batches, tf.data's shuffle buffer and the split's label
columns (dataset.label_columns), whatever the archive's size. data.loader picks the reader:

- "tfdata" (default; TFRecord): tf.data in every process over its own even share of
  the split's examples (tfds.split_for_jax_process), the file order and a shuffle buffer of
  data.shuffle_buffer examples seeded by (seed, split, epoch, process), parallel decoding. Class
  weights (data.class_weights / class_balanced) thin each epoch by class in the same stream
  (loaders.keep_probabilities). The stream depends on the number of processes (each reads its
  share), not on the number of devices.
- "grain" (ArrayRecord): random access. Global batch k holds the examples of rows [k*B, (k+1)*B)
  of one permutation per epoch of the split in time order (class-weighted draws with replacement,
  class_balance.draw, with class weights), seeded by (seed, split, epoch); each process reads only
  its rows [p*B/P, (p+1)*B/P) of each global batch, with data.num_loader_workers processes. The
  stream depends on neither the process nor the device count, and is the one `local_batch` draws
  from a split held in memory.

Both are pure functions of (seed, step): an iterator started at `start_step` yields exactly what a
fresh one yields after `start_step` batches (tf.data re-reads at most one epoch's share to get
there; grain reads nothing it skips), so a checkpoint's step is the loader's position.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from solar_ddpm_jax import (
  class_balance,
  dataset,
  errors,
  labels_outside,
  loaders,
  sharding,
  tf_setup,
)

# Kept under their former names here, for callers that read the dataset through this module.
from solar_ddpm_jax.dataset import (  # noqa: F401
  _base_data_dir,
  _builder,
  _write_synthetic_archive,
  build_dataset,
  dataset_dirs,
  label_field,
  load_split_arrays,
)
from solar_ddpm_jax.loaders import batch_indices, epoch_order  # noqa: F401 (the order)

LOADERS = ("tfdata", "grain")


def loader_name(data_config) -> str:
  """data.loader, checked: "tfdata" or "grain"."""
  name = data_config.loader
  if name not in LOADERS:
    raise errors.SettingsError(f"data.loader={name!r}: allowed values are "
                               f"{', '.join(map(repr, LOADERS))}.")
  return name


def local_rows(batch_size: int) -> slice:
  """This process's rows of a global batch."""
  import jax
  n = sharding.per_process_batch_size(batch_size)
  return slice(jax.process_index() * n, (jax.process_index() + 1) * n)


def local_batch(arrays: dict, config, step: int, split: str = "train") -> dict:
  """This process's rows of global batch `step` of a split held in memory (`arrays`, in time
  order) as numpy: image [b,R,R,C], label int32 [b]. The "grain" loader's stream; for tests and
  the memory benchmark's whole-split reference."""
  batch_size = int(config.training.batch_size)
  labels = arrays[label_field(config)]
  weights = (class_balance.class_weights(config.data, int(config.model.num_classes))
             if split == "train" else None)
  idx = batch_indices(len(labels), batch_size, step, int(config.seed), split,
                      None if weights is None else labels, weights)[local_rows(batch_size)]
  return {"image": arrays["image"][idx].astype(np.float32), "label": labels[idx].astype(np.int32)}


def _prefetch(generator, size: int):
  """Runs `generator` in a background thread, `size` items ahead."""
  if size <= 0:
    yield from generator
    return
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def work():
    try:
      for item in generator:
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put(done)
    except BaseException as e:  # Surfaced in the consumer.
      items.put(e)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


class LabelRangeError(errors.UserError):
  """A split holds labels outside 0..model.num_classes-1 (not a ValueError: training stops)."""


def create_train_iterator(config, mesh, *, split: str = "train", start_step: int = 0):
  """Endless iterator of {"image": [B,R,R,C] float32, "label": [B] int32} global jax.Arrays,
  batch-sharded over the mesh; batch k depends only on (config.seed, split, k) and, with the
  "tfdata" loader, the number of processes. Class weights apply to the train split only."""
  tf_setup.hide_accelerators_from_tensorflow()
  loader = loader_name(config.data)
  builder = dataset.prepared_builder(config)
  field = label_field(config)
  files = dataset.label_columns(builder, split, time_order=False)  # ValueError: no such split.
  min_coverage = (float(config.data.forecast_min_coverage)
                  if field in dataset.FORECAST_LABELS else None)
  allowed = (np.ones(len(files[field]), bool) if min_coverage is None
             else files["forecast_coverage"] >= min_coverage)
  num_classes = int(config.model.num_classes)
  outside = labels_outside(files[field][allowed], num_classes)
  if outside:
    raise LabelRangeError(
        f"The {split} split of the dataset in {dataset_dirs(config)[0]} has "
        f"{field} labels {outside} outside 0..{num_classes - 1}; "
        f"model.num_classes={num_classes} must cover every class.")
  weights = class_balance.class_weights(config.data, num_classes) if split == "train" else None
  batch_size, seed = int(config.training.batch_size), int(config.seed)
  rows = local_rows(batch_size)
  if loader == "tfdata":
    if dataset.is_array_record(builder):
      raise errors.SettingsError(
          f"data.loader='tfdata' reads TFRecord files; the dataset in {builder.data_dir} is "
          "ArrayRecord (data.file_format='array_record'): use --config.data.loader=grain.")
    local = loaders.tfdata_batches(
        builder, split, label=field, batch_rows=rows.stop - rows.start, seed=seed,
        start_step=start_step, class_weights=weights, min_coverage=min_coverage,
        shuffle_buffer=int(config.data.shuffle_buffer), columns=files)
  else:
    if not dataset.is_array_record(builder):
      raise errors.SettingsError(
          f"data.loader='grain' reads ArrayRecord files; the dataset in {builder.data_dir} is "
          f"{builder.info.file_format.value}. Build one with --config.data.file_format="
          "array_record (another data.data_dir), or use --config.data.loader=tfdata.")
    order = dataset.time_order(builder, split)  # Positions in time order -> file indices.
    order = order[allowed[order]]
    indices = loaders.GlobalBatchIndices(
        order, batch_size=batch_size, seed=seed, split=split,
        labels=None if weights is None else files[field][order], class_weights=weights)
    local = loaders.grain_batches(
        loaders.ArrayRecordExamples(builder, split), files[field], label=field, indices=indices,
        rows=rows, start_step=start_step,
        num_workers=int(config.data.num_loader_workers))

  def batches():
    for batch in local:
      yield sharding.shard_batch(mesh, batch)

  return _prefetch(batches(), int(config.data.prefetch))
