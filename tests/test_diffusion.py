"""The schedule and the diffusion formulas against numpy computations written here."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from solar_ddpm_jax import diffusion


def _config(**overrides):
  c = ml_collections.ConfigDict(dict(
      num_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
      prediction="eps", loss="mse", label_dropout=0.1, per_sample_dropout=True,
      faithful_timesteps=False, loss_weighting="none", min_snr_gamma=5.0))
  c.update(overrides)
  return c


def test_linear_schedule_arrays_match_numpy():
  s = diffusion.make_schedule(_config())
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
  np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev, rtol=1e-5)
  np.testing.assert_allclose(s.posterior_variance, betas * (1 - abar_prev) / (1 - abar),
                             rtol=1e-5)
  assert float(s.posterior_variance[0]) == 0.0
  # The published DDPM numbers: abar_T ~ 4.04e-5 for T = 1000 linear betas.
  assert float(s.alphas_cumprod[-1]) == pytest.approx(4.0358e-5, rel=1e-3)
  assert s.num_timesteps == 1000


def test_cosine_schedule_follows_its_closed_form():
  s = diffusion.make_schedule(_config(beta_schedule="cosine", num_timesteps=200))
  f = lambda t: np.cos((t / 200 + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(1, 201)
  expected = f(t) / f(0)
  # Away from the end, where betas are clipped at 0.999, abar_t = f(t+1)/f(0) exactly.
  np.testing.assert_allclose(s.alphas_cumprod[:190], expected[:190], rtol=1e-4)
  assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)


def test_unknown_schedule_is_an_error():
  with pytest.raises(ValueError, match="beta_schedule"):
    diffusion.make_schedule(_config(beta_schedule="quadratic"))


def test_q_sample_statistics():
  s = diffusion.make_schedule(_config())
  x0 = jnp.full((20000, 2, 2, 1), 0.7)
  for t_val in (0, 250, 999):
    t = jnp.full((20000,), t_val, jnp.int32)
    noise = jax.random.normal(jax.random.key(t_val), x0.shape)
    x_t = np.asarray(diffusion.q_sample(s, x0, t, noise), np.float64)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t_val]
    assert x_t.mean() == pytest.approx(np.sqrt(abar) * 0.7, abs=4 * np.sqrt(1 - abar) / 280)
    assert x_t.var() == pytest.approx(1 - abar, rel=0.03)


def test_prediction_conversions_round_trip():
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 1)), jnp.float32)
  eps = jnp.asarray(rng.standard_normal((6, 4, 4, 1)), jnp.float32)
  abar = jnp.asarray(rng.uniform(0.01, 0.99, (6, 1, 1, 1)), jnp.float32)
  x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * eps
  np.testing.assert_allclose(diffusion.x0_from_eps(abar, x_t, eps), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.eps_from_x0(abar, x_t, x0), eps, atol=1e-5)
  v = diffusion.v_from_eps_x0(abar, eps, x0)
  np.testing.assert_allclose(v, np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0, atol=1e-6)
  for prediction, out in (("eps", eps), ("x0", x0), ("v", v)):
    got_eps, got_x0 = diffusion.eps_and_x0(prediction, abar, x_t, out)
    np.testing.assert_allclose(got_eps, eps, atol=1e-4, err_msg=prediction)
    np.testing.assert_allclose(got_x0, x0, atol=1e-4, err_msg=prediction)
    np.testing.assert_allclose(diffusion.prediction_target(prediction, abar, x0, eps), out,
                               atol=1e-6)


def test_posterior_is_the_gaussian_conditional():
  """q(x_{t-1} | x_t, x0) from Bayes' rule on the two Gaussians, computed in float64 here."""
  s = diffusion.make_schedule(_config())
  betas = np.linspace(1e-4, 0.02, 1000)
  abar = np.cumprod(1 - betas)
  t = np.array([1, 10, 500, 999])
  x0 = np.array([0.5, -0.2, 0.9, 0.1]).reshape(4, 1, 1, 1)
  x_t = np.array([0.3, 1.1, -0.4, 2.0]).reshape(4, 1, 1, 1)
  mean, var, _ = diffusion.q_posterior_mean_variance(s, jnp.asarray(x0, jnp.float32),
                                                     jnp.asarray(x_t, jnp.float32),
                                                     jnp.asarray(t, jnp.int32))
  ab_prev, alpha, beta = abar[t - 1], 1 - betas[t], betas[t]
  precision = 1 / (1 - ab_prev) + alpha / beta
  expected_mean = (np.sqrt(ab_prev) * x0.ravel() / (1 - ab_prev)
                   + np.sqrt(alpha) * x_t.ravel() / beta) / precision
  np.testing.assert_allclose(np.ravel(mean), expected_mean, rtol=1e-4)
  np.testing.assert_allclose(np.ravel(var), 1 / precision, rtol=1e-4)


