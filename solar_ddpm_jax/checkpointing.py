"""Orbax checkpoints of the TrainState: async saves, last N + best by eval loss, sharded restores.

A checkpoint holds the whole TrainState and a small JSON record of the data position: the
examples consumed (step x global batch) and the loader that read them (data.loader, the number of
processes). The input pipeline is a pure function of (seed, step) (and, for the "tfdata" loader,
of the process count), so a restored run restarts its iterator at the batch after the examples
consumed (`data_start_step`) and sees the same batches as an uninterrupted run.
Restores take target shardings, so a run saved on 8 devices resumes on 4 (or on a pod).

Only finite states are saved: `save` refuses a state with a NaN or Inf anywhere in its
parameters, EMA parameters or optimizer state, so the latest checkpoint is always one to resume
or sample from. A non-finite eval loss is not recorded, so such a checkpoint is never the best.
"""

from __future__ import annotations

import contextlib
import math
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from solar_ddpm_jax.errors import NonFiniteError

BEST_METRIC = "eval_loss"  # Metric that picks the best checkpoint (lower is better).
# What to change after a non-finite loss or state (the training loop's stop and a refused save).
NONFINITE_ADVICE = ("Lower training.learning_rate, keep training.grad_clip_norm > 0, or use "
                    "model.dtype='float32', then rerun to resume.")


def _best_metric(metrics) -> float:
  """The ranking value of a checkpoint's metrics; missing, NaN or Inf ranks worst (+inf)."""
  try:
    value = float(metrics[BEST_METRIC])
  except (KeyError, TypeError, ValueError):
    return math.inf
  return value if math.isfinite(value) else math.inf


@jax.jit
def _leaves_all_finite(leaves):
  """One fused reduction over float arrays (any sharding) -> a scalar bool on the devices."""
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree) -> bool:
  """Whether every floating-point leaf of `tree` is finite (no NaN, no Inf).

  One jitted reduction on the devices where the arrays live (sharded arrays stay sharded) and one
  bool to the host: the cost of a save's check is a single small transfer. Collective in
  multi-process jobs (every process calls it with the same global arrays).
  """
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(jax.device_get(_leaves_all_finite(leaves)))


def _nonfinite_parts(state) -> str:
  """Which parts of a TrainState hold NaN or Inf, in words (for the error of a refused save)."""
  names = (("params", "parameters"), ("ema_params", "EMA parameters"),
           ("opt_state", "optimizer state"))
  bad = [words for name, words in names if hasattr(state, name)
         and not all_finite(getattr(state, name))]
  return ", ".join(bad) if bad else "state"


def last_good_checkpoint(manager: ocp.CheckpointManager) -> str:
  """A sentence naming the newest saved checkpoint (every saved state is finite), or saying there
  is none yet. Waits for a save in flight first, so the step named is on disk."""
  manager.wait_until_finished()
  step = manager.latest_step()
  if step is None:
    return (f"There is no checkpoint in {manager.directory} yet: a rerun starts again from "
            "step 0")
  return f"The last good checkpoint is step {step} in {manager.directory}"


