"""The train step on 8 virtual CPU devices: loss falls, sharding as configured, EMA recursion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import checkpointing, diffusion, sharding, train, train_state, unet
from tests._helpers import data


def _config(**training):
  config = aia171.get_config("test")
  for k, v in training.items():
    setattr(config.training, k, v)
  return config


def test_train_steps_loss_falls_params_replicated_ema_follows_recursion():
  config = _config(ema_decay=0.9, ema_warmup_steps=3, learning_rate=2e-3, warmup_steps=0)
  mesh = sharding.create_mesh(config.mesh)
  assert mesh.devices.size == 8
  apply_fn = train.make_apply_fn(unet.create_model(config.model))
  schedule = diffusion.make_schedule(config.diffusion)
  state, shardings = train.create_train_state(config, mesh)
  step_fn = train.jit_train_step(train.make_train_step(config, apply_fn, schedule), mesh, shardings)
  eval_fn = train.make_eval_step(config, apply_fn, schedule, mesh, shardings.params)
  batch = sharding.shard_batch(mesh, data.global_batch(config, 0))  # One fixed batch.

  def fixed_loss(params):  # Same noise and timesteps every time: only the params change.
    return float(np.mean([eval_fn(params, batch, i) for i in range(4)]))

  loss_before = fixed_loss(state.params)
  params_history = [jax.device_get(state.params)]
  num_steps = 30
  for _ in range(num_steps):
    state, metrics = step_fn(state, batch)
    params_history.append(jax.device_get(state.params))
  loss_after = fixed_loss(state.params)
  assert loss_after < 0.7 * loss_before, (loss_before, loss_after)
  assert int(state.step) == num_steps
  for key in ("loss", "grad_norm", "learning_rate", "ema_decay", "loss_bucket_sum"):
    assert np.all(np.isfinite(np.asarray(metrics[key]))), key
  assert float(metrics["learning_rate"]) == pytest.approx(2e-3)
  assert float(np.sum(metrics["loss_bucket_count"])) == config.training.batch_size

  for leaf in jax.tree.leaves(state.params) + jax.tree.leaves(state.ema_params):
    assert leaf.sharding.is_fully_replicated and leaf.sharding.mesh.devices.size == 8

  # Independent EMA: ema_0 = params_0; ema_s+1 = d_s ema_s + (1 - d_s) params_s+1.
  ema = params_history[0]
  for s in range(num_steps):
    d = min(0.9, (1 + s) / (10 + s)) if s < 3 else 0.9
    ema = jax.tree.map(lambda e, p, d=d: d * np.float64(e) + (1 - d) * np.float64(p), ema,
                       params_history[s + 1])
  got = jax.device_get(state.ema_params)
  for e_ref, e_got in zip(jax.tree.leaves(ema), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(e_got, e_ref, rtol=2e-5, atol=2e-6)
  diff = sum(float(np.abs(a - b).sum()) for a, b in zip(
      jax.tree.leaves(got), jax.tree.leaves(params_history[-1]), strict=True))
  assert diff > 0  # The EMA lags the parameters.


def test_fsdp_shards_large_leaves_and_their_adam_moments():
  config = aia171.get_config("demo")
  config.mesh.fsdp = 2
  mesh = sharding.create_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  abstract = train_state.abstract_state(config)
  shardings = train.state_shardings(mesh, abstract)
  sharded = [(a.shape, s.spec) for a, s in zip(jax.tree.leaves(abstract.params),
                                               jax.tree.leaves(shardings.params), strict=True)
             if "fsdp" in tuple(s.spec)]
  assert sharded, "no parameter sharded over fsdp"
  for shape, spec in sharded:
    axis = tuple(spec).index("fsdp")
    assert shape[axis] % 2 == 0 and np.prod(shape) >= 2**14
  adam = [s for s in jax.tree.leaves(shardings.opt_state) if "fsdp" in tuple(s.spec)]
  assert len(adam) == 2 * len(sharded)  # mu and nu follow their parameters.


def test_learning_rate_warmup_then_cosine():
  config = _config(learning_rate=1e-3, warmup_steps=10, num_train_steps=110,
                   lr_schedule="cosine")
  lr = train_state.learning_rate_schedule(config.training)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(5e-4)
  assert float(lr(10)) == pytest.approx(1e-3)
  assert float(lr(60)) == pytest.approx(0.5e-3 * (1 + np.cos(np.pi * 0.5)), rel=1e-5)
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = _config(num_train_steps=8, checkpoint_every_steps=3, log_every_steps=4,
                   eval_every_steps=0, sample_every_steps=0)
  mesh = sharding.create_mesh(config.mesh)
  good = data.iterator_fn(config, mesh)

  def poisoned(start_step):
    for step, batch in zip(range(start_step, 10**9), good(start_step), strict=False):
      if step >= 4:  # Step 5 sees a NaN image: its loss is NaN.
        batch = dict(batch, image=batch["image"] * jnp.nan)
      yield batch

  with pytest.raises(FloatingPointError, match=r"Non-finite training loss .* step 5.*checkpoint is "
                                               r"step 3"):
    train.train_and_evaluate(config, str(tmp_path), train_iterator_fn=poisoned,
                             eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  assert checkpointing.latest_step(str(tmp_path)) == 3
  params = checkpointing.restore_params(config, str(tmp_path), ema=False)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))
