"""Streaming readers of a built dataset: label columns without images, and training batches in
bounded memory.

A split of 10 years of AIA 171 at one frame per 12 minutes is about 440,000 frames (115 GB at 256 px
in float32), so nothing here holds more than a batch and a shuffle buffer of images. Two loaders
(data.loader):

- "tfdata" (TFRecord, the default format): tf.data in every JAX process, as in
  flax's and big_vision's input pipelines. The process reads its own even share of the split
  (tfds.split_for_jax_process), with the file order and a shuffle buffer seeded anew each epoch from
  (seed, epoch), parallel reads and decoding, and prefetching. Its position is the number of
  examples it has consumed (step x its batch rows): a restart recomputes the epoch and skips the
  offset into it, reading at most one epoch's share again. The order depends on the number of
  processes (each reads its share), not on the number of devices.
- "grain" (ArrayRecord): random access through grain over builder.as_data_source. Global batch k
  holds the examples that the caller's `indices(k)` gives (drawn from (seed, split, k) alone: an
  exact global shuffle, or class-weighted draws), and each process reads only its rows; the order is
  independent of the process and device counts, and the position is the step. Worker processes:
  data.num_loader_workers.

Class weighting in "tfdata" keeps an example of class k with probability w_k / n_k over the
largest such ratio (keep_probabilities), decided per epoch from (seed, epoch) and the
example's time, so the same examples are kept on a restart and the epoch's length is known from
the label columns without reading an image.
"""

from __future__ import annotations

import itertools
import os
import zlib

import numpy as np

from solar_ddpm_jax import class_balance, tf_setup

LABEL_COLUMNS = ("flare_class", "forecast_class", "forecast_coverage", "subclass",
                 "goes_flux_w_m2", "time_unix_s")
AUTOTUNE = -1


def _tf():
  tf_setup.hide_accelerators_from_tensorflow()
  import tensorflow as tf
  import tensorflow_datasets as tfds
  return tf, tfds


def label_columns(builder, split: str, *, time_order: bool = True) -> dict:
  """Every column but the image of `split`, as numpy arrays [N], read in chunks: the images are
  never decoded or kept. In time order by default; else in the order of the split's files."""
  tf, tfds = _tf()
  decoders = tfds.decode.PartialDecoding({k: True for k in LABEL_COLUMNS})
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(try_autocache=False))
  chunks = {k: [] for k in LABEL_COLUMNS}
  for batch in tfds.as_numpy(ds.batch(4096)):
    for k in LABEL_COLUMNS:
      chunks[k].append(np.asarray(batch[k]))
  cols = {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in chunks.items()}
  for k in ("flare_class", "forecast_class"):
    cols[k] = cols[k].astype(np.int32)
  if time_order:
    order = np.argsort(cols["time_unix_s"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
  return cols


class ArrayRecordExamples:
  """Random access to the decoded examples of a split written as ArrayRecord: grain's own
  ArrayRecordDataSource over the split's files, decoded with the dataset's features. Unlike
  builder.as_data_source it pickles without the dataset builder, so grain's worker processes can
  open it."""

  def __init__(self, builder, split: str):
    import grain
    info = builder.info.splits[split]
    self.paths = [os.path.join(os.fspath(builder.data_dir), f) for f in info.filenames]
    self._records = grain.sources.ArrayRecordDataSource(self.paths)
    self._features = builder.info.features
    if len(self._records) != info.num_examples:
      raise ValueError(f"{builder.data_dir}: the {split!r} split's files hold "
                       f"{len(self._records)} records, its metadata says {info.num_examples}.")

  def __len__(self) -> int:
    return len(self._records)

  def __getitems__(self, indices) -> list[dict]:
    return [self._features.deserialize_example_np(r)
            for r in self._records.__getitems__(list(indices))]

  def __getitem__(self, index: int) -> dict:
    return self.__getitems__([index])[0]


def evenly_in_time(times: np.ndarray, max_examples: int | None) -> np.ndarray:
  """Indices of at most `max_examples` of `times` (sorted), spread evenly over them: a capped
  sample keeps the split's span, its seasons and activity, rather than its first days."""
  n = len(times)
  if not max_examples or max_examples >= n:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, int(max_examples)).round().astype(np.int64))


