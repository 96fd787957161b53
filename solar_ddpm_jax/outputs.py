"""Outputs of the model for people: PNG grids in the AIA colormaps, FITS files in DN/s.

Images leave the model in [-1, 1]; `to_dn_per_s` inverts the preprocessing of the data set
(tfds_aia.preprocess), and `fits_header` writes an AIA-like header that `sunpy.map.Map` reads,
scaled to the sampled resolution and marked as synthetic everywhere a reader could look.
"""

from __future__ import annotations

import os

import numpy as np

from solar_ddpm_jax import FLARE_CLASSES
from tfds_aia import preprocess

AIA_PLATE_SCALE_ARCSEC = 0.6  # Arcsec per pixel of a level-1.5 frame.
RSUN_OBS_ARCSEC = 960.0  # Nominal solar radius seen from 1 AU (the frame's disc).
DSUN_OBS_M = 1.495978707e11  # Observer distance: 1 AU.
PLACEHOLDER_DATE_OBS = "2000-01-01T00:00:00.000"  # Not an observation time: samples are synthetic.


def _colormap(wavelength_a: int = 171):
  """sunpy's AIA colormap of a channel (registered in matplotlib by sunpy)."""
  import matplotlib
  import sunpy.visualization.colormaps  # noqa: F401  (registers sdoaia* in matplotlib)
  name = f"sdoaia{int(wavelength_a)}"
  return matplotlib.colormaps[name] if name in matplotlib.colormaps else matplotlib.colormaps[
      "sdoaia171"]


