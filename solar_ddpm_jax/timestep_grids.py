"""The timesteps a sampler visits: evenly spaced in time (DDPM, DDIM) or in log-SNR
(DPM-Solver++), or an explicit grid given as sampling.timesteps, checked.

The grid runs from t = T-1 down to t = 0 (1 with diffusion.faithful_timesteps); the samplers
(solar_ddpm_jax.samplers) add the final step to the data.
"""

from __future__ import annotations

import numpy as np

from solar_ddpm_jax import diffusion

# Lu et al.'s DPM-Solver grid for the cosine schedule ends at T = 0.9946, log-SNR -4.78: beyond
# it the clipped betas (max_beta 0.999) make lambda fall from -6.5 to -9.9 in the last timestep,
# and a grid uniform in lambda from there spends its first steps on abar < 1e-5 (pure noise).
COSINE_LOGSNR_MIN = -4.7776


def timestep_grid(alphas_cumprod, num_steps: int, *, faithful: bool = False,
                  spacing: str = "time", logsnr_min: float | None = None) -> np.ndarray:
  """Descending timesteps the sampler visits: all T of them, or num_steps.

  spacing "time": evenly spaced in t (DDPM, DDIM); "logsnr": evenly spaced in
  lambda = log(alpha / sigma), the grid DPM-Solver++ is designed for, from
  max(lambda_{T-1}, logsnr_min) to lambda at the last point, each point the nearest integer
  timestep and the first one T-1 (where x_T, pure noise, is). Points that round to the same
  timestep merge, and the spacing is then refined until the grid has num_steps distinct points.
  The grid starts at T-1 and ends at 0 (1 when faithful).
  """
  abar = np.asarray(alphas_cumprod, np.float64)
  num_timesteps = len(abar)
  lo = 1 if faithful else 0
  if num_steps < 0:
    raise ValueError(f"sampling.num_steps={num_steps}: give a step count >= 1 (0: all T steps).")
  if num_steps == 0 or num_steps >= num_timesteps - lo:
    return np.arange(num_timesteps - 1, lo - 1, -1)
  if num_steps == 1:
    return np.array([num_timesteps - 1])  # One step from pure noise to the data.
  if spacing == "time":
    grid = np.round(np.linspace(lo, num_timesteps - 1, num_steps)).astype(np.int64)
    return np.unique(grid)[::-1].copy()
  if spacing != "logsnr":
    raise ValueError(f"Unknown timestep spacing {spacing!r}: 'time' or 'logsnr'.")
  lam = 0.5 * (np.log(abar) - np.log1p(-abar))
  start = lam[-1] if logsnr_min is None else max(lam[-1], float(logsnr_min))

  def grid_of(count):
    targets = np.linspace(start, lam[lo], count)
    grid = lo + np.abs(lam[None, lo:] - targets[:, None]).argmin(axis=1)
    grid[0] = num_timesteps - 1
    return np.unique(grid)[::-1].copy()

  best = grid_of(num_steps)
  for count in range(num_steps + 1, 4 * num_timesteps):
    if len(best) >= num_steps:
      break
    grid = grid_of(count)
    if len(grid) > num_steps:
      break
    best = grid
  return best


def timesteps_problem(timesteps, num_timesteps: int, faithful: bool = False) -> str | None:
  """What is wrong with an explicit grid `timesteps` (sampling.timesteps), or None when nothing.

  A grid is one or more whole timesteps, strictly decreasing, in [0, T) ([1, T) with
  faithful_timesteps, whose last step goes to abar_0: a point at t = 0 would be a step of zero
  length). Every sampler accepts one; the step after the last point goes to the data.
  """
  lo = 1 if faithful else 0
  values = list(timesteps) if isinstance(timesteps, list | tuple | np.ndarray) else None
  if not values:
    return ("give one or more whole timesteps, e.g. (999, 749, 499, 249, 0); an empty one means "
            "the sampler's own grid of sampling.num_steps")
  if not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in values):
    return "the timesteps must be whole numbers"
  if any(b >= a for a, b in zip(values[:-1], values[1:], strict=True)):
    return "the timesteps must be strictly decreasing (from noise to data), each once"
  if values[0] > num_timesteps - 1 or values[-1] < lo:
    where = " (diffusion.faithful_timesteps: t = 0 is the end point abar_0)" if faithful else ""
    return (f"the timesteps must lie in [{lo}, {num_timesteps - 1}] for "
            f"diffusion.num_timesteps={num_timesteps}{where}")
  return None


def explicit_grid(timesteps, num_timesteps: int, faithful: bool = False) -> np.ndarray:
  """sampling.timesteps as the int64 grid it is; ValueError naming the setting when it is bad."""
  problem = timesteps_problem(timesteps, num_timesteps, faithful)
  if problem:
    raise ValueError(f"sampling.timesteps={tuple(timesteps)!r}: {problem}.")
  return np.asarray(timesteps, np.int64)


def sampler_grid(sampler: str, alphas_cumprod, num_steps: int, faithful: bool = False,
                 logsnr_min: float | None = None, timesteps=()) -> np.ndarray:
  """The timesteps `sampler` visits for num_steps (one network pass per point, batched with the
  guidance branch). DPM-Solver++ runs on the log-SNR grid (from `logsnr_min` up, where given:
  COSINE_LOGSNR_MIN for the cosine schedule); the others on the time grid. A non-empty
  `timesteps` is the grid itself, for every sampler (num_steps is then unused)."""
  if timesteps is not None and len(timesteps):
    return explicit_grid(timesteps, len(alphas_cumprod), faithful)
  if sampler == "dpm_solver++":
    return timestep_grid(alphas_cumprod, num_steps, faithful=faithful, spacing="logsnr",
                         logsnr_min=logsnr_min)
  return timestep_grid(alphas_cumprod, num_steps, faithful=faithful, spacing="time")


def schedule_logsnr_min(diffusion_config) -> float | None:
  """The log-SNR floor of DPM-Solver++'s grid for config.diffusion's schedule."""
  return COSINE_LOGSNR_MIN if diffusion_config.beta_schedule == "cosine" else None


def config_grid(config) -> np.ndarray:
  """The timesteps config.sampling's sampler visits on config.diffusion's (float64) schedule."""
  d, s = config.diffusion, config.sampling
  return sampler_grid(str(s.sampler), diffusion.alphas_cumprod_f64(d), int(s.num_steps),
                      bool(d.faithful_timesteps), schedule_logsnr_min(d), config_timesteps(s))


def config_timesteps(sampling_config) -> tuple:
  """sampling.timesteps as a tuple (empty: the sampler's own grid of num_steps)."""
  return tuple(sampling_config.timesteps or ())
