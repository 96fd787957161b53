"""The tests' in-memory training data: batches are a function of (seed, step); a run can be held."""

import threading

import numpy as np

from configs import aia171
from solar_ddpm_jax import sharding
from tests._helpers import data


def test_batches_depend_on_the_step_only_and_hold_at_stops_the_stream():
  config = aia171.get_config("test")
  mesh = sharding.create_mesh(config.mesh)
  a, b = data.global_batch(config, 3), data.global_batch(config, 3)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], data.global_batch(config, 4)["image"])
  given, release = [], threading.Event()
  stream = data.iterator_fn(config, mesh, hold_at=4, release=release)(2)
  thread = threading.Thread(target=lambda: given.extend(stream), daemon=True)
  thread.start()
  thread.join(timeout=3.0)
  held = thread.is_alive()
  release.set()
  thread.join(timeout=30.0)
  assert held and not thread.is_alive()
  assert len(given) == 2  # Steps 2 and 3; then it waited at step 4 and, released, ended.
  np.testing.assert_array_equal(np.asarray(given[1]["image"]), a["image"])
