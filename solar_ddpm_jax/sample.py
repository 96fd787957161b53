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
import hashlib
import json
import os
import tempfile

import jax
import numpy as np
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, checkpointing, outputs, sharding
from solar_ddpm_jax.errors import NonFiniteError, SettingsError

BATCHES_DIR = "batches"  # Per-batch .npz files of a sample set being written (removed at the end).


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
                    str(s.get("guidance_convention", "project"))],
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


def settings_tag(cfg, step: int) -> str:
  """Folder name that says how a sample set was made: every setting that changes the images.

  step, sampler, steps, guidance, seed and batch size (batch i draws its noise from
  fold_in(seed, i)) always; then, where they apply and differ from the defaults, DDIM's eta,
  DDPM's posterior variance, x0 clipping, the raw (non-EMA) weights, an explicit timestep grid
  (n<points>_t<its hash>: the grid itself is in the settings of samples.npz) and the published
  guidance convention (_cfgpub).
  """
  from solar_ddpm_jax import samplers
  s = cfg.sampling
  timesteps = samplers.config_timesteps(s)
  steps = f"n{len(timesteps)}_t{timesteps_hash(timesteps)}" if timesteps else f"n{int(s.num_steps)}"
  tag = (f"step{step}_{s.sampler}_{steps}_w{float(s.guidance_scale):g}"
         f"_seed{int(s.seed)}_b{int(s.batch_size)}")
  if s.sampler == "ddim" and float(s.eta) != 0.0:
    tag += f"_eta{float(s.eta):g}"
  if s.sampler == "ddpm" and s.ddpm_variance != "beta":
    tag += f"_{s.ddpm_variance}"
  if bool(s.clip_x0):
    tag += "_clip"
  if not bool(s.use_ema):
    tag += "_raw"
  if s.get("guidance_convention", "project") != "project":
    tag += "_cfgpub"
  return tag


def timesteps_hash(timesteps) -> str:
  """8 hex digits naming an explicit timestep grid in a folder name."""
  return hashlib.sha256(",".join(str(int(t)) for t in timesteps).encode()).hexdigest()[:8]


