"""Distances between feature sets in numpy float64: FID, KID, precision/recall, density/coverage.

Features are [num_images, dim] arrays from one extractor. Every function is deterministic for its
seed. `fid_infinity` extrapolates FID to infinitely many generated images. Uncertainties:
`subsample_interval` for FID (half-set sampling, because the bootstrap's repeated images bias
every resampled FID upward), the jackknife standard error for KID (`mmd2_jackknife`), and a
bootstrap of the per-image terms for precision/recall/density/coverage.
"""

from __future__ import annotations

import numpy as np


class TooFewImages(ValueError):
  """A metric needs more images (or more than the feature dimension) than a set has."""


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [dim] and unbiased covariance [dim, dim] in float64."""
  x = np.asarray(features, np.float64)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def psd_sqrt(sigma) -> np.ndarray:
  """S^(1/2) of a symmetric positive semi-definite matrix (negative rounding clipped to 0)."""
  s = np.atleast_2d(np.float64(sigma))
  w, u = np.linalg.eigh((s + s.T) / 2)
  return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T


def trace_sqrt_product(sigma1, sigma2, *, sqrt_sigma1=None) -> float:
  """Tr sqrt(S1 S2) of two covariance matrices (symmetric, positive semi-definite).

  S1 S2 is similar to R S2 R with R = S1^(1/2), which is symmetric and positive semi-definite:
  the trace is the sum of the square roots of its eigenvalues: two symmetric eigen-solves, where
  scipy.linalg.sqrtm of the product (pytorch-fid's way) takes a Schur decomposition of a general
  matrix, 6-8x slower at 2048 dimensions (bench/bench_fid.py), and needs an offset when S1 or S2
  is singular. Eigenvalues that rounding puts below zero count as zero. `sqrt_sigma1`: R, when
  the caller has it (one reference set against many).
  """
  s2 = np.atleast_2d(np.float64(sigma2))
  root = psd_sqrt(sigma1) if sqrt_sigma1 is None else sqrt_sigma1
  m = root @ s2 @ root
  return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, *, sqrt_sigma1=None) -> float:
  """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), in float64 (sqrt_sigma1: psd_sqrt(S1), if
  known)."""
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  s1, s2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2)
               - 2.0 * trace_sqrt_product(s1, s2, sqrt_sigma1=sqrt_sigma1))


def fid(real_features, fake_features) -> float:
  """Fréchet distance between two feature sets (FID when the features are Inception pool3).

  With few images for the dimension (a class of a few hundred images in 2048 Inception
  features, and every bootstrap resample of it) the distance is computed in sample space:
  S1 S2 has the nonzero eigenvalues of (X1 X2^T)(X1 X2^T)^T / ((n1-1)(n2-1)) for centred
  features X [n, d], so Tr sqrt(S1 S2) is the sum of the singular values of the [n1, n2] matrix
  X1 X2^T over sqrt((n1-1)(n2-1)). Both ways give the same number; the cheaper one is used.
  """
  x1, x2 = (np.asarray(f, np.float64) for f in (real_features, fake_features))
  x1, x2 = (x.reshape(len(x), -1) for x in (x1, x2))  # [n] features: one dimension.
  (n1, d), n2 = x1.shape, len(x2)
  if min(n1, n2) < 2:
    raise TooFewImages(f"FID needs at least 2 images per set (covariances), got {n1} and {n2}.")
  small, large = sorted((n1, n2))
  # Flops of each way, an eigen-solve or SVD of an m x m matrix counted as 20 m^3.
  if n1 * n2 * d + 20 * small * small * large >= (n1 + n2) * d * d + 40 * d ** 3:
    return frechet_distance(*feature_stats(x1), *feature_stats(x2))
  mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
  c1, c2 = x1 - mu1, x2 - mu2
  scale = np.sqrt((n1 - 1) * (n2 - 1))
  cross = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / scale
  diff = mu1 - mu2
  return float(diff @ diff + (c1 * c1).sum() / (n1 - 1) + (c2 * c2).sum() / (n2 - 1)
               - 2.0 * cross)


def fid_infinity(real_features, fake_features, *, num_points: int = 15,
                 min_fraction: float = 0.1, seed: int = 0) -> dict:
  """FID-infinity of Chong & Forsyth 2020: FID extrapolated to infinitely many generated images.

  FID's bias is positive and falls as 1/N in the number N of generated images (with N above the
  feature dimension), and it differs between models, so FIDs at one N can rank models wrongly.
  FID is computed against the statistics of all real images for `num_points` counts N evenly
  spaced from max(min_fraction * n, dim + 1) to all n generated images (a random subset drawn
  for each), the line FID = fid_inf + slope / N is fitted by least squares, and fid_inf is its
  value at 1/N = 0. The real set's own finite-size bias is not removed (it is the same at every
  N): keep the real set large, and compare fid_inf at equal real sets. Needs n >= 2 (dim + 1), so
  that the counts span at least a factor 2 of 1/N above the dimension.
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  real, fake = real.reshape(len(real), -1), fake.reshape(len(fake), -1)
  n, d = fake.shape
  if len(real) < 2 or n < 2 * (d + 1) or int(num_points) < 3:
    raise TooFewImages(
        f"FID-infinity needs 2 x (dim + 1) = {2 * (d + 1)} generated images (the fit uses "
        f"subsets above the dimension), 2 real ones and 3 counts; got {n} generated, "
        f"{len(real)} real, num_points={num_points}.")
  lo = max(int(np.ceil(n * float(min_fraction))), d + 1)
  counts = np.unique(np.linspace(lo, n, int(num_points)).round().astype(np.int64))
  mu_r, sigma_r = feature_stats(real)
  root = psd_sqrt(sigma_r)  # Shared by every count.
  rng = np.random.default_rng(seed)
  subsets = (fake[rng.choice(n, int(c), replace=False)] for c in counts)
  values = [frechet_distance(mu_r, sigma_r, *feature_stats(x), sqrt_sigma1=root) for x in subsets]
  design = np.stack([np.ones(len(counts)), 1.0 / counts], axis=1)
  (intercept, slope), *_ = np.linalg.lstsq(design, np.asarray(values), rcond=None)
  return dict(fid_inf=float(intercept), slope=float(slope), counts=counts.tolist(),
              values=values, method="Chong & Forsyth 2020: least-squares line in 1/N, at 1/N = 0")