def checkpoint_dir(workdir: str) -> str:
  """Where the checkpoints of a workdir live."""
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, training_config=None, *,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """CheckpointManager under <workdir>/checkpoints: async, keeps the last N and the best eval."""
  keep = int(training_config.keep_checkpoints) if training_config is not None else 3
  preservation = ocm.AnyPreservationPolicy([
      ocm.LatestN(n=keep),
      ocm.BestN(get_metric_fn=_best_metric, reverse=True, n=1,
                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preservation,
      best_fn=_best_metric, best_mode="min",  # For best_step(); retention is the policy above.
      enable_async_checkpointing=True,
      create=not read_only,
      read_only=read_only,
      cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "data"))


# Settings a resumed run must share with the checkpoint's: the same weights trained on another
# target, schedule or label would continue a different run without any shape telling.
RESUME_SETTINGS = (("diffusion", "prediction"), ("diffusion", "beta_schedule"),
                   ("diffusion", "num_timesteps"), ("diffusion", "loss"), ("data", "label"))


def run_settings(config) -> dict:
  """The RESUME_SETTINGS of a config, by dotted name, as JSON values."""
  out = {}
  for group, key in RESUME_SETTINGS:
    value = config[group].get(key)
    out[f"{group}.{key}"] = value if isinstance(value, bool | int | float | str) else str(value)
  return out


def loader_record(config) -> dict:
  """The loader a run reads with, as a checkpoint records it (docs/input.md)."""
  return {"name": str(config.data.loader), "process_count": jax.process_count(),
          "shuffle_buffer": int(config.data.shuffle_buffer)}


def save(manager: ocp.CheckpointManager, state, *, metrics: dict | None = None,
         data_seed: int = 0, batch_size: int | None = None, settings: dict | None = None,
         loader: dict | None = None, force: bool = False) -> bool:
  """Starts an async save of `state` at its step (collective: every process calls it).

  Raises NonFiniteError, saving nothing, when any float leaf of `state` (parameters, EMA
  parameters, optimizer state) is NaN or Inf: such a state would become the latest checkpoint,
  the one a resume or `--mode=sample` reads. A non-finite metric is left out of the checkpoint's
  metrics (a warning says so), so it is never ranked best.
  """
  step = int(jax.device_get(state.step))
  if step in manager.all_steps():
    return False
  if not all_finite(state):
    raise NonFiniteError(
        f"The training state of step {step} is not finite (NaN or Inf in its "
        f"{_nonfinite_parts(state)}): not saved. "
        f"{last_good_checkpoint(manager)}. {NONFINITE_ADVICE}")
  data = {"step": step, "data_seed": int(data_seed)}
  if batch_size is not None:
    data["batch_size"] = int(batch_size)
    data["examples_consumed"] = step * int(batch_size)  # The loader's position.
  if loader:
    data["loader"] = dict(loader)
  if settings:
    data["settings"] = dict(settings)
  if metrics is not None:
    metrics = {k: float(v) for k, v in metrics.items()}
    nonfinite = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if nonfinite:
      logging.warning("Non-finite %s at step %d: not recorded, so this checkpoint is never the "
                      "best one (it is kept while it is among the latest).",
                      ", ".join(f"{k}={metrics[k]}" for k in nonfinite), step)
      metrics = {k: v for k, v in metrics.items() if k not in nonfinite} or None
  saved = manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     data=ocp.args.JsonSave(data)),
                       metrics=metrics, force=force)
  if saved:
    logging.info("Checkpoint of step %d started (async).", step)
  return saved


def check_resume_record(record: dict, config, directory) -> None:
  """Refuses a resume whose seed or RESUME_SETTINGS differ from the checkpoint's; warns on a new
  batch size.

  The noise, timesteps, label dropout and data order are functions of (seed, step), so another
  seed would silently continue a different run; another batch size moves the data position.
  """
  seed = record.get("data_seed")
  if seed is not None and int(seed) != int(config.seed):
    raise ValueError(
        f"The checkpoints in {directory} were trained with seed {int(seed)}, this config has "
        f"seed {int(config.seed)}. Resume with --config.seed={int(seed)}, or train in a new "
        "--workdir.")
  saved, ours = record.get("settings") or {}, run_settings(config)
  keys = [k for k in ours if k in saved and saved[k] != ours[k]]
  if keys:
    differ = "; ".join(f"{k}: checkpoint {saved[k]!r}, config {ours[k]!r}" for k in keys)
    passes = " ".join(f"--config.{k}={saved[k]}" for k in keys)
    raise ValueError(
        f"The checkpoints in {directory} were trained with other settings ({differ}): "
        f"resuming would continue a different run. Resume with {passes}, or train in a new "
        "--workdir.")
  saved_loader, ours = record.get("loader") or {}, loader_record(config)
  changed = [k for k in ("name", "process_count", "shuffle_buffer")
             if k in saved_loader and saved_loader[k] != ours[k]
             and (k == "name" or ours["name"] == "tfdata")]  # grain's order has no such terms.
  if changed:
    logging.warning(
        "Resuming with another input order (%s): the checkpoints in %s were read with %s. "
        "Training goes on from the same number of examples consumed, but the data order is no "
        "longer that of one uninterrupted run.",
        ", ".join(f"{k}: checkpoint {saved_loader[k]!r}, now {ours[k]!r}" for k in changed),
        directory, saved_loader)
  batch = record.get("batch_size")
  if batch is not None and int(batch) != int(config.training.batch_size):
    logging.warning(
        "Resuming with training.batch_size=%d; the checkpoints in %s used %d. Training goes on, "
        "but the data order is no longer that of one uninterrupted run.",
        int(config.training.batch_size), directory, int(batch))


