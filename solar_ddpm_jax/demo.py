"""The embedded default end to end: build the synthetic archive, train, sample, evaluate.

    python -m solar_ddpm_jax.main --config=configs/aia171.py:demo

writes into workdir/demo under the current directory (or the folder given by --workdir):
checkpoints, TensorBoard events, samples/ (grids, .npz, FITS), classifier/ (the real-only flare
classifier: the evaluation's judge and domain features), evaluation/ and report.md. The preset
reads no real files: data.manual_dir is refused unless --config.data.source=manual is given too.
"""

from __future__ import annotations

import importlib
import os
import time

import jax
import numpy as np
from absl import logging

from solar_ddpm_jax import sample, train
from solar_ddpm_jax.metrics_log import read_metrics


def plot_loss(records: list[dict], path: str) -> bool:
  """Loss (and eval loss) against step as a PNG; False when there is nothing to plot."""
  train_pts = [(r["step"], r["loss"]) for r in records if "loss" in r]
  eval_pts = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
  if not train_pts:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
  ax.plot(*zip(*train_pts, strict=True), label="train loss")
  if eval_pts:
    ax.plot(*zip(*eval_pts, strict=True), "o-", label="eval loss (EMA)")
  ax.set_xlabel("step")
  ax.set_ylabel("MSE of the predicted noise")
  ax.set_yscale("log")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return True


def _try_evaluation(config, workdir: str) -> str:
  """Runs the evaluation report when that part is installed and works; says what happened."""
  try:
    evaluate = importlib.import_module("solar_ddpm_jax.evaluation.report").evaluate
  except (ImportError, AttributeError) as e:
    return f"Evaluation not available ({e.__class__.__name__}: {e})."
  try:
    result = evaluate(config, workdir)
  except Exception as e:  # The demo must finish even when evaluation cannot run here.
    logging.exception("Evaluation failed; the demo report goes on without it.")
    return f"Evaluation failed ({e.__class__.__name__}: {e})."
  del result  # Written by the evaluation itself.
  return "Evaluation report: [evaluation/report.md](evaluation/report.md)."


def write_report(config, workdir: str, sample_dir: str, *, timings_s: dict,
                 evaluation_note: str) -> str:
  """report.md: loss curve, sample grid, timings and where everything is."""
  records = read_metrics(workdir)
  has_plot = plot_loss(records, os.path.join(workdir, "loss.png"))
  losses = [r["loss"] for r in records if "loss" in r]
  lines = [f"# solar-ddpm-jax demo ({config.preset} preset)", ""]
  if losses:
    lines += [f"Training loss fell from {losses[0]:.4f} (first log) to {losses[-1]:.4f} "
              f"(step {records[-1]['step']}) over {len(losses)} logs.", ""]
  if has_plot:
    lines += ["![loss](loss.png)", ""]
  grid = os.path.relpath(os.path.join(sample_dir, "grid.png"), workdir)
  lines += ["EMA samples, one row per GOES flare class (AIA 171 colormap):", "",
            f"![samples]({grid})", "",
            f"Samples (.npz, FITS in DN/s): `{os.path.relpath(sample_dir, workdir)}`.", "",
            "| stage | seconds |", "| --- | --- |"]
  lines += [f"| {k} | {v:.0f} |" for k, v in timings_s.items()]
  lines += ["", evaluation_note, ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def run_demo(config, workdir: str) -> str:
  """Builds the data (synthetic archive when absent), trains, samples, trains the real-only flare
  classifier, evaluates and writes report.md."""
  from solar_ddpm_jax import dataset
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  timings = {}
  t0 = time.time()
  dataset.build_dataset(config, workdir)
  timings["data"] = time.time() - t0
  t0 = time.time()
  train.train_and_evaluate(config, workdir)
  timings["train"] = time.time() - t0
  t0 = time.time()
  sample_dir = sample.sample_and_save(config, workdir)
  timings["sample"] = time.time() - t0
  t0 = time.time()
  from solar_ddpm_jax.classifier import experiment
  from solar_ddpm_jax.classifier import train as classifier_train
  if not os.path.isfile(os.path.join(workdir, "classifier", classifier_train.META_FILE)):
    experiment.train_real_classifier(config, workdir)  # The evaluation's judge and features.
  timings["classifier"] = time.time() - t0
  t0 = time.time()
  note = _try_evaluation(config, workdir)
  timings["evaluation"] = time.time() - t0
  if jax.process_index() != 0:
    return ""
  path = write_report(config, workdir, sample_dir, timings_s=timings, evaluation_note=note)
  logging.info("Demo done in %.0f s: %s", float(np.sum(list(timings.values()))), path)
  return path