def polynomial_kernel(x, y) -> np.ndarray:
  """k(x, y) = (x.y / dim + 1)^3, the KID kernel of Binkowski et al. 2018."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
  """Unbiased squared MMD with the polynomial kernel between two [n, dim] sets."""
  m, n = len(x), len(y)
  kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
               + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def _kernel_sums(x, y, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
  """Row and column sums of polynomial_kernel(x, y), a block of rows at a time."""
  rows = np.zeros(len(x))
  cols = np.zeros(len(y))
  for i in range(0, len(x), block):
    k = polynomial_kernel(x[i:i + block], y)
    rows[i:i + block] = k.sum(axis=1)
    cols += k.sum(axis=0)
  return rows, cols


def mmd2_jackknife(x, y) -> tuple[float, float]:
  """(unbiased MMD^2 of all rows, its jackknife standard error).

  The two-sample delete-one jackknife (Arvesen 1969), whose variance estimate is consistent for
  U-statistics such as the unbiased MMD^2: se^2 = (m-1)/m sum_i (t_(i) - mean_i t_(i))^2 + the
  same over the rows of y, where t_(i) leaves out one row. Every t_(i) comes from the kernel
  matrices' row sums, so the cost is that of one MMD^2 (computed in blocks of rows).
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  m, n = len(x), len(y)
  if min(m, n) < 3:
    raise TooFewImages("the KID standard error needs at least 3 images in each set.")
  rxx = _kernel_sums(x, x)[0] - ((x * x).sum(1) / x.shape[1] + 1.0) ** 3  # Off-diagonal.
  ryy = _kernel_sums(y, y)[0] - ((y * y).sum(1) / y.shape[1] + 1.0) ** 3
  rxy, cxy = _kernel_sums(x, y)
  sxx, syy, sxy = rxx.sum(), ryy.sum(), rxy.sum()
  value = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2.0 * sxy / (m * n)
  without_x = ((sxx - 2.0 * rxx) / ((m - 1) * (m - 2)) + syy / (n * (n - 1))
               - 2.0 * (sxy - rxy) / ((m - 1) * n))
  without_y = (sxx / (m * (m - 1)) + (syy - 2.0 * ryy) / ((n - 1) * (n - 2))
               - 2.0 * (sxy - cxy) / (m * (n - 1)))
  var = ((m - 1) / m * ((without_x - without_x.mean()) ** 2).sum()
         + (n - 1) / n * ((without_y - without_y.mean()) ** 2).sum())
  return float(value), float(np.sqrt(var))


