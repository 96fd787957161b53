"""The jitted train and eval steps: sharded state init, the pure step, its metrics and checks.

    make_train_step(config, apply_fn, schedule) -> train_step(state, batch) -> (state, metrics)

The step is a pure function of (state, batch): the noise, timesteps and label dropout come from
`fold_in(key(config.seed), state.step)`, so a run resumed from a checkpoint retraces an
uninterrupted one exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from solar_ddpm_jax import sharding, train_state
from solar_ddpm_jax.errors import NonFiniteError

NUM_T_BUCKETS = 10  # Timestep buckets of the per-t loss metrics (t * 10 // T).


def state_shardings(mesh, abstract_state):
  """Shardings of every state leaf: replicated, or fsdp-sharded where mesh.fsdp > 1."""
  return jax.tree.map(lambda x: sharding.fsdp_sharding(mesh, x.shape), abstract_state)


def batch_shardings(mesh):
  """Shardings of a training batch {"image": [B,H,W,C], "label": [B]}."""
  return {"image": sharding.batch_sharding(mesh, 4), "label": sharding.batch_sharding(mesh, 1)}


def create_train_state(config, mesh):
  """(state, shardings): a fresh TrainState initialised directly in its sharded layout."""
  abstract = train_state.abstract_state(config)
  shardings = state_shardings(mesh, abstract)
  init = jax.jit(functools.partial(train_state.init_state, config), out_shardings=shardings)
  return init(jax.random.key(config.seed)), shardings


def _bucket_sums(loss_per_sample, t, num_timesteps):
  """Per-bucket loss sums and counts over timesteps t ([B] each) -> ([NB], [NB])."""
  bucket = jnp.clip(t * NUM_T_BUCKETS // num_timesteps, 0, NUM_T_BUCKETS - 1)
  onehot = jax.nn.one_hot(bucket, NUM_T_BUCKETS, dtype=jnp.float32)
  return onehot.T @ loss_per_sample.astype(jnp.float32), onehot.sum(0)


def make_train_step(config, apply_fn, schedule) -> Callable:
  """The pure step: (state, batch) -> (new state, metrics); jit it with `jit_train_step`."""
  from solar_ddpm_jax import diffusion
  tx = train_state.make_optimizer(config.training)
  lr_fn = train_state.learning_rate_schedule(config.training)
  num_timesteps = int(config.diffusion.num_timesteps)

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)

    def loss_fn(params):
      return diffusion.training_loss(
          apply_fn, params, schedule, batch["image"], batch["label"], key,
          diffusion_config=config.diffusion, num_classes=config.model.num_classes, train=True)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = train_state.ema_decay(state.step, config.training)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=train_state.ema_update(state.ema_params, params, decay))
    sums, counts = _bucket_sums(aux["loss_per_sample"], aux["t"], num_timesteps)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": lr_fn(state.step), "ema_decay": decay,
               "loss_bucket_sum": sums, "loss_bucket_count": counts}
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh, shardings):
  """jit with NamedShardings on the mesh; the state is donated (updated in place)."""
  return jax.jit(train_step, in_shardings=(shardings, batch_shardings(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def make_eval_step(config, apply_fn, schedule, mesh, param_shardings):
  """jit fn(params, batch, index) -> mean loss with a fixed key per eval batch (comparable runs)."""
  from solar_ddpm_jax import diffusion

  def eval_step(params, batch, index):
    key = jax.random.fold_in(jax.random.key(config.seed + 1), index)
    loss, _ = diffusion.training_loss(
        apply_fn, params, schedule, batch["image"], batch["label"], key,
        diffusion_config=config.diffusion, num_classes=config.model.num_classes, train=False)
    return loss

  return jax.jit(eval_step, in_shardings=(param_shardings, batch_shardings(mesh), None),
                 out_shardings=sharding.replicated(mesh))


def summarize_metrics(per_step: list[dict]) -> dict[str, float]:
  """Host means over a log window: loss, grad norm, last lr and EMA decay, loss per t bucket."""
  host = jax.device_get(per_step)
  out = {"loss": float(np.mean([m["loss"] for m in host])),
         "grad_norm": float(np.mean([m["grad_norm"] for m in host])),
         "learning_rate": float(host[-1]["learning_rate"]),
         "ema_decay": float(host[-1]["ema_decay"])}
  sums = np.sum([m["loss_bucket_sum"] for m in host], axis=0)
  counts = np.sum([m["loss_bucket_count"] for m in host], axis=0)
  for i in range(NUM_T_BUCKETS):
    if counts[i] > 0:
      out[f"loss_t{i}"] = float(sums[i] / counts[i])
  return out


def check_finite(per_step: list[dict], first_step: int, manager) -> None:
  """Stops the run with a clear message when a loss or gradient norm is NaN or Inf.

  These are the losses before each step's update; a finite loss whose update makes the state
  non-finite is caught by `checkpointing.save`, which checks the whole state before saving it.
  """
  from solar_ddpm_jax import checkpointing
  host = jax.device_get([(m["loss"], m["grad_norm"]) for m in per_step])
  for i, (loss, grad_norm) in enumerate(host):
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      raise NonFiniteError(
          f"Non-finite training loss {float(loss)} (gradient norm {float(grad_norm)}) at step "
          f"{first_step + i + 1}. Stopped. {checkpointing.last_good_checkpoint(manager)}. "
          f"{checkpointing.NONFINITE_ADVICE}")


def evaluate(eval_fn, params, make_iterator, num_batches: int) -> dict[str, float] | None:
  """Mean validation loss of `params` over the first `num_batches` validation batches."""
  if num_batches <= 0:
    return None
  try:
    iterator = make_iterator()
  except (FileNotFoundError, ValueError) as e:  # No validation split: train without eval.
    # (Labels outside the model's classes raise input_pipeline.LabelRangeError: not caught.)
    logging.warning("No validation data (%s); skipping eval.", e)
    return None
  losses = []
  for i, batch in zip(range(num_batches), iterator, strict=False):
    losses.append(eval_fn(params, {"image": batch["image"], "label": batch["label"]}, i))
  if not losses:
    return None
  return {"eval_loss": float(np.mean(jax.device_get(losses)))}