def read_examples(builder, split: str, times: np.ndarray, fields: tuple = ("image",)) -> dict:
  """The `fields` of the examples of `split` whose time_unix_s is in `times`, in the order of
  `times`, read in one streaming pass (the other examples are not decoded: memory holds the
  chosen examples and one chunk)."""
  tf, tfds = _tf()
  times = np.asarray(times, np.float64)
  decoders = tfds.decode.PartialDecoding({k: True for k in (*fields, "time_unix_s")})
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                          read_config=tfds.ReadConfig(try_autocache=False))
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(times.view(np.int64), np.ones(len(times), np.int64)),
      default_value=0)
  ds = ds.filter(lambda e: table.lookup(tf.bitcast(e["time_unix_s"], tf.int64)) > 0)
  chunks = {k: [] for k in (*fields, "time_unix_s")}
  for batch in tfds.as_numpy(ds.batch(256)):
    for k in chunks:
      chunks[k].append(np.asarray(batch[k]))
  got = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in chunks.items()}
  position = {t: i for i, t in enumerate(got["time_unix_s"].tolist())}
  missing = [t for t in times.tolist() if t not in position]
  if missing:
    raise ValueError(f"{builder.data_dir}: {len(missing)} of the requested {split!r} examples "
                     f"were not found (times {missing[:3]}...).")
  order = np.asarray([position[t] for t in times.tolist()], np.int64)
  return {k: v[order] for k, v in got.items() if k in fields}


def source_label_columns(source, chunk_size: int = 4) -> dict:
  """The label columns of a random-access source, in the source's index order (decodes each
  record once, `chunk_size` at a time, images included; keeps only the labels, in arrays filled
  in place)."""
  n = len(source)
  out: dict = {}
  for start in range(0, n, chunk_size):
    chunk = source.__getitems__(list(range(start, min(start + chunk_size, n))))
    for k in LABEL_COLUMNS:
      values = np.asarray([e[k] for e in chunk])
      if k not in out:
        out[k] = np.empty(n, values.dtype)
      out[k][start:start + len(chunk)] = values
  out = {k: out.get(k, np.zeros(0)) for k in LABEL_COLUMNS}
  for k in ("flare_class", "forecast_class"):
    out[k] = out[k].astype(np.int32)
  return out


def _split_seed(split: str) -> int:
  return zlib.crc32(split.encode())


def epoch_order(num_examples: int, seed: int, epoch: int, split: str = "train",
                labels: np.ndarray | None = None,
                class_weights: np.ndarray | None = None) -> np.ndarray:
  """Example indices of one epoch: a permutation, or (with `labels`) a class-weighted draw of the
  same length with replacement (class_balance.draw; equal class weights when none are given)."""
  rng = np.random.default_rng([int(seed), _split_seed(split), int(epoch)])
  if labels is None:
    return rng.permutation(num_examples)
  labels = np.asarray(labels)
  if class_weights is None:
    class_weights = np.ones(int(labels.max()) + 1 if labels.size else 1)
  return class_balance.draw(rng, labels, class_weights, num_examples)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int,
                  split: str = "train", labels: np.ndarray | None = None,
                  class_weights: np.ndarray | None = None) -> np.ndarray:
  """Indices of global batch `step`: rows [step*B, (step+1)*B) of the epoch-order stream."""
  if num_examples <= 0:
    raise ValueError(f"The {split!r} split is empty.")
  start = int(step) * int(batch_size)
  out, position = [], start
  while position < start + batch_size:
    epoch, offset = divmod(position, num_examples)
    order = epoch_order(num_examples, seed, epoch, split, labels, class_weights)
    take = order[offset:offset + start + batch_size - position]
    out.append(take)
    position += len(take)
  return np.concatenate(out)


