r"""Sampling from a checkpoint: any number of images per flare class, sharded over all devices.

    python -m solar_ddpm_jax.main --config=configs/aia171.py:demo --workdir=/tmp/demo \
        --mode=sample --config.sampling.num_per_class=64 --config.sampling.guidance_scale=3

writes <workdir>/samples/<settings>/: samples.npz (float images in the model range and in DN/s,
labels, settings), grid.png (one row per class, AIA colormap) and fits/ (one image each, DN/s).
"""

from __future__ import annotations

import collections
import json
import os

import jax
import numpy as np
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, checkpointing, outputs, sharding


def sample_images(sample_fn, params, labels, *, seed: int, batch_size: int, mesh,
                  num_classes: int | None = None) -> np.ndarray:
  """Runs `sample_fn(params, labels, key)` over `labels` in fixed-size sharded batches.

  The labels are cut into batches of `batch_size` (fewer when there are fewer labels) and batch i
  uses key fold_in(key(seed), i); each batch is padded to a multiple of the device count (one
  compilation), and the padding rows come after the real ones, whose noise does not depend on
  them. So the same (labels, seed, batch_size) give the same images on any number of devices.
  Labels are checked against `num_classes` when given. Returns host numpy images [N,H,W,C] on
  every process.
  """
  if num_classes is not None:
    from solar_ddpm_jax import samplers
    samplers.check_labels(labels, num_classes)
  labels = np.asarray(labels, np.int32)
  if labels.size == 0:
    raise ValueError("No labels to sample: give at least one class and one image per class.")
  n_dev = mesh.devices.size
  batch_size = max(1, min(int(batch_size), len(labels)))
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
    out.append(sharding.global_to_host(images)[:len(chunk)])
  return np.concatenate(out, axis=0).astype(np.float32)


def parse_classes(classes: str) -> list[int]:
  """"A,B,M" -> label indices [0, 1, 3]."""
  names = [c.strip().upper() for c in str(classes).split(",") if c.strip()]
  unknown = [c for c in names if c not in FLARE_CLASSES]
  if unknown:
    raise ValueError(f"Unknown flare classes {unknown}; use some of {', '.join(FLARE_CLASSES)}.")
  return [FLARE_CLASSES.index(c) for c in names]


