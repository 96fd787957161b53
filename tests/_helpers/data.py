"""Deterministic in-memory training data: batch `step` is a pure function of (seed, step)."""

import threading
import time

import jax
import numpy as np

from solar_ddpm_jax import sharding


def global_batch(config, step: int) -> dict:
  """A global batch of noisy discs whose brightness depends on the flare class."""
  rng = np.random.default_rng([int(config.seed), 7, int(step)])
  batch_size, res = int(config.training.batch_size), int(config.data.resolution)
  labels = rng.integers(0, 5, batch_size).astype(np.int32)
  yy, xx = np.mgrid[:res, :res]
  radius = np.hypot(yy - (res - 1) / 2, xx - (res - 1) / 2) / (res / 2)
  disc = (radius < 0.8).astype(np.float32)
  level = (0.6 + 0.3 * labels / 4.0).astype(np.float32)
  images = -1.0 + disc[None] * (1.0 + level[:, None, None])
  images = images + 0.05 * rng.standard_normal(images.shape).astype(np.float32)
  return {"image": images[..., None].astype(np.float32), "label": labels}


def local_slice(batch: dict) -> dict:
  """This process's rows of a global batch."""
  n = len(batch["label"]) // jax.process_count()
  start = jax.process_index() * n
  return {k: v[start:start + n] for k, v in batch.items()}


def iterator_fn(config, mesh, sleep_s: float = 0.0, hold_at: int | None = None,
                release: threading.Event | None = None):
  """train_iterator_fn(start_step) for train_and_evaluate; sleeps per batch when asked.

  hold_at: the batch of that step is not given: the stream waits there until `release` is set
  (then ends) or, without one, until the process is killed; a test can so stop a run after some
  step without racing it to the end.
  """
  def make(start_step):
    step = start_step
    while True:
      if hold_at is not None and step >= hold_at:
        (release or threading.Event()).wait()
        return
      if sleep_s:
        time.sleep(sleep_s)
      yield sharding.shard_batch(mesh, local_slice(global_batch(config, step)))
      step += 1
  return make


def eval_iterator_fn(config, mesh):
  """eval_iterator_fn() for train_and_evaluate: fixed batches far from the training steps."""
  return lambda: iterator_fn(config, mesh)(10**6)
