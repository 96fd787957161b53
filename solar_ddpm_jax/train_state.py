"""TrainState pytree, optimizer and EMA: everything the pure train step carries between steps."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """The whole training state; a plain pytree that jit, shardings and orbax handle as is."""
  step: jax.Array  # int32 scalar: optimiser steps taken (also the data position).
  params: Any  # Model parameters (float32 master weights).
  ema_params: Any  # Exponential moving average of `params`, used for sampling and eval.
  opt_state: Any  # optax state of the AdamW chain.


def learning_rate_schedule(training_config) -> optax.Schedule:
  """Linear warm-up to the peak rate, then constant or cosine decay to zero."""
  peak = float(training_config.learning_rate)
  warmup = int(training_config.warmup_steps)
  total = int(training_config.num_train_steps)
  if training_config.lr_schedule == "constant":
    after = optax.constant_schedule(peak)
  elif training_config.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps=max(1, total - warmup))
  else:
    raise ValueError(f"Unknown lr_schedule {training_config.lr_schedule!r}: "
                     "'constant' or 'cosine'.")
  if warmup <= 0:
    return after
  ramp = optax.linear_schedule(0.0, peak, transition_steps=warmup)
  return optax.join_schedules([ramp, after], boundaries=[warmup])


def make_optimizer(training_config) -> optax.GradientTransformation:
  """AdamW with global-norm gradient clipping (0 disables) and the warm-up schedule."""
  parts = []
  if training_config.grad_clip_norm and training_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(training_config.grad_clip_norm)))
  parts.append(optax.adamw(learning_rate_schedule(training_config),
                           weight_decay=float(training_config.weight_decay)))
  return optax.chain(*parts)


def ema_decay(step, training_config) -> jax.Array:
  """EMA decay at `step` (before the update), ramped over ema_warmup_steps = W.

  The ramp is (1 + k s) / (10 + k s) (0.1 at step 0), with k chosen so that it reaches ema_decay
  d exactly at step W: k = (10 d - 1) / ((1 - d) W). k = 1 is the usual (1 + s) / (10 + s)
  warm-up (W = 1790 for d = 0.995); a shorter W ramps faster instead of jumping from the ramp to
  d at step W.
  """
  d = float(training_config.ema_decay)
  decay = jnp.asarray(d, jnp.float32)
  warmup = int(training_config.ema_warmup_steps)
  if warmup <= 0 or d <= 0.1:
    return decay
  k = (10.0 * d - 1.0) / ((1.0 - d) * warmup)
  ks = k * jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + ks) / (10.0 + ks))


def check_param_dtype(model_config) -> None:
  """Training keeps float32 master weights (EMA and Adam moments follow the parameter dtype)."""
  if jnp.dtype(model_config.param_dtype) != jnp.float32:
    raise ValueError(
        f"model.param_dtype={model_config.param_dtype!r}: training needs float32 parameters; in "
        "bfloat16 an EMA with decay 0.995 cannot move (its updates round away) and the Adam "
        "moments lose precision. For bfloat16 compute set model.dtype='bfloat16' and keep "
        "model.param_dtype='float32'.")


def ema_update(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf in the parameter dtype."""
  return jax.tree.map(
      lambda e, p: (decay * e.astype(jnp.float32)
                    + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype),
      ema_params, params)


def create(params, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0; the EMA starts equal to the parameters."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def init_state(config, key) -> TrainState:
  """A fresh TrainState of `config` (model parameters from `key`); jit it for a sharded init."""
  from solar_ddpm_jax import unet
  return create(unet.init_params(config.model, key), make_optimizer(config.training))


def abstract_state(config) -> TrainState:
  """Shapes and dtypes of the TrainState of `config`, without computing anything."""
  return jax.eval_shape(lambda k: init_state(config, k), jax.random.key(0))