def data_start_step(record: dict, step: int, batch_size: int) -> int:
  """The loader's start batch after a restore: the examples the checkpoint's record says were
  consumed, in batches of `batch_size` (the step itself with an unchanged batch size, or a record
  without the count)."""
  consumed = record.get("examples_consumed")
  if consumed is None:
    return int(step)
  return int(consumed) // int(batch_size)


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings: what a sharded restore needs."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """(state, data record) of `step` (None = latest), laid out as `abstract_state` says."""
  step = _step_or_latest(manager, step)
  _check_fits(manager.directory, step, abstract_state)
  with _naming_a_mismatch(manager.directory, step):
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["data"] or {"step": step})


def _step_or_latest(manager: ocp.CheckpointManager, step: int | None) -> int:
  """`step`, or the latest one when None or negative; an error when there is no checkpoint."""
  if step is None or step < 0:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
  return step


def _mismatch_error(directory, step: int, detail: str) -> ValueError:
  """The error of a checkpoint that does not fit the config: names it and what to pass."""
  config_json = os.path.join(os.path.dirname(os.path.normpath(str(directory))), "config.json")
  hint = (f"the run's own config is {config_json}" if os.path.exists(config_json)
          else "use the config it was trained with")
  return ValueError(
      f"The checkpoint of step {step} in {directory} does not fit this config: its model (or, "
      "for a resume, its optimizer: training.grad_clip_norm, the schedule) differs from the "
      f"one that wrote it ({detail}). Pass the same --config overrides as the training run "
      f"({hint}), or train in a new --workdir.")


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes_by_path(tree) -> dict:
  return {tuple(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def _check_fits(directory, step: int, target) -> None:
  """Compares `target`'s array shapes with the checkpoint's metadata before any array is read.

  A restore that fails part way leaves orbax's reads finishing into a closed event loop, and
  their "Event loop is closed" tracebacks would bury the message; a misfit found in the
  metadata is reported without starting one. Without readable metadata the restore checks.
  """
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(str(directory)) / str(step) / "state")
    tree = getattr(metadata, "item_metadata", metadata)
    saved = _shapes_by_path(getattr(tree, "tree", tree))
  except Exception:  # noqa: BLE001 (another layout: the restore itself reports a misfit)
    return
  if not saved:
    return
  wanted = _shapes_by_path(target)
  missing = [".".join(k) for k in wanted if k not in saved]
  differ = [f"{'.'.join(k)}: checkpoint {saved[k]}, config {v}" for k, v in wanted.items()
            if k in saved and saved[k] != v]
  if missing or differ:
    parts = ([f"{len(differ)} arrays of other shapes, e.g. {differ[0]}"] if differ else []) + (
        [f"{len(missing)} arrays it lacks, e.g. {missing[0]}"] if missing else [])
    raise _mismatch_error(directory, step, "; ".join(parts))


@contextlib.contextmanager
def _naming_a_mismatch(directory, step: int):
  """Orbax's tree-structure and shape errors, re-raised naming the checkpoint and what to do."""
  try:
    yield
  except (ValueError, KeyError, TypeError) as e:
    detail = str(e).split(" To enable it")[0][:400]  # Not orbax's advice to pad or truncate.
    raise _mismatch_error(directory, step, f"{type(e).__name__}: {detail}") from e


def restore_params(config, workdir: str, step: int = -1, ema: bool = True):
  """Parameters (EMA by default) of a checkpoint, replicated over all devices of this job."""
  return restore_params_and_step(config, workdir, step, ema)[0]


def restore_params_and_step(config, workdir: str, step: int = -1, ema: bool = True):
  """(parameters, checkpoint step) of `step` (-1 = latest), replicated over all devices.

  A partial restore of the saved TrainState: the step and one parameter subtree are read, the
  rest (the other parameters, the optimizer state) is neither read nor described. The target is
  built from config.model alone, so sampling and evaluation need the training run's model
  settings but neither its optimizer settings nor the optimizer's memory.
  """
  from solar_ddpm_jax import sharding, unet
  mesh = sharding.create_mesh(config.mesh)
  key = "ema_params" if ema else "params"
  params = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))
  wanted = {"step": jax.ShapeDtypeStruct((), jnp.int32), key: params}
  target = abstract_with_shardings(wanted,
                                   jax.tree.map(lambda _: sharding.replicated(mesh), wanted))
  manager = create_manager(workdir, read_only=True)
  try:
    chosen = _step_or_latest(manager, step)
    _check_fits(manager.directory, chosen, target)
    with _naming_a_mismatch(manager.directory, chosen):
      restored = manager.restore(chosen, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))["state"]
  finally:
    manager.close()
  return restored[key], int(jax.device_get(restored["step"]))


def latest_step(workdir: str) -> int | None:
  """Step of the newest finished checkpoint of a workdir, None when there is none."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  manager = create_manager(workdir, read_only=True)
  try:
    return manager.latest_step()
  finally:
    manager.close()
