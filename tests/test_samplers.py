"""Samplers against the exact noise predictor of Gaussian data, CFG, reproducibility, sharding.

For data x0 ~ N(mu, s^2) per pixel, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps is Gaussian and
E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar): the ideal network.
A correct sampler driven by it draws N(mu, s^2); the tolerances below are the discretisation
error of each sampler at its step count (DDIM's first-order error shrinks its spread the most),
and sampling noise (64,000 values: the standard error of the mean is 0.002).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import diffusion, samplers, sharding, train, unet

SCHEDULE = diffusion.schedule_from_betas(diffusion.linear_betas(1000))
ABAR = SCHEDULE.alphas_cumprod
SHAPE = (4000, 4, 4, 1)
MU, S = 0.3, 0.5


def gaussian_eps(mu_of_label, s=S, prediction="eps"):
  """The exact predictor of data N(mu[label], s^2): model_fn(x, t, labels)."""
  def model_fn(x, t, labels):
    a = ABAR[t].reshape(-1, 1, 1, 1)
    mu = mu_of_label(labels).reshape(-1, 1, 1, 1)
    eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s * s + 1 - a)
    if prediction == "eps":
      return eps
    x0 = diffusion.x0_from_eps(a, x, eps)
    return x0 if prediction == "x0" else diffusion.v_from_eps_x0(a, eps, x0)
  return model_fn


def run(model_fn, sampler, num_steps, labels=None, guidance_scale=None, seed=0, **kwargs):
  labels = jnp.zeros(SHAPE[0], jnp.int32) if labels is None else labels
  x_T = jax.random.normal(jax.random.key(seed), SHAPE)
  fn = jax.jit(lambda x_T, key, w: samplers.sample_loop(
      model_fn, ABAR, x_T, labels, key, sampler=sampler, num_steps=num_steps,
      guidance_scale=w, **kwargs))
  return np.asarray(fn(x_T, jax.random.key(seed + 1), guidance_scale), np.float64)


@pytest.mark.parametrize("sampler,num_steps,kwargs,std_rtol", [
    ("ddpm", 1000, {}, 0.02),
    ("ddpm", 1000, {"ddpm_variance": "posterior"}, 0.02),
    ("ddpm", 100, {}, 0.04),  # Respaced ancestral sampling.
    ("ddim", 50, {}, 0.06),
    ("dpm_solver++", 20, {}, 0.025),
    ("dpm_solver++", 10, {}, 0.045),
])
def test_samplers_draw_the_gaussian_data_distribution(sampler, num_steps, kwargs, std_rtol):
  x = run(gaussian_eps(lambda y: jnp.full(y.shape, MU)), sampler, num_steps, **kwargs)
  assert x.mean() == pytest.approx(MU, abs=0.01)
  assert x.std() == pytest.approx(S, rel=std_rtol)


def test_ddim_with_eta_one_is_ancestral_sampling_with_the_posterior_variance():
  model_fn = gaussian_eps(lambda y: jnp.full(y.shape, MU))
  ddim = run(model_fn, "ddim", 50, eta=1.0)
  ddpm = run(model_fn, "ddpm", 50, ddpm_variance="posterior")
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
  assert not np.allclose(ddim, run(model_fn, "ddim", 50), atol=1e-2)  # eta = 1 adds noise.


def test_samplers_converge_with_steps():
  """More steps, smaller error: the deterministic samplers approach s as the grid refines."""
  model_fn = gaussian_eps(lambda y: jnp.full(y.shape, MU))
  for sampler in ("ddim", "dpm_solver++"):
    errors = [abs(run(model_fn, sampler, n).std() - S) for n in (10, 50, 200)]
    assert errors[0] > errors[1] > errors[2], (sampler, errors)
    assert errors[2] < 0.01


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_prediction_types_give_the_same_samples(prediction):
  ref = run(gaussian_eps(lambda y: jnp.full(y.shape, MU)), "ddim", 20)
  got = run(gaussian_eps(lambda y: jnp.full(y.shape, MU), prediction=prediction), "ddim", 20,
            prediction=prediction)
  np.testing.assert_allclose(got, ref, atol=2e-3)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_cfg_mean_moves_as_lerp_predicts(w):
  """Class 1 data N(0.4, s^2), unconditional N(-0.2, s^2): the guided mean is lerp(-0.2, 0.4, w).

  Both branches share s, so the guided predictor is exactly that of N(lerp, s^2).
  """
  null = 5
  mu_u, mu_c = -0.2, 0.4
  model_fn = gaussian_eps(lambda y: jnp.where(y == null, mu_u, mu_c))
  labels = jnp.ones(SHAPE[0], jnp.int32)
  x = run(model_fn, "dpm_solver++", 20, labels=labels, guidance_scale=w, null_label=null)
  assert x.mean() == pytest.approx(mu_u + w * (mu_c - mu_u), abs=0.015)
  assert x.std() == pytest.approx(S, rel=0.025)


def test_cfg_is_one_batched_forward_pass_per_step():
  calls = []

  def model_fn(x, t, labels):
    calls.append((x.shape, np.asarray(labels) if not isinstance(labels, jax.core.Tracer)
                  else None))
    return jnp.zeros_like(x)

  labels = jnp.array([0, 3, 4], jnp.int32)
  samplers.guided_output(model_fn, jnp.zeros((3, 2, 2, 1)), jnp.zeros(3, jnp.int32), labels,
                         3.0, 5)
  assert len(calls) == 1 and calls[0][0] == (6, 2, 2, 1)
  np.testing.assert_array_equal(calls[0][1], [0, 5, 3, 5, 4, 5])  # [cond, null] pairs.
  calls.clear()
  jax.jit(lambda x: samplers.sample_loop(model_fn, ABAR, x, labels, jax.random.key(0),
                                         sampler="ddpm", num_steps=1000, guidance_scale=3.0))(
      jnp.zeros((3, 2, 2, 1)))
  assert len(calls) == 1  # Traced once: one scan body for all 1000 steps.


def test_clip_x0_keeps_samples_in_range():
  model_fn = gaussian_eps(lambda y: jnp.full(y.shape, 3.0))  # Data far outside [-1, 1].
  free = run(model_fn, "ddim", 20)
  clipped = run(model_fn, "ddim", 20, clip_x0=True)
  assert free.mean() > 2.5
  assert clipped.max() <= 1.0 + 1e-6 and clipped.min() >= -1.0 - 1e-6


def test_timestep_grids():
  grid = samplers.timestep_grid(ABAR, 50)
  assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 50 and np.all(np.diff(grid) < 0)
  np.testing.assert_array_equal(samplers.timestep_grid(ABAR, 1000), np.arange(999, -1, -1))
  np.testing.assert_array_equal(samplers.timestep_grid(ABAR, 0, faithful=True),
                                np.arange(999, 0, -1))
  # DPM-Solver++'s log-SNR grid: points that round to one timestep merge and the spacing is
  # refined, so that the grid has the points asked for (49 distinct of 50 uniform targets here).
  lam_all = 0.5 * np.log(np.asarray(ABAR, np.float64) / (1 - np.asarray(ABAR, np.float64)))
  uniform = np.abs(lam_all[None] - np.linspace(lam_all[-1], lam_all[0], 50)[:, None]).argmin(1)
  assert len(np.unique(uniform)) == 49
  assert len(samplers.sampler_grid("dpm_solver++", ABAR, 50)) == 50
  assert len(samplers.sampler_grid("ddim", ABAR, 50)) == 50
  logsnr = samplers.timestep_grid(ABAR, 20, spacing="logsnr")
  assert logsnr[0] == 999 and logsnr[-1] == 0 and len(logsnr) == 20
  twenty = np.abs(lam_all[None] - np.linspace(lam_all[-1], lam_all[0], 20)[:, None]).argmin(1)
  np.testing.assert_array_equal(logsnr, np.unique(twenty)[::-1])  # No merges at 20.
  steps = np.diff(lam_all[logsnr])
  assert np.all(steps > 0) and steps[:8].std() / steps[:8].mean() < 0.1  # Even in log-SNR.


def test_cosine_logsnr_grid_starts_at_lu_et_al_floor():
  """Cosine betas clipped at 0.999 drop lambda from -6.5 to -9.9 in the last timestep; the grid
  is uniform in lambda from Lu et al.'s lambda(T = 0.9946) = -4.78, whose first point is T-1."""
  abar = np.cumprod(1 - diffusion.cosine_betas(1000))
  lam = 0.5 * np.log(abar / (1 - abar))
  assert lam[-1] < -9.5 and lam[-2] > -7
  s = 0.008  # Lu et al.'s continuous cosine schedule at t = 0.9946:
  alpha = np.cos((0.9946 + s) / (1 + s) * np.pi / 2) / np.cos(s / (1 + s) * np.pi / 2)
  np.testing.assert_allclose(samplers.COSINE_LOGSNR_MIN, np.log(alpha / np.sqrt(1 - alpha ** 2)),
                             atol=1e-3)
  for n in (10, 20, 50):
    grid = samplers.sampler_grid("dpm_solver++", abar, n, logsnr_min=samplers.COSINE_LOGSNR_MIN)
    assert len(grid) == n and grid[0] == 999 and grid[-1] == 0
    spacing = (lam[0] - samplers.COSINE_LOGSNR_MIN) / (n - 1)  # The floor's point is T-1.
    assert abs(lam[grid[1]] - (samplers.COSINE_LOGSNR_MIN + spacing)) < 0.5 * spacing
    steps = np.diff(lam[grid[1:]])
    assert np.all(steps > 0) and steps[:5].std() / steps[:5].mean() < 0.25
    bare = samplers.sampler_grid("dpm_solver++", abar, n)  # Without the floor: steps on noise.
    assert (abar[bare] < 1e-5).sum() >= 2 and (abar[grid] < 1e-5).sum() == 1


