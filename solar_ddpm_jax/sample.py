r"""Sampling from a checkpoint: any number of images per flare class, sharded over all devices.

    python -m solar_ddpm_jax.main --config=configs/aia171.py:demo --workdir=/tmp/demo \
        --mode=sample --config.sampling.num_per_class=64 --config.sampling.guidance_scale=3

writes <workdir>/samples/<settings>/: samples.npz (float images in the model range and in DN/s,
labels, settings), grid.png (one row per class, AIA colormap) and fits/ (one image each, DN/s).

The files are written as the images are made: each batch's FITS files and a batches/<first
index>.npz (the batch's images, labels and settings) as soon as the batch is done, then
samples.npz and grid.png at the end, when batches/ is removed. A run stopped late keeps every
finished batch. Nothing non-finite is written: a checkpoint whose parameters hold NaN or Inf is
refused, and so is every batch of images that does (NonFiniteError).

Reproducibility: the same checkpoint, labels, seed, batch size and settings give bitwise the same
images when rerun on the same number of devices on the same machine. On another device count the
images agree to float32 rounding (about 1e-6 on CPU, 1 vs 8 devices), not bitwise: XLA compiles
each layout to its own program, whose reductions may be ordered differently.
"""

from __future__ import annotations

import collections
import json
import os

import jax
import numpy as np
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, checkpointing, sharding
from solar_ddpm_jax.errors import NonFiniteError, SettingsError
from solar_ddpm_jax.sample_set import (  # The sample set's folder and files; importable from here.
    BATCHES_DIR,
    SampleSetWriter,
    check_writable,
    settings_tag,
    timesteps_hash,
)

__all__ = ["BATCHES_DIR", "SampleSetWriter", "check_batch_size", "generate", "parse_classes",
           "sample_and_save", "sample_images", "sampling_config", "settings_tag",
           "timesteps_hash"]


def check_batch_size(batch_size) -> int:
  """sampling.batch_size as an int >= 1; anything else is a SettingsError naming the setting."""
  try:
    value = int(batch_size)
  except (TypeError, ValueError):
    value = None
  if value is None or value != batch_size or value < 1:
    raise SettingsError(
        f"sampling.batch_size={batch_size!r}: the number of images per sampling batch must be a "
        "whole number >= 1 (with the seed it sets the noise of every image; a multiple of the "
        "device count wastes nothing), e.g. --config.sampling.batch_size=8.")
  return value


def sample_images(sample_fn, params, labels, *, seed: int, batch_size: int, mesh,
                  num_classes: int | None = None, on_batch=None) -> np.ndarray:
  """Runs `sample_fn(params, labels, key)` over `labels` in fixed-size sharded batches.

  The labels are cut into batches of `batch_size` (fewer when there are fewer labels) and batch i
  uses key fold_in(key(seed), i); each batch is padded to a multiple of the device count (one
  compilation), and the padding rows come after the real ones, whose noise does not depend on
  them. So the same (labels, seed, batch_size) draw the same noise on any number of devices; the
  images are bitwise the same on the same device count and agree to float32 rounding across
  device counts. Labels are checked against `num_classes` when given; a batch_size below 1 is a
  SettingsError. `on_batch(start, images)`, when given, gets each batch's host images (those of
  labels[start:start + len(images)]) as soon as the batch is done, to check or write them.
  Returns host numpy images [N,H,W,C] on every process.
  """
  if num_classes is not None:
    from solar_ddpm_jax import samplers
    samplers.check_labels(labels, num_classes)
  labels = np.asarray(labels, np.int32)
  if labels.size == 0:
    raise ValueError("No labels to sample: give at least one class and one image per class.")
  n_dev = mesh.devices.size
  batch_size = min(check_batch_size(batch_size), len(labels))
  padded_size = -(-batch_size // n_dev) * n_dev
  if padded_size != batch_size:
    logging.info("Sampling batches of %d padded to %d for %d devices (a multiple of the device "
                 "count wastes nothing).", batch_size, padded_size, n_dev)
  out = []
  for i, start in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros(padded_size - len(chunk), np.int32)])
    key_data = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), i)))
    key = jax.random.wrap_key_data(sharding.host_to_global(mesh, key_data, replicate=True))
    images = sample_fn(params, sharding.host_to_global(mesh, padded), key)
    out.append(np.asarray(sharding.global_to_host(images)[:len(chunk)], np.float32))
    if on_batch is not None:
      on_batch(start, out[-1])
  return np.concatenate(out, axis=0)


