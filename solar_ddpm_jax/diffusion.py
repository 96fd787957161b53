"""Gaussian diffusion as pure functions over a schedule pytree.

Timesteps are integers 0..T-1: x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) eps,
so t = 0 is the first noise level (the DDPM paper's t = 1) and every index is used in training and
sampling. The schedule arrays are computed in float64 with numpy and stored as float32.

The network predicts eps, x0 or v (v = sqrt(abar) eps - sqrt(1 - abar) x0); `eps_and_x0` turns any
of them into both. `training_loss` draws t, the noise and the classifier-free-guidance label
dropout from one key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PREDICTIONS = ("eps", "x0", "v")


@struct.dataclass
class Schedule:
  """Per-timestep arrays [T] of a variance schedule (float32)."""
  betas: jax.Array
  alphas_cumprod: jax.Array  # abar_t = prod_{s<=t} (1 - beta_s).
  alphas_cumprod_prev: jax.Array  # abar_{t-1}, with abar_{-1} = 1.
  posterior_variance: jax.Array  # beta_t (1 - abar_{t-1}) / (1 - abar_t).
  posterior_log_variance_clipped: jax.Array  # log of it, the t = 0 value replaced by t = 1's.
  posterior_mean_coef1: jax.Array  # Coefficient of x0 in the posterior mean.
  posterior_mean_coef2: jax.Array  # Coefficient of x_t in the posterior mean.

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])

  @property
  def sqrt_alphas_cumprod(self) -> jax.Array:
    return jnp.sqrt(self.alphas_cumprod)

  @property
  def sqrt_one_minus_alphas_cumprod(self) -> jax.Array:
    return jnp.sqrt(1.0 - self.alphas_cumprod)


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
  """The DDPM schedule: betas evenly spaced from beta_start to beta_end (float64 [T])."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999):
  """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2((t/T + s)/(1 + s) pi/2) (float64 [T])."""
  f = lambda u: np.cos((u / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  steps = np.arange(num_timesteps + 1, dtype=np.float64)
  return np.minimum(1.0 - f(steps[1:]) / f(steps[:-1]), max_beta)


def schedule_from_betas(betas) -> Schedule:
  """All the derived arrays of a beta schedule, computed in float64."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas >= 1):
    raise ValueError("betas must be a 1-D array in (0, 1).")
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  post_log_var = np.log(np.concatenate([post_var[1:2], post_var[1:]]) if len(betas) > 1
                        else betas)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Schedule(
      betas=f32(betas), alphas_cumprod=f32(abar), alphas_cumprod_prev=f32(abar_prev),
      posterior_variance=f32(post_var), posterior_log_variance_clipped=f32(post_log_var),
      posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
      posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)))


def make_betas(diffusion_config) -> np.ndarray:
  c = diffusion_config
  if c.beta_schedule == "linear":
    return linear_betas(int(c.num_timesteps), float(c.beta_start), float(c.beta_end))
  if c.beta_schedule == "cosine":
    return cosine_betas(int(c.num_timesteps))
  raise ValueError(f"Unknown diffusion.beta_schedule {c.beta_schedule!r}: 'linear' or 'cosine'.")


def alphas_cumprod_f64(diffusion_config) -> np.ndarray:
  """abar [T] of config.diffusion in float64 (the samplers' step coefficients come from it)."""
  return np.cumprod(1.0 - make_betas(diffusion_config))


def make_schedule(diffusion_config) -> Schedule:
  """The Schedule of `config.diffusion` (beta_schedule, num_timesteps, beta_start, beta_end)."""
  return schedule_from_betas(make_betas(diffusion_config))


def _bcast(values, t, ndim: int) -> jax.Array:
  """values[t] shaped [B, 1, ..., 1] to broadcast against [B, ...] arrays of `ndim` dims."""
  return jnp.take(values, t).reshape((-1,) + (1,) * (ndim - 1))


def q_sample(schedule: Schedule, x0, t, noise) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  abar = _bcast(schedule.alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def x0_from_eps(abar, x_t, eps):
  """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar); abar broadcasts against x_t."""
  return (x_t - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def eps_from_x0(abar, x_t, x0):
  """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
  return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)


def v_from_eps_x0(abar, eps, x0):
  """v = sqrt(abar) eps - sqrt(1 - abar) x0."""
  return jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0


def eps_x0_from_v(abar, x_t, v):
  """(eps, x0) from v: eps = sqrt(1-abar) x_t + sqrt(abar) v, x0 = sqrt(abar) x_t - sqrt(1-abar) v.
  """
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  return s * x_t + a * v, a * x_t - s * v


def eps_and_x0(prediction: str, abar, x_t, model_output):
  """(eps, x0) implied by the network output of the given prediction type at noise level abar."""
  if prediction == "eps":
    return model_output, x0_from_eps(abar, x_t, model_output)
  if prediction == "x0":
    return eps_from_x0(abar, x_t, model_output), model_output
  if prediction == "v":
    return eps_x0_from_v(abar, x_t, model_output)
  raise ValueError(f"Unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def prediction_target(prediction: str, abar, x0, eps):
  """What the network is trained to output: eps, x0 or v."""
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  if prediction == "v":
    return v_from_eps_x0(abar, eps, x0)
  raise ValueError(f"Unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def q_posterior_mean_variance(schedule: Schedule, x0, x_t, t):
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
  nd = x_t.ndim
  mean = (_bcast(schedule.posterior_mean_coef1, t, nd) * x0
          + _bcast(schedule.posterior_mean_coef2, t, nd) * x_t)
  return (mean, _bcast(schedule.posterior_variance, t, nd),
          _bcast(schedule.posterior_log_variance_clipped, t, nd))


def sample_timesteps(key, batch_size: int, num_timesteps: int, faithful: bool = False):
  """Uniform t in 0..T-1 ([B] int32); faithful: 1..T-1 as the published code (t = 0 unused)."""
  return jax.random.randint(key, (batch_size,), 1 if faithful else 0, num_timesteps, jnp.int32)


def drop_labels(key, labels, probability: float, null_label: int, per_sample: bool = True):
  """Replaces labels by the null class with `probability`: per sample, or the whole batch."""
  if probability <= 0:
    return labels
  shape = labels.shape if per_sample else ()
  drop = jax.random.bernoulli(key, probability, shape)
  return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


LOSS_WEIGHTINGS = ("none", "min_snr")


def loss_weights(weighting: str, prediction: str, abar, gamma: float = 5.0):
  """Per-sample loss weights over timesteps, as an eps-space loss weight min(SNR, gamma) / SNR.

  SNR = abar / (1 - abar). "min_snr" is Hang et al. (2023), Min-SNR-gamma: the loss of a low-noise
  step (large SNR) is capped so that easy steps do not dominate. The same weighting in the space of
  the network's target: eps  min(SNR, g) / SNR;  x0  min(SNR, g);  v  min(SNR, g) / (SNR + 1).
  "none" weights every sample 1.
  """
  if weighting == "none":
    return jnp.ones_like(abar)
  if weighting != "min_snr":
    raise ValueError(f"Unknown diffusion.loss_weighting {weighting!r}: one of "
                     f"{', '.join(LOSS_WEIGHTINGS)}.")
  if not gamma > 0:
    raise ValueError(f"diffusion.min_snr_gamma must be > 0, not {gamma}.")
  snr = abar / (1.0 - abar)
  capped = jnp.minimum(snr, gamma)
  if prediction == "eps":
    return capped / snr
  if prediction == "x0":
    return capped
  if prediction == "v":
    return capped / (snr + 1.0)
  raise ValueError(f"Unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def training_loss(apply_fn, params, schedule: Schedule, images, labels, key, *, diffusion_config,
                  num_classes: int, train: bool = True):
  """Mean loss and {"loss_per_sample" [B], "t" [B]} of one batch of images [B, H, W, C] in [-1, 1].

  apply_fn(params, x_t, t, labels, train=..., rngs=...) is the network. The key draws t, the
  noise, the label dropout (labels -> num_classes, the null class) and the network's dropout;
  train=False (validation) keeps every label and turns dropout off.
  """
  c = diffusion_config
  k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 4)
  batch = images.shape[0]
  t = sample_timesteps(k_t, batch, schedule.num_timesteps, bool(c.faithful_timesteps))
  noise = jax.random.normal(k_noise, images.shape, jnp.float32)
  x0 = images.astype(jnp.float32)
  x_t = q_sample(schedule, x0, t, noise)
  labels = labels.astype(jnp.int32)
  if train:  # Eval scores the conditional model: no label dropout.
    labels = drop_labels(k_drop, labels, float(c.label_dropout), num_classes,
                         bool(c.per_sample_dropout))
  out = apply_fn(params, x_t, t, labels, train=train,
                 rngs={"dropout": k_dropout} if train else None)
  if out.shape != images.shape:  # A [.., 1] output would broadcast against [.., 4] targets.
    raise ValueError(
        f"The network maps images of shape {tuple(images.shape)} to {tuple(out.shape)}: "
        "model.in_channels and model.out_channels must both equal the number of data.channels "
        "(and model.image_size data.resolution).")
  abar = _bcast(schedule.alphas_cumprod, t, x0.ndim)
  err = out.astype(jnp.float32) - prediction_target(c.prediction, abar, x0, noise)
  if c.loss == "mse":
    err = jnp.square(err)
  elif c.loss == "l1":
    err = jnp.abs(err)
  else:
    raise ValueError(f"Unknown diffusion.loss {c.loss!r}: 'mse' or 'l1'.")
  per_sample = err.reshape(batch, -1).mean(axis=1)
  if c.loss_weighting != "none":  # The logged per-sample loss stays unweighted.
    weights = loss_weights(c.loss_weighting, c.prediction, abar.reshape(batch),
                           float(c.min_snr_gamma))
    return (weights * per_sample).mean(), {"loss_per_sample": per_sample, "t": t}
  return per_sample.mean(), {"loss_per_sample": per_sample, "t": t}
