r"""Command line: train, sample, evaluate and run the classifier experiment.

    python -m solar_ddpm_jax.main --config=configs/aia171.py:demo --workdir=/tmp/demo
    python -m solar_ddpm_jax.main --config=configs/aia171.py --workdir=runs/paper --mode=sample \
        --config.sampling.guidance_scale=3 --config.sampling.num_per_class=1000
"""

import importlib
import os

# TensorFlow (tf.data, TFDS, clu's writers) must never take the accelerator from JAX.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

MODES = {
    # mode: (module, function(config, workdir)); imported lazily so --help stays fast.
    "train": ("solar_ddpm_jax.train", "train_and_evaluate"),
    "demo": ("solar_ddpm_jax.demo", "run_demo"),
    "sample": ("solar_ddpm_jax.sample", "sample_and_save"),
    "build_data": ("solar_ddpm_jax.input_pipeline", "build_dataset"),
    "export_features": ("solar_ddpm_jax.evaluation.export", "export_features"),
    "evaluate": ("solar_ddpm_jax.evaluation.report", "evaluate"),
    "augment_experiment": ("solar_ddpm_jax.classifier.experiment", "augment_experiment"),
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/aia171.py:demo.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and reports.")
flags.DEFINE_enum("mode", "auto", ["auto", *MODES],
                  "What to run. 'auto': 'demo' for the demo preset (train, sample, report), "
                  "else 'train'.")


def _hide_accelerators_from_tensorflow():
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):
    pass


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required (see --help).")
  _hide_accelerators_from_tensorflow()

  from solar_ddpm_jax import sharding
  sharding.configure_xla_cpu(config.mesh)
  sharding.maybe_initialize_distributed(config.mesh)
  import jax
  if config.mesh.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.mesh.compilation_cache_dir)
  logging.info("JAX %s: process %d/%d, devices %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())

  mode = FLAGS.mode
  if mode == "auto":
    mode = "demo" if config.preset == "demo" else "train"
  module_name, function_name = MODES[mode]
  module = importlib.import_module(module_name)
  getattr(module, function_name)(config, FLAGS.workdir)


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  run()
