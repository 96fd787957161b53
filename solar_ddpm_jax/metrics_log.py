"""The training records: metrics.jsonl (process 0) beside the clu writer, and the metrics window.

A training record averages the train-step metrics of a window of steps; eval records hold the
validation loss. A resume cuts metrics.jsonl back to the resumed step, as those steps rerun.
"""

from __future__ import annotations

import json
import os

import jax
from absl import logging

from solar_ddpm_jax.train_step import check_finite, summarize_metrics

METRICS_FILE = "metrics.jsonl"  # Scalars also appended here (process 0), for reports.


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


def truncate_metrics(workdir: str, start_step: int) -> None:
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


class MetricsWindow:
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