def test_one_step_grids_start_from_pure_noise():
  """num_steps=1 is one step from t = T-1 (not t = 0, which would return the input noise)."""
  for spacing in ("time", "logsnr"):
    np.testing.assert_array_equal(samplers.timestep_grid(ABAR, 1, spacing=spacing), [999])
  # With the ideal x0 predictor of data N(0.3, 0.5^2), one DDIM step lands on the data mean.
  abar = np.asarray(ABAR, np.float64)

  def ideal_eps(x, t, labels):
    a = jnp.asarray(abar, jnp.float32)[t].reshape(-1, 1, 1, 1)
    x0 = 0.3 + 0.25 * jnp.sqrt(a) * (x - jnp.sqrt(a) * 0.3) / (0.25 * a + 1 - a)
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)

  x_T = jax.random.normal(jax.random.key(0), (256, 2, 2, 1))
  for sampler in ("ddpm", "ddim", "dpm_solver++"):
    out = samplers.sample_loop(ideal_eps, ABAR, x_T, jnp.zeros(256, jnp.int32), jax.random.key(1),
                               sampler=sampler, num_steps=1)
    assert float(jnp.mean(out)) == pytest.approx(0.3, abs=0.02), sampler
  with pytest.raises(ValueError, match="num_steps=-1"):
    samplers.timestep_grid(ABAR, -1)


