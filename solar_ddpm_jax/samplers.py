"""Samplers: each one `lax.scan` over a static grid of timesteps, inside one `jit`.

    sample_fn = make_sample_fn(apply_fn, schedule, config, mesh)
    images = sample_fn(params, labels, key)            # [B, H, W, C] in [-1, 1]
    images = sample_fn(params, labels, key, guidance_scale=5.0)

  ddpm          ancestral sampling, sigma^2 = beta_t (the paper) or the posterior variance; all T
                steps, or a respaced grid when sampling.num_steps < T.
  ddim          DDIM with any number of strided steps and eta (0 = deterministic).
  dpm_solver++  DPM-Solver++(2M) in data prediction (Lu et al. 2022) on a grid uniform in log-SNR,
                first order at the first step and at the step into the data (abar = 1); good
                samples in 10-25 steps.

The grid runs from t = T-1 down to t = 0 and a final step to the data (abar = 1); with
diffusion.faithful_timesteps it runs T-1..1 and ends at abar_0, as the published code.
sampling.timesteps replaces it with a given descending grid (a published schedule, say); the
grids are made and checked in solar_ddpm_jax.timestep_grids.
Classifier-free guidance evaluates the conditional and unconditional branches in one batched
forward pass: out = out_uncond + w (out_cond - out_uncond) (w = 1: conditional, w = 0:
unconditional); sampling.guidance_convention "published" reads the scale as the published
code's cfg_scale s (guidance_weight). The same key gives bitwise the same images when rerun on the
same number of devices on the same machine; on another device count they agree to float32
rounding (about 1e-6), not bitwise, as each layout compiles to its own program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from solar_ddpm_jax import diffusion, labels_outside, sharding
from solar_ddpm_jax.timestep_grids import (  # Also importable from here, as callers do.
    COSINE_LOGSNR_MIN,
    config_grid,
    config_timesteps,
    explicit_grid,
    sampler_grid,
    schedule_logsnr_min,
    timestep_grid,
    timesteps_problem,
)

__all__ = ["COSINE_LOGSNR_MIN", "GUIDANCE_CONVENTIONS", "SAMPLERS", "check_labels", "config_grid",
           "config_timesteps", "explicit_grid", "grid_coefficients", "guidance_problem",
           "guidance_weight", "guided_output", "make_sample_fn", "sample_loop", "sampler_grid",
           "schedule_logsnr_min", "timestep_grid", "timesteps_problem"]

SAMPLERS = ("ddpm", "ddim", "dpm_solver++")
# How sampling.guidance_scale is read: "project", w itself (0 unconditional, 1 conditional);
# "published", the cfg_scale s of the published sampler (guidance_weight).
GUIDANCE_CONVENTIONS = ("project", "published")


def guidance_weight(scale, convention: str = "project"):
  """The weight w of out_uncond + w (out_cond - out_uncond) for sampling.guidance_scale `scale`.

  "project": w = scale. "published": `scale` is the published sampler's cfg_scale s, which
  computes torch.lerp(uncond, cond, s) = uncond + s (cond - uncond) when s > 0 and the
  conditional prediction alone (no unconditional pass) when s <= 0: w = s for s > 0, else 1.
  Works on Python numbers, numpy and (traced) jax arrays.
  """
  if convention == "project":
    return scale
  if convention != "published":
    raise ValueError(f"Unknown sampling.guidance_convention {convention!r}: "
                     f"{' or '.join(map(repr, GUIDANCE_CONVENTIONS))}.")
  if isinstance(scale, jax.Array):
    return jnp.where(scale > 0, scale, jnp.ones_like(scale))
  if np.ndim(scale):
    scale = np.asarray(scale)
    return np.where(scale > 0, scale, np.ones_like(scale))
  return scale if float(scale) > 0 else 1.0


def grid_coefficients(sampler: str, alphas_cumprod, grid, *, final_abar: float = 1.0,
                      eta: float = 0.0, ddpm_variance: str = "beta") -> dict[str, np.ndarray]:
  """Per-step arrays [S] (float64) of a sampler on a timestep grid; computed once in numpy.

  Step i goes from abar_t = alphas_cumprod[grid[i]] to abar_next (the next grid point, or
  final_abar after the last one).
  """
  abar_all = np.asarray(alphas_cumprod, np.float64)
  abar = abar_all[grid]
  abar_next = np.concatenate([abar[1:], [final_abar]])
  out = {"abar": abar, "abar_next": abar_next,
         "noise": np.concatenate([np.ones(len(grid) - 1), [0.0]])}
  if sampler == "ddpm":
    beta = 1.0 - abar / abar_next  # beta of the (respaced) step.
    out["c_x0"] = np.sqrt(abar_next) * beta / (1.0 - abar)
    out["c_xt"] = np.sqrt(1.0 - beta) * (1.0 - abar_next) / (1.0 - abar)
    if ddpm_variance == "beta":
      var = beta
    elif ddpm_variance == "posterior":
      var = beta * (1.0 - abar_next) / (1.0 - abar)
    else:
      raise ValueError(f"Unknown sampling.ddpm_variance {ddpm_variance!r}: 'beta' or "
                       "'posterior'.")
    out["sigma"] = np.sqrt(var) * out["noise"]
  elif sampler == "ddim":
    sigma = eta * np.sqrt((1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next))
    out["sigma"] = sigma * out["noise"]
    out["c_eps"] = np.sqrt(np.maximum(1.0 - abar_next - out["sigma"] ** 2, 0.0))
  elif sampler == "dpm_solver++":
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    alpha_n, sigma_n = np.sqrt(abar_next), np.sqrt(1.0 - abar_next)
    lam = np.log(alpha) - np.log(sigma)
    with np.errstate(divide="ignore"):
      lam_n = np.log(alpha_n) - np.log(sigma_n)  # +inf for the step to the data.
    h = lam_n - lam
    out["ratio"] = sigma_n / sigma
    out["coef"] = -alpha_n * np.expm1(-h)  # alpha_n (1 - e^-h); alpha_n = 1 at sigma_n = 0.
    second = np.zeros(len(grid), bool)
    second[1:] = np.isfinite(h[1:])  # 2M from the second step; first order into the data.
    h_prev = np.concatenate([[np.nan], h[:-1]])
    r = np.where(second, h_prev / np.where(np.isfinite(h), h, 1.0), 1.0)
    out["w_cur"] = np.where(second, 1.0 + 0.5 / r, 1.0)
    out["w_prev"] = np.where(second, -0.5 / r, 0.0)
  else:
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
  return out


def guided_output(model_fn, x, t, labels, guidance_scale, null_label: int, *,
                  rescale: float = 0.0, active=None):
  """out_uncond + w (out_cond - out_uncond) from one forward pass over [cond, uncond] pairs.

  The pairs are interleaved ([B, 2] flattened), so a batch sharded over devices stays local.
  guidance_scale None: the conditional branch alone (one pass of B). `active` (a traced bool):
  where False the step is outside the guidance interval and w is capped at 1 (w >= 1: the
  conditional output; w = 0 stays the unconditional one).
  `rescale` phi in [0, 1]: guidance rescaling of Lin et al. 2024 (arXiv:2305.08891, Alg. 2), as
  diffusers' guidance_rescale: each sample's guided output is scaled to the standard deviation of
  its conditional output, out = phi * rescaled + (1 - phi) * guided, which undoes the growth in
  contrast (here: flare brightness) that a large w brings.
  """
  if guidance_scale is None:
    return model_fn(x, t, labels)
  b = x.shape[0]
  pair = lambda a, b_: jnp.stack([a, b_], axis=1).reshape((2 * b,) + a.shape[1:])
  out = model_fn(pair(x, x), pair(t, t), pair(labels, jnp.full_like(labels, null_label)))
  out = out.reshape((b, 2) + out.shape[1:])
  cond, uncond = out[:, 0], out[:, 1]
  w = jnp.asarray(guidance_scale, out.dtype)
  if active is not None:  # Outside the interval no extrapolation: w = 1 (w < 1 is kept as is).
    w = jnp.where(active, w, jnp.minimum(w, 1.0))
  guided = uncond + w * (cond - uncond)
  if rescale:
    axes = tuple(range(1, guided.ndim))
    std_cond = jnp.std(cond.astype(jnp.float32), axis=axes, keepdims=True)
    std_guided = jnp.std(guided.astype(jnp.float32), axis=axes, keepdims=True)
    rescaled = guided * (std_cond / jnp.maximum(std_guided, 1e-12)).astype(guided.dtype)
    guided = rescale * rescaled + (1.0 - rescale) * guided
  return guided


def guidance_problem(rescale, interval) -> str:
  """'' when sampling.guidance_rescale is in [0, 1] and sampling.guidance_interval is () or
  (lo, hi) with 0 <= lo < hi <= 1; else what is wrong."""
  if not 0.0 <= float(rescale) <= 1.0:
    return (f"sampling.guidance_rescale={rescale}: phi is in [0, 1] (0: plain guidance, 1: fully "
            "rescaled).")
  interval = tuple(interval or ())
  if not interval:
    return ""
  if len(interval) != 2:
    return f"sampling.guidance_interval={interval!r}: () or two fractions (lo, hi) of T."
  lo, hi = (float(v) for v in interval)
  if not 0.0 <= lo < hi <= 1.0:
    return (f"sampling.guidance_interval={interval!r}: needs 0 <= lo < hi <= 1 (fractions of "
            "the training timesteps T; guidance acts where lo <= t / T <= hi).")
  return ""


def sample_loop(model_fn, alphas_cumprod, x_T, labels, key, *, sampler: str, num_steps: int,
                guidance_scale=None, null_label: int = 5, prediction: str = "eps",
                eta: float = 0.0, ddpm_variance: str = "beta", clip_x0: bool = False,
                faithful: bool = False, sharding_constraint=None,
                logsnr_min: float | None = None, timesteps=(), guidance_rescale: float = 0.0,
                guidance_interval=()):
  """Runs a sampler from x_T down to the data; pure, jit it (one scan over the grid).

  model_fn(x [B,...], t [B] int32, labels [B]) -> network output (eps, x0 or v: `prediction`).
  alphas_cumprod: the schedule's abar [T] (concrete; float64 gives the exact coefficients).
  logsnr_min: the start of DPM-Solver++'s log-SNR grid (schedule_logsnr_min). timesteps: an
  explicit descending grid (sampler_grid); empty: the sampler's own. guidance_rescale and
  guidance_interval ((lo, hi): guidance w > 1 only where lo <= t / T <= hi, the conditional
  output elsewhere; Kynkaanniemi et al. 2024) shape the guidance (guided_output). Returns the
  final x0 estimate [B, ...] (with `faithful`: x at abar_0, as the published code).
  """
  problem = guidance_problem(guidance_rescale, guidance_interval)
  if problem:
    raise ValueError(problem)
  if sampler == "ddim" and not 0.0 <= float(eta) <= 1.0:
    raise ValueError(f"sampling.eta={eta}: DDIM's eta is in [0, 1] (0 deterministic, 1 DDPM-like).")
  abar_all = np.asarray(alphas_cumprod, np.float64)
  grid = sampler_grid(sampler, abar_all, num_steps, faithful, logsnr_min, timesteps)
  coefs = grid_coefficients(sampler, abar_all, grid, final_abar=abar_all[0] if faithful else 1.0,
                            eta=eta, ddpm_variance=ddpm_variance)
  xs = {k: jnp.asarray(v, jnp.float32) for k, v in coefs.items()}
  xs["t"] = jnp.asarray(grid, jnp.int32)
  xs["index"] = jnp.arange(len(grid), dtype=jnp.int32)
  batch = x_T.shape[0]
  bshape = (batch,) + (1,) * (x_T.ndim - 1)
  constrain = sharding_constraint or (lambda a: a)

  def predict(x, step):
    t = jnp.full((batch,), step["t"], jnp.int32)
    active = None
    if guidance_interval:
      frac = step["t"].astype(jnp.float32) / float(len(abar_all))
      active = (frac >= float(guidance_interval[0])) & (frac <= float(guidance_interval[1]))
    out = guided_output(model_fn, x, t, labels, guidance_scale, null_label,
                        rescale=float(guidance_rescale), active=active).astype(jnp.float32)
    abar = jnp.broadcast_to(step["abar"], bshape)
    eps, x0 = diffusion.eps_and_x0(prediction, abar, x, out)
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = diffusion.eps_from_x0(abar, x, x0)
    return eps, x0

  def noise(step, like):
    z = jax.random.normal(jax.random.fold_in(key, step["index"]), like.shape, jnp.float32)
    return constrain(z)

  if sampler == "ddpm":
    def body(x, step):
      _, x0 = predict(x, step)
      x = step["c_x0"] * x0 + step["c_xt"] * x + step["sigma"] * noise(step, x)
      return constrain(x), None
  elif sampler == "ddim":
    def body(x, step):
      eps, x0 = predict(x, step)
      x = (jnp.sqrt(step["abar_next"]) * x0 + step["c_eps"] * eps
           + step["sigma"] * noise(step, x))
      return constrain(x), None
  elif sampler == "dpm_solver++":
    def body(carry, step):
      x, x0_prev = carry
      _, x0 = predict(x, step)
      d = step["w_cur"] * x0 + step["w_prev"] * x0_prev
      return (constrain(step["ratio"] * x + step["coef"] * d), x0), None
  else:
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")

  x_T = constrain(x_T.astype(jnp.float32))
  init = (x_T, jnp.zeros_like(x_T)) if sampler == "dpm_solver++" else x_T
  final, _ = jax.lax.scan(body, init, xs)
  return final[0] if sampler == "dpm_solver++" else final


def check_labels(labels, num_classes: int) -> None:
  """Class labels must be 0..num_classes-1: outside, the embedding lookup gives NaN images (label
  > num_classes), silently unconditional ones (num_classes, the null class) or, for -1, the
  last row of the table (wrapped)."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"Labels must be a 1-D integer array, not {labels.dtype} {labels.shape}.")
  bad = labels_outside(labels, num_classes)
  if bad:
    raise ValueError(f"Labels {bad[:8]} are not classes 0..{num_classes - 1} "
                     f"(A..X); the null class {num_classes} is reached through the guidance scale "
                     "(guidance_scale=0: unconditional).")


