"""Physics checks on synthetic discs and fields with known answers."""

import numpy as np
import scipy.stats

from solar_ddpm_jax.evaluation import physics


def _power_law_field(n, slope, seed=0, count=4):
  rng = np.random.default_rng(seed)
  k = np.hypot(*np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n, indexing="ij"))
  amp = np.where(k > 0, np.maximum(k, 1e-9) ** (slope / 2.0), 0.0)
  noise = rng.normal(size=(count, n, n)) + 1j * rng.normal(size=(count, n, n))
  return np.fft.ifft2(noise * amp).real


def _disc(n, radius, inside=100.0, outside=0.0):
  r = np.hypot(*(np.indices((n, n)) - (n - 1) / 2.0))
  return np.where(r <= radius, inside, outside)[None]


def test_power_spectrum_slope_of_known_field():
  for slope in (-2.0, -3.0):
    k, p = physics.power_spectrum(_power_law_field(128, slope))
    assert abs(physics.spectral_slope(k, p, 4, 48) - slope) < 0.15


def test_white_noise_spectrum_is_flat_at_its_variance():
  x = np.random.default_rng(0).normal(0, 2.0, (8, 64, 64))
  _, p = physics.power_spectrum(x)
  np.testing.assert_allclose(p[2:30].mean(), 4.0, rtol=0.05)


def test_bright_area_of_known_disc():
  area = physics.bright_area(_disc(200, 40.0), threshold_dn=50.0)
  np.testing.assert_allclose(area[0], np.pi * 40.0 ** 2, rtol=0.01)


def test_bright_area_counts_saturated_pixels_at_the_quantile():
  # 2 % of the pixels at the clip ceiling: the 0.99 quantile is the ceiling, and those pixels count.
  img = np.zeros((1, 50, 50))
  img[0, :1, :] = 3000.0
  threshold = float(np.quantile(img, 0.99))
  assert threshold == 3000.0
  assert physics.bright_area(img, threshold)[0] == 50


def test_radial_profile_and_brightness_of_a_disc():
  img = _disc(128, 32.0, inside=10.0, outside=1.0)  # Radius 32 = half of the half size.
  r, prof = physics.radial_profile(img, num_bins=16)
  np.testing.assert_allclose(prof[r < 0.4], 10.0)
  np.testing.assert_allclose(prof[(r > 0.6) & (r < 1.0)], 1.0)
  np.testing.assert_allclose(physics.total_brightness(img)[0], img.sum())


def test_wasserstein_of_shifted_intensities():
  x = np.random.default_rng(0).uniform(0, 100, (4, 32, 32))
  assert physics.wasserstein(x, x) == 0.0
  np.testing.assert_allclose(physics.wasserstein(x, x + 7.0), 7.0, rtol=1e-9)


def test_wasserstein_of_large_sets_is_within_one_bin_of_scipys_exact_value(monkeypatch):
  """Above EXACT_PIXELS the histogram integral: within 2 (max - min) / W1_BINS of scipy's W1 of
  all pixels, also for sizes whose evenly strided subsample aliased with the image width."""
  n = 64
  yy, xx = np.indices((n, n))
  r = np.hypot(yy - 31.5, xx - 31.5)
  disc = np.where(r < 26, 800.0 * (1 + 0.5 * (r / 26) ** 2), 3.0)

  def discs(count, seed):
    g = np.random.default_rng(seed)
    return disc[None] * g.lognormal(0, 0.1, (count, 1, 1)) * g.lognormal(0, 0.3, (count, n, n))

  real, fake = discs(625, 1), discs(500, 2)  # 2.6 M and 2.0 M pixels.
  monkeypatch.setattr(physics, "EXACT_PIXELS", 1000)
  exact = scipy.stats.wasserstein_distance(real.ravel(), fake.ravel())
  width = (max(real.max(), fake.max()) - min(real.min(), fake.min())) / physics.W1_BINS
  assert abs(physics.wasserstein(real, fake) - exact) <= 2 * width
  assert abs(physics.wasserstein(real, real * 1.01) - scipy.stats.wasserstein_distance(
      real.ravel(), real.ravel() * 1.01)) <= 2 * width * 1.01


def test_compare_reports_each_statistic():
  real = _disc(64, 20.0, 100.0, 1.0).repeat(3, 0)
  fake = _disc(64, 10.0, 100.0, 1.0).repeat(3, 0)
  out = physics.compare(real, fake, ceiling=100.0, bright_threshold_dn=50.0)
  assert out["bright_area_px"]["fake_mean"] < 0.3 * out["bright_area_px"]["real_mean"]
  assert out["total_brightness_dn_s"]["relative_difference"] < -0.5
  assert out["wasserstein_dn_s"] > 0 and out["count_real"] == 3
  assert physics.compare(real, real, ceiling=100.0,
                         bright_threshold_dn=50.0)["power_spectrum"]["mean_abs_log10_ratio"] == 0