def test_bad_labels_and_eta_are_errors():
  fn, params = _unet_sample_fn(sharding.create_mesh(None, devices=jax.devices()[:1]), "ddim")
  for bad in ([0, 6], [5, 1], [-1, 2]):  # NaN images, the null class, the null class wrapped.
    with pytest.raises(ValueError, match="not classes 0..4"):
      fn(params, np.asarray(bad, np.int32), jax.random.key(0))
  with pytest.raises(ValueError, match="eta=1.5"):
    samplers.sample_loop(lambda x, t, y: x, ABAR, jnp.zeros((1, 2, 2, 1)), jnp.zeros(1, jnp.int32),
                         jax.random.key(0), sampler="ddim", num_steps=5, eta=1.5)


def test_faithful_ddpm_is_the_published_update():
  """From t = T-1 to 1 with x <- (x - beta/sqrt(1-abar) eps)/sqrt(alpha) + sqrt(beta) z."""
  betas = np.linspace(1e-4, 0.02, 20)
  sched = diffusion.schedule_from_betas(betas)
  abar = np.cumprod(1 - betas)
  eps_fn = lambda x, t, labels: 0.5 * x + 0.01 * t.reshape(-1, 1, 1, 1)
  x_T = jax.random.normal(jax.random.key(0), (2, 3, 3, 1))
  key = jax.random.key(1)
  got = samplers.sample_loop(eps_fn, sched.alphas_cumprod, x_T, jnp.zeros(2, jnp.int32), key,
                             sampler="ddpm", num_steps=0, faithful=True)
  x = np.asarray(x_T, np.float64)
  for index, t in enumerate(range(19, 0, -1)):
    eps = 0.5 * x + 0.01 * t
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, index), x.shape)) if t > 1 else 0
    x = ((x - betas[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(1 - betas[t])
         + np.sqrt(betas[t]) * z)
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-5)


def _unet_sample_fn(mesh, sampler):
  config = aia171.get_config("test")
  config.sampling.sampler = sampler
  config.sampling.num_steps = 3
  apply_fn = train.make_apply_fn(unet.create_model(config.model))
  schedule = diffusion.make_schedule(config.diffusion)
  params = unet.init_params(config.model, jax.random.key(0))
  # A fresh modern model outputs zeros; perturb so the network matters.
  params = jax.tree.map(lambda p: p + 0.05, params)
  return samplers.make_sample_fn(apply_fn, schedule, config, mesh), params


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver++"])
def test_sharded_sampling_equals_one_device_and_is_reproducible(sampler):
  labels = np.arange(8, dtype=np.int32) % 5
  mesh8 = sharding.create_mesh(None)
  mesh1 = sharding.create_mesh(None, devices=jax.devices()[:1])
  assert mesh8.devices.size == 8
  fn8, params = _unet_sample_fn(mesh8, sampler)
  fn1, _ = _unet_sample_fn(mesh1, sampler)
  key = jax.random.key(7)
  out8 = fn8(jax.device_put(params, sharding.replicated(mesh8)), labels, key)
  assert out8.sharding.spec == sharding.batch_sharding(mesh8, 4).spec
  assert len(out8.sharding.device_set) == 8
  out1 = fn1(jax.device_put(params, sharding.replicated(mesh1)), labels, key)
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), atol=1e-5)
  again = fn8(jax.device_put(params, sharding.replicated(mesh8)), labels, key)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(out8))
  other = fn8(jax.device_put(params, sharding.replicated(mesh8)), labels, jax.random.key(8))
  assert not np.allclose(np.asarray(other), np.asarray(out8))
  guided = fn8(jax.device_put(params, sharding.replicated(mesh8)), labels, key,
               guidance_scale=0.0)
  assert not np.allclose(np.asarray(guided), np.asarray(out8))
  assert float(np.abs(np.asarray(out8)).max()) <= 1.0