def to_rgb(images, wavelength_a: int = 171, channel: int = 0) -> np.ndarray:
  """Model-range images [N,H,W,C] in [-1, 1] -> RGB uint8 [N,H,W,3] for display only."""
  x = np.clip((np.asarray(images, np.float32)[..., channel] + 1.0) / 2.0, 0.0, 1.0)
  return (_colormap(wavelength_a)(x)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def class_grid(images, labels, wavelength_a: int = 171, gap_px: int = 1):
  """(RGB grid [rows*H, cols*W, 3], row names): one row per flare class present in `labels`."""
  images, labels = np.asarray(images), np.asarray(labels)
  rgb = to_rgb(images, wavelength_a)
  classes = [c for c in range(len(FLARE_CLASSES) + 1) if np.any(labels == c)]
  cols = max(int(np.sum(labels == c)) for c in classes)
  h, w = rgb.shape[1:3]
  grid = np.zeros((len(classes) * (h + gap_px) - gap_px, cols * (w + gap_px) - gap_px, 3),
                  np.uint8)
  for r, c in enumerate(classes):
    for j, img in enumerate(rgb[labels == c]):
      grid[r * (h + gap_px):r * (h + gap_px) + h, j * (w + gap_px):j * (w + gap_px) + w] = img
  names = [FLARE_CLASSES[c] if c < len(FLARE_CLASSES) else "uncond" for c in classes]
  return grid, names


def save_class_grid(images, labels, path: str, wavelength_a: int = 171,
                    title: str = "") -> np.ndarray:
  """Writes a PNG grid (rows = flare classes, labelled) and returns its RGB array."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  grid, names = class_grid(images, labels, wavelength_a)
  h = np.asarray(images).shape[1]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  scale = max(1.0, 96.0 / h)  # Small images drawn large enough to see.
  fig = plt.figure(figsize=(grid.shape[1] * scale / 100 + 0.6, grid.shape[0] * scale / 100 + 0.4),
                   dpi=100)
  ax = fig.add_axes((0.5 / (grid.shape[1] * scale / 100 + 0.6), 0.0,
                     1 - 0.5 / (grid.shape[1] * scale / 100 + 0.6),
                     1 - 0.4 / (grid.shape[0] * scale / 100 + 0.4)))
  ax.imshow(grid, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([(h + 1) * r + h / 2 for r in range(len(names))], names)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  ax.set_title(title or f"AIA {wavelength_a} A (synthetic)", fontsize=8)
  fig.savefig(path)
  plt.close(fig)
  return grid


# The data settings that fix how model-range images map back to DN/s (to_dn_per_s); sample .npz
# files record them, and an evaluation of such a file requires its own to be the same.
SAMPLE_DATA_KEYS = ("resolution", "channels", "dn_ceiling", "stretch", "asinh_a", "downsample",
                    "frame_px")


def sample_data_settings(data_config) -> dict:
  """The SAMPLE_DATA_KEYS of a config.data group, as JSON-ready values."""
  d = data_config
  return {"resolution": int(d.resolution), "channels": [int(c) for c in d.channels],
          "dn_ceiling": [float(c) for c in d.dn_ceiling], "stretch": str(d.stretch),
          "asinh_a": float(d.asinh_a), "downsample": str(d.downsample),
          "frame_px": int(preprocess.frame_px(d))}


def to_dn_per_s(images, data_config) -> np.ndarray:
  """Model-range images [N,H,W,C] -> DN/s per output pixel, inverting the data preprocessing.

  With "sum" downsampling a pixel holds the sum of the f x f source pixels it covers, so the clip
  ceiling is dn_ceiling * f^2 (tfds_aia.preprocess.effective_ceiling), f from data.frame_px.
  """
  images = np.asarray(images, np.float32)
  ceiling = preprocess.effective_ceiling(
      np.asarray(data_config.dn_ceiling, np.float64)[:images.shape[-1]],
      preprocess.frame_px(data_config), images.shape[1], data_config.downsample)
  return preprocess.to_dn_per_s(images, ceiling, data_config.stretch,
                                float(data_config.asinh_a)).astype(np.float32)


def fits_header(*, resolution: int, wavelength_a: int, flare_class: str, guidance_scale: float,
                sampler: str, num_steps: int, seed: int, checkpoint_step: int, index: int,
                preset: str = "", batch_size: int = 0, grid_steps: int | None = None):
  """An AIA-like header for a synthetic full-disc image of `resolution` px (sunpy reads it)."""
  from astropy.io import fits
  h = fits.Header()
  cdelt = AIA_PLATE_SCALE_ARCSEC * preprocess.AIA_FULL_FRAME_PX / resolution
  center = (resolution + 1) / 2.0
  cards = [
      ("TELESCOP", "SDO/AIA", "Imitated instrument; this image is SYNTHETIC"),
      ("INSTRUME", "AIA_3", "AIA camera of the imitated channel family"),
      ("ORIGIN", "solar-ddpm-jax", "Generated by a diffusion model, not observed"),
      ("OBJECT", "Synthetic full disc", ""),
      ("SYNTHETC", True, "T: generated image, not an observation"),
      ("DATE-OBS", PLACEHOLDER_DATE_OBS, "PLACEHOLDER: synthetic image, no obs. time"),
      ("WAVELNTH", int(wavelength_a), "[angstrom] AIA channel"),
      ("WAVEUNIT", "angstrom", "Unit of WAVELNTH"),
      ("BUNIT", "DN/s", "Data counts per second per pixel"),
      ("EXPTIME", 1.0, "[s] Data are already per second"),
      ("CTYPE1", "HPLN-TAN", "Helioprojective longitude"),
      ("CTYPE2", "HPLT-TAN", "Helioprojective latitude"),
      ("CUNIT1", "arcsec", ""),
      ("CUNIT2", "arcsec", ""),
      ("CDELT1", cdelt, "[arcsec/pixel] 0.6 x 4096 / NAXIS1"),
      ("CDELT2", cdelt, "[arcsec/pixel] 0.6 x 4096 / NAXIS2"),
      ("CRPIX1", center, "Disc centre (pixel)"),
      ("CRPIX2", center, "Disc centre (pixel)"),
      ("CRVAL1", 0.0, "[arcsec]"),
      ("CRVAL2", 0.0, "[arcsec]"),
      ("CROTA2", 0.0, "[deg] Solar north up"),
      ("RSUN_OBS", RSUN_OBS_ARCSEC, "[arcsec] Nominal solar radius"),
      ("RSUN_REF", 696000000.0, "[m] Reference solar radius"),
      ("DSUN_OBS", DSUN_OBS_M, "[m] Nominal: 1 AU"),
      ("HGLN_OBS", 0.0, "[deg] Nominal observer longitude"),
      ("HGLT_OBS", 0.0, "[deg] Nominal observer latitude"),
      ("FLARECLS", flare_class, "GOES flare class requested (condition)"),
      ("GUIDANCE", float(guidance_scale), "Classifier-free guidance scale w"),
      ("SAMPLER", sampler, "Diffusion sampler"),
      ("NSTEPS", int(num_steps), "Sampler steps requested"),
      ("NGRID", int(num_steps if grid_steps is None else grid_steps),
       "Sampler steps taken (timestep grid points)"),
      ("SEED", int(seed), "Sampling seed"),
      ("BATCHSZ", int(batch_size), "Sampling batch size (with SEED, sets the noise)"),
      ("CKPTSTEP", int(checkpoint_step), "Training step of the checkpoint"),
      ("SAMPIDX", int(index), "Index of the image in its sample set"),
      ("PRESET", preset, "Model configuration preset"),
  ]
  for key, value, comment in cards:
    h[key] = (value, comment)
  h.add_comment("SYNTHETIC IMAGE generated by a class-conditional DDPM (solar-ddpm-jax),")
  h.add_comment("after Ramunno et al. 2024, A&A 686, A285. Not an SDO observation.")
  h.add_comment("DATE-OBS is a placeholder; pointing keys are nominal (centred, 1 AU).")
  h.add_comment(f"Full-disc frame downsampled to {resolution} px; values inverted from the")
  h.add_comment("model range to DN/s with the data set's clip ceiling and stretch.")
  return h


def write_fits(path: str, image_dn_per_s, header) -> None:
  """One 2-D float32 image [H,W] in DN/s with its header (overwrites)."""
  from astropy.io import fits
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fits.PrimaryHDU(np.asarray(image_dn_per_s, np.float32), header=header).writeto(
      path, overwrite=True)
