"""The synthetic AIA 171 archive against a real AIA 171 frame, class visibility and split leakage.

  python bench/synthetic_archive.py [--archive DIR] [--figure bench/figures/synthetic_vs_real.png]

1. Statistics: sunpy's real level-1 test frame (aia_171_level1.fits, 128 px full disc) against
   the median of 20 synthetic frames rendered at 128 px (same plate scale in solar radii), both
   in DN/s (DN / EXPTIME): median per ring 0.1 solar radii wide from 0.2 to 1.3 R, and the 5th,
   50th and 95th percentiles on the disc. The frames are every 30th frame of the demo plan
   (seed 1, 600 frames): typical activity of the archive.
2. Visibility: the archive's frames built as the demo builds them (32 px block sums of the FITS
   DN / EXPTIME, log stretch with the 3000 DN/s ceiling); a nearest-class-mean rule on four pixel
   statistics (brightest pixel, fractions above 0.8 and 0.95, mean of the brightest 1 %), each
   standardised, class means from one half and accuracy on the other
   (2-fold, both ways, 5 random halvings).
3. Split leakage: 1-nearest-neighbour on the 32 px images (Euclidean), trained on the frames
   before train_end - 12 h and tested on those after val_end + 12 h (the demo's time split), and
   on a random split of the same sizes (mean of 20 draws).
With --archive DIR an existing archive (FITS + GOES netCDF, e.g. one written by an older version)
is measured instead of writing the demo archive to a temporary folder; the statistics (1.) are
always of the current generator. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfds_aia import goes, preprocess, synthetic, synthetic_sun  # noqa: E402

RING_EDGES = np.round(np.arange(0.2, 1.31, 0.1), 2)
PERCENTILES = (5, 50, 95)
TRAIN_END, VAL_END, GAP_H = "2014-01-01", "2014-07-01", 12.0


def real_frame():
  """sunpy's AIA 171 level-1 test frame: (DN/s image, disc centre (row, col), radius px)."""
  import warnings

  from astropy.io import fits
  from sunpy.data.test import get_test_filepath
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with fits.open(get_test_filepath("aia_171_level1.fits")) as hdul:
      h, data = hdul[0].header, hdul[0].data.astype(np.float64)
  # Disc centre: the reference pixel minus the pointing offset of the reference value.
  cy = h["CRPIX2"] - 1 - h["CRVAL2"] / h["CDELT2"]
  cx = h["CRPIX1"] - 1 - h["CRVAL1"] / h["CDELT1"]
  return data / h["EXPTIME"], (cy, cx), h["RSUN_OBS"] / h["CDELT1"]


def disc_statistics(image, centre, radius):
  """Median DN/s per ring (RING_EDGES, solar radii) and on-disc PERCENTILES."""
  yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
  r = np.hypot(yy - centre[0], xx - centre[1]) / radius
  rings = np.array([np.median(image[(r >= lo) & (r < hi)])
                    for lo, hi in zip(RING_EDGES[:-1], RING_EDGES[1:], strict=True)])
  return rings, np.percentile(image[r < 1.0], PERCENTILES)


def synthetic_frames(size=128, num=20, num_images=600, seed=1):
  """`num` evenly spaced frames of the demo plan rendered at `size` px (DN/s), with the plan."""
  plan = synthetic.simulate(num_images, seed=seed)
  idx = np.linspace(0, num_images - 1, num).astype(int)
  return [synthetic.render_archive_frame(*plan, i, size, seed=seed) for i in idx], plan, idx


def synthetic_statistics(size=128, num=20):
  frames, _, _ = synthetic_frames(size, num)
  c = (size - 1) / 2
  stats = [disc_statistics(f, (c, c), synthetic_sun.radius_px(size)) for f in frames]
  return np.median([s[0] for s in stats], 0), np.median([s[1] for s in stats], 0)


