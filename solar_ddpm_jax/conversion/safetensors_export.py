"""A workdir's EMA weights as model.safetensors + config.json, and such an export read back in.

The export is what a model hub holds: "a.b.c"-keyed float tensors and the model, diffusion and
image settings they need. Import checks a given config against those settings (naming the
value to pass) or takes them all from config.json, and writes a new workdir.
"""

from __future__ import annotations

import json
import os

import numpy as np

from solar_ddpm_jax import FLARE_CLASSES, errors
from solar_ddpm_jax.conversion.published import (
  ConversionSettingsError,
  TorchCheckpointError,
  config_flag,
  same_value,
)
from solar_ddpm_jax.conversion.workdir import (
  CONFIG_NAME,
  CONVERSION_RECORD,
  cast_to_model,
  flatten_tree,
  new_workdir,
  write_workdir,
)
from solar_ddpm_jax.evaluation import weights

EXPORT_FORMAT_VERSION = 1
SAFETENSORS_NAME = "model.safetensors"

# Model settings that shape the weights or their meaning (the rest: compute dtype, attention
# kernel, remat, dropout, only change how they are used).
WEIGHT_MODEL_SETTINGS = ("block_style", "image_size", "in_channels", "out_channels",
                         "base_channels", "channel_mult", "bottleneck_mult", "num_res_blocks",
                         "attention_resolutions", "num_heads", "time_embed_dim", "num_classes",
                         "faithful", "param_dtype")
WEIGHT_DIFFUSION_SETTINGS = ("prediction", "beta_schedule", "num_timesteps", "beta_start",
                             "beta_end")
# Data settings that say what the images mean (model range <-> DN/s), exported with the weights.
IMAGE_DATA_SETTINGS = ("resolution", "channels", "dn_ceiling", "stretch", "asinh_a", "label")


def _jsonable(d: dict) -> dict:
  return json.loads(json.dumps(d, default=str))


def export_safetensors(config, workdir: str, out_dir: str) -> str:
  """Writes the EMA parameters of a workdir's checkpoint (config.sampling.checkpoint_step, -1:
  latest) as <out_dir>/model.safetensors ("a.b.c" keys) plus config.json. Returns out_dir."""
  import jax
  from safetensors.numpy import save_file

  from solar_ddpm_jax import checkpointing
  params, step = checkpointing.restore_params_and_step(
      config, workdir, int(config.sampling.checkpoint_step), ema=True)
  flat = {k: np.ascontiguousarray(np.asarray(jax.device_get(v)))
          for k, v in flatten_tree(params, sep=".").items()}
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  save_file(flat, os.path.join(out_dir, SAFETENSORS_NAME),
            metadata={"format": "flax", "library": "solar_ddpm_jax", "step": str(step),
                      "weights": "ema_params"})
  meta = {
      "library": "solar_ddpm_jax", "format_version": EXPORT_FORMAT_VERSION,
      "architecture": {"paper": "PaperUNet", "modern": "ModernUNet"}.get(
          config.model.block_style, str(config.model.block_style)),
      "weights": "ema_params", "step": int(step), "preset": str(config.preset),
      "model": _jsonable(config.model.to_dict()),
      "diffusion": _jsonable(config.diffusion.to_dict()),
      "data": _jsonable({k: config.data[k] for k in IMAGE_DATA_SETTINGS}),
      "class_names": list(FLARE_CLASSES[:int(config.model.num_classes)]),
      "null_class": int(config.model.num_classes),
      "guidance": "eps = eps_uncond + w (eps_cond - eps_uncond); w=1 conditional, w=0 "
                  "unconditional (the null class)",
      "num_parameters": int(sum(v.size for v in flat.values())),
  }
  source = os.path.join(os.path.abspath(workdir), CONVERSION_RECORD)
  if os.path.exists(source):
    with open(source) as f:
      meta["converted_from"] = json.load(f)
  with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def _as_config_value(v):
  return tuple(v) if isinstance(v, list) else v


def _read_export(src_dir: str) -> tuple[dict, str]:
  src_dir = os.path.abspath(os.path.expanduser(src_dir))
  meta_path = os.path.join(src_dir, CONFIG_NAME)
  weights_path = os.path.join(src_dir, SAFETENSORS_NAME)
  for p in (meta_path, weights_path):
    if not os.path.isfile(p):
      raise errors.UserError(f"{p} does not exist: --import_dir must hold {SAFETENSORS_NAME} "
                             f"and {CONFIG_NAME} as --export writes them.")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"{meta_path} is not a JSON file ({e}).") from e
  if not isinstance(meta, dict) or meta.get("library") != "solar_ddpm_jax" or not isinstance(
      meta.get("model"), dict) or not isinstance(meta.get("diffusion"), dict):
    raise errors.UserError(f"{meta_path} is not the config.json of an export of solar_ddpm_jax "
                           "weights (no library/model/diffusion entries).")
  if int(meta.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
    raise errors.UserError(f"{meta_path}: format_version {meta.get('format_version')} is newer "
                           f"than this version reads ({EXPORT_FORMAT_VERSION}); update "
                           "solar_ddpm_jax.")
  return meta, weights_path


def config_from_export(meta: dict, config=None):
  """`config` (default: the paper preset) with the exported model, diffusion and image settings;
  a given config is refused where its weight settings differ (naming the value to pass)."""
  if config is None:
    from configs import aia171
    config = aia171.get_config("paper")
    with config.unlocked():
      for group in ("model", "diffusion", "data"):
        for k, v in (meta.get(group) or {}).items():
          if k in config[group] and not isinstance(config[group][k], dict):
            config[group][k] = _as_config_value(v)
    return config
  checks = [("model", k) for k in WEIGHT_MODEL_SETTINGS] + [
      ("diffusion", k) for k in WEIGHT_DIFFUSION_SETTINGS]
  differ = [(f"{g}.{k}", config[g][k], meta[g][k]) for g, k in checks
            if k in meta.get(g, {}) and k in config[g] and not same_value(
                _as_config_value(meta[g][k]), config[g][k])]
  if differ:
    listed = "; ".join(f"{k}={have!r} (weights: {need!r})" for k, have, need in differ)
    flags = " ".join(config_flag(k, _as_config_value(need)) for k, _, need in differ)
    raise ConversionSettingsError(
        f"The exported weights were made with other settings ({listed}). Pass {flags}, or leave "
        "out --config to take them all from config.json.")
  return config


def import_safetensors(config, src_dir: str, workdir: str, step: int | None = None) -> str:
  """Loads an export (model.safetensors + config.json) into a new workdir for sampling.

  config None takes the model, diffusion and image settings from config.json (other settings
  from the paper preset); a given config must agree with them. The weights become both params
  and EMA, at the exported step unless `step` is given. Returns the workdir.
  """
  new_workdir(workdir, step or 0)
  meta, weights_path = _read_export(src_dir)
  config = config_from_export(meta, config)
  try:
    flat = weights.load_safetensors(weights_path)
  except Exception as e:  # The safetensors header and buffers are data.
    raise TorchCheckpointError(f"{weights_path} could not be read as safetensors "
                               f"({type(e).__name__}: {e}).") from e
  tree = cast_to_model(weights.unflatten(flat, sep="."), config.model, weights_path)
  step = int(meta.get("step", 0)) if step is None else int(step)
  record = {"source": weights_path, "sha256": weights.sha256_file(weights_path),
            "format": "safetensors export", "exported": {k: meta.get(k) for k in (
                "step", "preset", "weights", "converted_from") if k in meta}, "step": step}
  return write_workdir(config, workdir, tree, tree, step=step, record=record)
