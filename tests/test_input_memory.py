"""Training's input holds a few batches and the label columns, not the split: its host memory
does not grow with the archive (measured with tracemalloc, which sees numpy's allocations)."""

import gc
import tracemalloc

import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import dataset, input_pipeline, sharding

SIZES = (40, 160)  # Frames of the two archives: 4x apart.


def _config(data_dir, num_images: int, loader: str):
  config = aia171.get_config("test")
  config.data.data_dir = str(data_dir)
  config.data.synthetic.num_images = num_images
  config.data.synthetic.image_size = config.data.resolution = 128  # 64 KB an image.
  config.data.shuffle_buffer = 16
  config.data.prefetch = 0  # Batches in flight vary with thread timing: fewer of them, less noise.
  config.data.max_real_examples = 0
  config.data.loader = loader
  config.data.file_format = "array_record" if loader == "grain" else "tfrecord"
  return config


def _peak_bytes(fn) -> int:
  gc.collect()
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


@pytest.mark.slow  # About 30 s per loader: two archives of 128 px frames are built.
@pytest.mark.parametrize("loader", ["tfdata", "grain"])
def test_training_input_memory_does_not_grow_with_the_split(tmp_path, loader):
  mesh = sharding.create_mesh(aia171.get_config("test").mesh)
  stream, whole, split_bytes = [], [], []
  configs = [_config(tmp_path / f"n{n}", n, loader) for n in SIZES]
  builders = [dataset.build_dataset(config) for config in configs]

  def train_input(config):
    dataset._COLUMNS_CACHE.clear()  # Each measurement reads its label columns.
    it = input_pipeline.create_train_iterator(config, mesh)
    for _ in range(12):  # More than an epoch of the small split.
      next(it)
    it.close()

  train_input(configs[0])  # Once untraced: first-use imports and tracing are not the input's.
  for config, builder in zip(configs, builders, strict=True):
    split_bytes.append(builder.info.splits["train"].num_examples * 128 * 128 * 4)
    stream.append(min(_peak_bytes(lambda config=config: train_input(config)) for _ in range(2)))
    # The former input: the whole split in memory (the probe must see it grow).
    whole.append(_peak_bytes(lambda builder=builder: dataset._read_whole(builder, "train")))
  growth = split_bytes[1] - split_bytes[0]
  assert growth > 3 * 2**20
  assert whole[1] - whole[0] > 0.9 * growth, (whole, split_bytes)
  # Streaming: no growth beyond 10 % of the larger split's bytes (label columns: 40 B a frame;
  # the small split's peak can be the higher one: its 12 batches span more epochs, each a new
  # tf.data pipeline whose Python objects wait for the garbage collector).
  assert stream[1] - stream[0] < 0.1 * split_bytes[1], (stream, split_bytes)
  assert stream[1] < 0.5 * whole[1], (stream, whole)
  assert np.all(np.isfinite(stream))
