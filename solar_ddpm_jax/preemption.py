"""Preemption: a SIGTERM is recorded, and the loop saves a checkpoint and exits with Preempted."""

from __future__ import annotations

import signal

import jax
import numpy as np
from absl import logging

SIGTERM_SYNC_STEPS = 100  # Multi-process: SIGTERM is agreed on at log steps, or this often.


class Preempted(SystemExit):
  """Raised after the checkpoint that a SIGTERM asked for is on disk."""


class SigtermFlag:
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
