"""One process of a two-process CPU job that streams one epoch of the training split.

    python -m tests._helpers.multihost_loader PROCESS_ID PORT DATA_DIR OUT_PREFIX

Both processes read the dataset already built in DATA_DIR (the test's `test` preset) with the
"tfdata" loader and save the times of the examples they read in one epoch to OUT_PREFIX_<id>.npy.
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(process_id: int, port: int, data_dir: str, prefix: str) -> None:
  import jax
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                             initialization_timeout=120)
  import numpy as np
  import tensorflow_datasets as tfds

  from configs import aia171
  from solar_ddpm_jax import input_pipeline, loaders
  config = aia171.get_config("test")
  config.data.data_dir = data_dir
  config.data.synthetic.num_images = 40
  builder = input_pipeline._builder(config)
  share = builder.info.splits[tfds.split_for_jax_process("train")].num_examples
  it = loaders.tfdata_batches(builder, "train", label="flare_class", batch_rows=share, seed=0,
                              extra_fields=("time_unix_s",))
  np.save(f"{prefix}_{jax.process_index()}.npy", next(it)["time_unix_s"])
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
