"""Training loop: sharded init, one pure jitted train step, EMA, orbax checkpoints, clu logging.

    config -> train_and_evaluate(config, workdir) -> make_train_step -> train_step(state, batch)

The step is a pure function of (state, batch): the noise, timesteps and label dropout come from
`fold_in(key(config.seed), state.step)`, and the data from the step too, so a run resumed from a
checkpoint retraces an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, sharding, train_state
from solar_ddpm_jax.errors import NonFiniteError
from solar_ddpm_jax.unet import create_model, make_apply_fn

NUM_T_BUCKETS = 10  # Timestep buckets of the per-t loss metrics (t * 10 // T).
METRICS_FILE = "metrics.jsonl"  # Scalars also appended here (process 0), for reports.
PROFILE_FIRST, PROFILE_STEPS = 3, 5  # training.profile: 5 steps after the first 3 (compiling).
SIGTERM_SYNC_STEPS = 100  # Multi-process: SIGTERM is agreed on at log steps, or this often.


class Preempted(SystemExit):
  """Raised after the checkpoint that a SIGTERM asked for is on disk."""


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


class _SigtermFlag:
  """Records a SIGTERM (preemption) so the loop can save before exiting."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, no preemption save.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint before exiting.")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self, at_sync_point: bool) -> bool:
    """Whether to save and stop now: at once in one process, at sync points in multi-process."""
    if jax.process_count() == 1:
      return self.raised
    if not at_sync_point:
      return False
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.raised))))


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
  # Imported here: the step functions above need neither TensorFlow (clu's writers) nor orbax.
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
    save = functools.partial(checkpointing.save, manager, data_seed=config.seed,
                             batch_size=int(tc.batch_size),
                             settings=checkpointing.run_settings(config),
                             loader=checkpointing.loader_record(config))
    report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                             writer=writer if is_main else None)
    window = _MetricsWindow(start_step, manager)
    with _SigtermFlag() as sigterm, _Profile(workdir, start_step, bool(tc.profile)) as profile:
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
  _truncate_metrics(workdir, start_step)
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


class _MetricsWindow:
  """The train-step metrics since the last training record, checked before anything uses them.

  A training record averages the window (at training.log_every_steps, and a partial window at a
  SIGTERM, so that no step's metrics are lost); a checkpoint is saved only after the window's
  losses are checked finite. Each step is fetched from the device for the check once.
  """

  def __init__(self, start_step: int, manager):
    self.first_step = start_step  # The step before the window's first.
    self.manager = manager
    self.per_step: list[dict] = []
    self.checked = 0  # Leading entries of per_step already checked.

  def append(self, metrics: dict) -> None:
    self.per_step.append(metrics)

  def check_finite(self) -> None:
    """NonFiniteError at the window's first non-finite loss or gradient norm."""
    check_finite(self.per_step[self.checked:], self.first_step + self.checked, self.manager)
    self.checked = len(self.per_step)

  def drop(self) -> None:
    """Checks the window, then starts a new one after it."""
    self.check_finite()
    self.first_step += len(self.per_step)
    self.per_step, self.checked = [], 0

  def write(self, writer, workdir: str, step: int) -> None:
    """Checks the window and writes its means as the training record of `step` (if not empty)."""
    self.check_finite()
    if self.per_step:
      write_scalars(writer, workdir, step, summarize_metrics(self.per_step),
                    extra={"window_steps": len(self.per_step)})
    self.drop()


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


