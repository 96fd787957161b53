"""No non-finite state is checkpointed, ranked best or sampled; sampling keeps what it made.

Most tests call the save and sampling paths directly with tiny arrays or a stand-in sampler; one
trains the test preset for a few steps with an optimizer that turns the update into NaN.
"""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import aia171
from solar_ddpm_jax import checkpointing, sample, sharding, train, train_state
from solar_ddpm_jax.errors import NonFiniteError, SettingsError
from tests._helpers import data


def _tiny_state(step, value=1.0, bad=None):
  """A small TrainState; `bad` names the part ("params", "ema_params", "opt_state") made NaN."""
  def part(name):
    v = jnp.nan if name == bad else value
    return {"w": jnp.full((8, 4), v, jnp.float32), "b": jnp.full((4,), value, jnp.float32)}
  return train_state.TrainState(step=jnp.asarray(step, jnp.int32), params=part("params"),
                                ema_params=part("ema_params"),
                                opt_state={"mu": part("opt_state"), "count": jnp.asarray(step)})


class _Training:
  keep_checkpoints = 1


def test_all_finite_is_one_reduction_over_float_leaves():
  assert checkpointing.all_finite(_tiny_state(3))
  assert checkpointing.all_finite({"count": jnp.asarray(2), "none": ()})  # No float leaves.
  for bad in ("params", "ema_params", "opt_state"):
    assert not checkpointing.all_finite(_tiny_state(3, bad=bad))
  assert not checkpointing.all_finite({"w": np.array([1.0, np.inf], np.float32)})


@pytest.mark.parametrize("bad,words", [("params", "parameters"),
                                       ("ema_params", "EMA parameters"),
                                       ("opt_state", "optimizer state")])
def test_a_non_finite_state_is_never_saved_and_the_error_names_the_last_good_one(
    tmp_path, bad, words):
  manager = checkpointing.create_manager(str(tmp_path), _Training())
  try:
    with pytest.raises(NonFiniteError, match=rf"state of step 1 is not finite .*{words}\).*"
                                             r"not saved\. There is no checkpoint in .* yet"):
      checkpointing.save(manager, _tiny_state(1, bad=bad))
    assert manager.all_steps() == []
    checkpointing.save(manager, _tiny_state(2))
    with pytest.raises(NonFiniteError, match=r"state of step 3 is not finite.*The last good "
                                             r"checkpoint is step 2 in .*checkpoints"):
      checkpointing.save(manager, _tiny_state(3, bad=bad), force=True)
    manager.wait_until_finished()
    assert list(manager.all_steps()) == [2]
  finally:
    manager.close()