def test_label_dropout_per_sample_and_whole_batch():
  labels = jnp.zeros((20000,), jnp.int32) + 2
  dropped = np.asarray(diffusion.drop_labels(jax.random.key(0), labels, 0.1, 5))
  assert set(np.unique(dropped)) == {2, 5}
  assert np.mean(dropped == 5) == pytest.approx(0.1, abs=0.01)
  fractions = {float(np.mean(np.asarray(diffusion.drop_labels(
      jax.random.key(k), labels[:16], 0.5, 5, per_sample=False)) == 5)) for k in range(20)}
  assert fractions == {0.0, 1.0}  # The paper's whole-batch dropout: all or none.
  np.testing.assert_array_equal(diffusion.drop_labels(jax.random.key(0), labels, 0.0, 5), labels)


def _spy_apply(seen, output="zeros"):
  def apply_fn(params, x_t, t, labels, train=False, rngs=None):
    seen.update(x_t=x_t, t=t, labels=labels, train=train, rngs=rngs)
    return jnp.zeros_like(x_t) if output == "zeros" else x_t
  return apply_fn


def test_training_loss_uses_every_timestep_and_drops_labels_per_sample():
  s = diffusion.make_schedule(_config(num_timesteps=10))
  images = jnp.full((4000, 2, 2, 1), 0.5)
  labels = jnp.full((4000,), 3, jnp.int32)
  seen = {}
  loss, aux = diffusion.training_loss(
      _spy_apply(seen), None, s, images, labels, jax.random.key(0),
      diffusion_config=_config(num_timesteps=10, prediction="x0"), num_classes=5)
  assert sorted(np.unique(np.asarray(aux["t"]))) == list(range(10))
  assert np.mean(np.asarray(seen["labels"]) == 5) == pytest.approx(0.1, abs=0.02)
  assert set(np.unique(np.asarray(seen["labels"]))) == {3, 5}
  # Predicting x0 with zeros: the MSE is exactly mean(x0^2) = 0.25, per sample too.
  assert float(loss) == pytest.approx(0.25, rel=1e-6)
  np.testing.assert_allclose(aux["loss_per_sample"], 0.25, rtol=1e-6)
  assert seen["train"] and "dropout" in seen["rngs"]
  # x_t follows q_sample at the drawn t: its per-t mean is sqrt(abar_t) * 0.5.
  x_t, t = np.asarray(seen["x_t"]).mean(axis=(1, 2, 3)), np.asarray(aux["t"])
  abar = np.asarray(s.alphas_cumprod)
  for t_val in (0, 9):
    assert x_t[t == t_val].mean() == pytest.approx(np.sqrt(abar[t_val]) * 0.5, abs=0.05)


def test_validation_loss_keeps_every_label():
  """train=False scores the conditional model: no label is swapped for the null class."""
  s = diffusion.make_schedule(_config(num_timesteps=10))
  labels = jnp.arange(4000, dtype=jnp.int32) % 5
  seen = {}
  diffusion.training_loss(_spy_apply(seen), None, s, jnp.zeros((4000, 2, 2, 1)), labels,
                          jax.random.key(0), diffusion_config=_config(num_timesteps=10,
                                                                       label_dropout=0.5),
                          num_classes=5, train=False)
  np.testing.assert_array_equal(seen["labels"], labels)
  assert not seen["train"] and seen["rngs"] is None


def test_training_loss_faithful_timesteps_skip_zero_and_l1():
  s = diffusion.make_schedule(_config(num_timesteps=10))
  images = jnp.full((2000, 2, 2, 1), -0.5)
  cfg = _config(num_timesteps=10, faithful_timesteps=True, loss="l1", prediction="x0")
  loss, aux = diffusion.training_loss(_spy_apply({}), None, s, images,
                                      jnp.zeros((2000,), jnp.int32), jax.random.key(1),
                                      diffusion_config=cfg, num_classes=5, train=False)
  assert sorted(np.unique(np.asarray(aux["t"]))) == list(range(1, 10))
  assert float(loss) == pytest.approx(0.5, rel=1e-6)


