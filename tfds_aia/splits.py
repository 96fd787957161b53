"""Splits by time, never random: neighbouring AIA frames are nearly identical (random splits leak).

A frame at time t goes to
  train       t <  train_end - gap
  validation  train_end + gap <= t < val_end - gap
  test        t >= val_end + gap
and frames within `gap` of a boundary are dropped, so no two frames of different splits are closer
than 2 * gap (in time).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

SPLITS = ("train", "validation", "test")


def to_unix_s(iso: str) -> float:
  """ISO date or time (UTC) -> Unix seconds."""
  t = dt.datetime.fromisoformat(str(iso).replace("Z", ""))
  if t.tzinfo is None:
    t = t.replace(tzinfo=dt.UTC)
  return t.timestamp()


def assign_splits(time_unix_s, train_end: str, val_end: str, gap_hours: float) -> np.ndarray:
  """[N] split per frame: "train", "validation", "test", or "" (dropped near a boundary)."""
  t = np.asarray(time_unix_s, np.float64)
  b1, b2 = to_unix_s(train_end), to_unix_s(val_end)
  if b2 < b1:
    raise ValueError(f"val_end {val_end} is before train_end {train_end}.")
  gap = float(gap_hours) * 3600.0
  out = np.full(t.shape, "", dtype=object)
  out[t < b1 - gap] = "train"
  out[(t >= b1 + gap) & (t < b2 - gap)] = "validation"
  out[t >= b2 + gap] = "test"
  return out.astype(str)
