"""FID, KID and precision/recall/density/coverage against independent numpy/scipy code."""

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance

from solar_ddpm_jax.evaluation import fid as fid_lib


def _features(seed, n=200, d=16, shift=0.0, scale=1.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return (rng.normal(size=(n, d)) @ mix) * scale + shift


def _fid_eigen(x, y):
  """FID with Tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): no scipy.linalg.sqrtm."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1 = np.cov(x, rowvar=False)
  s2 = np.cov(y, rowvar=False)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  tr = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
  return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr


def _fid_pytorch(x, y):
  """pytorch-fid's formula: scipy.linalg.sqrtm of the covariance product."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.5, 1.3), (2.0, 0.7)])
def test_fid_matches_pytorch_fid_and_eigen_formula(shift, scale):
  x, y = _features(0), _features(1, shift=shift, scale=scale)
  ours = fid_lib.fid(x, y)
  np.testing.assert_allclose(ours, _fid_pytorch(x, y), rtol=1e-8)
  np.testing.assert_allclose(ours, _fid_eigen(x, y), rtol=1e-8)
  assert ours > 0


@pytest.mark.parametrize("n1,n2,d", [(10, 12, 32), (40, 25, 64), (30, 30, 100)])
def test_fid_with_fewer_images_than_dimensions(n1, n2, d):
  # fid() works in sample space here (singular values of X1 X2^T); the covariance way agrees.
  x, y = _features(2, n=n1, d=d), _features(3, n=n2, d=d, shift=0.3, scale=1.2)
  ours = fid_lib.fid(x, y)
  np.testing.assert_allclose(ours, _fid_eigen(x, y), rtol=1e-6)
  np.testing.assert_allclose(ours, _fid_pytorch(x, y), rtol=1e-6)
  mu1, s1 = fid_lib.feature_stats(x)
  mu2, s2 = fid_lib.feature_stats(y)
  np.testing.assert_allclose(fid_lib.frechet_distance(mu1, s1, mu2, s2), ours, rtol=1e-6)


def test_fid_of_gaussians_has_closed_form():
  # Isotropic covariances: FID = |mu1-mu2|^2 + d (s1 - s2)^2 with s = std.
  d = 4
  value = fid_lib.frechet_distance(np.zeros(d), 4 * np.eye(d), np.ones(d), np.eye(d))
  np.testing.assert_allclose(value, d * 1.0 + d * (2 - 1) ** 2, rtol=1e-12)


def test_fid_infinity_removes_the_finite_sample_bias_of_gaussians():
  # Real N(0, I) (many images), generated N(shift, s^2 I): the true distance is closed-form; FID of
  # 2000 generated images lies above it by its 1/N bias, FID-infinity does not.
  d, s, shift = 32, 1.2, 0.05
  true = d * shift ** 2 + d * (1 - s) ** 2
  finite, extrapolated = [], []
  for seed in range(4):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(50_000, d))
    fake = rng.normal(size=(2000, d)) * s + shift
    finite.append(fid_lib.fid(real, fake))
    out = fid_lib.fid_infinity(real, fake, seed=seed)
    extrapolated.append(out["fid_inf"])
    assert out["slope"] > 0 and out["counts"][0] == 200 and out["counts"][-1] == 2000
    inv = 1.0 / np.asarray(out["counts"], np.float64)
    slope, intercept = np.polyfit(inv, out["values"], 1)
    np.testing.assert_allclose([out["fid_inf"], out["slope"]], [intercept, slope], rtol=1e-9)
  bias_finite = np.mean(finite) - true
  assert min(finite) > true and bias_finite > 0.1 * true
  assert abs(np.mean(extrapolated) - true) < 0.3 * bias_finite


def test_fid_infinity_needs_subsets_above_the_dimension():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match=r"2 x \(dim \+ 1\) = 66 generated images"):
    fid_lib.fid_infinity(rng.normal(size=(500, 32)), rng.normal(size=(65, 32)))
  out = fid_lib.fid_infinity(rng.normal(size=(500, 32)), rng.normal(size=(66, 32)), num_points=5)
  assert out["counts"][0] == 33 and len(out["counts"]) == 5  # From dim + 1 when n / 10 is less.