def test_a_network_with_other_output_channels_is_refused_not_broadcast():
  s = diffusion.make_schedule(_config(num_timesteps=10))
  one_channel = lambda params, x_t, t, labels, train=False, rngs=None: x_t[..., :1]
  with pytest.raises(ValueError, match=r"\(2, 4, 4, 4\) to \(2, 4, 4, 1\).*model.out_channels"):
    diffusion.training_loss(one_channel, None, s, jnp.zeros((2, 4, 4, 4)),
                            jnp.zeros((2,), jnp.int32), jax.random.key(0),
                            diffusion_config=_config(num_timesteps=10), num_classes=5)


def test_eps_loss_matches_an_independent_computation():
  """The eps loss of a network returning x_t, recomputed from the same draws in numpy."""
  s = diffusion.make_schedule(_config(num_timesteps=50))
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.uniform(-1, 1, (8, 4, 4, 1)), jnp.float32)
  seen = {}
  cfg = _config(num_timesteps=50, label_dropout=0.0)
  loss, aux = diffusion.training_loss(_spy_apply(seen, "x_t"), None, s, images,
                                      jnp.zeros((8,), jnp.int32), jax.random.key(2),
                                      diffusion_config=cfg, num_classes=5)
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 50))[np.asarray(aux["t"])].reshape(-1, 1, 1, 1)
  x_t = np.asarray(seen["x_t"], np.float64)
  eps = (x_t - np.sqrt(abar) * np.asarray(images, np.float64)) / np.sqrt(1 - abar)
  expected = ((x_t - eps) ** 2).reshape(8, -1).mean(1)
  np.testing.assert_allclose(aux["loss_per_sample"], expected, rtol=1e-4)
  assert float(loss) == pytest.approx(expected.mean(), rel=1e-4)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_min_snr_weights_equal_the_eps_space_weight_in_every_target_space(prediction):
  """A target's weighted squared error equals min(SNR, g)/SNR times the eps error's (numpy).

  The errors come from one wrong eps at a fixed x_t, turned into each target with the textbook
  formulas written here: the weighting is the same objective whatever the network predicts.
  """
  rng = np.random.default_rng(0)
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[0, 10, 100, 500, 999]]
  snr = abar / (1 - abar)
  x0, eps = rng.normal(size=(2, 5))
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
  eps_hat = eps + rng.normal(size=5)
  x0_hat = (x_t - np.sqrt(1 - abar) * eps_hat) / np.sqrt(abar)
  target = {"eps": lambda e, x: e, "x0": lambda e, x: x,
            "v": lambda e, x: np.sqrt(abar) * e - np.sqrt(1 - abar) * x}[prediction]
  err2 = (target(eps_hat, x0_hat) - target(eps, x0)) ** 2
  w = np.asarray(diffusion.loss_weights("min_snr", prediction, jnp.asarray(abar, jnp.float32),
                                        gamma=5.0), np.float64)
  np.testing.assert_allclose(w * err2, np.minimum(snr, 5.0) / snr * (eps_hat - eps) ** 2,
                             rtol=1e-3)  # float32 1 - abar near t = 0.
  np.testing.assert_array_equal(diffusion.loss_weights("none", prediction, jnp.asarray(abar)), 1)


def test_min_snr_loss_is_the_weighted_mean_of_the_per_sample_losses():
  s = diffusion.make_schedule(_config(num_timesteps=50))
  rng = np.random.default_rng(4)
  images = jnp.asarray(rng.uniform(-1, 1, (16, 4, 4, 1)), jnp.float32)
  cfg = _config(num_timesteps=50, label_dropout=0.0, loss_weighting="min_snr", min_snr_gamma=2.0)
  loss, aux = diffusion.training_loss(_spy_apply({}, "x_t"), None, s, images,
                                      jnp.zeros((16,), jnp.int32), jax.random.key(5),
                                      diffusion_config=cfg, num_classes=5)
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 50))[np.asarray(aux["t"])]
  snr = abar / (1 - abar)
  expected = (np.minimum(snr, 2.0) / snr * np.asarray(aux["loss_per_sample"])).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-4)
  assert float(loss) < float(np.mean(aux["loss_per_sample"]))  # Easy steps were down-weighted.
  with pytest.raises(ValueError, match="diffusion.loss_weighting 'snr'"):
    diffusion.loss_weights("snr", "eps", jnp.ones(2) * 0.5)