class _Profile:
  """training.profile: a trace of PROFILE_STEPS steps with clu's Profile, for TensorBoard.

  The trace starts after the first PROFILE_FIRST steps of this run or resume (when compilation
  is over) and stops PROFILE_STEPS steps later; both wait for the device to finish the steps
  before, so the trace holds exactly those steps. A run that stops early (SIGTERM, NaN) or ends
  inside the window still writes its trace. Traces go to <workdir>/profile (one folder per
  process in multi-process jobs).
  """

  def __init__(self, workdir: str, start_step: int, enabled: bool):
    from clu import periodic_actions
    self.logdir = os.path.join(workdir, "profile")
    if jax.process_count() > 1:
      self.logdir = os.path.join(self.logdir, f"process_{jax.process_index()}")
    self.first = start_step + PROFILE_FIRST
    self.action = periodic_actions.Profile(
        logdir=self.logdir, num_profile_steps=PROFILE_STEPS, profile_duration_ms=None,
        first_profile=self.first, every_steps=None, every_secs=None) if enabled else None
    self.done = start_step

  def __enter__(self):
    return self

  def __call__(self, done: int, state) -> None:
    """After step `done`: starts or stops the trace when it is due."""
    self.done = done
    if self.action is None:
      return
    if done in (self.first, self.first + PROFILE_STEPS):
      jax.block_until_ready(state)
    self.action(done)
    if done == self.first + PROFILE_STEPS:
      logging.info("Profile written to %s (tensorboard --logdir %s, Profile tab).", self.logdir,
                   self.logdir)

  @property
  def running(self) -> bool:
    return self.action is not None and self.first <= self.done < self.first + PROFILE_STEPS

  def stop(self, state=None) -> None:
    """Ends a trace still running after `state` is computed (None: at once)."""
    if not self.running:
      return
    self.done = self.first + PROFILE_STEPS  # Not running any more, whatever happens next.
    if state is not None:
      jax.block_until_ready(state)
    try:
      jax.profiler.stop_trace()
    except RuntimeError as e:  # No trace running: clu's Profile logged why it could not start.
      logging.warning("No profile to write to %s (%s).", self.logdir, e)
      return
    logging.info("Profile written to %s (tensorboard --logdir %s, Profile tab).", self.logdir,
                 self.logdir)

  def __exit__(self, *exc):
    try:  # Stopped early: keep the trace of the steps so far (a no-op after a normal stop).
      self.stop()
    except Exception:  # noqa: BLE001 (never hide the exception that ended the run)
      logging.exception("Could not write the profile to %s.", self.logdir)


def write_scalars(writer, workdir: str, step: int, scalars: dict,
                  extra: dict | None = None) -> None:
  """Scalars to the clu writer (TensorBoard + console) and, on process 0, to metrics.jsonl.

  `extra` goes to metrics.jsonl only (window_steps: how many steps a training record averages;
  fewer than training.log_every_steps after a resume from a SIGTERM checkpoint).
  """
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS_FILE), "a") as f:
      f.write(json.dumps({"step": int(step), **scalars, **(extra or {})}) + "\n")


def _due(done: int, every: int, last: bool) -> bool:
  """Whether a periodic action runs after step `done` (every <= 0 disables it)."""
  return int(every) > 0 and (done % int(every) == 0 or last)


def read_metrics(workdir: str) -> list[dict]:
  """The metrics.jsonl records of a workdir, oldest first; a line cut off by a kill is skipped."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records, torn = [], 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        record["step"] = int(record["step"])
      except (ValueError, KeyError, TypeError):
        torn += 1
        continue
      records.append(record)
  if torn:
    logging.warning("Skipped %d unreadable line(s) of %s (cut off by a kill?).", torn, path)
  return records


def _truncate_metrics(workdir: str, start_step: int) -> None:
  """Drops metrics.jsonl records past the resumed step (they are recomputed), and torn lines.

  The file is replaced atomically, so a second kill here cannot lose the earlier records.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  keep = [r for r in read_metrics(workdir) if r["step"] <= start_step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in keep)
  os.replace(tmp, path)


def grid_labels(config) -> np.ndarray:
  """Labels of the periodic grid: training.grid_per_class of each flare class, class-major."""
  per_class = int(config.training.grid_per_class)
  return np.repeat(np.arange(len(FLARE_CLASSES), dtype=np.int32), per_class)


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