def test_guidance_1_and_0_run_one_branch_with_the_same_images():
  """w = 1 (conditional) and w = 0 (unconditional) as numbers: one pass of B per step, the same
  images as the guided program (a traced w) gives."""
  config = aia171.get_config("test")
  config.sampling.sampler, config.sampling.num_steps = "ddim", 3
  model = unet.create_model(config.model)
  real_apply = train.make_apply_fn(model)
  batches = []

  def apply_fn(params, x, t, y, train=False):
    batches.append(x.shape[0])  # At trace time.
    return real_apply(params, x, t, y, train=train)

  params = jax.tree.map(lambda p: p + 0.05, unet.init_params(config.model, jax.random.key(0)))
  fn = samplers.make_sample_fn(apply_fn, diffusion.make_schedule(config.diffusion), config)
  labels, key = np.arange(4, dtype=np.int32) % 5, jax.random.key(3)
  for w in (1.0, 0.0):
    batches.clear()
    single = np.asarray(fn(params, labels, key, guidance_scale=w))
    assert batches and set(batches) == {4}
    batches.clear()
    guided = np.asarray(fn(params, labels, key, guidance_scale=jnp.float32(w)))
    assert set(batches) == ({8} if w == 1.0 else set())  # Traced once, for any w.
    np.testing.assert_allclose(single, guided, atol=2e-5)
  assert not np.allclose(np.asarray(fn(params, labels, key, guidance_scale=1.0)),
                         np.asarray(fn(params, labels, key, guidance_scale=0.0)))


