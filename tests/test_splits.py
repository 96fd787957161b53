"""Time splits: disjoint, ordered, and nothing within the gap of a boundary."""

import numpy as np

from tfds_aia import splits


def test_time_split_with_gap():
  t0 = splits.to_unix_s("2013-06-01")
  times = t0 + np.sort(np.random.default_rng(0).uniform(0, 2 * 365 * 86400, 5000))
  names = splits.assign_splits(times, "2014-01-01", "2014-07-01", 12.0)
  b1, b2, gap = splits.to_unix_s("2014-01-01"), splits.to_unix_s("2014-07-01"), 12 * 3600
  by_split = {s: set(times[names == s]) for s in splits.SPLITS}
  assert all(len(v) > 100 for v in by_split.values())
  assert not (by_split["train"] & by_split["validation"] or by_split["train"] & by_split["test"]
              or by_split["validation"] & by_split["test"])
  near = (np.abs(times - b1) < gap) | (np.abs(times - b2) < gap)
  assert near.any() and (names[near] == "").all()
  assert (names[~near] != "").all()
  assert times[names == "train"].max() < b1 - gap + 1e-6
  assert times[names == "validation"].min() >= b1 + gap
  assert times[names == "validation"].max() < b2 - gap
  assert times[names == "test"].min() >= b2 + gap
  # No frames of two different splits are closer than twice the gap.
  kept = names != ""
  order = np.argsort(times[kept])
  t, n = times[kept][order], names[kept][order]
  changes = n[1:] != n[:-1]
  assert (np.diff(t)[changes] >= 2 * gap).all()
