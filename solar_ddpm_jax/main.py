r"""Command line: train, sample, evaluate and run the classifier experiment.

    python -m solar_ddpm_jax.main --config=configs/aia171.py:demo
    python -m solar_ddpm_jax.main --config=configs/aia171.py --workdir=runs/paper --mode=sample \
        --config.sampling.guidance_scale=3 --config.sampling.num_per_class=1000

Without --workdir a run writes to workdir/<preset> under the current directory. Settings are
checked before any data is built or anything compiles (solar_ddpm_jax.settings). An error the user
can fix (a bad setting, a missing input file or dataset) ends the run with "error: <message>" on
stderr and exit status 2 (a setting) or 1 (anything else), without a traceback; any other
exception is a bug and keeps its traceback.
"""

import os
import sys

# TensorFlow (tf.data, TFDS, clu's writers) must never take the accelerator from JAX.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from solar_ddpm_jax import errors  # noqa: E402


# One function per mode, (config, workdir) -> None. Each imports its module when it runs, so that
# --help and a refused setting stay fast (the modes import JAX, TensorFlow and orbax).
def _train(config, workdir: str) -> None:
  from solar_ddpm_jax import train
  train.train_and_evaluate(config, workdir)


def _demo(config, workdir: str) -> None:
  from solar_ddpm_jax import demo
  demo.run_demo(config, workdir)


def _sample(config, workdir: str) -> None:
  from solar_ddpm_jax import sample
  sample.sample_and_save(config, workdir)


def _build_data(config, workdir: str) -> None:
  from solar_ddpm_jax import dataset
  dataset.build_dataset(config, workdir)


def _export_features(config, workdir: str) -> None:
  from solar_ddpm_jax.evaluation import export
  export.export_features(config, workdir)


def _evaluate(config, workdir: str) -> None:
  from solar_ddpm_jax.evaluation import report
  report.evaluate(config, workdir)


def _augment_experiment(config, workdir: str) -> None:
  from solar_ddpm_jax.classifier import experiment
  experiment.augment_experiment(config, workdir)


def _convert(config, workdir: str) -> None:
  from solar_ddpm_jax import convert
  convert.convert_from_config(config, workdir)


DEMO_PRESETS = ("demo", "demo_modern")  # Presets whose 'auto' mode is the whole demo.
MODES = {"train": _train, "demo": _demo, "sample": _sample, "build_data": _build_data,
         "export_features": _export_features, "evaluate": _evaluate,
         "augment_experiment": _augment_experiment, "convert": _convert}
SETTINGS_EXIT_CODE = 2  # A config setting or flag that is not allowed.
INPUT_EXIT_CODE = 1  # Any other error the user can fix: a missing or bad file, no dataset.
# Errors of the data builder (by module and class name: no import needed to recognise them) that
# mean bad input whenever they reach the command line.
INPUT_ERRORS = frozenset({("tfds_aia.fetch", "OfflineError"), ("tfds_aia.goes", "GoesGapError"),
                          ("tfds_aia.fits_io", "BadFileError")})

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file and preset, e.g. configs/aia171.py:demo.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and reports "
                    "(default: workdir/<preset> under the current directory).")
flags.DEFINE_enum("mode", "auto", ["auto", *MODES],
                  "What to run. 'auto': 'demo' for the demo presets (train, sample, report), "
                  "else 'train'.")


def default_workdir(config) -> str:
  """workdir/<preset>, relative to the current directory."""
  return os.path.join("workdir", str(config.preset))


def user_error_exit_code(error: BaseException) -> int | None:
  """The exit status for an error the user can fix, None for a bug (which keeps its traceback).

  A FileNotFoundError counts as the user's when the project raised it with a message naming the
  path it was given (no errno); one from the operating system (errno set) may be a bug.
  """
  if isinstance(error, errors.SettingsError):
    return SETTINGS_EXIT_CODE
  if isinstance(error, errors.UserError):
    return INPUT_EXIT_CODE
  if {(c.__module__, c.__qualname__) for c in type(error).__mro__} & INPUT_ERRORS:
    return INPUT_EXIT_CODE
  if isinstance(error, FileNotFoundError) and error.errno is None:
    return INPUT_EXIT_CODE
  return None


def _run(config, workdir: str, mode: str) -> None:
  from solar_ddpm_jax import settings, tf_setup
  settings.check(config, workdir, mode)  # Before any data, device or compilation.
  tf_setup.hide_accelerators_from_tensorflow()

  from solar_ddpm_jax import sharding
  sharding.configure_xla_cpu(config.mesh)
  sharding.maybe_initialize_distributed(config.mesh)
  import jax
  if config.mesh.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.mesh.compilation_cache_dir)
  logging.info("JAX %s: process %d/%d, devices %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())

  MODES[mode](config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config is None:
    raise app.UsageError("--config is required (see --help).")
  from solar_ddpm_jax import settings
  added = settings.with_defaults(config)  # A config file of an older configs/aia171.py.
  if added:
    logging.warning("Settings missing from --config take the %s preset's values: %s",
                    config.preset, ", ".join(added))
  workdir = os.path.expanduser(FLAGS.workdir or default_workdir(config))
  logging.info("workdir: %s", os.path.abspath(workdir))
  mode = FLAGS.mode
  if mode == "auto":
    mode = "demo" if config.preset in DEMO_PRESETS else "train"
  try:
    _run(config, workdir, mode)
  except Exception as e:  # A user error ends with its message; a bug keeps its traceback.
    code = user_error_exit_code(e)
    if code is None:
      raise
    logging.flush()
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(code)


def run():
  # --help lists the flags of the program that was started: under the `solar-ddpm` console script
  # that is the script, not this module, so these flags are registered as the script's own too.
  for name in ("config", "workdir", "mode"):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run()