def test_unknown_sampler_is_an_error():
  with pytest.raises(ValueError, match="Unknown sampler"):
    samplers.grid_coefficients("euler", np.asarray(ABAR), np.arange(3)[::-1])


def _reference_solver(abar_all, grid, x_T, eps_np, sampler, clip_x0=False):
  """DDIM (eta = 0) and DPM-Solver++(2M) step by step in float64 numpy, from the papers' update
  rules (Song et al. eq. 12; Lu et al. 2022, Algorithm 2 with a first-order first step and a
  first-order step into the data), on the points of `grid` then abar = 1."""
  x, x0_prev, h_prev = np.asarray(x_T, np.float64), None, None
  for i, t in enumerate(grid):
    a = abar_all[t]
    a_next = abar_all[grid[i + 1]] if i + 1 < len(grid) else 1.0
    eps = eps_np(x, t)
    x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
    if clip_x0:
      x0 = np.clip(x0, -1, 1)
      eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    if sampler == "ddim":
      x = np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps
      continue
    lam = 0.5 * np.log(a / (1 - a))
    lam_next = np.inf if a_next == 1.0 else 0.5 * np.log(a_next / (1 - a_next))
    h = lam_next - lam
    if h_prev is None or not np.isfinite(h):
      d = x0
    else:
      r = h_prev / h
      d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    x = np.sqrt(1 - a_next) / np.sqrt(1 - a) * x - np.sqrt(a_next) * np.expm1(-h) * d
    x0_prev, h_prev = x0, h
  return x


@pytest.mark.parametrize("sampler,clip", [("dpm_solver++", False), ("ddim", False),
                                          ("ddim", True), ("dpm_solver++", True)])
def test_ode_samplers_follow_the_published_updates_step_by_step(sampler, clip):
  """On the cosine schedule's uneven log-SNR grid (step ratios r far from 1), with a non-linear
  stand-in network whose x0 leaves [-1, 1] (so clipping and the eps recomputed from the clipped
  x0 both matter)."""
  abar64 = np.cumprod(1 - diffusion.cosine_betas(1000))
  grid = samplers.sampler_grid(sampler, abar64, 8, logsnr_min=samplers.COSINE_LOGSNR_MIN)
  h = np.diff(0.5 * np.log(abar64[grid] / (1 - abar64[grid])))
  assert sampler == "ddim" or np.ptp(h[1:-1] / h[2:]) > 0.1 or np.ptp(h[:-1] / h[1:]) > 0.1

  def eps_np(x, t):
    return np.tanh(1.5 * x) * (0.5 + t / 1000.0) - 0.2

  def model_fn(x, t, labels):
    return jnp.tanh(1.5 * x) * (0.5 + t.reshape(-1, 1, 1, 1) / 1000.0) - 0.2

  x_T = jax.random.normal(jax.random.key(4), (3, 4, 4, 1))
  got = samplers.sample_loop(model_fn, abar64, x_T, jnp.zeros(3, jnp.int32), jax.random.key(0),
                             sampler=sampler, num_steps=8, clip_x0=clip,
                             logsnr_min=samplers.COSINE_LOGSNR_MIN)
  want = _reference_solver(abar64, grid, np.asarray(x_T), eps_np, sampler, clip_x0=clip)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)
  if not clip:  # The stand-in's x0 leaves [-1, 1], so clipping changes the result.
    clipped = _reference_solver(abar64, grid, np.asarray(x_T), eps_np, sampler, clip_x0=True)
    assert np.abs(clipped - want).max() > 1e-2