def kid(real_features, fake_features, *, subset_size: int = 1000, num_subsets: int = 100,
        seed: int = 0) -> dict:
  """KID: the mean unbiased MMD^2 over random subsets (kid; as torch-fidelity and clean-fid),
  the std over those subsets (kid_std, ddof 0 as torch-fidelity), the unbiased MMD^2 of all
  images (kid_all, which the subset mean estimates), and kid_se: the jackknife standard error of
  kid_all (mmd2_jackknife) combined with the Monte Carlo error of the subset mean. kid_se is the
  sampling error of KID given the two sets; kid_std is not (subsets of one set overlap, and are
  all the same set when the sets are no larger than subset_size).
  """
  x = np.asarray(real_features, np.float64)
  y = np.asarray(fake_features, np.float64)
  size = int(min(subset_size, len(x), len(y)))
  if size < 2:
    raise TooFewImages("KID needs at least 2 images in each set.")
  rng = np.random.default_rng(seed)
  values = np.array([
      mmd2_unbiased(x[rng.choice(len(x), size, replace=False)],
                    y[rng.choice(len(y), size, replace=False)]) for _ in range(num_subsets)])
  out = dict(kid=float(values.mean()), kid_std=float(values.std()), subset_size=size,
             num_subsets=int(num_subsets))
  if min(len(x), len(y)) >= 3:
    out["kid_all"], se_all = mmd2_jackknife(x, y)
    # The mean over all subsets of a U-statistic is the all-images one; a finite number of
    # random subsets adds its Monte Carlo error.
    mc = float(values.std(ddof=1)) / np.sqrt(num_subsets) if num_subsets > 1 else 0.0
    out["kid_se"] = float(np.hypot(se_all, mc))
  return out