def parse_classes(classes: str) -> list[int]:
  """"A,B,M" -> label indices [0, 1, 3]."""
  names = [c.strip().upper() for c in str(classes).split(",") if c.strip()]
  unknown = [c for c in names if c not in FLARE_CLASSES]
  if unknown:
    raise ValueError(f"Unknown flare classes {unknown}; use some of {', '.join(FLARE_CLASSES)}.")
  return [FLARE_CLASSES.index(c) for c in names]


def sampling_config(config, *, guidance_scale=None, sampler=None, num_steps=None):
  """A copy of `config` with the sampling settings overridden where given.

  A step count given here asks for the sampler's own grid of that many steps: it replaces an
  explicit sampling.timesteps grid (cleared), as a sampler given here would not follow it either.
  """
  out = config.copy_and_resolve_references()
  with out.unlocked():
    if guidance_scale is not None:
      out.sampling.guidance_scale = float(guidance_scale)
    if sampler is not None:
      out.sampling.sampler = str(sampler)
    if num_steps is not None:
      out.sampling.num_steps = int(num_steps)
      if "timesteps" in out.sampling:
        out.sampling.timesteps = ()
  return out


_PARAMS_CACHE: dict = {}  # (workdir, step, ema) -> (params, step): one restore per checkpoint.


def _checkpoint_step(config, workdir: str) -> int:
  """sampling.checkpoint_step, or the latest checkpoint's step when it is negative."""
  step = int(config.sampling.checkpoint_step)
  if step < 0:
    step = checkpointing.latest_step(workdir)
    if step is None:
      raise FileNotFoundError(f"No checkpoint under {checkpointing.checkpoint_dir(workdir)}: "
                              "train first (--mode=train).")
  return step


def _params(config, workdir: str):
  """(parameters, step) of the checkpoint to sample from; NonFiniteError when they are not finite.

  Checked once per restore (one fused reduction on the devices): NaN or Inf weights can only make
  NaN images, which would otherwise be written as files without a word.
  """
  step = _checkpoint_step(config, workdir)
  ema = bool(config.sampling.use_ema)
  key = (os.path.abspath(workdir), step, ema)
  if key not in _PARAMS_CACHE:
    _PARAMS_CACHE.clear()
    params, step = checkpointing.restore_params_and_step(config, workdir, step, ema=ema)
    if not checkpointing.all_finite(params):
      raise NonFiniteError(
          f"The {'EMA ' if ema else ''}parameters of the checkpoint of step {step} in "
          f"{checkpointing.checkpoint_dir(workdir)} are not finite (NaN or Inf): every image "
          "sampled from them would be NaN. Sample from an earlier checkpoint "
          "(--config.sampling.checkpoint_step=<step>; the steps are the folder names there).")
    _PARAMS_CACHE[key] = (params, step)
  return _PARAMS_CACHE[key]


def generate(config, workdir: str, labels, *, guidance_scale=None, sampler=None, num_steps=None,
             seed: int = 0) -> np.ndarray:
  """Images [N,R,R,C] in [-1, 1] of the given labels from the checkpoint in `workdir`."""
  return _generate(config, workdir, labels, guidance_scale=guidance_scale, sampler=sampler,
                   num_steps=num_steps, seed=seed)[0]


# Settings that shape the program -> (mesh, sample_fn), least recently used first. A few entries, so
# that a run alternating between two samplers (the classifier experiment's synthetic images and the
# evaluation's) compiles each once.
_SAMPLE_FN_CACHE: collections.OrderedDict = collections.OrderedDict()
_SAMPLE_FN_CACHE_SIZE = 4


