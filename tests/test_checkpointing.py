"""Checkpoints: bit-exact resume after SIGTERM and SIGKILL, best-by-eval retention, resharding."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solar_ddpm_jax import checkpointing, sharding, train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(cache_dir):
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p))
  return env


def _start(workdir, out, cache_dir, sleep_s, steps=12, every=4, hold_at=None):
  """hold_at: the run waits before that step's batch until it is killed (no race to the end)."""
  args = [sys.executable, "-m", "tests._helpers.train_run", str(workdir), str(steps), str(every),
          str(sleep_s), str(out), *([] if hold_at is None else [str(hold_at)])]
  return subprocess.Popen(args, cwd=REPO, env=_env(cache_dir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, timeout_s=600):
  t0 = time.time()
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"Training ended early (rc {proc.returncode}): {proc.stderr.read()}")
    if time.time() - t0 > timeout_s:
      proc.kill()
      raise AssertionError("Timed out waiting for the training subprocess.")
    time.sleep(0.1)


def _logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)["step"] for line in f if line.strip().endswith("}")]


def _finished(workdir, step):
  return os.path.exists(os.path.join(workdir, "checkpoints", str(step), "commit_success.txt"))


def test_sigterm_then_sigkill_resume_is_bit_exact(tmp_path):
  """A run stopped by SIGTERM, then SIGKILLed, then resumed ends with the uninterrupted params."""
  cache = tmp_path / "jit_cache"
  ref = _start(tmp_path / "ref", tmp_path / "ref.npz", cache, 0.0)
  assert ref.wait(timeout=600) == 0, ref.stderr.read()

  work = tmp_path / "run"
  proc = _start(work, tmp_path / "run.npz", cache, 0.4)
  _wait_for(lambda: len(_logged_steps(work)) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 143, proc.stderr.read()
  stopped_at = checkpointing.latest_step(str(work))
  assert stopped_at is not None and 2 <= stopped_at < 12
  assert _logged_steps(work)[-1] == stopped_at  # Saved at the step the signal arrived.

  proc = _start(work, tmp_path / "run.npz", cache, 0.0, hold_at=10)  # Steps 9-10 at most.
  _wait_for(lambda: _finished(work, 8) and max(_logged_steps(work)) >= 9, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not os.path.exists(tmp_path / "run.npz")

  proc = _start(work, tmp_path / "run.npz", cache, 0.0)
  assert proc.wait(timeout=600) == 0, proc.stderr.read()
  ref_out, run_out = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "run.npz")
  assert int(run_out["step"]) == int(ref_out["step"]) == 12
  names = [k for k in ref_out.files if k != "step"]
  assert names
  for k in names:  # Same XLA:CPU program, same data and keys per step: bit-exact.
    np.testing.assert_array_equal(run_out[k], ref_out[k], err_msg=k)
  assert _logged_steps(work) == sorted(set(_logged_steps(work)))  # No duplicated records.


def _tiny_state(step, value):
  params = {"w": jnp.full((8, 4), value, jnp.float32), "b": jnp.full((4,), value, jnp.float32)}
  return train_state.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                                ema_params=params, opt_state={"mu": params})


def test_keeps_last_n_and_best_by_eval_loss(tmp_path):
  """keep_checkpoints=2 keeps the two newest plus the one with the lowest eval loss."""
  class TrainingConfig:
    keep_checkpoints = 2

  manager = checkpointing.create_manager(str(tmp_path), TrainingConfig())
  eval_losses = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.4, 5: 0.8, 6: 0.7}
  for step, loss in eval_losses.items():
    checkpointing.save(manager, _tiny_state(step, float(step)), metrics={"eval_loss": loss})
    manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 5, 6]
  assert manager.best_step() == 2
  state, record = checkpointing.restore(manager, jax.eval_shape(lambda: _tiny_state(2, 0.0)), 2)
  assert record["step"] == 2
  np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full((8, 4), 2.0))
  manager.close()


