"""Converted weights into a workdir that --mode=sample, --mode=evaluate and training read.

`convert_torch_checkpoint` reads, checks and maps a published checkpoint, `cast_to_model` checks
the tree against the configured model, and `write_workdir` writes the orbax TrainState checkpoint
(a fresh optimizer state, so that --mode=train fine-tunes), config.json and conversion.json.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from solar_ddpm_jax import errors
from solar_ddpm_jax.conversion.published import (
  ConversionSettingsError,
  TorchCheckpointError,
  check_config,
  infer_settings,
  to_flax_tree,
  warn_about_schedule,
)
from solar_ddpm_jax.conversion.torch_checkpoint import check_state_dict, read_torch_checkpoint
from solar_ddpm_jax.evaluation import weights

CONFIG_NAME = "config.json"
CONVERSION_RECORD = "conversion.json"  # What a converted workdir was made from.


# ------------------------------------------------------------------ the model's tree


def flatten_tree(tree, sep: str = "/") -> dict:
  """Nested dicts -> {"a/b/c": leaf}; leaves are kept as they are (arrays or shape structs)."""
  from flax import traverse_util
  return {sep.join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def expected_params(model_config) -> dict:
  """ShapeDtypeStructs of the configured model's parameters (jax.eval_shape: nothing computed)."""
  import jax

  from solar_ddpm_jax import unet
  return jax.eval_shape(lambda k: unet.init_params(model_config, k), jax.random.key(0))


def cast_to_model(tree: dict, model_config, source: str, expected=None) -> dict:
  """`tree` with every leaf in model.param_dtype, checked leaf by leaf (path, shape, dtype)
  against jax.eval_shape of the configured model's init (`expected`, when already computed)."""
  expected = flatten_tree(expected_params(model_config) if expected is None else expected)
  found = flatten_tree(tree)
  missing = sorted(k for k in expected if k not in found)
  extra = sorted(k for k in found if k not in expected)
  wrong = sorted(f"{k}: weights {tuple(np.shape(found[k]))}, model {tuple(expected[k].shape)}"
                 for k in expected if k in found
                 and tuple(np.shape(found[k])) != tuple(expected[k].shape))
  if missing or extra or wrong:
    parts = [f"{source}: the weights do not fit the model of this config:"]
    for what, names in (("parameters the model has and the weights lack", missing),
                        ("parameters the model lacks", extra), ("misshapen", wrong)):
      if names:
        parts.append(f"{what} ({len(names)}): {'; '.join(names[:20])}.")
    parts.append("Pass the model settings the weights were made with (config.json beside them).")
    raise ConversionSettingsError(" ".join(parts))
  out = {}
  for k, spec in expected.items():
    value = np.asarray(found[k])
    if not np.issubdtype(value.dtype, np.floating) and value.dtype != spec.dtype:
      raise TorchCheckpointError(f"{source}: parameter {k} is {value.dtype}, not a float.")
    value = value.astype(spec.dtype)
    if not np.all(np.isfinite(value.astype(np.float32))):
      raise TorchCheckpointError(f"{source}: parameter {k} holds NaN or infinite values.")
    out[k] = value
  return weights.unflatten(out)


def new_workdir(workdir: str, step: int) -> str:
  """The absolute workdir, refused when it already holds checkpoints (or the step is < 0)."""
  from solar_ddpm_jax import checkpointing
  workdir = os.path.abspath(os.path.expanduser(str(workdir)))
  existing = checkpointing.latest_step(workdir)
  if existing is not None:
    raise errors.UserError(
        f"--workdir={workdir} already holds checkpoints (latest step {existing}): writing "
        "these weights beside them would mix two models. Pass a new --workdir.")
  if int(step) < 0:
    raise ConversionSettingsError(f"--step={step}: give a step >= 0.")
  return workdir