def _sample_fn(cfg):
  """The compiled sampler for `cfg`, shared by calls that differ only in guidance scale or seed.

  The guidance scale is a traced argument of the sample function, so a sweep over scales (the
  evaluation report, the classifier experiment) compiles once per batch size.
  """
  from solar_ddpm_jax import diffusion, samplers, unet
  s = cfg.sampling
  key = json.dumps([cfg.model.to_dict(), cfg.diffusion.to_dict(), cfg.mesh.to_dict(), s.sampler,
                    int(s.num_steps), float(s.eta), s.ddpm_variance, bool(s.clip_x0),
                    [int(t) for t in samplers.config_timesteps(s)],
                    str(s.guidance_convention), float(s.get("guidance_rescale", 0.0)),
                    [float(v) for v in s.get("guidance_interval", ())]],
                   sort_keys=True, default=str)
  if key in _SAMPLE_FN_CACHE:
    _SAMPLE_FN_CACHE.move_to_end(key)
    return _SAMPLE_FN_CACHE[key]
  mesh = sharding.create_mesh(cfg.mesh)
  apply_fn = unet.make_apply_fn(unet.create_model(cfg.model))
  _SAMPLE_FN_CACHE[key] = (mesh, samplers.make_sample_fn(
      apply_fn, diffusion.make_schedule(cfg.diffusion), cfg, mesh))
  while len(_SAMPLE_FN_CACHE) > _SAMPLE_FN_CACHE_SIZE:
    _SAMPLE_FN_CACHE.popitem(last=False)
  return _SAMPLE_FN_CACHE[key]


def _generate(config, workdir, labels, *, guidance_scale, sampler, num_steps, seed,
              on_batch=None):
  """(images, config, checkpoint step); each batch is checked to be finite before `on_batch`."""
  cfg = sampling_config(config, guidance_scale=guidance_scale, sampler=sampler,
                        num_steps=num_steps)
  check_batch_size(cfg.sampling.batch_size)
  params, step = _params(cfg, workdir)
  mesh, sample_fn = _sample_fn(cfg)
  w = float(cfg.sampling.guidance_scale)

  def checked(start, images):
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if not finite.all():
      raise NonFiniteError(
          f"{int(np.sum(~finite))} of the {len(images)} images {start}..{start + len(images) - 1} "
          f"sampled from the checkpoint of step {step} in {checkpointing.checkpoint_dir(workdir)} "
          f"(sampler {cfg.sampling.sampler}, {int(cfg.sampling.num_steps)} steps, guidance "
          f"scale {w:g}) are not finite (NaN or Inf): not written. Try a lower "
          "sampling.guidance_scale, sampling.clip_x0=True, another sampler or an earlier "
          "checkpoint.")
    if on_batch is not None:
      on_batch(start, images)

  images = sample_images(lambda p, y, k: sample_fn(p, y, k, guidance_scale=w), params, labels,
                         seed=seed, batch_size=int(cfg.sampling.batch_size), mesh=mesh,
                         num_classes=int(cfg.model.num_classes), on_batch=checked)
  return images, cfg, step


def sample_and_save(config, workdir: str) -> str:
  """--mode=sample: samples config.sampling.num_per_class images per class and writes them.

  Before anything is restored or compiled: the settings are checked and the output folder is
  made and written to. Each batch is written as soon as it is made (see the module docstring).
  """
  classes = parse_classes(config.sampling.classes)
  if not classes or int(config.sampling.num_per_class) < 1:
    raise SettingsError(
        f"sampling.classes={config.sampling.classes!r} and sampling.num_per_class="
        f"{config.sampling.num_per_class}: give at least one of A,B,C,M,X and one image per "
        "class.")
  check_batch_size(config.sampling.batch_size)
  labels = np.repeat(np.asarray(classes, np.int32), int(config.sampling.num_per_class))
  cfg = sampling_config(config)
  step = _checkpoint_step(cfg, workdir)
  cfg.sampling.checkpoint_step = step  # The one named in the folder, even if training goes on.
  out_dir = os.path.join(os.path.abspath(workdir), "samples", settings_tag(cfg, step))
  check_writable(out_dir)
  writer = None
  if jax.process_index() == 0:
    writer = SampleSetWriter(out_dir, cfg, step, labels)
    writer.clear()
  try:
    images, cfg, step = _generate(cfg, workdir, labels, guidance_scale=None, sampler=None,
                                  num_steps=None, seed=int(cfg.sampling.seed),
                                  on_batch=writer.write_batch if writer else None)
  except BaseException:
    if writer is not None and writer.written:
      logging.warning("Sampling stopped after %d of %d images; those are kept in %s (fits/, %s/).",
                      writer.written, len(labels), out_dir, BATCHES_DIR)
    raise
  if writer is None:
    return out_dir
  writer.finish(images)
  logging.info("Wrote %d samples (%s) to %s.", len(labels), settings_tag(cfg, step), out_dir)
  return out_dir
