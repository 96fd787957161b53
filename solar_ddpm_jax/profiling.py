"""training.profile: a trace of a few training steps for TensorBoard's Profile tab."""

from __future__ import annotations

import os

import jax
from absl import logging

PROFILE_FIRST, PROFILE_STEPS = 3, 5  # training.profile: 5 steps after the first 3 (compiling).


class Profile:
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
