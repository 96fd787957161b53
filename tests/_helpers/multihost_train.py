"""One process of a two-process CPU job: trains the test preset, saves and restores collectively.

    python -m tests._helpers.multihost_train PROCESS_ID PORT WORKDIR OUT_PREFIX
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(process_id, port, workdir, out_prefix):
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # Cross-process CPU collectives.
  import numpy as np

  from configs import aia171
  from solar_ddpm_jax import checkpointing, sharding, train
  from tests._helpers import data

  config = aia171.get_config("test")
  config.mesh.distributed = "on"
  config.mesh.coordinator_address = f"127.0.0.1:{port}"
  config.mesh.num_processes = 2
  config.mesh.process_id = int(process_id)
  config.training.num_train_steps = 4
  config.training.eval_every_steps = 2
  config.training.checkpoint_every_steps = 2
  config.training.sample_every_steps = 4
  assert sharding.maybe_initialize_distributed(config.mesh)
  assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
  mesh = sharding.create_mesh(config.mesh)
  state = train.train_and_evaluate(
      config, workdir, train_iterator_fn=data.iterator_fn(config, mesh),
      eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  restored = checkpointing.restore_params(config, workdir, ema=False)
  leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  restored = [np.asarray(x) for x in jax.tree.leaves(restored)]
  np.savez(f"{out_prefix}{process_id}.npz", *leaves, step=int(state.step),
           restored_equal=all(np.array_equal(a, b) for a, b in zip(leaves, restored, strict=True)))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