def test_fid_of_one_dimensional_features_and_too_few_images():
  x, y = np.arange(5.0), 1.5 * np.arange(6.0) + 0.2
  s1, s2 = np.var(x, ddof=1), np.var(y, ddof=1)
  expected = (x.mean() - y.mean()) ** 2 + s1 + s2 - 2 * np.sqrt(s1 * s2)  # (sd1 - sd2)^2 + ...
  np.testing.assert_allclose(fid_lib.fid(x, y), expected, rtol=1e-12)
  with pytest.raises(ValueError, match="at least 2 images"):
    fid_lib.fid(x[:1], y)


def test_fid_singular_covariance_is_finite_and_zero_for_same_set():
  x = _features(0, n=10, d=32)  # Fewer samples than dimensions: singular covariances.
  scale = np.trace(np.cov(x, rowvar=False))
  assert abs(fid_lib.fid(x, x)) < 1e-6 * scale
  assert np.isfinite(fid_lib.fid(x, _features(1, n=10, d=32)))


def _mmd_loops(x, y):
  def k(a, b):
    return (a @ b / len(a) + 1) ** 3
  m, n = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return kxx + kyy - 2 * kxy


def test_mmd_matches_loops_and_kid_over_all_rows():
  x, y = _features(0, n=20, d=5), _features(1, n=15, d=5, shift=0.3)
  ref = _mmd_loops(x, y)
  np.testing.assert_allclose(fid_lib.mmd2_unbiased(x, y), ref, rtol=1e-10)
  out = fid_lib.kid(x[:15], y, subset_size=15, num_subsets=3)
  np.testing.assert_allclose(out["kid"], _mmd_loops(x[:15], y), rtol=1e-10)
  assert out["kid_std"] < 1e-12  # Every subset is the whole (permuted) set.


def test_kid_separates_distributions_and_has_standard_error():
  x, y, z = _features(0), _features(1), _features(2, shift=1.0)
  same = fid_lib.kid(x, y, subset_size=50, num_subsets=20, seed=3)
  diff = fid_lib.kid(x, z, subset_size=50, num_subsets=20, seed=3)
  assert diff["kid"] > same["kid"] + 5 * diff["kid_se"]
  assert diff == fid_lib.kid(x, z, subset_size=50, num_subsets=20, seed=3)


def test_kid_jackknife_is_the_leave_one_out_recomputation():
  x, y = _features(0, n=12, d=5), _features(1, n=9, d=5, shift=0.3)
  value, se = fid_lib.mmd2_jackknife(x, y)
  np.testing.assert_allclose(value, _mmd_loops(x, y), rtol=1e-10)
  tx = np.array([_mmd_loops(np.delete(x, i, 0), y) for i in range(len(x))])
  ty = np.array([_mmd_loops(x, np.delete(y, j, 0)) for j in range(len(y))])
  var = (11 / 12 * ((tx - tx.mean()) ** 2).sum() + 8 / 9 * ((ty - ty.mean()) ** 2).sum())
  np.testing.assert_allclose(se, np.sqrt(var), rtol=1e-8)


def test_kid_standard_error_matches_the_spread_over_independent_draws():
  """The s.e. of one pair of sets against the KID spread over 40 independent pairs."""
  rng = np.random.default_rng(5)
  a = rng.standard_normal((32, 32)) / np.sqrt(32)
  values, ses = [], []
  for _ in range(40):
    x = rng.standard_normal((300, 32)) @ a
    y = rng.standard_normal((300, 32)) @ a + 0.1
    out = fid_lib.kid(x, y, subset_size=1000, num_subsets=2)
    values.append(out["kid"])
    ses.append(out["kid_se"])
    assert out["kid"] == pytest.approx(out["kid_all"], rel=1e-9)  # Subsets = the whole sets.
    assert out["kid_std"] < 1e-12 * abs(out["kid"])  # Which is why kid_std is no error bar.
  assert 0.75 < np.mean(ses) / np.std(values) < 1.33


