"""The train step on 8 virtual CPU devices: loss falls, sharding as configured, EMA recursion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import checkpointing, diffusion, metrics_log, sharding, train, train_state, unet
from solar_ddpm_jax.errors import NonFiniteError
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

  # Independent EMA: ema_0 = params_0; ema_s+1 = d_s ema_s + (1 - d_s) params_s+1, with d_s
  # 0.1 at s = 0, rising continuously to 0.9 at s = 3: (1 + ks) / (10 + ks), k = 8 / 0.3.
  ema = params_history[0]
  ramp = [0.1, (1 + 8 / 0.3) / (10 + 8 / 0.3), (1 + 16 / 0.3) / (10 + 16 / 0.3)]
  for s in range(num_steps):
    d = ramp[s] if s < 3 else 0.9
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


def test_ema_warmup_is_the_usual_ramp_or_reaches_the_decay_without_a_jump():
  import ml_collections
  steps = np.arange(0, 3000)
  classic = train_state.ema_decay(steps, ml_collections.ConfigDict(
      dict(ema_decay=0.995, ema_warmup_steps=1790)))
  np.testing.assert_allclose(classic, np.minimum(0.995, (1 + steps) / (10 + steps)), rtol=1e-5)
  short = np.asarray(train_state.ema_decay(steps, ml_collections.ConfigDict(
      dict(ema_decay=0.995, ema_warmup_steps=100))))
  assert short[0] == pytest.approx(0.1) and np.all(np.diff(short) >= 0)
  assert short[99] > 0.995 - 1e-4 and np.all(short[100:] == np.float32(0.995))


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

  with pytest.raises(NonFiniteError, match=r"Non-finite training loss .* step 5\. Stopped\. The "
                                           r"last good checkpoint is step 3 in "):
    train.train_and_evaluate(config, str(tmp_path), train_iterator_fn=poisoned,
                             eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  assert checkpointing.latest_step(str(tmp_path)) == 3
  params = checkpointing.restore_params(config, str(tmp_path), ema=False)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def _metrics(workdir):
  import json
  import os
  with open(os.path.join(workdir, train.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_sigterm_keeps_every_steps_metrics_and_checkpoints_carry_eval_losses(tmp_path):
  """A SIGTERM between log steps writes the partial window; a resume goes on from there.

  Uninterrupted: windows of 4 steps at 4 and 8. Stopped after step 5: windows 1-4, 5 (1 step,
  written at the SIGTERM), 6-8 (3 steps); their step-weighted means equal the uninterrupted ones.
  Checkpoints every 3 steps with eval every 100: each checkpoint still gets an eval loss.
  """
  import os
  import signal
  config = _config(num_train_steps=8, log_every_steps=4, checkpoint_every_steps=3,
                   eval_every_steps=100, sample_every_steps=0, profile=True)
  mesh = sharding.create_mesh(config.mesh)
  good = data.iterator_fn(config, mesh)
  ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
  train.train_and_evaluate(config, ref_dir, train_iterator_fn=good,
                           eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  traces = [f for _, _, files in os.walk(os.path.join(ref_dir, "profile")) for f in files
            if f.endswith(".xplane.pb")]
  assert traces  # training.profile wrote a trace.

  def killed_at_step_5(start_step):
    for step, batch in zip(range(start_step, 10**9), good(start_step), strict=False):
      if step == 4:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  with pytest.raises(train.Preempted):  # Inside the profile window: the trace is still written.
    train.train_and_evaluate(config, run_dir, train_iterator_fn=killed_at_step_5,
                             eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  assert checkpointing.latest_step(run_dir) == 5
  assert any(f.endswith(".xplane.pb") for _, _, files in os.walk(os.path.join(run_dir, "profile"))
             for f in files)
  config.training.profile = False
  train.train_and_evaluate(config, run_dir, train_iterator_fn=good,
                           eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  ref, run = _metrics(ref_dir), _metrics(run_dir)
  windows = lambda records: [(r["step"], r["window_steps"]) for r in records if "loss" in r]
  assert windows(ref) == [(4, 4), (8, 4)]
  assert windows(run) == [(4, 4), (5, 1), (8, 3)]
  by_step = lambda records, key: {r["step"]: r[key] for r in records if key in r}
  ref_loss, run_loss = by_step(ref, "loss"), by_step(run, "loss")
  assert run_loss[4] == pytest.approx(ref_loss[4], rel=1e-6)
  assert (run_loss[5] + 3 * run_loss[8]) / 4 == pytest.approx(ref_loss[8], rel=1e-5)
  evals = by_step(ref, "eval_loss")
  assert [r["step"] for r in ref if "eval_loss" in r] == [3, 6, 8]  # Once per checkpoint step.
  assert by_step(run, "eval_loss") == pytest.approx(evals)

  config.seed = 1  # Another seed would silently continue a different run.
  with pytest.raises(ValueError, match="seed 0, this config has seed 1"):
    train.train_and_evaluate(config, run_dir, train_iterator_fn=good,
                             eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  config.seed = 0  # So would another target: the same weights, trained on eps instead of v.
  config.diffusion.prediction = "eps"
  with pytest.raises(ValueError, match=r"diffusion.prediction: checkpoint 'v', config 'eps'.*"
                                       r"--config.diffusion.prediction=v"):
    train.train_and_evaluate(config, run_dir, train_iterator_fn=good,
                             eval_iterator_fn=data.eval_iterator_fn(config, mesh))


def test_a_torn_metrics_line_does_not_stop_a_resume(tmp_path):
  import json
  path = tmp_path / train.METRICS_FILE
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6))
                  + '{"step": 8, "lo')
  metrics_log.truncate_metrics(str(tmp_path), 4)
  assert [r["step"] for r in _metrics(str(tmp_path))] == [2, 4]
  assert not (tmp_path / (train.METRICS_FILE + ".tmp")).exists()


def test_training_refuses_bfloat16_master_weights(tmp_path):
  config = _config(num_train_steps=1)
  config.model.param_dtype = "bfloat16"
  with pytest.raises(ValueError, match="model.param_dtype='bfloat16'.*float32 parameters"):
    train.train_and_evaluate(config, str(tmp_path))
