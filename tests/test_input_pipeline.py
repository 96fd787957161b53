"""Synthetic archive -> builder -> global sharded batches on 8 virtual CPU devices."""

import os

import jax
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import dataset, input_pipeline, sharding
from tfds_aia import builder as aia_builder
from tfds_aia import goes, splits


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  config = aia171.get_config("test")
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.data.synthetic.num_images = 40
  return config


def test_synthetic_build_batches_labels_split(config):
  b = dataset.build_dataset(config, None)
  assert b.builder_config.name == "res16_171"
  counts = {k: v.num_examples for k, v in b.info.splits.items()}
  dropped = aia_builder.read_manifest(b)
  assert sum(counts.values()) + len(dropped) == 40 and min(counts.values()) > 0
  assert all("split boundary" in row["reason"] for row in dropped)
  arrays = {s: input_pipeline.load_split_arrays(config, s) for s in splits.SPLITS}
  b1, b2 = splits.to_unix_s(config.data.train_end), splits.to_unix_s(config.data.val_end)
  gap = config.data.split_gap_hours * 3600
  assert arrays["train"]["time_unix_s"].max() < b1 - gap
  assert b1 + gap <= arrays["validation"]["time_unix_s"].min()
  assert arrays["validation"]["time_unix_s"].max() < b2 - gap
  assert arrays["test"]["time_unix_s"].min() >= b2 + gap
  for a in arrays.values():  # Labels are the class of the stored flux, images in [-1, 1].
    np.testing.assert_array_equal(a["flare_class"], goes.flux_to_class(a["goes_flux_w_m2"])[0])
    assert a["image"].shape[1:] == (16, 16, 1) and np.abs(a["image"]).max() <= 1
  train = arrays["train"]
  # Flares grow with class: the brightest pixel rises with the flare class on average.
  peak = train["image"].reshape(len(train["image"]), -1).max(1)
  low, high = peak[train["flare_class"] <= 1], peak[train["flare_class"] >= 3]
  if len(low) and len(high):
    assert high.mean() > low.mean()

  assert jax.device_count() == 8
  mesh = sharding.create_mesh(config.mesh)
  it = input_pipeline.create_train_iterator(config, mesh)  # data.loader="tfdata": streamed.
  batch = next(it)
  assert batch["image"].shape == (8, 16, 16, 1) and batch["label"].dtype == np.int32
  assert batch["image"].sharding == sharding.batch_sharding(mesh, 4)
  assert len(batch["image"].addressable_shards) == 8
  assert batch["image"].addressable_shards[0].data.shape == (1, 16, 16, 1)
  # The first epoch's batches are distinct examples of the split, each with its own label.
  n = len(train["flare_class"])
  batches = [batch] + [next(it) for _ in range(n // 8 - 1)]
  rows = np.concatenate([_rows_of(b, train) for b in batches])
  assert len(set(rows.tolist())) == len(rows) == 8 * (n // 8)


def _rows_of(batch, arrays) -> np.ndarray:
  """The split rows (in the time order of load_split_arrays) of a batch's images; checks labels."""
  images = arrays["image"].reshape(len(arrays["image"]), -1)
  got = np.asarray(batch["image"]).reshape(len(batch["label"]), -1)
  rows = np.array([int(np.flatnonzero((images == g).all(1))[0]) for g in got])
  np.testing.assert_array_equal(np.asarray(batch["label"]), arrays["flare_class"][rows])
  return rows


@pytest.fixture(scope="module")
def grain_config(tmp_path_factory):
  config = aia171.get_config("test")
  config.data.data_dir = str(tmp_path_factory.mktemp("tfds_ar"))
  config.data.synthetic.num_images = 40
  config.data.file_format, config.data.loader = "array_record", "grain"
  return config


@pytest.mark.parametrize("weights", [(), (0.0, 1.0, 1.0, 2.0, 2.0)])
def test_grain_streams_the_global_order_of_the_split(grain_config, weights):
  """grain's batches are those of the split's global order (batch_indices over the split in
  time order): the stream of a split held in memory, whatever the process count."""
  config = grain_config.copy_and_resolve_references()
  config.data.class_weights = weights
  mesh = sharding.create_mesh(config.mesh)
  arrays = dataset.load_split_arrays(config, "train")
  it = input_pipeline.create_train_iterator(config, mesh)
  n = len(arrays["flare_class"])
  w = np.asarray(weights) if weights else None
  for step in range(7):  # Crosses an epoch boundary.
    batch = next(it)
    idx = input_pipeline.batch_indices(n, 8, step, config.seed, "train",
                                       None if w is None else arrays["flare_class"], w)
    np.testing.assert_array_equal(np.asarray(batch["image"]), arrays["image"][idx])
    np.testing.assert_array_equal(np.asarray(batch["label"]), arrays["flare_class"][idx])
  with pytest.raises(Exception, match="data.loader='tfdata' reads TFRecord"):
    config.data.loader = "tfdata"
    input_pipeline.create_train_iterator(config, mesh)


@pytest.mark.parametrize("loader", ["tfdata", "grain"])
def test_resume_at_step_equals_fresh_stream(config, grain_config, loader):
  config = config if loader == "tfdata" else grain_config
  mesh = sharding.create_mesh(config.mesh)
  fresh = input_pipeline.create_train_iterator(config, mesh)
  stream = [next(fresh) for _ in range(7)]  # Crosses an epoch boundary (fewer than 56 examples).
  resumed = input_pipeline.create_train_iterator(config, mesh, start_step=5)
  for k in (5, 6):
    got = next(resumed)
    np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(stream[k]["image"]))
    np.testing.assert_array_equal(np.asarray(got["label"]), np.asarray(stream[k]["label"]))
  n = 30
  whole = np.concatenate([input_pipeline.epoch_order(n, 0, e) for e in range(3)])
  for k in range(10):
    np.testing.assert_array_equal(input_pipeline.batch_indices(n, 8, k, 0), whole[8 * k:8 * k + 8])
  assert sorted(input_pipeline.epoch_order(n, 0, 1)) == list(range(n))
  order = input_pipeline.epoch_order
  assert not np.array_equal(order(n, 0, 1), order(n, 1, 1))


def test_labels_outside_the_model_classes_stop_training(config):
  """A split with classes the model lacks is refused (not taken for a missing validation split)."""
  from solar_ddpm_jax import train
  top = int(input_pipeline.load_split_arrays(config, "train")["flare_class"].max())
  fewer = config.copy_and_resolve_references()
  fewer.model.num_classes = top  # The highest class of the split is one too many.
  mesh = sharding.create_mesh(fewer.mesh)
  with pytest.raises(input_pipeline.LabelRangeError, match=f"labels \\[{top}\\] outside") as e:
    input_pipeline.create_train_iterator(fewer, mesh)
  assert input_pipeline.dataset_dirs(config)[0] in str(e.value)  # Which dataset, by its folder.
  with pytest.raises(input_pipeline.LabelRangeError):
    train.evaluate(None, None, lambda: input_pipeline.create_train_iterator(fewer, mesh), 1)


def test_array_record_reads_the_same(config, tmp_path):
  other = aia171.get_config("test")
  other.data.data_dir, other.data.file_format = str(tmp_path), "array_record"
  other.data.synthetic.num_images = 40
  a = input_pipeline.load_split_arrays(config, "validation")
  b = input_pipeline.load_split_arrays(other, "validation")
  assert input_pipeline._builder(other).info.file_format.value == "array_record"
  for k in dataset.ARRAY_FIELDS:
    np.testing.assert_array_equal(a[k], b[k])
  # One shared, read-only copy of a split, however often it is loaded.
  again = input_pipeline.load_split_arrays(config, "validation")
  assert again["image"] is a["image"] and not a["image"].flags.writeable
  with pytest.raises(ValueError, match="read-only"):
    a["image"][0] = 0.0


def test_class_balanced_sampling():
  labels = np.array([0] * 90 + [4] * 10)
  draws = np.concatenate([input_pipeline.epoch_order(100, 0, e, labels=labels) for e in range(20)])
  assert abs((labels[draws] == 4).mean() - 0.5) < 0.05


def test_forecast_labels_warn_when_the_split_gap_is_shorter_than_the_window(monkeypatch):
  warnings = []
  monkeypatch.setattr(dataset.logging, "warning", lambda *a: warnings.append(a))
  monkeypatch.setattr(dataset, "_LEAKAGE_WARNED", set())
  config = aia171.get_config("test")
  assert input_pipeline.label_field(config) == "flare_class" and not warnings
  config.data.label = "forecast_class"
  config.data.split_gap_hours, config.data.forecast_window_hours = 12.0, 24.0
  assert input_pipeline.label_field(config) == "forecast_class"
  input_pipeline.label_field(config)
  assert len(warnings) == 1 and "split_gap_hours=24" in warnings[0][0] % warnings[0][1:]
  config.data.split_gap_hours = 24.0
  assert not dataset.warn_forecast_leakage(config.data)


def test_a_built_manual_dataset_reads_without_manual_dir(config, tmp_path):
  input_pipeline.build_dataset(config, None)
  _, archive = input_pipeline.dataset_dirs(config)
  manual = config.copy_and_resolve_references()
  manual.data.source = "manual"
  manual.data.data_dir = str(tmp_path / "tfds")
  manual.data.frame_px = config.data.synthetic.image_size
  reader = manual.copy_and_resolve_references()
  reader.data.manual_dir = ""
  # Nothing built yet: the error says what is missing and which flag builds it.
  with pytest.raises(ValueError, match=r"data\.data_dir=.*--config\.data\.manual_dir"):
    input_pipeline.load_split_arrays(reader, "train")
  manual.data.manual_dir = archive
  built = input_pipeline.build_dataset(manual, None)
  assert built.is_prepared()
  # Training and evaluation read the dataset with the build's data settings, without the raw files.
  read = input_pipeline.load_split_arrays(reader, "train")
  expected = input_pipeline.load_split_arrays(config, "train")
  np.testing.assert_array_equal(read["image"], expected["image"])
  np.testing.assert_array_equal(read["flare_class"], expected["flare_class"])


def test_forecast_labels_leave_out_frames_whose_window_lacks_goes_data(config):
  arrays = input_pipeline.load_split_arrays(config, "train")
  coverage = arrays["forecast_coverage"]
  assert coverage.dtype == np.float32
  np.testing.assert_array_equal(coverage, 1.0)  # The synthetic GOES file outlasts every window.
  made = {"time_unix_s": np.arange(5.0), "forecast_class": np.arange(5) % 5,
          "forecast_coverage": np.array([1.0, 0.5, 0.95, 0.89, 0.9], np.float32)}
  kept = dataset.forecast_rows(made, config.data, "train")
  np.testing.assert_array_equal(kept["time_unix_s"], [0.0, 2.0, 4.0])  # >= 0.9 by default.
  assert not kept["forecast_class"].flags.writeable
  cfg = config.copy_and_resolve_references()
  cfg.data.forecast_min_coverage = 1.01  # No window is covered that well: all rows left out ...
  for label in ("forecast_class", "forecast_binary"):
    assert len(input_pipeline.load_split_arrays(cfg, "train", label)["image"]) == 0
  cfg.data.forecast_min_coverage = 0.5  # Every row: one shared copy, as for the other labels.
  assert input_pipeline.load_split_arrays(cfg, "train", "forecast_class")["image"] is (
      input_pipeline.load_split_arrays(cfg, "train", "flare_class")["image"])
  # ... of forecast training only: the image-time label keeps every row.
  assert len(input_pipeline.load_split_arrays(cfg, "train", "flare_class")["image"]) == len(
      coverage)


@pytest.mark.parametrize("fmt", ["tfrecord", "array_record"])
def test_a_capped_split_is_read_evenly_in_time(config, grain_config, fmt):
  """Evaluation and the classifier hold at most data.max_real_examples of a split: the examples at
  evenly spaced positions of its time order, read without the rest of the images."""
  whole_config = (config if fmt == "tfrecord" else grain_config).copy_and_resolve_references()
  whole_config.data.max_real_examples = 0
  whole = dataset.load_split_arrays(whole_config, "train")
  capped_config = whole_config.copy_and_resolve_references()
  capped_config.data.max_real_examples = 7
  capped = dataset.load_split_arrays(capped_config, "train")
  n = len(whole["time_unix_s"])
  assert n > 7
  rows = np.round(np.arange(7) * (n - 1) / 6).astype(int)  # First, last and 5 evenly between.
  for k in dataset.ARRAY_FIELDS:
    np.testing.assert_array_equal(capped[k], whole[k][rows], err_msg=k)
  assert dataset.split_sample_size(capped_config, "train") == {
      "examples": n, "read": 7, "max_real_examples": 7}
  assert dataset.split_sample_size(whole_config, "train")["read"] == n


def test_a_new_synthetic_generator_gets_its_own_archive_folder(monkeypatch, tmp_path):
  from tfds_aia import synthetic_sun
  config = aia171.get_config("test")
  config.data.data_dir = str(tmp_path)
  before = dataset.dataset_dirs(config)
  monkeypatch.setattr(synthetic_sun, "GENERATOR_VERSION", synthetic_sun.GENERATOR_VERSION + 1)
  after = dataset.dataset_dirs(config)
  assert before[1] != after[1] and before[0] != after[0]
  assert os.path.dirname(before[1]) != os.path.dirname(after[1])