def test_restore_on_fewer_devices_with_target_shardings(tmp_path):
  """Saved from 8 devices (replicated), restored fsdp-sharded on a 2x2 mesh of 4 devices."""
  mesh8 = sharding.create_mesh(None)
  value = np.arange(64 * 512, dtype=np.float32).reshape(64, 512)
  params = {"w": jax.device_put(value, sharding.replicated(mesh8))}
  state = train_state.TrainState(step=jnp.asarray(3, jnp.int32), params=params,
                                 ema_params=params, opt_state={})
  manager = checkpointing.create_manager(str(tmp_path))
  checkpointing.save(manager, state)
  manager.wait_until_finished()

  class MeshConfig(dict):
    __getattr__ = dict.__getitem__

  mesh4 = sharding.create_mesh(MeshConfig(data=2, fsdp=2), devices=jax.devices()[:4])
  abstract = jax.eval_shape(lambda: state)
  shardings = jax.tree.map(lambda x: sharding.fsdp_sharding(mesh4, x.shape), abstract)
  restored, _ = checkpointing.restore(
      manager, checkpointing.abstract_with_shardings(abstract, shardings))
  w = restored.params["w"]
  assert w.sharding.mesh.devices.size == 4
  assert w.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert len(w.addressable_shards) == 4 and w.addressable_shards[0].data.shape == (64, 256)
  np.testing.assert_array_equal(np.asarray(w), value)
  assert int(restored.step) == 3
  manager.close()


def test_restore_without_checkpoint_says_where(tmp_path):
  manager = checkpointing.create_manager(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpointing.restore(manager, jax.eval_shape(lambda: _tiny_state(0, 0.0)))
  manager.close()


def test_parameters_restore_without_the_optimizer_and_a_misfit_says_what_to_pass(tmp_path):
  from configs import aia171
  config = aia171.get_config("test")
  config.training.grad_clip_norm = 1.0  # optax.chain(clip, adamw): a two-part optimizer state.
  state = jax.jit(lambda k: train_state.init_state(config, k))(jax.random.PRNGKey(0))
  state = state.replace(ema_params=jax.tree.map(lambda p: p + 1.0, state.params))
  manager = checkpointing.create_manager(str(tmp_path), config.training)
  checkpointing.save(manager, state)
  manager.wait_until_finished()
  manager.close()
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  # Sampling with another optimizer (another state tree), or one that cannot even be built: only
  # the parameters are read, and the optimizer is never described.
  other_optimizer = config.copy_and_resolve_references()
  other_optimizer.training.grad_clip_norm = 0.0
  no_optimizer = config.copy_and_resolve_references()
  no_optimizer.training.lr_schedule = "not a schedule"
  with pytest.raises(ValueError, match="lr_schedule"):
    train_state.make_optimizer(no_optimizer.training)
  for sampling_config in (other_optimizer, no_optimizer):
    for ema, want in ((True, state.ema_params), (False, state.params)):
      params, step = checkpointing.restore_params_and_step(sampling_config, str(tmp_path),
                                                           ema=ema)
      assert step == 0
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Resuming needs the optimizer too; another model fits neither. Both name the run's config.
  manager = checkpointing.create_manager(str(tmp_path), config.training)
  with pytest.raises(ValueError, match=r"step 0 in .*checkpoints does not fit this config.*"
                                       r"config\.json"):
    checkpointing.restore(manager, train_state.abstract_state(other_optimizer))
  manager.close()
  other_model = config.copy_and_resolve_references()
  other_model.model.base_channels = 2 * int(config.model.base_channels)
  with pytest.raises(ValueError, match=r"does not fit this config: its model") as e:
    checkpointing.restore_params(other_model, str(tmp_path))
  assert "strict=False" not in str(e.value)  # Padding or truncating weights is no remedy.


def test_a_misfit_is_found_in_the_metadata_before_any_array_is_read(tmp_path, monkeypatch):
  """A restore that failed part way left orbax's reads running into a closed event loop, whose
  tracebacks ("Event loop is closed") came after, and buried, the message."""
  manager = checkpointing.create_manager(str(tmp_path))
  checkpointing.save(manager, _tiny_state(4, 1.0))
  manager.wait_until_finished()
  monkeypatch.setattr(manager, "restore", lambda *a, **k: pytest.fail("started a restore"))
  wider = jax.eval_shape(lambda: _tiny_state(4, 0.0).replace(
      params={"w": jnp.zeros((8, 6)), "b": jnp.zeros((4,))}))
  with pytest.raises(ValueError, match=r"step 4 in .* does not fit this config.*1 arrays of "
                                       r"other shapes, e\.g\. params\.w: checkpoint \(8, 4\), "
                                       r"config \(8, 6\)"):
    checkpointing.restore(manager, wider)
  monkeypatch.undo()
  state, _ = checkpointing.restore(manager, jax.eval_shape(lambda: _tiny_state(4, 0.0)))
  np.testing.assert_array_equal(np.asarray(state.params["w"]), np.ones((8, 4)))
  manager.close()