def make_sample_fn(apply_fn, schedule, config, mesh=None):
  """fn(params, labels [B], key, guidance_scale=None) -> images [B, H, W, C] clipped to [-1, 1].

  One compiled program per batch size: the sampler, step count (or explicit timesteps), eta,
  variance and x0 clipping come from config.sampling; the guidance scale too unless given per
  call (it is traced, so a sweep over scales does not recompile; w = 1 and w = 0 given as numbers
  run one network pass per step, the conditional or the unconditional branch alone, in programs
  of their own). Scales are read in sampling.guidance_convention (guidance_weight). The batch is
  sharded over `mesh` when given.
  """
  s, m, d = config.sampling, config.model, config.diffusion
  convention = str(s.guidance_convention)
  timesteps = config_timesteps(s)
  rescale = float(s.get("guidance_rescale", 0.0))
  interval = tuple(float(v) for v in s.get("guidance_interval", ()))
  problem = guidance_problem(rescale, interval)
  if problem:  # Refused here, before anything compiles.
    raise ValueError(problem)
  if timesteps:  # A bad grid is refused here, before anything compiles.
    explicit_grid(timesteps, int(d.num_timesteps), bool(d.faithful_timesteps))
  if (float(d.label_dropout) <= 0.0
      and float(guidance_weight(float(s.guidance_scale), convention)) != 1.0):
    logging.warning(
        "sampling.guidance_scale=%g with diffusion.label_dropout=0: the model never saw the null "
        "class, so the unconditional branch of the guidance is untrained. Sample with "
        "guidance_scale=1 (conditional only), or train with label dropout.",
        float(s.guidance_scale))
  if (m.block_style == "paper" and d.prediction == "eps"
      and (s.sampler == "dpm_solver++" or (s.sampler == "ddim" and float(s.eta) == 0.0))):
    logging.warning(
        "Sampling an eps-prediction paper UNet with the deterministic %s sampler: that network "
        "is blind to the scale of x_t, and the ODE samplers amplify its errors; expect noise or "
        "flat images. Use sampling.sampler='ddpm' (respaced, e.g. 100 steps) or ddim with eta=1, "
        "or train with diffusion.prediction='v'.", s.sampler)
  size, channels = int(m.image_size), int(m.out_channels)
  out_sharding = sharding.batch_sharding(mesh, 4) if mesh is not None else None
  constraint = ((lambda a: jax.lax.with_sharding_constraint(a, out_sharding))
                if mesh is not None else None)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  exact = diffusion.alphas_cumprod_f64(d)
  if exact.shape == abar.shape and np.allclose(exact, abar, rtol=1e-5, atol=1e-12):
    abar = exact  # The float64 schedule the float32 one was rounded from.
  logsnr_min = schedule_logsnr_min(d)

  def run(params, labels, key, guidance_scale):
    k_init, k_steps = jax.random.split(key)
    x_T = jax.random.normal(k_init, (labels.shape[0], size, size, channels), jnp.float32)
    model_fn = lambda x, t, y: apply_fn(params, x, t, y, train=False)
    x = sample_loop(model_fn, abar, x_T, labels, k_steps, sampler=str(s.sampler),
                    num_steps=int(s.num_steps), guidance_scale=guidance_scale,
                    null_label=int(m.num_classes), prediction=str(d.prediction),
                    eta=float(s.eta), ddpm_variance=str(s.ddpm_variance),
                    clip_x0=bool(s.clip_x0), faithful=bool(d.faithful_timesteps),
                    sharding_constraint=constraint, logsnr_min=logsnr_min,
                    timesteps=timesteps, guidance_rescale=rescale, guidance_interval=interval)
    return jnp.clip(x, -1.0, 1.0)

  jitted = jax.jit(run, out_shardings=out_sharding)
  num_classes = int(m.num_classes)
  # w = 1 is the conditional branch alone and w = 0 the unconditional one: one pass of B, not 2B.
  single = {1.0: jax.jit(lambda p, y, k: run(p, y, k, None), out_shardings=out_sharding),
            0.0: jax.jit(lambda p, y, k: run(p, jnp.full_like(y, num_classes), k, None),
                         out_shardings=out_sharding)}

  def sample_fn(params, labels, key, guidance_scale=None):
    w = float(s.guidance_scale) if guidance_scale is None else guidance_scale
    w = guidance_weight(w, convention)
    if not isinstance(labels, jax.Array):
      check_labels(labels, num_classes)
      labels = jnp.asarray(labels, jnp.int32)
    if mesh is not None and jax.process_count() == 1:
      labels = jax.device_put(labels, sharding.batch_sharding(mesh, 1))
    if not isinstance(w, jax.Array) and np.ndim(w) == 0 and float(w) in single:
      return single[float(w)](params, labels, key)
    w = w if isinstance(w, jax.Array) else np.asarray(w, np.float32)
    return jitted(params, labels, key, w)

  return sample_fn