def load_archive(root, resolution=32, ceiling=3000.0):
  """The archive's 171 frames as the demo builds them ([N, R, R] in [-1, 1]), their times and
  GOES classes (flux at the frame time in the archive's GOES file)."""
  import h5netcdf
  from astropy.io import fits
  paths = sorted(glob.glob(os.path.join(root, "aia", "171", "*.fits")))
  with h5netcdf.File(glob.glob(os.path.join(root, "goes", "*.nc"))[0], "r") as f:
    g_t = np.asarray(f["time"][:], np.float64) + synthetic.EPOCH_2000.timestamp()
    g_f = np.asarray(f["xrsb_flux"][:], np.float64)
  images, times = [], []
  for p in paths:
    with fits.open(p) as hdul:
      hdu = hdul[-1]
      h, dn = hdu.header, hdu.data.astype(np.float64)
    t = dt.datetime.fromisoformat(h["T_OBS"].rstrip("Z")).replace(tzinfo=dt.UTC).timestamp()
    small = preprocess.downsample(dn / h["EXPTIME"], resolution, "sum")
    c_eff = preprocess.effective_ceiling(ceiling, dn.shape[0], resolution, "sum")
    images.append(preprocess.to_model_range(small, c_eff, "log"))
    times.append(round(t))
  times = np.asarray(times, np.float64)
  flux = g_f[np.searchsorted(g_t, times)]
  return np.stack(images), times, goes.flux_to_class(flux)[0]