def _recording_model(calls):
  """A model_fn whose output is zero and which records, per call, the t it is given (all of a
  batch's rows, as numpy: jax.debug.callback runs at every scan step, in order)."""
  def model_fn(x, t, labels):
    jax.debug.callback(lambda t_: calls.append(np.asarray(t_).copy()), t, ordered=True)
    return jnp.zeros_like(x)
  return model_fn


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_a_given_timestep_grid_is_the_grid_the_model_is_called_at(sampler):
  grid = (950, 700, 333, 90, 12, 3)
  calls = []
  x_T = jax.random.normal(jax.random.key(0), (2, 2, 2, 1))
  out = jax.jit(lambda x: samplers.sample_loop(
      _recording_model(calls), ABAR, x, jnp.zeros(2, jnp.int32), jax.random.key(1),
      sampler=sampler, num_steps=50, timesteps=grid))(x_T)
  jax.effects_barrier()
  assert [int(c[0]) for c in calls] == list(grid)
  assert all(np.all(c == c[0]) and c.shape == (2,) for c in calls)
  if sampler == "ddim":  # eps = 0: each step scales x by sqrt(abar_next / abar), to abar = 1.
    abar = np.asarray(diffusion.linear_betas(1000), np.float64)
    abar = np.cumprod(1.0 - abar)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x_T) / np.sqrt(abar[grid[0]]),
                               rtol=1e-5)
  np.testing.assert_array_equal(samplers.sampler_grid(sampler, ABAR, 50, timesteps=grid), grid)
  assert len(samplers.sampler_grid(sampler, ABAR, 50)) == 50  # Empty: the sampler's own grid.


def _stub_sample_fn(calls=None, **sampling):
  """make_sample_fn of the test preset on a stub network: x0-prediction 0.1 (label + 1) for the
  classes and -0.2 for the null class, recording the timesteps it is called at."""
  config = aia171.get_config("test")
  config.diffusion.prediction = "x0"
  for k, v in sampling.items():
    setattr(config.sampling, k, v)
  null = int(config.model.num_classes)

  def apply_fn(params, x, t, y, train=False):
    if calls is not None:
      jax.debug.callback(lambda t_: calls.append(np.asarray(t_).copy()), t, ordered=True)
    value = jnp.where(y == null, -0.2, 0.1 * (y + 1.0)) * params["scale"]
    return jnp.broadcast_to(value.reshape(-1, 1, 1, 1), x.shape)

  fn = samplers.make_sample_fn(apply_fn, diffusion.make_schedule(config.diffusion), config)
  return fn, {"scale": jnp.float32(1.0)}, config


def test_sampling_timesteps_reach_the_network_through_make_sample_fn():
  calls = []
  fn, params, _ = _stub_sample_fn(calls, sampler="dpm_solver++", num_steps=20,
                                  timesteps=(99, 61, 20, 4, 0), guidance_scale=3.0)
  fn(params, np.array([0, 4], np.int32), jax.random.key(0))
  jax.effects_barrier()
  assert [int(c[0]) for c in calls] == [99, 61, 20, 4, 0]
  assert all(c.shape == (4,) for c in calls)  # Guided: [cond, uncond] pairs, one pass per step.


