"""FID time per evaluation and per bootstrap resample, against pytorch-fid's computation.

  python bench/bench_fid.py [--dims 2048,768] [--sizes 300,2000,10000] [--threads 2] [--quick]

The reference is pytorch-fid's formula: scipy.linalg.sqrtm of the covariance product (a Schur
decomposition of a general d x d matrix). Against it: `frechet_distance` from the same statistics
(two symmetric eigen-solves), and `fid` from the features (which also computes the covariances,
and works in sample space when there are fewer images than dimensions). Gaussian features with a
random covariance; the values printed agree to the digits shown. Prints; asserts nothing.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--dims", default="2048,768")
  ap.add_argument("--sizes", default="300,2000,10000", help="images per set (real = generated)")
  common.add_common_args(ap)  # --quick: 2048 dimensions, 300 and 2000 images.
  args = ap.parse_args()
  if args.quick:
    args.dims, args.sizes = "2048", "300,2000"
  common.configure_threads(args.threads)  # Before numpy loads its BLAS.
  import numpy as np
  import scipy.linalg

  from solar_ddpm_jax.evaluation import fid as fid_lib

  def pytorch_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      offset = np.eye(len(s1)) * 1e-6
      covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))

  def timed(fn, *args):
    t = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t

  common.header("FID: seconds per evaluation (float64)", args)
  print()
  print("| dim | images per set | pytorch-fid sqrtm (stats) s | frechet_distance (stats) s | "
        "vs sqrtm | fid (features) s | vs sqrtm + stats | FID sqrtm / ours |")
  print("|---|---|---|---|---|---|---|---|")
  for d in (int(v) for v in args.dims.split(",")):
    rng = np.random.default_rng(d)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    for n in (int(v) for v in args.sizes.split(",")):
      x = rng.standard_normal((n, d)) @ mix
      y = (rng.standard_normal((n, d)) @ mix) * 1.1 + 0.05
      (mu1, s1), t_stats1 = timed(fid_lib.feature_stats, x)
      (mu2, s2), t_stats2 = timed(fid_lib.feature_stats, y)
      ref, t_ref = timed(pytorch_fid, mu1, s1, mu2, s2)
      ours, t_ours = timed(fid_lib.frechet_distance, mu1, s1, mu2, s2)
      full, t_full = timed(fid_lib.fid, x, y)
      t_ref_full = t_ref + t_stats1 + t_stats2
      print(f"| {d} | {n} | {t_ref:.2f} | {t_ours:.2f} | {t_ref / t_ours:.1f}x | {t_full:.2f} | "
            f"{t_ref_full / t_full:.1f}x | {ref:.6g} / {full:.6g} |", flush=True)


if __name__ == "__main__":
  main()
