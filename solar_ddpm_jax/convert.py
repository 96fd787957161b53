r"""Published PyTorch checkpoints in, shareable safetensors weights out.

    python -m solar_ddpm_jax.convert --config=configs/aia171.py:paper \
        --config.model.faithful=True --torch_checkpoint=ema_ckpt.pt --workdir=runs/published
    python -m solar_ddpm_jax.convert --export --config=configs/aia171.py:paper \
        --config.model.faithful=True --workdir=runs/published --out=hub/solar-ddpm-aia171
    python -m solar_ddpm_jax.convert --import_dir=hub/solar-ddpm-aia171 --workdir=runs/imported

Conversion reads a `torch.save(model.state_dict(), ...)` file of the published network
(`UNet_conditional` of Ramunno et al. 2024, whose base width is its `image_size` argument: 64
channels at 64 px, 128 at 128 px) without torch, infers its hyper-parameters from the tensors,
refuses a config that would build another network, maps every tensor onto the faithful Flax paper
UNet (solar_ddpm_jax.unet, model.faithful=True) and writes a workdir that --mode=sample,
--mode=evaluate and the classifier experiment read like a trained one: an orbax checkpoint of the
whole TrainState (params and EMA both the converted weights, a fresh optimizer state so that
--mode=train fine-tunes from them) and config.json. Export writes the EMA parameters of a workdir
as model.safetensors ("a.b.c" keys) plus config.json (model and diffusion settings); import reads
them back into a workdir.
"""


from __future__ import annotations

import sys

from solar_ddpm_jax import errors
from solar_ddpm_jax.conversion.published import (  # noqa: F401  (names read from here)
    ATTENTION,
    DOUBLE_CONV,
    FLAX_PATHS,
    PUBLISHED_BOTTLENECK_MULT,
    PUBLISHED_CHANNEL_MULT,
    PUBLISHED_HEADS,
    PUBLISHED_NUM_PARAMS_64PX,
    ConversionSettingsError,
    PublishedSettings,
    TorchCheckpointError,
    check_config,
    infer_settings,
    published_shapes,
    required_settings,
    to_flax_tree,
)
from solar_ddpm_jax.conversion.safetensors_export import (  # noqa: F401
    EXPORT_FORMAT_VERSION,
    IMAGE_DATA_SETTINGS,
    SAFETENSORS_NAME,
    WEIGHT_DIFFUSION_SETTINGS,
    WEIGHT_MODEL_SETTINGS,
    config_from_export,
    export_safetensors,
    import_safetensors,
)
from solar_ddpm_jax.conversion.torch_checkpoint import (  # noqa: F401
    EMA_WRAPPERS,
    MODEL_WRAPPERS,
    STRIPPED_PREFIXES,
    check_state_dict,
    read_torch_checkpoint,
    split_weight_sets,
)
from solar_ddpm_jax.conversion.workdir import (  # noqa: F401
    CONFIG_NAME,
    CONVERSION_RECORD,
    cast_to_model,
    convert_from_config,
    convert_torch_checkpoint,
    expected_params,
    flatten_tree,
    write_workdir,
)

# ------------------------------------------------------------------ command line


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Config file and preset, e.g. configs/aia171.py:paper.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Workdir to write (convert, import) or read (export).")
  flags.DEFINE_string("torch_checkpoint", None, "torch.save file of the published network's "
                      "state_dict to convert.")
  flags.DEFINE_integer("step", None, "Checkpoint step of the written workdir (convert: 0; "
                       "import: the exported step).")
  flags.DEFINE_bool("export", False, "Export the EMA weights of --workdir as safetensors to --out.")
  flags.DEFINE_string("out", None, "Directory that --export writes.")
  flags.DEFINE_string("import_dir", None, "Directory of an export to load into --workdir.")
  return flags.FLAGS


def _main(flags_values) -> str:
  f = flags_values
  config = f.config
  if not f.workdir:
    raise errors.SettingsError("--workdir is required.")
  if f.import_dir:
    return import_safetensors(config, f.import_dir, f.workdir, f.step)
  if config is None:
    raise errors.SettingsError("--config is required (e.g. --config=configs/aia171.py:paper).")
  if f.export:
    if not f.out:
      raise errors.SettingsError("--export needs --out=DIR, the directory to write.")
    return export_safetensors(config, f.workdir, f.out)
  if not f.torch_checkpoint:
    raise errors.SettingsError("Pass --torch_checkpoint=ckpt.pt to convert, --export with --out "
                               "to export, or --import_dir to import.")
  return convert_torch_checkpoint(config, f.torch_checkpoint, f.workdir, f.step or 0)


def run() -> None:
  """Command-line entry: convert, --export or --import_dir (see the module docstring)."""
  from absl import app
  flags_values = _define_flags()

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
      out = _main(flags_values)
    except errors.UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2 if isinstance(e, errors.SettingsError) else 1)
    print(out)

  app.run(main)


if __name__ == "__main__":
  run()
