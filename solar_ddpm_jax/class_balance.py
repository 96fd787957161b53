"""Class-weighted example sampling for the training input.

M and X frames are rare (a few percent of an AIA archive), so a batch drawn by frequency shows the
network few of them and the class embedding learns little about what sets them apart. With
per-class weights w_k an example of class k is drawn with probability proportional to
w_k / n_k (n_k: examples of class k), so class k makes up w_k / sum(w) of the batches on
average; equal weights draw every class equally often.

The functions take labels and a numpy Generator and know nothing about files or batches, so the
in-memory input pipeline (input_pipeline.epoch_order) and a streaming loader can draw the same way.
"""

from __future__ import annotations

import numpy as np


def class_weights(data_config, num_classes: int) -> np.ndarray | None:
  """Per-class sampling weights [num_classes] of config.data, or None to draw by frequency.

  data.class_weights (one weight per class, A..X) when given; else equal weights when
  data.class_balanced is True; else None.
  """
  weights = tuple(data_config.class_weights or ())
  if weights:
    weights = np.asarray(weights, np.float64)
    if weights.shape != (num_classes,) or not np.all(np.isfinite(weights)) or np.any(
        weights < 0) or weights.sum() <= 0:
      raise ValueError(f"data.class_weights={tuple(weights.tolist())} must be {num_classes} "
                       "finite weights >= 0 (one per class), not all 0.")
    return weights
  if bool(data_config.class_balanced):
    return np.ones(num_classes, np.float64)
  return None


def example_probabilities(labels, weights) -> np.ndarray:
  """Probability [N] of drawing each example: w_k / n_k for an example of class k, normalised.

  Classes without examples are left out (their weight goes to the classes present); classes with
  weight 0 are never drawn.
  """
  labels = np.asarray(labels)
  weights = np.asarray(weights, np.float64)
  if labels.size and (labels.min() < 0 or labels.max() >= len(weights)):
    raise ValueError(f"Labels {sorted(set(labels.tolist()))} outside 0..{len(weights) - 1}: "
                     f"{len(weights)} class weights.")
  counts = np.bincount(labels, minlength=len(weights))
  per_example = weights[labels] / counts[labels]
  total = per_example.sum()
  if not total > 0:
    raise ValueError("Class weights give every example probability 0: no class with a weight "
                     "> 0 has examples.")
  return per_example / total


def draw(rng: np.random.Generator, labels, weights, size: int) -> np.ndarray:
  """`size` example indices drawn with replacement by `example_probabilities`."""
  return rng.choice(len(labels), size=int(size), p=example_probabilities(labels, weights))
