"""Cluster metrics: k-means bins on real features, NDB and the Jensen-Shannon divergence.

NDB (Richardson & Weiss 2018): the fraction of k-means bins whose real and generated proportions
differ under a two-proportion z-test at level `alpha`. JS: Jensen-Shannon divergence (natural log,
0..ln 2) between the two bin-proportion vectors.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from solar_ddpm_jax.evaluation.fid import pairwise_distances


def kmeans(features, num_clusters: int, *, seed: int = 0, iters: int = 100) -> np.ndarray:
  """Lloyd's k-means with k-means++ seeding; returns centres [num_clusters, dim] (deterministic)."""
  x = np.asarray(features, np.float64)
  k = int(min(num_clusters, len(x)))
  rng = np.random.default_rng(seed)
  centres = [x[rng.integers(len(x))]]
  for _ in range(1, k):
    d2 = pairwise_distances(x, np.asarray(centres)).min(axis=1) ** 2
    p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
    centres.append(x[rng.choice(len(x), p=p)])
  centres = np.asarray(centres)
  for _ in range(iters):
    assign = assign_bins(x, centres)
    new = np.array([x[assign == j].mean(0) if (assign == j).any() else centres[j]
                    for j in range(k)])
    if np.allclose(new, centres):
      break
    centres = new
  return centres


def assign_bins(features, centres) -> np.ndarray:
  """Index of the nearest centre for each row."""
  return pairwise_distances(features, centres).argmin(axis=1)


def bin_proportions(features, centres) -> np.ndarray:
  """Fraction of rows in each bin."""
  counts = np.bincount(assign_bins(features, centres), minlength=len(centres))
  return counts / max(len(features), 1)


def ndb_js(real_features, fake_features, *, num_clusters: int = 20, seed: int = 0,
           alpha: float = 0.05) -> dict:
  """NDB count and fraction, JS divergence, and the bin proportions (k-means on real features)."""
  centres = kmeans(real_features, num_clusters, seed=seed)
  p = bin_proportions(real_features, centres)
  q = bin_proportions(fake_features, centres)
  n1, n2 = len(real_features), len(fake_features)
  pooled = (p * n1 + q * n2) / (n1 + n2)
  se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
  with np.errstate(divide="ignore", invalid="ignore"):
    z = np.where(se > 0, (p - q) / se, 0.0)
  pvalues = 2 * scipy.stats.norm.sf(np.abs(z))
  different = int((pvalues < alpha).sum())
  return dict(ndb=different, ndb_fraction=different / len(centres), js=js_divergence(p, q),
              num_clusters=len(centres), alpha=alpha, seed=seed,
              real_proportions=p.tolist(), fake_proportions=q.tolist())


def js_divergence(p, q) -> float:
  """Jensen-Shannon divergence (nats) between two probability vectors."""
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  p, q = p / p.sum(), q / q.sum()
  m = 0.5 * (p + q)

  def kl(a, b):
    mask = a > 0
    return float((a[mask] * np.log(a[mask] / b[mask])).sum())
  return 0.5 * kl(p, m) + 0.5 * kl(q, m)
