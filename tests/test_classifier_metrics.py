"""Classifier metrics against scikit-learn and hand-computed skill scores."""

import numpy as np
import pytest
from sklearn import metrics as skm

from solar_ddpm_jax.classifier import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_with_absent_classes(seed):
  rng = np.random.default_rng(seed)
  y_true = rng.choice([0, 1, 2, 4], size=60)  # Class 3 never occurs in the truth.
  y_pred = rng.choice([0, 1, 3, 4], size=60)  # Class 2 is never predicted.
  labels = list(range(5))
  names = list("ABCMX")
  rep = metrics.classification_report(y_true, y_pred, names)
  np.testing.assert_array_equal(rep["confusion_matrix"],
                                skm.confusion_matrix(y_true, y_pred, labels=labels))
  p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                   zero_division=0)
  np.testing.assert_allclose([rep["precision"][c] for c in names], p)
  np.testing.assert_allclose([rep["recall"][c] for c in names], r)
  np.testing.assert_allclose([rep["f1"][c] for c in names], f)
  np.testing.assert_array_equal([rep["support"][c] for c in names], s)
  # Macro over the classes of the truth (A, B, C, X), though M is predicted.
  assert rep["macro_classes"] == list("ABCX")
  np.testing.assert_allclose(rep["macro_f1"], skm.f1_score(y_true, y_pred, labels=[0, 1, 2, 4],
                                                           average="macro", zero_division=0))
  np.testing.assert_allclose(rep["accuracy"], skm.accuracy_score(y_true, y_pred))


@pytest.mark.parametrize("seed", [0, 1])
def test_macro_scores_skip_classes_absent_from_truth_and_predictions(seed):
  rng = np.random.default_rng(seed)
  y_true = rng.choice([0, 1, 2, 3], size=50)  # No X flares in this period...
  y_pred = rng.choice([0, 1, 2, 3], size=50)  # ...and none predicted.
  rep = metrics.classification_report(y_true, y_pred, list("ABCMX"))
  assert rep["macro_classes"] == list("ABCM")
  np.testing.assert_allclose(rep["macro_f1"], skm.f1_score(y_true, y_pred, average="macro"))
  np.testing.assert_allclose(rep["macro_precision"],
                             skm.precision_score(y_true, y_pred, average="macro"))
  np.testing.assert_allclose(rep["macro_recall"], skm.recall_score(y_true, y_pred, average="macro"))
  assert rep["f1"]["X"] == 0.0


def test_models_scored_on_one_split_share_the_macro_class_set():
  """Two models with the same number of errors: predicting a class the split lacks costs no more."""
  y_true = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 10)  # No X in this test period.
  never_x = y_true.copy()
  never_x[[0, 10, 20]] = [1, 2, 3]
  once_x = never_x.copy()
  once_x[20] = 4  # The same error, predicted as X.
  a = metrics.classification_report(y_true, never_x, list("ABCMX"))
  b = metrics.classification_report(y_true, once_x, list("ABCMX"))
  assert a["macro_classes"] == b["macro_classes"] == list("ABCM")
  np.testing.assert_allclose(a["macro_f1"], skm.f1_score(y_true, never_x, labels=[0, 1, 2, 3],
                                                         average="macro"))
  np.testing.assert_allclose(b["macro_f1"], skm.f1_score(y_true, once_x, labels=[0, 1, 2, 3],
                                                         average="macro", zero_division=0))
  assert abs(a["macro_f1"] - b["macro_f1"]) < 0.05  # Not 0.975 against 0.78 (an extra F1 = 0).


def test_tss_hss_hand_computed():
  # TP=3, FP=2, FN=1, TN=4: TSS = 3/4 - 2/6; HSS = 2(12-2)/((4)(5) + (5)(6)) = 20/50.
  assert metrics.tss(3, 2, 1, 4) == pytest.approx(0.75 - 1 / 3)
  assert metrics.hss(3, 2, 1, 4) == pytest.approx(0.4)
  assert metrics.tss(5, 0, 0, 5) == pytest.approx(1.0)
  assert metrics.hss(5, 0, 0, 5) == pytest.approx(1.0)
  assert metrics.tss(0, 5, 5, 0) == pytest.approx(-1.0)
  assert np.isnan(metrics.hss(0, 0, 0, 10))  # Undefined (no events, none forecast).
  assert np.isnan(metrics.tss(0, 3, 0, 7))  # No events in the truth: no skill to measure.
  assert np.isnan(metrics.tss(4, 0, 1, 0))  # No non-events.


def test_thresholds_from_multiclass_labels():
  names = list("ABCMX")
  y_true = np.array([0, 1, 2, 3, 4, 3, 1, 2])
  y_pred = np.array([0, 2, 2, 3, 3, 1, 1, 4])
  rep = metrics.classification_report(y_true, y_pred, names)
  # >= M: truth events at 3, 4, 5; predicted events at 3, 4, 7 -> TP=2, FN=1, FP=1, TN=4.
  assert rep["contingency>=M"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 4}
  assert rep["TSS>=M"] == pytest.approx(2 / 3 - 1 / 5)
  assert rep["HSS>=M"] == pytest.approx(2 * (8 - 1) / (3 * 5 + 3 * 5))
  # >= C: truth events 2,3,4,5,7; predicted 1,2,3,4,7 -> TP=4, FP=1, FN=1, TN=2.
  assert rep["contingency>=C"] == {"tp": 4, "fp": 1, "fn": 1, "tn": 2}


def test_aggregate_over_seeds():
  names = ["<M", ">=M"]
  reps = [metrics.classification_report([0, 1, 1, 0], [0, 1, 0, 0], names),
          metrics.classification_report([0, 1, 1, 0], [0, 1, 1, 0], names)]
  agg = metrics.aggregate_over_seeds(reps)
  assert agg["accuracy"]["mean"] == pytest.approx(0.875)
  assert agg["accuracy"]["std"] == pytest.approx(np.std([0.75, 1.0], ddof=1))  # Sample std.
  assert metrics.aggregate_over_seeds(reps[:1])["accuracy"] == {"mean": 0.75, "std": 0.0, "n": 1}
  assert agg["recall_>=M"]["mean"] == pytest.approx(0.75)
  # The binary forecast gets the >=M skill scores: TSS 1/2 - 0 and 1 - 0.
  assert agg["TSS>=M"]["mean"] == pytest.approx(0.75)
  assert agg["HSS>=M"]["mean"] == pytest.approx((2 * (1 * 2 - 0) / (2 * 3 + 1 * 2) + 1.0) / 2)
  assert "TSS>=C" not in agg
  assert "TSS>=M" not in metrics.classification_report([0, 1, 2], [0, 1, 2], list("abc"))


def test_labels_outside_the_classes_are_refused():
  with pytest.raises(ValueError, match="1 true labels outside 0..4"):
    metrics.confusion_matrix([0, -1, 2], [0, 1, 2], 5)
  with pytest.raises(ValueError, match="predictions outside 0..4"):
    metrics.confusion_matrix([0, 1, 2], [0, 5, 2], 5)
  with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
    metrics.confusion_matrix([0, 1, 2], [0, 1], 5)
