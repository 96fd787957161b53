"""Trains the test preset on deterministic data; the subprocess side of the resume tests.

    python -m tests._helpers.train_run WORKDIR STEPS CHECKPOINT_EVERY SLEEP_S OUT_NPZ [HOLD_AT]

HOLD_AT: the run waits before the batch of that step until it is killed (see data.iterator_fn).
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(workdir, steps, checkpoint_every, sleep_s, out_npz, hold_at=None):
  import jax
  import numpy as np

  from configs import aia171
  from solar_ddpm_jax import sharding, train
  from tests._helpers import data

  config = aia171.get_config("test")
  config.training.num_train_steps = int(steps)
  config.training.checkpoint_every_steps = int(checkpoint_every)
  config.training.log_every_steps = 1
  config.training.eval_every_steps = 0
  config.training.sample_every_steps = 0
  mesh = sharding.create_mesh(config.mesh)
  state = train.train_and_evaluate(
      config, workdir, train_iterator_fn=data.iterator_fn(
          config, mesh, float(sleep_s), None if hold_at is None else int(hold_at)),
      eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  leaves = jax.tree.leaves(jax.device_get({"params": state.params, "ema": state.ema_params}))
  if jax.process_index() == 0:
    np.savez(out_npz, *leaves, step=int(state.step))


if __name__ == "__main__":
  main(*sys.argv[1:])