def sampling_config(config, *, guidance_scale=None, sampler=None, num_steps=None):
  """A copy of `config` with the sampling settings overridden where given."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    if guidance_scale is not None:
      out.sampling.guidance_scale = float(guidance_scale)
    if sampler is not None:
      out.sampling.sampler = str(sampler)
    if num_steps is not None:
      out.sampling.num_steps = int(num_steps)
  return out


_PARAMS_CACHE: dict = {}  # (workdir, step, ema) -> (params, step): one restore per checkpoint.


def _params(config, workdir: str):
  step = int(config.sampling.checkpoint_step)
  if step < 0:
    step = checkpointing.latest_step(workdir)
    if step is None:
      raise FileNotFoundError(f"No checkpoint under {checkpointing.checkpoint_dir(workdir)}: "
                              "train first (--mode=train).")
  key = (os.path.abspath(workdir), step, bool(config.sampling.use_ema))
  if key not in _PARAMS_CACHE:
    _PARAMS_CACHE.clear()
    _PARAMS_CACHE[key] = checkpointing.restore_params_and_step(
        config, workdir, step, ema=bool(config.sampling.use_ema))
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
  from solar_ddpm_jax import diffusion, samplers, train, unet
  s = cfg.sampling
  key = json.dumps([cfg.model.to_dict(), cfg.diffusion.to_dict(), cfg.mesh.to_dict(), s.sampler,
                    int(s.num_steps), float(s.eta), s.ddpm_variance, bool(s.clip_x0)],
                   sort_keys=True, default=str)
  if key in _SAMPLE_FN_CACHE:
    _SAMPLE_FN_CACHE.move_to_end(key)
    return _SAMPLE_FN_CACHE[key]
  mesh = sharding.create_mesh(cfg.mesh)
  apply_fn = train.make_apply_fn(unet.create_model(cfg.model))
  _SAMPLE_FN_CACHE[key] = (mesh, samplers.make_sample_fn(
      apply_fn, diffusion.make_schedule(cfg.diffusion), cfg, mesh))
  while len(_SAMPLE_FN_CACHE) > _SAMPLE_FN_CACHE_SIZE:
    _SAMPLE_FN_CACHE.popitem(last=False)
  return _SAMPLE_FN_CACHE[key]


def _generate(config, workdir, labels, *, guidance_scale, sampler, num_steps, seed):
  cfg = sampling_config(config, guidance_scale=guidance_scale, sampler=sampler,
                        num_steps=num_steps)
  params, step = _params(cfg, workdir)
  mesh, sample_fn = _sample_fn(cfg)
  w = float(cfg.sampling.guidance_scale)
  images = sample_images(lambda p, y, k: sample_fn(p, y, k, guidance_scale=w), params, labels,
                         seed=seed, batch_size=int(cfg.sampling.batch_size), mesh=mesh,
                         num_classes=int(cfg.model.num_classes))
  return images, cfg, step


def settings_tag(cfg, step: int) -> str:
  """Folder name that says how a sample set was made: every setting that changes the images.

  step, sampler, steps, guidance, seed and batch size (batch i draws its noise from
  fold_in(seed, i)) always; then, where they apply and differ from the defaults, DDIM's eta,
  DDPM's posterior variance, x0 clipping and the raw (non-EMA) weights.
  """
  s = cfg.sampling
  tag = (f"step{step}_{s.sampler}_n{int(s.num_steps)}_w{float(s.guidance_scale):g}"
         f"_seed{int(s.seed)}_b{int(s.batch_size)}")
  if s.sampler == "ddim" and float(s.eta) != 0.0:
    tag += f"_eta{float(s.eta):g}"
  if s.sampler == "ddpm" and s.ddpm_variance != "beta":
    tag += f"_{s.ddpm_variance}"
  if bool(s.clip_x0):
    tag += "_clip"
  if not bool(s.use_ema):
    tag += "_raw"
  return tag


def sample_and_save(config, workdir: str) -> str:
  """--mode=sample: samples config.sampling.num_per_class images per class and writes them."""
  classes = parse_classes(config.sampling.classes)
  if not classes or int(config.sampling.num_per_class) < 1:
    raise ValueError(f"sampling.classes={config.sampling.classes!r} and sampling.num_per_class="
                     f"{config.sampling.num_per_class}: give at least one of A,B,C,M,X and one "
                     "image per class.")
  labels = np.repeat(np.asarray(classes, np.int32), int(config.sampling.num_per_class))
  images, cfg, step = _generate(config, workdir, labels, guidance_scale=None, sampler=None,
                                num_steps=None, seed=int(config.sampling.seed))
  out_dir = os.path.join(os.path.abspath(workdir), "samples", settings_tag(cfg, step))
  if jax.process_index() != 0:
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  s = cfg.sampling
  from solar_ddpm_jax import samplers
  grid_steps = len(samplers.config_grid(cfg))
  settings = {"sampler": s.sampler, "num_steps": int(s.num_steps), "grid_steps": grid_steps,
              "guidance_scale": float(s.guidance_scale), "seed": int(s.seed),
              "batch_size": int(s.batch_size),
              "eta": float(s.eta), "ddpm_variance": s.ddpm_variance, "clip_x0": bool(s.clip_x0),
              "use_ema": bool(s.use_ema), "checkpoint_step": step, "preset": cfg.preset,
              **outputs.sample_data_settings(cfg.data)}
  dn_per_s = outputs.to_dn_per_s(images, cfg.data)
  np.savez(os.path.join(out_dir, "samples.npz"), images=images, images_dn_per_s=dn_per_s,
           labels=labels, flare_class=np.asarray([FLARE_CLASSES[i] for i in labels]),
           settings=json.dumps(settings))
  outputs.save_class_grid(
      images, labels, os.path.join(out_dir, "grid.png"),
      wavelength_a=int(cfg.data.channels[0]),
      title=f"{s.sampler} {int(s.num_steps)} steps, w={float(s.guidance_scale):g}, step {step}")
  fits_dir = os.path.join(out_dir, "fits")
  if os.path.isdir(fits_dir):  # A rerun with the same settings replaces every file of the last.
    for name in os.listdir(fits_dir):
      if name.endswith(".fits"):
        os.remove(os.path.join(fits_dir, name))
  if s.write_fits:
    for i, (img, label) in enumerate(zip(dn_per_s, labels, strict=True)):
      for c, wavelength in enumerate(cfg.data.channels):
        header = outputs.fits_header(
            resolution=img.shape[0], wavelength_a=int(wavelength),
            flare_class=FLARE_CLASSES[label], guidance_scale=float(s.guidance_scale),
            sampler=s.sampler, num_steps=int(s.num_steps), seed=int(s.seed),
            checkpoint_step=step, index=i, preset=cfg.preset, batch_size=int(s.batch_size),
            grid_steps=grid_steps)
        outputs.write_fits(os.path.join(fits_dir, f"{FLARE_CLASSES[label]}_{i:05d}_"
                                        f"{int(wavelength)}.fits"), img[..., c], header)
  logging.info("Wrote %d samples (%s) to %s.", len(labels), settings_tag(cfg, step), out_dir)
  return out_dir