@pytest.mark.parametrize("timesteps,faithful,problem", [
    ((50, 50, 0), False, "strictly decreasing"),
    ((0, 50), False, "strictly decreasing"),
    ((100, 50, 0), False, r"in \[0, 99\]"),
    ((50, -1), False, r"in \[0, 99\]"),
    ((50, 0), True, r"in \[1, 99\] .*faithful_timesteps"),
    ((50.5, 2), False, "whole numbers"),
    ((True,), False, "whole numbers"),
    ("99,0", False, "one or more whole timesteps"),
])
def test_bad_timestep_grids_are_refused_naming_the_setting(timesteps, faithful, problem):
  from solar_ddpm_jax import settings
  from solar_ddpm_jax.errors import SettingsError
  config = aia171.get_config("test")  # diffusion.num_timesteps = 100.
  with config.ignore_type():  # A string reaches a config only through code, not the flags.
    config.sampling.timesteps = timesteps
  config.diffusion.faithful_timesteps = faithful
  with pytest.raises(SettingsError, match=r"^sampling\.timesteps=.*" + problem):
    settings.check(config, None, "sample")
  with pytest.raises(ValueError, match=r"sampling\.timesteps=.*" + problem):
    samplers.sampler_grid("ddim", np.asarray(ABAR)[:100], 10, faithful, timesteps=timesteps)


def test_good_timestep_grids_and_conventions_pass_the_settings_check():
  from solar_ddpm_jax import settings
  from solar_ddpm_jax.errors import SettingsError
  config = aia171.get_config("test")
  for timesteps in ((), (99,), (99, 49, 0), [80, 3]):
    config.sampling.timesteps = tuple(timesteps)
    config.sampling.guidance_convention = "published"
    assert settings.problems(config) == []
  config.sampling.guidance_scale = -1.0  # Published: the conditional prediction alone.
  assert settings.problems(config) == []
  config.sampling.guidance_convention = "project"
  assert [p.split("=")[0] for p in settings.problems(config)] == ["sampling.guidance_scale"]
  config.sampling.guidance_convention = "theirs"
  with pytest.raises(SettingsError, match=r"sampling\.guidance_convention='theirs': allowed "
                                          r"values are 'project', 'published'"):
    settings.check(config, None, "sample")


def _published_guidance(cond, uncond, s):
  """The published sampler: torch.lerp(uncond, cond, s) when s > 0, else cond alone."""
  if s > 0:
    return uncond + s * (cond - uncond)
  return cond


@pytest.mark.parametrize("convention", ["project", "published"])
def test_guidance_conventions_give_the_published_and_project_formulas(convention):
  """One DDIM step from t = T-1 to the data returns the guided x0 prediction itself, so the
  images are the guidance formula applied to the stub's 0.1 (label + 1) and -0.2 (null)."""
  labels = np.array([0, 1, 2, 4], np.int32)
  cond, uncond = 0.1 * (labels + 1.0), -0.2
  fn, params, _ = _stub_sample_fn(sampler="ddim", timesteps=(99,), guidance_scale=0.0,
                                  guidance_convention=convention)
  key = jax.random.key(0)

  def want(s):
    if convention == "published":
      w = _published_guidance(cond, uncond, s)
    else:
      w = uncond + s * (cond - uncond)
    return np.clip(w, -1.0, 1.0)[:, None, None, None] * np.ones((1, 16, 16, 1))

  # The config's scale 0: the conditional images (published) or the unconditional ones.
  np.testing.assert_allclose(np.asarray(fn(params, labels, key)), want(0.0), atol=1e-6)
  for s in (-1.0, 0.0, 0.4, 1.0, 1.5):
    for got in (fn(params, labels, key, guidance_scale=s),  # A number: 0 and 1 one branch.
                fn(params, labels, key, guidance_scale=jnp.float32(s))):  # Traced.
      np.testing.assert_allclose(np.asarray(got), want(s), atol=1e-6, err_msg=f"s={s}")


