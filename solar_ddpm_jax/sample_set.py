"""A sample set on disk, <workdir>/samples/<settings tag>/: its folder name (every setting that
changes the images), a check that the folder can be written, and the writer that fills it batch by
batch: FITS files and batches/<first index>.npz as the images are made, samples.npz and grid.png
once all are (then batches/ is removed), so a run stopped late keeps every finished batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import jax
import numpy as np

from solar_ddpm_jax import FLARE_CLASSES, outputs
from solar_ddpm_jax.errors import SettingsError

BATCHES_DIR = "batches"  # Per-batch .npz files of a sample set being written (removed at the end).


def settings_tag(cfg, step: int) -> str:
  """Folder name that says how a sample set was made: every setting that changes the images.

  step, sampler, steps, guidance, seed and batch size (batch i draws its noise from
  fold_in(seed, i)) always; then, where they apply and differ from the defaults, DDIM's eta,
  DDPM's posterior variance, x0 clipping, the raw (non-EMA) weights, an explicit timestep grid
  (n<points>_t<its hash>: the grid itself is in the settings of samples.npz), the published
  guidance convention (_cfgpub), a guidance interval (_gi<lo>-<hi>) and rescaling (_gr<phi>).
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
  if s.guidance_convention != "project":
    tag += "_cfgpub"
  interval = tuple(float(v) for v in s.get("guidance_interval", ()))
  if interval:
    tag += f"_gi{interval[0]:g}-{interval[1]:g}"
  if float(s.get("guidance_rescale", 0.0)):
    tag += f"_gr{float(s.guidance_rescale):g}"
  return tag


def guidance_settings(s) -> dict:
  """How guidance is shaped (the interval of t/T it acts on, the rescale phi), as every result
  records it; `s` is config.sampling or a dict holding those keys."""
  return {"guidance_interval": [float(v) for v in s.get("guidance_interval", ())],
          "guidance_rescale": float(s.get("guidance_rescale", 0.0))}


def guidance_note(s) -> str:
  """' on t/T in [lo, hi]' and ', rescaled phi' for a grid's title, where they shape guidance."""
  g = guidance_settings(s)
  interval, rescale = g["guidance_interval"], g["guidance_rescale"]
  note = f" on t/T in [{interval[0]:g}, {interval[1]:g}]" if interval else ""
  return note + (f", rescaled {rescale:g}" if rescale else "")


def timesteps_hash(timesteps) -> str:
  """8 hex digits naming an explicit timestep grid in a folder name."""
  return hashlib.sha256(",".join(str(int(t)) for t in timesteps).encode()).hexdigest()[:8]


def check_writable(out_dir: str) -> None:
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


class SampleSetWriter:
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
        "guidance_convention": str(s.guidance_convention), **guidance_settings(s),
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
        title=f"{s.sampler} {int(s.num_steps)} steps, w={float(s.guidance_scale):g}"
              f"{guidance_note(s)}, step {self.step}")
    self._remove_batches()