def _check_writable(out_dir: str) -> None:
  """Creates `out_dir` and writes a probe file there; a SettingsError naming it when it cannot.

  Run before anything is restored or compiled: a long sampling run must not end in an unwritable
  folder. In a multi-process job process 0 (the one that writes) decides for every process.
  """
  problem = None
  if jax.process_index() == 0:
    try:
      os.makedirs(out_dir, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write_probe"):
        pass
    except OSError as e:
      problem = f"{type(e).__name__}: {e.strerror or e}"
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    failed = bool(multihost_utils.broadcast_one_to_all(np.asarray(problem is not None)))
    problem = problem or ("process 0 cannot write there" if failed else None)
  if problem:
    raise SettingsError(
        f"Cannot write the samples to {out_dir} ({problem}). Give a --workdir that can be "
        "written (the samples go to <workdir>/samples/<settings>/), or free that path.")


class _SampleSetWriter:
  """Writes one sample set batch by batch (process 0): FITS files and batches/*.npz as the images
  are made, samples.npz and grid.png once all are, so a run stopped late keeps what it made."""

  def __init__(self, out_dir: str, cfg, step: int, labels: np.ndarray):
    from solar_ddpm_jax import samplers
    self.out_dir, self.cfg, self.step, self.labels = out_dir, cfg, step, labels
    s = cfg.sampling
    self.grid_steps = len(samplers.config_grid(cfg))
    self.settings = {
        "sampler": s.sampler, "num_steps": int(s.num_steps), "grid_steps": self.grid_steps,
        "guidance_scale": float(s.guidance_scale), "seed": int(s.seed),
        "batch_size": int(s.batch_size), "eta": float(s.eta), "ddpm_variance": s.ddpm_variance,
        "clip_x0": bool(s.clip_x0), "use_ema": bool(s.use_ema), "checkpoint_step": step,
        "timesteps": [int(t) for t in samplers.config_timesteps(s)],
        "guidance_convention": str(s.get("guidance_convention", "project")),
        "preset": cfg.preset, **outputs.sample_data_settings(cfg.data)}
    self.fits_dir = os.path.join(out_dir, "fits")
    self.batches_dir = os.path.join(out_dir, BATCHES_DIR)
    self.written = 0
    self._dn_per_s = []

  def clear(self) -> None:
    """Removes the files of an earlier set in the same folder: one folder never mixes two runs."""
    for name in ("samples.npz", "grid.png"):
      path = os.path.join(self.out_dir, name)
      if os.path.exists(path):
        os.remove(path)
    if os.path.isdir(self.fits_dir):
      for name in os.listdir(self.fits_dir):
        if name.endswith(".fits"):
          os.remove(os.path.join(self.fits_dir, name))
    self._remove_batches()

  def _remove_batches(self) -> None:
    """Removes batches/ (flat: the .npz files of one set, perhaps a .tmp of a stopped write)."""
    if os.path.isdir(self.batches_dir):
      for name in os.listdir(self.batches_dir):
        os.remove(os.path.join(self.batches_dir, name))
      os.rmdir(self.batches_dir)

  def _arrays(self, images, dn_per_s, labels) -> dict:
    return {"images": images, "images_dn_per_s": dn_per_s, "labels": labels,
            "flare_class": np.asarray([FLARE_CLASSES[i] for i in labels]),
            "settings": json.dumps(self.settings)}

  @staticmethod
  def _save_npz(path: str, arrays: dict) -> None:
    """np.savez to a temporary name, then renamed: a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)

  def write_batch(self, start: int, images: np.ndarray) -> None:
    """The FITS files and batches/<start>.npz of images [start, start + len(images))."""
    labels = self.labels[start:start + len(images)]
    dn_per_s = outputs.to_dn_per_s(images, self.cfg.data)
    self._dn_per_s.append(dn_per_s)
    s = self.cfg.sampling
    if s.write_fits:
      for j, (img, label) in enumerate(zip(dn_per_s, labels, strict=True)):
        i = start + j
        for c, wavelength in enumerate(self.cfg.data.channels):
          header = outputs.fits_header(
              resolution=img.shape[0], wavelength_a=int(wavelength),
              flare_class=FLARE_CLASSES[label], guidance_scale=float(s.guidance_scale),
              sampler=s.sampler, num_steps=int(s.num_steps), seed=int(s.seed),
              checkpoint_step=self.step, index=i, preset=self.cfg.preset,
              batch_size=int(s.batch_size), grid_steps=self.grid_steps)
          outputs.write_fits(os.path.join(self.fits_dir, f"{FLARE_CLASSES[label]}_{i:05d}_"
                                          f"{int(wavelength)}.fits"), img[..., c], header)
    os.makedirs(self.batches_dir, exist_ok=True)
    arrays = self._arrays(images, dn_per_s, labels)
    del arrays["images_dn_per_s"]  # In the FITS files, and outputs.to_dn_per_s of the images.
    self._save_npz(os.path.join(self.batches_dir, f"{start:06d}.npz"),
                   {**arrays, "start": np.int64(start)})
    self.written = start + len(images)

  def finish(self, images: np.ndarray) -> None:
    """samples.npz and grid.png of the whole set; then the per-batch files go."""
    s = self.cfg.sampling
    self._save_npz(os.path.join(self.out_dir, "samples.npz"),
                   self._arrays(images, np.concatenate(self._dn_per_s, axis=0), self.labels))
    outputs.save_class_grid(
        images, self.labels, os.path.join(self.out_dir, "grid.png"),
        wavelength_a=int(self.cfg.data.channels[0]),
        title=f"{s.sampler} {int(s.num_steps)} steps, w={float(s.guidance_scale):g}, "
              f"step {self.step}")
    self._remove_batches()


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
  _check_writable(out_dir)
  writer = None
  if jax.process_index() == 0:
    writer = _SampleSetWriter(out_dir, cfg, step, labels)
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