def test_guidance_rescale_matches_the_published_formula():
  """Lin et al. 2024, Alg. 2, in numpy: phi * guided * std(cond) / std(guided) + (1-phi) guided."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
  labels = np.array([0, 2, 4], np.int32)
  model_fn = lambda x, t, y: x * (1.0 + y.reshape(-1, 1, 1, 1)) + 0.1 * y.reshape(-1, 1, 1, 1)
  w, phi = 3.0, 0.7
  cond = x * (1.0 + labels.reshape(-1, 1, 1, 1)) + 0.1 * labels.reshape(-1, 1, 1, 1)
  uncond = x * 6.0 + 0.5
  guided = uncond + w * (cond - uncond)
  ratio = cond.std(axis=(1, 2, 3), keepdims=True) / guided.std(axis=(1, 2, 3), keepdims=True)
  want = phi * guided * ratio + (1 - phi) * guided
  got = samplers.guided_output(model_fn, jnp.asarray(x), jnp.zeros(3, jnp.int32),
                               jnp.asarray(labels), w, 5, rescale=phi)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  plain = samplers.guided_output(model_fn, jnp.asarray(x), jnp.zeros(3, jnp.int32),
                                 jnp.asarray(labels), w, 5)
  np.testing.assert_allclose(np.asarray(plain), guided, rtol=1e-5, atol=1e-5)


def test_guidance_interval_guides_only_the_steps_inside_it():
  """Guidance on (0.55, 0.65) of T touches only t = 600 of the grid 999, 600, 300, 0: the same as a
  network that applies the guidance itself at t = 600 and is sampled conditionally."""
  mu = lambda y: 0.1 * y.astype(jnp.float32)
  base = gaussian_eps(mu)
  labels = jnp.array([0, 1, 2, 3], jnp.int32)
  x_T = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
  grid, w = (999, 600, 300, 0), 4.0

  def by_hand(x, t, y):
    cond, uncond = base(x, t, y), base(x, t, jnp.full_like(y, 5))
    return jnp.where((t == 600)[:, None, None, None], uncond + w * (cond - uncond), cond)

  def sample(model_fn, scale, **kwargs):
    return np.asarray(samplers.sample_loop(
        model_fn, ABAR, x_T, labels, jax.random.key(1), sampler="ddim", num_steps=4,
        guidance_scale=scale, timesteps=grid, **kwargs))

  got = sample(base, w, guidance_interval=(0.55, 0.65))
  np.testing.assert_allclose(got, sample(by_hand, None), rtol=1e-5, atol=1e-6)
  assert np.abs(got - sample(base, None)).max() > 1e-3  # The step at t = 600 was guided.
  np.testing.assert_allclose(sample(base, w, guidance_interval=(0.0, 1.0)), sample(base, w),
                             rtol=1e-5, atol=1e-6)
  # w <= 1 is not extrapolation: the interval leaves it alone (w = 0 stays unconditional).
  unconditional = np.asarray(samplers.sample_loop(
      base, ABAR, x_T, jnp.full_like(labels, 5), jax.random.key(1), sampler="ddim", num_steps=4,
      guidance_scale=None, timesteps=grid))
  np.testing.assert_allclose(sample(base, 0.0, guidance_interval=(0.55, 0.65)), unconditional,
                             rtol=1e-5, atol=1e-6)
  for bad in [(0.5,), (0.7, 0.2), (-0.1, 0.5), (0.2, 1.5)]:
    with pytest.raises(ValueError, match="guidance_interval"):
      sample(base, w, guidance_interval=bad)
  with pytest.raises(ValueError, match="guidance_rescale"):
    sample(base, w, guidance_rescale=1.5)
