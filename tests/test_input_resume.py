"""The loader's position is part of every checkpoint, and a run resumed on the streamed input
retraces an uninterrupted one."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import aia171
from solar_ddpm_jax import checkpointing, input_pipeline


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict


def test_checkpoints_record_the_examples_consumed_and_the_loader(tmp_path, caplog):
  config = aia171.get_config("test")
  manager = checkpointing.create_manager(str(tmp_path))
  state = _State(step=jnp.asarray(6, jnp.int32), params={"w": jnp.ones(3)})
  checkpointing.save(manager, state, data_seed=0, batch_size=8,
                     loader=checkpointing.loader_record(config))
  manager.wait_until_finished()
  record = dict(manager.restore(6, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"])
  manager.close()
  assert record["examples_consumed"] == 6 * 8
  assert record["loader"] == {"name": "tfdata", "process_count": jax.process_count(),
                              "shuffle_buffer": int(config.data.shuffle_buffer)}
  # The same batch size resumes at the step; another one at the batch after the examples seen.
  assert checkpointing.data_start_step(record, 6, 8) == 6
  assert checkpointing.data_start_step(record, 6, 16) == 3
  assert checkpointing.data_start_step({"step": 6}, 6, 16) == 6  # Older records: the step.
  # Another loader or shuffle buffer changes the order: said, not refused.
  other = config.copy_and_resolve_references()
  other.data.shuffle_buffer = 7
  with caplog.at_level("WARNING"):
    checkpointing.check_resume_record(record, other, tmp_path)
  assert "shuffle_buffer: checkpoint 1024, now 7" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    checkpointing.check_resume_record(record, config, tmp_path)
  assert "another input order" not in caplog.text


@pytest.mark.slow
def test_a_resumed_run_on_the_streamed_input_is_bit_exact(tmp_path, monkeypatch):
  """4 steps at once, and 2 steps then 2 more from the checkpoint, on the tfdata loader."""
  from solar_ddpm_jax import train
  config = aia171.get_config("test")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.synthetic.num_images = 40
  tc = config.training
  tc.checkpoint_every_steps, tc.log_every_steps = 2, 1
  tc.eval_every_steps, tc.sample_every_steps = 0, 0
  starts = []
  create = input_pipeline.create_train_iterator

  def recorded(config, mesh, *, split="train", start_step=0):
    starts.append((split, start_step))
    return create(config, mesh, split=split, start_step=start_step)
  monkeypatch.setattr(input_pipeline, "create_train_iterator", recorded)
  tc.num_train_steps = 4
  whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
  tc.num_train_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "parts"))
  tc.num_train_steps = 4
  resumed = train.train_and_evaluate(config, str(tmp_path / "parts"))
  assert starts == [("train", 0), ("train", 0), ("train", 2)]
  for a, b in zip(jax.tree.leaves(jax.device_get(whole.params)),
                  jax.tree.leaves(jax.device_get(resumed.params)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(resumed.step) == 4
