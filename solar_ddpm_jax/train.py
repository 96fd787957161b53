"""Training loop: sharded init, one pure jitted train step, EMA, orbax checkpoints, clu logging.

    config -> train_and_evaluate(config, workdir) -> make_train_step -> train_step(state, batch)

The step is a pure function of (state, batch): the noise, timesteps and label dropout come from
`fold_in(key(config.seed), state.step)`, and the data from the step too, so a run resumed from a
checkpoint retraces an uninterrupted one exactly. The step itself is in train_step.py, the
training records in metrics_log.py, the SIGTERM save in preemption.py, the trace in profiling.py.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, sharding, train_state
from solar_ddpm_jax.errors import NonFiniteError
from solar_ddpm_jax.metrics_log import (
  METRICS_FILE,
  MetricsWindow,
  read_metrics,
  truncate_metrics,
  write_scalars,
)
from solar_ddpm_jax.preemption import SIGTERM_SYNC_STEPS, Preempted, SigtermFlag
from solar_ddpm_jax.profiling import PROFILE_FIRST, PROFILE_STEPS, Profile
from solar_ddpm_jax.train_step import (
  NUM_T_BUCKETS,
  batch_shardings,
  check_finite,
  create_train_state,
  evaluate,
  jit_train_step,
  make_eval_step,
  make_train_step,
  state_shardings,
  summarize_metrics,
)
from solar_ddpm_jax.unet import create_model, make_apply_fn

# The step, the records, the preemption and the profile are also read as train.<name>.
__all__ = ["METRICS_FILE", "NUM_T_BUCKETS", "PROFILE_FIRST", "PROFILE_STEPS", "SIGTERM_SYNC_STEPS",
           "Preempted", "batch_shardings", "check_finite", "close_manager", "create_model",
           "create_train_state", "evaluate", "grid_labels", "jit_train_step", "make_apply_fn",
           "make_eval_step", "make_train_step", "read_metrics", "state_shardings",
           "summarize_metrics", "train_and_evaluate", "write_scalars"]


def close_manager(manager, *, collective: bool = True) -> None:
  """Waits for the saves in flight and shuts the checkpoint manager down (its threads too).

  On every exit path of a run, so that nothing of orbax is left to fail at interpreter exit
  after the run's own message. `collective=False` (a multi-process job stopped by an error
  that only some processes may have raised): nothing that could wait on the other processes.
  Errors here are logged, never raised over the one that ended the run.
  """
  if not collective:
    return
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception:  # noqa: BLE001 (never hide the exception that ended the run)
    logging.exception("Could not shut the checkpoint manager of %s down.", manager.directory)


def _default_train_iterator(config, mesh) -> Callable[[int], Iterator]:
  from solar_ddpm_jax import input_pipeline
  return lambda start_step: input_pipeline.create_train_iterator(
      config, mesh, split="train", start_step=start_step)


def _default_eval_iterator(config, mesh) -> Callable[[], Iterator]:
  from solar_ddpm_jax import input_pipeline
  return lambda: input_pipeline.create_train_iterator(config, mesh, split="validation")


def _sample_grid_config(config):
  """The config of the periodic sample grids: the sampling settings with training.sample_steps."""
  grid = config.copy_and_resolve_references()
  with grid.unlocked():
    grid.sampling.num_steps = int(config.training.sample_steps)
  return grid


def train_and_evaluate(config, workdir: str, *,
                       train_iterator_fn: Callable[[int], Iterator] | None = None,
                       eval_iterator_fn: Callable[[], Iterator] | None = None):
  """Trains (resuming from the latest checkpoint in workdir) and returns the final TrainState.

  train_iterator_fn(start_step) -> iterator of global batches {"image", "label"} from batch
  start_step on (default: the input pipeline); eval_iterator_fn() -> iterator of validation
  batches (default: the pipeline's validation split). Both are for tests and custom data. A resume
  passes the checkpoint's examples consumed / training.batch_size (its step, when the batch size
  is unchanged).
  """
  # Imported here: importing this module needs neither TensorFlow (clu's writers) nor orbax.
  from clu import metric_writers, periodic_actions

  from solar_ddpm_jax import checkpointing, diffusion, samplers

  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  tc = config.training
  _check_settings(config)
  num_steps = int(tc.num_train_steps)
  is_main = jax.process_index() == 0
  mesh = sharding.create_mesh(config.mesh)
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), jax.device_count(),
               jax.process_count())
  writer = metric_writers.create_default_writer(workdir if is_main else None,
                                                just_logging=not is_main)
  apply_fn = make_apply_fn(create_model(config.model))
  schedule = diffusion.make_schedule(config.diffusion)
  abstract = train_state.abstract_state(config)
  shardings = state_shardings(mesh, abstract)
  manager = checkpointing.create_manager(workdir, tc)
  try:
    state, record = _restore_or_create(config, manager, abstract, shardings, mesh)
    start_step = int(jax.device_get(state.step))
    data_step = checkpointing.data_start_step(record, start_step, int(tc.batch_size))
    _start_records(config, workdir, writer, abstract, start_step)
    step_fn = jit_train_step(make_train_step(config, apply_fn, schedule), mesh, shardings)
    eval_fn = make_eval_step(config, apply_fn, schedule, mesh, shardings.ema_params)
    grid_fn = samplers.make_sample_fn(apply_fn, schedule, _sample_grid_config(config), mesh)
    train_iterator = (train_iterator_fn or _default_train_iterator(config, mesh))(data_step)
    make_eval_iterator = eval_iterator_fn or _default_eval_iterator(config, mesh)
    save = _saver(config, manager)
    report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                             writer=writer if is_main else None)
    window = MetricsWindow(start_step, manager)
    with SigtermFlag() as sigterm, Profile(workdir, start_step, bool(tc.profile)) as profile:
      for step in range(start_step, num_steps):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          batch = next(train_iterator)
          state, metrics = step_fn(state, {"image": batch["image"], "label": batch["label"]})
        done = step + 1
        window.append(metrics)
        report(done, time.time())
        due = _due_at(done, tc, num_steps)
        if due.log:
          window.write(writer, workdir, done)
        eval_metrics = None
        if due.eval:
          eval_metrics = evaluate(eval_fn, state.ema_params, make_eval_iterator,
                                  int(tc.eval_batches))
          if eval_metrics:
            write_scalars(writer, workdir, done, eval_metrics)
        if due.checkpoint:
          window.check_finite()  # No checkpoint after a non-finite loss.
          with report.timed("checkpoint"):
            save(state, metrics=eval_metrics)
        if due.sample:
          with report.timed("sample_grid"):
            _write_sample_grid(config, grid_fn, state, done, mesh, writer, workdir)
        if due.drop_window:
          window.drop()
        if not due.last and sigterm.requested(at_sync_point=due.sync_point):
          if due.logging:  # The partial window: no step's metrics lost.
            window.write(writer, workdir, done)
          window.check_finite()
          _save_and_exit(save, manager, writer, state, done)
        profile(done, state)
      profile.stop(state)
  except BaseException as e:
    # A save in flight is kept. Every process stops on a SIGTERM or a non-finite state (both are
    # agreed on), so their shutdown may wait on each other; another error may be one process's.
    close_manager(manager, collective=(jax.process_count() == 1
                                       or isinstance(e, Preempted | NonFiniteError)))
    raise
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  return state


def _saver(config, manager) -> Callable:
  """save(state, metrics=..., force=...): checkpointing.save with the run's data record."""
  from solar_ddpm_jax import checkpointing
  return functools.partial(checkpointing.save, manager, data_seed=config.seed,
                           batch_size=int(config.training.batch_size),
                           settings=checkpointing.run_settings(config),
                           loader=checkpointing.loader_record(config))