class GlobalBatchIndices:
  """indices(k): the source indices of global batch k. batch_indices draws positions in time
  order (with `labels` in time order for class weights); `order` maps them to the source's
  indices. Picklable, for grain's worker processes."""

  def __init__(self, order: np.ndarray, *, batch_size: int, seed: int, split: str,
               labels: np.ndarray | None = None, class_weights: np.ndarray | None = None):
    self.order, self.batch_size, self.seed, self.split = np.asarray(order), batch_size, seed, split
    self.labels, self.class_weights = labels, class_weights

  def __call__(self, step: int) -> np.ndarray:
    return self.order[batch_indices(len(self.order), self.batch_size, step, self.seed,
                                    self.split, self.labels, self.class_weights)]


def epoch_seed(seed: int, split: str, epoch: int, process_index: int = 0) -> int:
  """A 31-bit seed of (seed, split, epoch, process) for tf.data's file and buffer shuffles."""
  key = f"{int(seed)}/{split}/{int(epoch)}/{int(process_index)}".encode()
  return zlib.crc32(key) & 0x7FFFFFFF


def keep_probabilities(labels: np.ndarray, class_weights) -> np.ndarray:
  """Per-class probability [K] of keeping an example in a streamed epoch: proportional to
  class_balance.example_probabilities (w_k / n_k), scaled so that the most favoured class present
  is always kept. An epoch then holds the classes in the proportions w_k / sum(w) on average."""
  labels = np.asarray(labels)
  p = class_balance.example_probabilities(labels, class_weights)  # Checks the weights.
  per_class = np.zeros(len(class_weights))
  per_class[labels] = p
  return per_class / per_class.max()


def kept_in_epoch(times: np.ndarray, labels: np.ndarray, keep_prob: np.ndarray | None,
                  seed: int) -> np.ndarray:
  """Bool [N]: the examples an epoch keeps (all when keep_prob is None). The draw of an example
  depends on its time and `seed` only, so the order in which the files are read does not matter."""
  if keep_prob is None:
    return np.ones(len(times), bool)
  bits = np.asarray(times, np.float64).view(np.uint64)
  u = _hash_uniform(bits ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64))
  return u < keep_prob[np.asarray(labels)]