def _prdc_loops(real, fake, k):
  dr = scipy.spatial.distance.cdist(real, real)
  df = scipy.spatial.distance.cdist(fake, fake)
  d = scipy.spatial.distance.cdist(real, fake)
  rr = np.array([np.sort(row)[k] for row in dr])
  rf = np.array([np.sort(row)[k] for row in df])
  precision = np.mean([any(d[i, j] < rr[i] for i in range(len(real))) for j in range(len(fake))])
  recall = np.mean([any(d[i, j] < rf[j] for j in range(len(fake))) for i in range(len(real))])
  density = np.mean([sum(d[i, j] < rr[i] for i in range(len(real)))
                     for j in range(len(fake))]) / k
  coverage = np.mean([d[i].min() < rr[i] for i in range(len(real))])
  return precision, recall, density, coverage


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_prdc_matches_loops(shift):
  real, fake = _features(0, n=60, d=6), _features(1, n=50, d=6, shift=shift, scale=0.8)
  out = fid_lib.prdc(real, fake, k=5)
  ref = _prdc_loops(real, fake, 5)
  np.testing.assert_allclose([out["precision"], out["recall"], out["density"], out["coverage"]],
                             ref, rtol=1e-12)


def test_prdc_detects_mode_collapse():
  real = _features(0, n=100, d=4)
  fake = np.repeat(real[:1], 100, axis=0) + 1e-3 * _features(1, n=100, d=4)
  out = fid_lib.prdc(real, fake, k=5)
  assert out["precision"] > 0.9 and out["recall"] < 0.1 and out["coverage"] < 0.1


def _fid_spread_and_se(d, n, shift, draws=40):
  """(std of FID over independent pairs of sets, mean interval s.e., coverage of their mean)."""
  rng = np.random.default_rng(7)
  a = rng.standard_normal((d, d)) / np.sqrt(d)
  values, ses, intervals = [], [], []
  for _ in range(draws):
    x = rng.standard_normal((n, d)) @ a
    y = rng.standard_normal((n, d)) @ a + shift
    ci = fid_lib.subsample_interval(fid_lib.fid, x, y, num_subsets=60, seed=1)
    value = fid_lib.fid(x, y)
    assert ci["low"] < value < ci["high"]  # A percentile bootstrap's lay wholly above it.
    values.append(value)
    ses.append(ci["se"])
    intervals.append((ci["low"], ci["high"]))
  mean = np.mean(values)
  return np.std(values), np.mean(ses), np.mean([lo < mean < hi for lo, hi in intervals])


def test_fid_interval_has_the_width_of_the_spread_over_independent_sets():
  spread, se, covered = _fid_spread_and_se(16, 1000, 0.5)  # Many images per dimension: accurate.
  assert 0.85 < se / spread < 1.25 and covered > 0.85
  spread, se, covered = _fid_spread_and_se(64, 200, 0.2)  # Few: wider, never narrower.
  assert 1.0 < se / spread < 2.0 and covered > 0.9
  x, y = _features(0, n=80, d=4), _features(1, n=80, d=4, shift=0.5)
  assert fid_lib.subsample_interval(fid_lib.fid, x, y, num_subsets=30, seed=1) == (
      fid_lib.subsample_interval(fid_lib.fid, x, y, num_subsets=30, seed=1))


def test_prdc_bootstrap_is_centred_on_the_estimate():
  # Rebuilding the k-NN balls from resamples with replacement (repeats, fewer distinct centres)
  # puts the intervals of precision, recall and coverage below the point estimate.
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    real, fake = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    point = fid_lib.prdc(real, fake, k=5)
    cis = fid_lib.prdc_bootstrap_ci(real, fake, k=5, num_resamples=200, seed=seed)
    for name in ("precision", "recall", "density", "coverage"):
      assert cis[name]["low"] <= point[name] <= cis[name]["high"], (seed, name, point, cis[name])
    assert cis == fid_lib.prdc_bootstrap_ci(real, fake, k=5, num_resamples=200, seed=seed)


def test_prdc_bootstrap_width_is_the_binomial_standard_error():
  # Precision is a mean of 0/1 terms over the generated images: its bootstrap std is close to
  # sqrt(p (1 - p) / n).
  rng = np.random.default_rng(3)
  real, fake = rng.standard_normal((400, 4)), rng.standard_normal((400, 4)) + 0.7
  p = fid_lib.prdc(real, fake, k=5)["precision"]
  ci = fid_lib.prdc_bootstrap_ci(real, fake, k=5, num_resamples=2000, seed=0)["precision"]
  assert ci["std"] == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.1)