def _check_settings(config) -> None:
  """Settings errors found before anything is built: float32 master weights, grid batch size."""
  from solar_ddpm_jax import sample
  train_state.check_param_dtype(config.model)
  if int(config.training.sample_every_steps) > 0:
    sample.check_batch_size(config.sampling.batch_size)


def _restore_or_create(config, manager, abstract, shardings, mesh):
  """(TrainState, data record) of the latest checkpoint (the record checked against `config`), or
  a new state and an empty record."""
  from solar_ddpm_jax import checkpointing
  if manager.latest_step() is None:
    return create_train_state(config, mesh)[0], {}
  state, record = checkpointing.restore(
      manager, checkpointing.abstract_with_shardings(abstract, shardings))
  checkpointing.check_resume_record(record, config, manager.directory)
  logging.info("Resumed from the checkpoint of step %d (data position: %s examples consumed).",
               int(state.step), record.get("examples_consumed", "unrecorded"))
  return state, record


def _start_records(config, workdir: str, writer, abstract, start_step: int) -> None:
  """metrics.jsonl cut back to `start_step`, config.json, and a new run's hyperparameters."""
  truncate_metrics(workdir, start_step)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  logging.info("UNet parameters: %d.", num_params)
  if start_step == 0:
    writer.write_hparams({"preset": config.preset, "num_params": num_params,
                          "batch_size": int(config.training.batch_size),
                          "seed": int(config.seed)})