def test_a_non_finite_loss_with_no_checkpoint_yet_says_so(tmp_path):
  manager = checkpointing.create_manager(str(tmp_path), _Training())
  metrics = [{"loss": jnp.float32(0.5), "grad_norm": jnp.float32(1.0)},
             {"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(np.nan)}]
  try:
    with pytest.raises(NonFiniteError, match=r"loss nan .* at step 2\. Stopped\. There is no "
                                             r"checkpoint in .*checkpoints yet"):
      train.check_finite(metrics, 0, manager)
  finally:
    manager.close()


def test_a_non_finite_eval_loss_ranks_worst_and_is_never_the_best(tmp_path):
  assert checkpointing._best_metric({"eval_loss": float("nan")}) == math.inf
  assert checkpointing._best_metric({"eval_loss": -float("inf")}) == math.inf
  assert checkpointing._best_metric({}) == math.inf
  assert checkpointing._best_metric({"eval_loss": 0.25}) == 0.25
  manager = checkpointing.create_manager(str(tmp_path), _Training())
  try:
    for step, loss in {1: 0.5, 2: float("nan"), 3: 0.7, 4: -float("inf")}.items():
      checkpointing.save(manager, _tiny_state(step), metrics={"eval_loss": loss})
      manager.wait_until_finished()
      assert manager.best_step() == 1
    assert sorted(manager.all_steps()) == [1, 4]  # The best finite one and the latest.
  finally:
    manager.close()


def test_training_stops_when_an_update_makes_the_state_non_finite(tmp_path, monkeypatch):
  """A finite loss whose update makes the state NaN (step 4): not saved, named, manager closed."""
  real_optimizer = train_state.make_optimizer

  def poisoned_optimizer(training_config):  # The fourth update (count 3) is NaN.
    nan_from_step_4 = optax.scale_by_schedule(lambda count: jnp.where(count >= 3, jnp.nan, 1.0))
    return optax.chain(real_optimizer(training_config), nan_from_step_4)

  monkeypatch.setattr(train_state, "make_optimizer", poisoned_optimizer)
  closed = []
  real_create = checkpointing.create_manager

  def recording_create(*args, **kwargs):
    manager = real_create(*args, **kwargs)
    real_close = manager.close
    manager.close = lambda: closed.append(manager.directory) or real_close()
    return manager

  monkeypatch.setattr(checkpointing, "create_manager", recording_create)
  config = aia171.get_config("test")
  config.training.num_train_steps = 6
  config.training.checkpoint_every_steps = 2
  config.training.log_every_steps = 2
  config.training.eval_every_steps = 0
  config.training.sample_every_steps = 0
  mesh = sharding.create_mesh(config.mesh)
  # Adam's moments see finite gradients; the NaN update reaches the parameters and the EMA.
  with pytest.raises(NonFiniteError, match=r"state of step 4 is not finite \(NaN or Inf in its "
                                           r"parameters, EMA parameters\): not saved\. The last "
                                           r"good checkpoint is step 2 in "):
    train.train_and_evaluate(config, str(tmp_path), train_iterator_fn=data.iterator_fn(config,
                                                                                      mesh))
  assert closed  # Shut down on the error path: nothing of orbax left running at exit.
  losses = [r["loss"] for r in train.read_metrics(str(tmp_path)) if "loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))  # Steps 1-4: finite losses.
  assert checkpointing.latest_step(str(tmp_path)) == 2
  params = checkpointing.restore_params(config, str(tmp_path))
  assert checkpointing.all_finite(params)


def _sampling_config(**sampling):
  config = aia171.get_config("test")
  config.sampling.classes, config.sampling.num_per_class = "A,M", 3
  config.sampling.batch_size, config.sampling.checkpoint_step = 4, 7
  for k, v in sampling.items():
    setattr(config.sampling, k, v)
  return config


@pytest.fixture
def stand_in_sampler(monkeypatch):
  """sample._params and sample._sample_fn replaced: no checkpoint, no compile. Returns the calls;
  the sampler's images are NaN from batch `calls["nan_from"]` on."""
  calls = {"params": 0, "batches": 0, "nan_from": 10**9}
  mesh = sharding.create_mesh(None)
  res = int(aia171.get_config("test").data.resolution)

  def params(cfg, workdir):
    calls["params"] += 1
    return None, int(cfg.sampling.checkpoint_step)

  def sample_fn(params, labels, key, guidance_scale=None):
    value = jnp.nan if calls["batches"] >= calls["nan_from"] else 0.25
    calls["batches"] += 1
    return jnp.full((labels.shape[0], res, res, 1), value, jnp.float32)

  monkeypatch.setattr(sample, "_params", params)
  monkeypatch.setattr(sample, "_sample_fn", lambda cfg: calls.__setitem__(
      "compiled", True) or (mesh, sample_fn))
  return calls


def test_non_finite_images_are_never_written_and_earlier_batches_are_kept(tmp_path,
                                                                         stand_in_sampler):
  stand_in_sampler["nan_from"] = 1  # Images 0-3 fine, 4-5 NaN.
  config = _sampling_config(sampler="ddim", guidance_scale=2.5)
  with pytest.raises(NonFiniteError, match=r"2 of the 2 images 4\.\.5 sampled from the checkpoint "
                                           r"of step 7 in .*checkpoints \(sampler ddim, .* "
                                           r"guidance scale 2\.5\) are not finite"):
    sample.sample_and_save(config, str(tmp_path))
  out = tmp_path / "samples" / sample.settings_tag(sample.sampling_config(config), 7)
  assert sorted(os.listdir(out / "fits")) == [f"{c}_{i:05d}_171.fits" for c, i in
                                              (("A", 0), ("A", 1), ("A", 2), ("M", 3))]
  assert os.listdir(out / sample.BATCHES_DIR) == ["000000.npz"]
  batch = np.load(out / sample.BATCHES_DIR / "000000.npz")
  assert batch["images"].shape[0] == 4 and int(batch["start"]) == 0
  np.testing.assert_array_equal(batch["labels"], [0, 0, 0, 3])
  assert not (out / "samples.npz").exists() and not (out / "grid.png").exists()

  stand_in_sampler.update(nan_from=10**9, batches=0)  # A rerun that ends: the final layout.
  assert sample.sample_and_save(config, str(tmp_path)) == str(out)
  assert sorted(os.listdir(out)) == ["fits", "grid.png", "samples.npz"]
  assert len(os.listdir(out / "fits")) == 6
  assert np.load(out / "samples.npz")["images"].shape[0] == 6


def test_sampling_refuses_a_checkpoint_with_non_finite_parameters(tmp_path, monkeypatch):
  nan_params = {"conv": {"kernel": np.array([[0.5, np.nan]], np.float32)}}
  monkeypatch.setattr(checkpointing, "restore_params_and_step",
                      lambda config, workdir, step, ema=True: (nan_params, step))
  monkeypatch.setattr(sample, "_PARAMS_CACHE", {})
  monkeypatch.setattr(sample, "_sample_fn", lambda cfg: pytest.fail("compiled a sampler"))
  with pytest.raises(NonFiniteError, match=r"EMA parameters of the checkpoint of step 7 in "
                                           r".*checkpoints are not finite"):
    sample.sample_and_save(_sampling_config(), str(tmp_path))
  assert sample._PARAMS_CACHE == {}
  with pytest.raises(NonFiniteError, match=r"^The parameters of the checkpoint of step 7"):
    sample.generate(_sampling_config(use_ema=False), str(tmp_path), [0, 1])


def test_an_unwritable_sample_folder_fails_before_the_first_batch(tmp_path, stand_in_sampler):
  (tmp_path / "samples").write_text("a file where the samples folder goes")
  with pytest.raises(SettingsError,
                     match=r"Cannot write the samples to .*samples/step7_.*--workdir"):
    sample.sample_and_save(_sampling_config(), str(tmp_path))
  assert stand_in_sampler["params"] == 0 and "compiled" not in stand_in_sampler


@pytest.mark.parametrize("batch_size", [0, -3])
def test_a_sampling_batch_size_below_one_is_refused(tmp_path, stand_in_sampler, batch_size):
  with pytest.raises(SettingsError, match=rf"sampling\.batch_size={batch_size}: .* >= 1"):
    sample.sample_and_save(_sampling_config(batch_size=batch_size), str(tmp_path))
  assert stand_in_sampler["params"] == 0 and not (tmp_path / "samples").exists()
  mesh = sharding.create_mesh(None)
  with pytest.raises(SettingsError, match="sampling.batch_size"):
    sample.sample_images(lambda p, y, k: y, None, [0, 1], seed=0, batch_size=batch_size,
                         mesh=mesh)


def test_the_batch_size_of_the_outputs_is_the_one_used(tmp_path, stand_in_sampler):
  out = sample.sample_and_save(_sampling_config(batch_size=5), str(tmp_path))
  assert json.loads(str(np.load(os.path.join(out, "samples.npz"))["settings"]))["batch_size"] == 5
  assert stand_in_sampler["batches"] == 2  # 6 images in batches of 5 and 1.
