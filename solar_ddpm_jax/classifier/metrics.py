"""Classification and flare-forecasting scores: F1, precision, recall, confusion, TSS, HSS."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
  """Counts [num_classes, num_classes]: row = true class, column = predicted class."""
  y_true = np.asarray(y_true, np.int64).ravel()
  y_pred = np.asarray(y_pred, np.int64).ravel()
  if len(y_true) != len(y_pred):
    raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions.")
  for name, y in (("true labels", y_true), ("predictions", y_pred)):
    bad = (y < 0) | (y >= num_classes)
    if bad.any():  # np.add.at would count -1 as the last class.
      raise ValueError(f"{int(bad.sum())} {name} outside 0..{num_classes - 1} "
                       f"(e.g. {int(y[bad][0])}).")
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (y_true, y_pred), 1)
  return cm


def _safe_div(num, den):
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class (0 where undefined, as scikit-learn)."""
  tp = np.diag(cm).astype(np.float64)
  predicted = cm.sum(axis=0)
  support = cm.sum(axis=1)
  precision = _safe_div(tp, predicted)
  recall = _safe_div(tp, support)
  f1 = _safe_div(2 * tp, predicted + support)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def binary_contingency(y_true, y_pred, threshold: int) -> dict[str, int]:
  """TP/FP/FN/TN of the event "class index >= threshold" (e.g. 3 for >= M, 2 for >= C)."""
  t = np.asarray(y_true) >= threshold
  p = np.asarray(y_pred) >= threshold
  return {"tp": int(np.sum(t & p)), "fp": int(np.sum(~t & p)), "fn": int(np.sum(t & ~p)),
          "tn": int(np.sum(~t & ~p))}


def tss(tp, fp, fn, tn) -> float:
  """True skill statistic: TP/(TP+FN) - FP/(FP+TN); NaN (undefined) when the truth has no events
  or no non-events (a test period without >=M flares scores no skill, not -FP/(FP+TN))."""
  if tp + fn == 0 or fp + tn == 0:
    return float("nan")
  return float(tp / (tp + fn) - fp / (fp + tn))


def hss(tp, fp, fn, tn) -> float:
  """Heidke skill score 2(TP TN - FP FN) / ((TP+FN)(FN+TN) + (TP+FP)(FP+TN)); NaN if undefined
  (the denominator is 0 when the truth or the forecasts are all of one kind)."""
  tp, fp, fn, tn = (float(v) for v in (tp, fp, fn, tn))
  den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
  return float(2 * (tp * tn - fp * fn) / den) if den > 0 else float("nan")


def classification_report(y_true, y_pred, class_names, thresholds: dict[str, int] | None = None
                          ) -> dict:
  """All scores of one run as plain JSON-ready numbers.

  `thresholds` maps a name (">=M") to the first class index of the event; by default >=M and
  >=C for five GOES classes, >=M for the binary forecast (<M, >=M), none otherwise.
  """
  class_names = list(class_names)
  k = len(class_names)
  cm = confusion_matrix(y_true, y_pred, k)
  scores = per_class_scores(cm)
  # Macro averages over the classes that occur in the truth: one fixed set for every model
  # scored on a split, so arms, seeds and checkpoints compare. A class absent from the split
  # (no X flares in a test period) would otherwise count as F1 = 0 for exactly the models that
  # ever predict it. (scikit-learn's labels=None also counts predicted-only classes.)
  seen = cm.sum(axis=1) > 0
  macro = lambda v: float(np.mean(v[seen])) if seen.any() else 0.0
  report = {
      "class_names": class_names,
      "confusion_matrix": cm.tolist(),
      "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
      "macro_f1": macro(scores["f1"]),
      "macro_precision": macro(scores["precision"]),
      "macro_recall": macro(scores["recall"]),
      "macro_classes": [c for c, s in zip(class_names, seen, strict=True) if s],
  }
  for name in ("precision", "recall", "f1"):
    report[name] = {c: float(v) for c, v in zip(class_names, scores[name], strict=True)}
  report["support"] = {c: int(v) for c, v in zip(class_names, scores["support"], strict=True)}
  if thresholds is None:
    if k == 5:
      thresholds = {">=M": 3, ">=C": 2}
    elif class_names == ["<M", ">=M"]:
      thresholds = {">=M": 1}
    else:
      thresholds = {}
  for name, first in thresholds.items():
    table = binary_contingency(y_true, y_pred, first)
    report[f"TSS{name}"] = tss(**table)
    report[f"HSS{name}"] = hss(**table)
    report[f"contingency{name}"] = table
  return report


def scalar_scores(report: dict) -> dict[str, float]:
  """The flat scalar scores of a report: macro/accuracy/TSS/HSS and per-class F1/P/R."""
  out = {k: v for k, v in report.items() if isinstance(v, float)}  # Not the macro_classes list.
  for name in ("f1", "precision", "recall"):
    for c, v in report[name].items():
      out[f"{name}_{c}"] = v
  return out


def aggregate_over_seeds(reports: list[dict]) -> dict[str, dict[str, float]]:
  """Mean and sample std (ddof=1; 0 for one run) of every scalar score over runs (seeds)."""
  flats = [scalar_scores(r) for r in reports]
  keys = list(flats[0])
  std = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
  return {k: {"mean": float(np.mean([f[k] for f in flats])),
              "std": std([f[k] for f in flats]), "n": len(flats)} for k in keys}