@dataclasses.dataclass(frozen=True)
class _Due:
  """What runs after a step; decided in one place, `_due_at`."""
  last: bool  # The run's final step.
  logging: bool  # training.log_every_steps > 0: the metrics window becomes training records.
  log: bool  # Write the window's means as a training record.
  eval: bool  # Validation loss of the EMA parameters.
  checkpoint: bool
  sample: bool  # A grid of EMA samples.
  drop_window: bool  # Logging off: check the window and empty it, so that it stays bounded.
  sync_point: bool  # Multi-process: the processes agree on a SIGTERM here.


def _due_at(done: int, tc, num_steps: int) -> _Due:
  """The actions after step `done` (steps finished) of training config `tc`.

  Every periodic action also runs after the final step, except the bounded window drop; every
  checkpoint gets an eval loss (it ranks the best checkpoint) when evals are on.
  """
  last = done == num_steps
  logging_on = int(tc.log_every_steps) > 0
  checkpoint = last or _due(done, tc.checkpoint_every_steps, False)
  bounded = not logging_on and done % SIGTERM_SYNC_STEPS == 0
  return _Due(
      last=last, logging=logging_on, log=_due(done, tc.log_every_steps, last),
      eval=_due(done, tc.eval_every_steps, last) or (checkpoint and int(tc.eval_every_steps) > 0),
      checkpoint=checkpoint, sample=_due(done, tc.sample_every_steps, last),
      drop_window=not logging_on and (checkpoint or bounded),
      sync_point=_due(done, tc.log_every_steps, False) or checkpoint or bounded)


def _write_sample_grid(config, grid_fn, state, step: int, mesh, writer, workdir: str) -> None:
  """EMA samples of every flare class: samples/grid_step<step>.png and TensorBoard (process 0)."""
  from solar_ddpm_jax import outputs, sample
  labels = grid_labels(config)
  images = sample.sample_images(grid_fn, state.ema_params, labels, seed=step,
                                batch_size=int(config.sampling.batch_size), mesh=mesh)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "samples", f"grid_step{step:07d}.png")
    rgb = outputs.save_class_grid(images, labels, path)
    writer.write_images(step, {"samples_ema": rgb[None]})


def _save_and_exit(save, manager, writer, state, step: int):
  """After a SIGTERM: the checkpoint of `step` on disk, then Preempted (exit status 143)."""
  save(state, force=True)
  manager.wait_until_finished()
  writer.flush()
  logging.warning("Saved the checkpoint of step %d after SIGTERM; exiting.", step)
  raise Preempted(143)


def _due(done: int, every: int, last: bool) -> bool:
  """Whether a periodic action runs after step `done` (every <= 0 disables it)."""
  return int(every) > 0 and (done % int(every) == 0 or last)


def grid_labels(config) -> np.ndarray:
  """Labels of the periodic grid: training.grid_per_class of each flare class, class-major."""
  per_class = int(config.training.grid_per_class)
  return np.repeat(np.arange(len(FLARE_CLASSES), dtype=np.int32), per_class)