def pairwise_distances(x, y) -> np.ndarray:
  """Euclidean distances [len(x), len(y)] in float64."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
  return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x, k: int) -> np.ndarray:
  """Distance of each row of x to its k-th nearest other row."""
  d = pairwise_distances(x, x)
  return np.partition(d, k, axis=1)[:, k]  # Index 0 is the row itself (distance 0).


def _prdc_terms(real, fake, k: int) -> dict[str, np.ndarray]:
  """The per-point terms whose means are precision, recall, density and coverage."""
  d = pairwise_distances(real, fake)  # [real, fake]
  real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
  inside_real = d < real_radii[:, None]
  return dict(precision=inside_real.any(axis=0),            # per generated image
              recall=(d < fake_radii[None, :]).any(axis=1),  # per real image
              density=inside_real.sum(axis=0) / k,           # per generated image
              coverage=d.min(axis=1) < real_radii)           # per real image


def _check_k(real, fake, k: int) -> int:
  k = int(min(k, len(real) - 1, len(fake) - 1))
  if k < 1:
    raise TooFewImages("precision/recall need at least 2 images in each set.")
  return k


def prdc(real_features, fake_features, *, k: int = 5) -> dict:
  """Precision, recall, density and coverage of Naeem et al. 2020 (k-NN balls, strict <)."""
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  k = _check_k(real, fake, k)
  out = {name: float(v.mean()) for name, v in _prdc_terms(real, fake, k).items()}
  return dict(out, k=k)


def _percentile_ci(values, level: float) -> dict:
  values = np.asarray(values, np.float64)
  lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
  return dict(low=float(lo), high=float(hi), std=float(values.std(ddof=1)) if len(values) > 1
              else 0.0, num_resamples=len(values), level=level)


def subsample_interval(metric_fn, real_features, fake_features, *, num_subsets: int = 200,
                       seed: int = 0, level: float = 0.95) -> dict:
  """Normal interval of `metric_fn(real, fake) -> float` (FID) with a half-sampling s.e.

  Each of `num_subsets` draws takes half of each set without replacement, and se is the std of
  those half-set values: the delete-d jackknife with d = n / 2 (Shao & Wu 1989), whose factor
  (n - d) / d is 1. It is consistent for smooth statistics of the set means and covariances;
  where the sets are small against the feature dimension FID's variance falls faster than 1 / n
  and the interval is wider than the spread (conservative). The interval is value +- z se,
  clipped at 0. A bootstrap does not serve here: its resamples repeat about a third of the
  images, and FID's positive finite-sample bias grows as the distinct images shrink, so every
  resampled FID lies above the estimate. The bias itself (FID falls as the sets grow) is not
  removed, so FIDs compare only at equal counts.
  """
  import scipy.stats
  real = np.asarray(real_features)
  fake = np.asarray(fake_features)
  if min(len(real), len(fake)) < 4:
    raise TooFewImages("a FID interval needs at least 4 images in each set.")
  rng = np.random.default_rng(seed)
  values = np.array([metric_fn(real[rng.choice(len(real), len(real) // 2, replace=False)],
                               fake[rng.choice(len(fake), len(fake) // 2, replace=False)])
                     for _ in range(int(num_subsets))])
  se = float(values.std(ddof=1))
  value = float(metric_fn(real, fake))
  z = float(scipy.stats.norm.ppf(0.5 + level / 2))
  return dict(low=max(value - z * se, 0.0), high=value + z * se, se=se,
              num_subsets=int(num_subsets), level=level,
              method="normal, half-sampling (delete-n/2 jackknife) s.e.")


def prdc_bootstrap_ci(real_features, fake_features, *, k: int = 5, num_resamples: int = 200,
                      seed: int = 0, level: float = 0.95) -> dict[str, dict]:
  """Percentile bootstrap intervals of precision, recall, density and coverage.

  Each of the four is a mean of per-image terms (over generated images for precision and
  density, over real images for recall and coverage), computed once against the k-NN balls of
  the full sets; the bootstrap resamples the images being averaged. The interval is the sampling
  error of that mean given the balls. It leaves out the error of the balls themselves: redrawing
  the sets with replacement to rebuild the balls repeats about a third of the points, and the
  fewer distinct centres bias precision, recall and coverage low (the interval can miss the
  estimate).
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  terms = _prdc_terms(real, fake, _check_k(real, fake, k))
  rng = np.random.default_rng(seed)
  values = {name: [] for name in terms}
  for _ in range(int(num_resamples)):
    ri = rng.integers(0, len(real), len(real))
    fi = rng.integers(0, len(fake), len(fake))
    for name, v in terms.items():
      values[name].append(v[fi if name in ("precision", "density") else ri].mean())
  out = {}
  for name, v in values.items():
    out[name] = dict(_percentile_ci(v, level), resampled="generated" if name in (
        "precision", "density") else "real", balls="fixed (full sets)")
  return out