def write_workdir(config, workdir: str, params: dict, ema_params: dict, *, step: int = 0,
                  record: dict | None = None) -> str:
  """Writes the orbax TrainState checkpoint (with a fresh optimizer state) and config.json of a
  trained workdir, plus `record` as conversion.json. Returns the absolute workdir."""
  import jax
  import jax.numpy as jnp

  from solar_ddpm_jax import checkpointing, train_state
  workdir = new_workdir(workdir, step)
  os.makedirs(workdir, exist_ok=True)
  params = jax.tree.map(jnp.asarray, params)
  ema_params = jax.tree.map(jnp.asarray, ema_params)
  tx = train_state.make_optimizer(config.training)
  state = train_state.TrainState(step=jnp.asarray(int(step), jnp.int32), params=params,
                                 ema_params=ema_params, opt_state=jax.jit(tx.init)(params))
  manager = checkpointing.create_manager(workdir, config.training)
  try:
    checkpointing.save(manager, state, data_seed=int(config.seed),
                       batch_size=int(config.training.batch_size),
                       settings=checkpointing.run_settings(config), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  with open(os.path.join(workdir, CONFIG_NAME), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  if record is not None:
    with open(os.path.join(workdir, CONVERSION_RECORD), "w") as f:
      json.dump(record, f, indent=2, default=str)
  return workdir


def convert_torch_checkpoint(config, checkpoint_path: str, workdir: str, step: int = 0) -> str:
  """Converts a published torch checkpoint into a workdir for sampling, evaluation and training.

  Reads the file (model and, where present, EMA state dicts), infers the published
  hyper-parameters, refuses a config that builds another network and a file with missing, extra
  or misshapen tensors, maps every tensor onto the faithful Flax UNet, checks the tree against
  the configured model and writes the workdir (params = the model weights, EMA = the EMA weights,
  each the other when the file has one set). Returns the workdir.
  """
  from absl import logging
  new_workdir(workdir, step)  # Refused before anything is read.
  path = os.path.abspath(os.path.expanduser(str(checkpoint_path))) if checkpoint_path else ""
  model_sd, ema_sd, layout = read_torch_checkpoint(path)
  settings = infer_settings(model_sd, path)
  check_config(config, settings, path)
  warn_about_schedule(config)
  trees, expected = {}, expected_params(config.model)
  for name, sd in (("model", model_sd), ("ema", ema_sd)):
    if sd is None:
      continue
    where = f"{path} ({name} weights)" if ema_sd is not None else path
    if name == "ema" and infer_settings(sd, where) != settings:
      raise TorchCheckpointError(f"{path}: its model and EMA weights are of different networks "
                                 f"({settings} and {infer_settings(sd, where)}).")
    check_state_dict(sd, settings, where)
    trees[name] = cast_to_model(to_flax_tree(sd), config.model, where, expected)
  params = trees["model"]
  ema_params = trees.get("ema", params)
  dtypes = sorted({str(np.asarray(v).dtype) for v in model_sd.values()})
  record = {"source": path, "sha256": weights.sha256_file(path), "layout": layout,
            "published": dataclasses.asdict(settings), "source_dtypes": dtypes,
            "params_from": "model", "ema_params_from": "ema" if "ema" in trees else "model",
            "step": int(step), "format": "torch state dict of UNet_conditional"}
  out = write_workdir(config, workdir, params, ema_params, step=step, record=record)
  logging.info("Converted %s (%s; width %d, %d classes) into %s at step %d.", path, layout,
               settings.width, settings.num_classes, out, int(step))
  return out


def convert_from_config(config, workdir: str) -> str:
  """--mode=convert: converts config.convert.torch_checkpoint at config.convert.step (0)."""
  path = config.convert.torch_checkpoint
  if not path:
    raise ConversionSettingsError(
        "config.convert.torch_checkpoint is empty: pass the published checkpoint with "
        "--config.convert.torch_checkpoint=/path/to/ckpt.pt.")
  return convert_torch_checkpoint(config, path, workdir, step=int(config.convert.step))
