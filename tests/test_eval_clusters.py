"""k-means bins, NDB and Jensen-Shannon divergence on features with known answers."""

import numpy as np
import scipy.spatial.distance

from solar_ddpm_jax.evaluation import clusters


def _blobs(seed, counts, centres, spread=0.05):
  rng = np.random.default_rng(seed)
  return np.concatenate([c + spread * rng.normal(size=(n, len(c)))
                         for n, c in zip(counts, centres, strict=True)])


CENTRES = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])


def test_kmeans_finds_separated_blobs_deterministically():
  x = _blobs(0, [50, 50, 50], CENTRES)
  found = clusters.kmeans(x, 3, seed=0)
  order = np.argsort(found[:, 0] + 10 * found[:, 1])
  expected = CENTRES[np.argsort(CENTRES[:, 0] + 10 * CENTRES[:, 1])]
  np.testing.assert_allclose(found[order], expected, atol=0.05)
  np.testing.assert_array_equal(found, clusters.kmeans(x, 3, seed=0))


def test_ndb_and_js_on_known_proportions():
  real = _blobs(0, [100, 100], CENTRES[:2])
  collapsed = _blobs(1, [200, 0], CENTRES[:2])
  same = _blobs(2, [100, 100], CENTRES[:2])
  bad = clusters.ndb_js(real, collapsed, num_clusters=2)
  good = clusters.ndb_js(real, same, num_clusters=2)
  assert bad["ndb"] == 2 and good["ndb"] == 0
  p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
  np.testing.assert_allclose(bad["js"], scipy.spatial.distance.jensenshannon(p, q) ** 2, rtol=1e-12)
  np.testing.assert_allclose(bad["js"], 0.2157615543388357, rtol=1e-9)
  assert good["js"] < 1e-12
