"""The streaming loaders read a built dataset in bounded memory, in a deterministic order that a
restart resumes exactly, with every process reading its own examples."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import aia171
from solar_ddpm_jax import input_pipeline, loaders
from tests.test_multihost import _run_two


def _config(data_dir, num_images=40, file_format="tfrecord"):
  config = aia171.get_config("test")
  config.data.data_dir = str(data_dir)
  config.data.synthetic.num_images = num_images
  config.data.file_format = file_format
  return config


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  config = _config(tmp_path_factory.mktemp("tfds"))
  return config, input_pipeline.build_dataset(config, None)


def _times(it, steps):
  return [next(it)["time_unix_s"] for _ in range(steps)]


def test_label_columns_hold_every_label_and_no_image(built):
  config, builder = built
  cols = loaders.label_columns(builder, "train")
  assert "image" not in cols
  # An independent read of the whole split (tf.data, every feature) in time order.
  full = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1, shuffle_files=False))
  order = np.argsort(full["time_unix_s"], kind="stable")
  for k in loaders.LABEL_COLUMNS:
    np.testing.assert_array_equal(cols[k], np.asarray(full[k])[order])


def test_processes_read_disjoint_shares_that_cover_the_epoch(built):
  _, builder = built
  n = builder.info.splits["train"].num_examples
  seen = []
  for pi in range(3):
    share = builder.info.splits[tfds.split_for_jax_process("train", process_index=pi,
                                                           process_count=3)].num_examples
    it = loaders.tfdata_batches(builder, "train", label="flare_class", batch_rows=share, seed=0,
                                process_index=pi, process_count=3,
                                extra_fields=("time_unix_s",))
    first, second = _times(it, 2)
    assert len(set(first)) == share and set(first) == set(second)  # One epoch, then the next.
    assert not np.array_equal(first, second)  # Reshuffled each epoch.
    seen.append(set(first))
  assert sum(map(len, seen)) == n and len(set.union(*seen)) == n


def test_a_share_cut_from_the_whole_splits_columns_is_the_share_read_alone(built):
  """create_train_iterator reads the label columns once and cuts each process's share out of
  them: the same stream as a reader that reads its share's columns itself."""
  _, builder = built
  files = loaders.label_columns(builder, "train", time_order=False)
  for pi in range(3):
    kw = dict(label="flare_class", batch_rows=5, seed=1, process_index=pi, process_count=3,
              extra_fields=("time_unix_s",), class_weights=np.ones(5))
    alone = _times(loaders.tfdata_batches(builder, "train", **kw), 4)
    cut = _times(loaders.tfdata_batches(builder, "train", columns=files, **kw), 4)
    for a, b in zip(alone, cut, strict=True):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("weights", [None, (1.0, 1.0, 1.0, 1.0, 1.0)])
def test_a_restart_at_step_k_continues_the_stream_exactly(built, weights):
  _, builder = built
  weights = None if weights is None else np.asarray(weights)
  kw = dict(label="flare_class", batch_rows=6, seed=3, class_weights=weights,
            extra_fields=("time_unix_s",))
  stream = _times(loaders.tfdata_batches(builder, "train", **kw), 12)  # Several epochs.
  resumed = _times(loaders.tfdata_batches(builder, "train", start_step=9, **kw), 3)
  for k in range(3):
    np.testing.assert_array_equal(resumed[k], stream[9 + k])
  other_seed = _times(loaders.tfdata_batches(builder, "train", **{**kw, "seed": 4}), 1)
  assert not np.array_equal(other_seed[0], stream[0])


def test_class_weights_set_the_class_proportions():
  labels = np.array([0] * 90 + [1] * 30 + [4] * 10)
  times = np.arange(len(labels), dtype=np.float64) * 720.0
  keep = loaders.keep_probabilities(labels, np.ones(5))
  np.testing.assert_allclose(keep[[0, 1, 4]], [10 / 90, 10 / 30, 1.0])
  kept = np.concatenate([labels[loaders.kept_in_epoch(times, labels, keep, s)]
                         for s in range(400)])
  share = np.bincount(kept, minlength=5)[[0, 1, 4]] / len(kept)
  np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.02)
  weighted = loaders.keep_probabilities(labels, np.array([1.0, 0, 0, 0, 2.0]))
  np.testing.assert_allclose(weighted, [1 / 18, 0, 0, 0, 1.0])


def test_grain_reads_the_global_batches_of_the_deterministic_order(tmp_path):
  config = _config(tmp_path, file_format="array_record")
  builder = input_pipeline.build_dataset(config, None)
  source = loaders.ArrayRecordExamples(builder, "train")
  cols = loaders.source_label_columns(source)
  order = np.argsort(cols["time_unix_s"], kind="stable")
  n = len(order)
  # An independent read (tfds's own data source) of the rows that batch_indices names.
  tfds_source = builder.as_data_source(split="train")
  times = np.array([tfds_source[i]["time_unix_s"] for i in range(n)])
  np.testing.assert_array_equal(np.sort(times), cols["time_unix_s"][order])
  indices = loaders.GlobalBatchIndices(order, batch_size=8, seed=0, split="train")
  it = loaders.grain_batches(source, cols["flare_class"], label="flare_class", indices=indices,
                             rows=slice(2, 6), start_step=3, extra_fields=("time_unix_s",))
  for step in (3, 4):
    got = next(it)
    want = order[input_pipeline.batch_indices(n, 8, step, 0)][2:6]
    np.testing.assert_array_equal(got["time_unix_s"], times[want])
    np.testing.assert_array_equal(got["image"],
                                  np.stack([tfds_source[int(i)]["image"] for i in want]))


def test_two_jax_processes_read_disjoint_examples_covering_the_epoch(tmp_path, built):
  config, _ = built
  prefix = str(tmp_path / "seen")
  _run_two("tests._helpers.multihost_loader", config.data.data_dir, prefix, timeout=300)
  seen = [np.load(f"{prefix}_{i}.npy") for i in range(2)]
  n = input_pipeline._builder(config).info.splits["train"].num_examples
  assert not set(seen[0]) & set(seen[1])
  assert len(set(seen[0]) | set(seen[1])) == n == len(seen[0]) + len(seen[1])
  assert os.path.exists(f"{prefix}_0.npy")