def pixel_features(images):
  """[N, 4]: brightest pixel, fractions of pixels above 0.8 and above 0.95 (the quiet disc and
  its limb lie below 0.8), mean of the brightest 1 %."""
  flat = np.sort(images.reshape(len(images), -1), axis=1)[:, ::-1]
  n = flat.shape[1]
  return np.stack([flat[:, 0], (flat > 0.8).mean(1), (flat > 0.95).mean(1),
                   flat[:, :max(n // 100, 1)].mean(1)], axis=1)


def nearest_class_mean_accuracy(features, classes, repeats=5, seed=0):
  """2-fold accuracy of the nearest standardised class mean, averaged over random halvings."""
  z = (features - features.mean(0)) / (features.std(0) + 1e-12)
  rng = np.random.default_rng(seed)
  scores = []
  for _ in range(repeats):
    perm = rng.permutation(len(z))
    halves = (perm[: len(z) // 2], perm[len(z) // 2:])
    for fit, test in (halves, halves[::-1]):
      ks = np.unique(classes[fit])
      means = np.stack([z[fit][classes[fit] == k].mean(0) for k in ks])
      pred = ks[np.argmin(((z[test][:, None] - means[None]) ** 2).sum(-1), axis=1)]
      scores.append(np.mean(pred == classes[test]))
  return float(np.mean(scores))


def one_nn_accuracy(x, y, train, test):
  x = x.reshape(len(x), -1)
  d = ((x[test][:, None, :] - x[train][None, :, :]) ** 2).sum(-1)
  return float(np.mean(y[train][np.argmin(d, axis=1)] == y[test]))


def split_leakage(images, times, classes, draws=20, seed=0):
  """1-NN accuracy on the time split (with its gaps) and on random splits of the same sizes."""
  ts = lambda s: dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC).timestamp()  # noqa: E731
  train = np.flatnonzero(times < ts(TRAIN_END) - GAP_H * 3600)
  test = np.flatnonzero(times >= ts(VAL_END) + GAP_H * 3600)
  time_acc = one_nn_accuracy(images, classes, train, test)
  rng = np.random.default_rng(seed)
  rand = []
  for _ in range(draws):
    perm = rng.permutation(len(images))
    rand.append(one_nn_accuracy(images, classes, perm[:len(train)],
                                perm[len(train):len(train) + len(test)]))
  per_split = [np.bincount(classes[s], minlength=5).tolist() for s in (train, test)]
  return time_acc, float(np.mean(rand)), float(np.std(rand)), len(train), len(test), per_split


def figure(path):
  """The real frame and three synthetic ones (a flare, a coronal hole, a quiet one) in the
  sdoaia171 colormap with a log norm, and the radial profiles."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import sunpy.visualization.colormaps  # noqa: F401  (registers sdoaia171)
  from matplotlib.colors import LogNorm
  real, centre, radius = real_frame()
  scene, times, runs, fluxes, hosts = plan = synthetic.simulate(600, seed=1)
  disc = synthetic_sun._geometry(64)[1]
  hole_frac = [synthetic_sun._hole_mask(scene.holes, scene, t, 64)[disc].mean() for t in times]
  flare = int(np.argmin(np.abs(np.log10(fluxes) - np.log10(2e-4))))  # An X2 flare.
  hole = int(np.argmax(hole_frac))
  quiet = int(np.argmin(np.abs(np.log10(fluxes) + 6.5)))  # A B/C-level frame.
  picks = [(flare, "flaring"), (hole, "coronal hole"), (quiet, "typical")]
  frames = [synthetic.render_archive_frame(*plan, i, 256) for i, _ in picks]
  fig, axes = plt.subplots(1, 5, figsize=(22, 4.6))
  norm = LogNorm(vmin=5, vmax=8000)
  axes[0].imshow(np.clip(real, 1, None), origin="lower", cmap="sdoaia171", norm=norm)
  axes[0].set_title("real: sunpy aia_171_level1.fits (128 px)")
  for ax, img, (i, what) in zip(axes[1:4], frames, picks, strict=True):
    ax.imshow(np.clip(img, 1, None), origin="lower", cmap="sdoaia171", norm=norm)
    name = int(goes.flux_to_class(np.array([fluxes[i]]))[0][0])
    ax.set_title(f"synthetic {what}: {synthetic._iso(times[i])[:16]}, "
                 f"{'ABCMX'[name]} {fluxes[i]:.1e} W/m2", fontsize=8)
  for ax in axes[:4]:
    ax.set_xticks([])
    ax.set_yticks([])
  mids = (RING_EDGES[:-1] + RING_EDGES[1:]) / 2
  real_rings, _ = disc_statistics(real, centre, radius)
  syn_rings, _ = synthetic_statistics()
  axes[4].semilogy(mids, real_rings, "o-", label="real (sunpy file)")
  axes[4].semilogy(mids, syn_rings, "s--", label="synthetic (median of 20 frames)")
  axes[4].set_xlabel("r / R_sun")
  axes[4].set_ylabel("ring median DN/s")
  axes[4].legend()
  axes[4].set_title("radial profile, 128 px")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=80)
  print(f"figure: {path}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archive", default="", help="Existing archive folder ('': write one).")
  parser.add_argument("--figure", default="bench/figures/synthetic_vs_real.png")
  args = parser.parse_args(argv)

  real, centre, radius = real_frame()
  real_rings, real_pct = disc_statistics(real, centre, radius)
  syn_rings, syn_pct = synthetic_statistics()
  print("| quantity (DN/s) | real | synthetic | synthetic / real |\n|---|---|---|---|")
  for lo, hi, a, b in zip(RING_EDGES[:-1], RING_EDGES[1:], real_rings, syn_rings, strict=True):
    print(f"| ring {lo:.1f}-{hi:.1f} R median | {a:.1f} | {b:.1f} | {b / a:.2f} |")
  for q, a, b in zip(PERCENTILES, real_pct, syn_pct, strict=True):
    print(f"| on-disc {q}th percentile | {a:.1f} | {b:.1f} | {b / a:.2f} |")

  with tempfile.TemporaryDirectory() as tmp:
    root = args.archive
    if not root:
      root = tmp
      synthetic.write_archive(root, num_images=600, image_size=256, seed=1)
    images, times, classes = load_archive(root)
  print(f"\nframes: {len(images)}, class counts A..X: {np.bincount(classes, minlength=5).tolist()}")
  acc = nearest_class_mean_accuracy(pixel_features(images), classes)
  print(f"visibility: nearest-class-mean accuracy on 4 pixel statistics of the 32 px frames: "
        f"{acc:.3f}")
  time_acc, rand_acc, rand_sd, n_train, n_test, per_split = split_leakage(images, times, classes)
  print(f"1-NN on 32 px images: time split {time_acc:.3f} (train {n_train} frames before "
        f"{TRAIN_END} - {GAP_H:g} h, test {n_test} after {VAL_END} + {GAP_H:g} h); random split "
        f"of the same sizes {rand_acc:.3f} +- {rand_sd:.3f} (20 draws)")
  print(f"class counts A..X: train {per_split[0]}, test {per_split[1]}")
  if args.figure:
    figure(args.figure)


if __name__ == "__main__":
  main()