def _hash_uniform(x: np.ndarray) -> np.ndarray:
  """splitmix64 of x, as uniform floats in [0, 1)."""
  with np.errstate(over="ignore"):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
  return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def tfdata_batches(builder, split: str, *, label: str, batch_rows: int, seed: int,
                   start_step: int = 0, class_weights: np.ndarray | None = None,
                   min_coverage: float | None = None, shuffle_buffer: int = 1024,
                   process_index: int | None = None, process_count: int | None = None,
                   extra_fields: tuple = (), columns: dict | None = None,
                   num_threads: int = 0):
  """Endless numpy batches {"image": [b,R,R,C] float32, "label": [b] int32, *extra_fields} of this
  process's share of `split`, starting at its batch `start_step` (b = batch_rows). With
  `min_coverage`, only the rows whose forecast_coverage reaches it (forecast labels). `columns`:
  the whole split's label_columns(builder, split, time_order=False) when the caller has them
  (this process's share is a contiguous range of them); else the share's are read here.
  `num_threads`: threads of the pipeline's own pool (0: tf.data's shared pool)."""
  import jax
  tf, tfds = _tf()
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  share = tfds.split_for_jax_process(split, process_index=pi, process_count=pc)
  if columns is None:
    cols = label_columns(builder, share, time_order=False)
  else:  # The shares are consecutive ranges of the split's examples in file order.
    start = sum(builder.info.splits[tfds.split_for_jax_process(
        split, process_index=i, process_count=pc)].num_examples for i in range(pi))
    size = builder.info.splits[share].num_examples
    cols = {k: np.asarray(v)[start:start + size] for k, v in columns.items()}
  times, labels = cols["time_unix_s"], cols[label]
  if len(times) == 0:
    raise ValueError(f"Process {pi} of {pc} has no examples of the {split!r} split "
                     f"({builder.data_dir}): more processes than examples.")
  allowed = (np.ones(len(times), bool) if min_coverage is None
             else cols["forecast_coverage"] >= float(min_coverage))
  keep_prob = None if class_weights is None else keep_probabilities(labels[allowed],
                                                                      class_weights)

  def kept(epoch: int) -> np.ndarray:
    return allowed & kept_in_epoch(times, labels, keep_prob, epoch_seed(seed, split, epoch, pi))
  fields = ("image", label, *[f for f in extra_fields if f != label])
  decoders = tfds.decode.PartialDecoding({k: True for k in (*fields, "time_unix_s")})
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = int(num_threads)  # 0: tf.data's shared pool.

  def epoch_dataset(epoch: int, skip: int):
    s = epoch_seed(seed, split, epoch, pi)
    ds = builder.as_dataset(
        split=share, shuffle_files=True, decoders=decoders,
        read_config=tfds.ReadConfig(shuffle_seed=s, options=options, try_autocache=False,
                                    num_parallel_calls_for_decode=AUTOTUNE,
                                    num_parallel_calls_for_interleave_files=AUTOTUNE))
    if keep_prob is not None or not allowed.all():
      table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(times.view(np.int64), kept(epoch).astype(np.int64)),
          default_value=0)
      ds = ds.filter(lambda e: table.lookup(tf.bitcast(e["time_unix_s"], tf.int64)) > 0)
    ds = ds.shuffle(shuffle_buffer, seed=s, reshuffle_each_iteration=False)
    return ds.skip(skip).batch(batch_rows).prefetch(2)

  def epoch_length(epoch: int) -> int:
    return int(kept(epoch).sum())

  if not allowed.any():
    raise ValueError(f"Process {pi} of {pc}: no example of its share of the {split!r} split has "
                     f"forecast coverage >= {min_coverage} ({builder.data_dir}).")

  def batches():
    epoch, offset = 0, int(start_step) * int(batch_rows)
    if keep_prob is None:  # Every epoch holds the same examples.
      epoch, offset = divmod(offset, epoch_length(0))
    while offset >= (n := epoch_length(epoch)):
      offset -= n
      epoch += 1
    pending: list[dict] = []
    have = 0
    for e in itertools.count(epoch):
      for part in tfds.as_numpy(epoch_dataset(e, offset if e == epoch else 0)):
        pending.append(part)
        have += len(part[label])
        while have >= batch_rows:
          merged = {k: np.concatenate([p[k] for p in pending]) for k in fields}
          out = {k: v[:batch_rows] for k, v in merged.items()}
          rest = {k: v[batch_rows:] for k, v in merged.items()}
          pending, have = ([rest] if len(rest[label]) else []), len(rest[label])
          yield _to_batch(out, label, extra_fields)

  return batches()


def _to_batch(example_batch: dict, label: str, extra_fields: tuple) -> dict:
  out = {"image": np.asarray(example_batch["image"], np.float32),
         "label": np.asarray(example_batch[label], np.int32)}
  out.update({k: np.asarray(example_batch[k]) for k in extra_fields})
  return out


class _ReadRows:
  """Reads this process's rows of global batch `step` from a random-access source (picklable, so
  grain's worker processes can run it)."""

  def __init__(self, source, labels, label: str, indices, rows: slice, extra_fields: tuple):
    self.source, self.labels, self.label = source, labels, label
    self.indices, self.rows, self.extra_fields = indices, rows, extra_fields

  def __call__(self, step: int) -> dict:
    idx = np.asarray(self.indices(int(step)))[self.rows]
    records = self.source.__getitems__([int(i) for i in idx])
    out = {"image": np.stack([np.asarray(r["image"], np.float32) for r in records]),
           "label": self.labels[idx].astype(np.int32)}
    for k in self.extra_fields:
      out[k] = np.stack([np.asarray(r[k]) for r in records])
    return out


def grain_batches(source, labels: np.ndarray, *, label: str, indices, rows: slice,
                  start_step: int = 0, num_workers: int = 0, extra_fields: tuple = ()):
  """Endless numpy batches of a random-access `source` (len, __getitems__) through grain:
  `indices(k)` -> the global batch k's example indices, `rows` this process's rows of it."""
  import grain
  read = _ReadRows(source, np.asarray(labels), label, indices, rows, tuple(extra_fields))
  ds = grain.MapDataset.range(int(start_step), 2**62).map(read)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(4, num_workers or 1)),
                                               prefetch_buffer_size=2))
  if num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags: their defaults.
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(num_workers)))
  return iter(it_ds)
