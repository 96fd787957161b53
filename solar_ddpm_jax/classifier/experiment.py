r"""The augmentation experiment: a flare classifier trained on real images only, with classical
rebalancing, and with generated images of the minority classes; F1 / TSS / HSS over seeds.

    python -m solar_ddpm_jax.main --config=configs/aia171.py:demo --workdir=/tmp/demo \
        --mode=augment_experiment

Splits are the dataset's time splits (train / validation / test, separated by a gap); every arm
is scored on the same real test split, and model selection uses the validation split only.
Writes <workdir>/augment_experiment/{results.json, results.md, f1_per_class.png, skill.png} and
the real-only classifier (first seed) to <workdir>/classifier.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from solar_ddpm_jax import dataset, input_pipeline, outputs, sample_set
from solar_ddpm_jax.classifier import metrics as metrics_lib
from solar_ddpm_jax.classifier import model as model_lib
from solar_ddpm_jax.classifier import train as train_lib

# "augmented" (the real images with the rebalanced arm's augmentation, no rebalancing) separates
# what rebalancing does from what the augmentation does; not in the default arms.
ARMS = ("real", "rebalanced", "synthetic", "augmented")
OUT_DIR = "augment_experiment"


def _time_range(arrays: dict) -> list[float]:
  t = np.asarray(arrays["time_unix_s"], np.float64)
  return [float(t.min()), float(t.max())] if t.size else [float("nan")] * 2


def load_splits(config) -> dict[str, dict]:
  """Train / validation / test arrays of the dataset's time splits (each at most
  data.max_real_examples examples, evenly in time); checks they do not overlap."""
  splits = {s: input_pipeline.load_split_arrays(config, s, config.classifier.label)
            for s in ("train", "validation", "test")}
  ranges = [_time_range(splits[s]) for s in ("train", "validation", "test")]
  for (_, end), (start, _) in zip(ranges[:-1], ranges[1:], strict=True):
    if not end < start:
      raise ValueError(f"Splits overlap in time ({ranges}); the experiment needs time splits.")
  return splits


def generate_synthetic(config, workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """N generated images per class of config.classifier.synthetic_classes, with their labels
  (flare class indices), from the diffusion checkpoint with the fast sampler."""
  from solar_ddpm_jax import sample
  cc = config.classifier
  source = cc.diffusion_checkpoint or workdir
  flare_labels = np.repeat(np.asarray(sample.parse_classes(cc.synthetic_classes), np.int32),
                           int(cc.num_synthetic_per_class))
  images = sample.generate(config, source, flare_labels, guidance_scale=cc.synthetic_guidance,
                           sampler=cc.synthetic_sampler, num_steps=int(cc.synthetic_steps),
                           seed=int(config.seed) + 1000)
  return np.asarray(images, np.float32), flare_labels


# The config.data settings that decide which frames a model trained on, what its classes mean
# (GOES flux and HEK policy) and how its pixels map to DN/s (outputs.SAMPLE_DATA_KEYS).
DIFFUSION_DATA_FIELDS = ("source", "train_end", "val_end", "split_gap_hours", "label",
                         "goes_scaling", "goes_tolerance_s", "goes_satellites", "hek_events",
                         "hek_scaling", "hek_min_class", "hek_window_minutes",
                         *outputs.SAMPLE_DATA_KEYS)
FORECAST_DATA_FIELDS = ("forecast_window_hours", "forecast_min_coverage")


def _comparable(data: dict, key: str):
  value = data.get(key)
  if key == "hek_events" and value:
    return os.path.basename(str(value))  # The same list, wherever this machine keeps it.
  if isinstance(value, list | tuple):
    return [float(v) if isinstance(v, int | float) else v for v in value]
  return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def check_diffusion_data(config, source: str) -> dict | None:
  """The diffusion run's data settings (from <source>/config.json), refused unless they match.

  A diffusion model trained with a later data.train_end, say, would generate images learned from
  the validation or test period: the synthetic arm would see the frames it is scored on. Returns
  None (with a warning) when the run wrote no config.json.
  """
  path = os.path.join(os.path.abspath(source), "config.json")
  if not os.path.exists(path):
    logging.warning("No %s: cannot check which data the diffusion model was trained on.", path)
    return None
  with open(path) as f:
    trained = json.load(f).get("data", {})
  ours = json.loads(config.data.to_json_best_effort())
  fields = DIFFUSION_DATA_FIELDS
  if "forecast" in str(ours.get("label")) or "forecast" in str(trained.get("label")):
    fields += FORECAST_DATA_FIELDS
  theirs = {k: trained.get(k) for k in fields}
  differ = {k: (theirs[k], ours.get(k)) for k in fields
            if _comparable(trained, k) != _comparable(ours, k)}
  if differ:
    listed = "; ".join(f"data.{k}: diffusion {a!r}, classifier {b!r}"
                       for k, (a, b) in differ.items())
    raise ValueError(
        f"The diffusion model in {source} was trained on other data than this experiment uses "
        f"({listed}). Its generated images could come from the validation or test period, or "
        "mean other classes: run the experiment with the diffusion run's data settings, or set "
        "classifier.diffusion_checkpoint to a model trained on these.")
  return theirs


def check_rebalancing(classifier_config) -> None:
  """The rebalanced arm takes one correction of the imbalance: oversampling or inverse-frequency
  weights, not both at once and not neither (it would be the augmented arm under another name)."""
  if not classifier_config.oversample and not classifier_config.class_weights:
    raise ValueError(
        "classifier.arms has 'rebalanced' but classifier.oversample and classifier.class_weights "
        "are both off: that arm would train exactly as 'augmented'. Set "
        "--config.classifier.oversample=True or --config.classifier.class_weights=True.")
  if classifier_config.oversample and classifier_config.class_weights:
    raise ValueError(
        "classifier.oversample and classifier.class_weights both correct the class imbalance; "
        "together they weight the rarest class by its inverse frequency twice over (X about 4x "
        "A on the demo data). Set --config.classifier.oversample=False to use loss weights.")


def _arm_data(arm: str, config, train_images, train_labels, synthetic):
  """(images, labels, train_classifier kwargs) of one arm."""
  cc = config.classifier
  num_classes = len(model_lib.class_names(cc.label))
  augment = dict(max_rotation_deg=float(cc.max_rotation_deg), flip_ew=bool(cc.flip_ew),
                 flip_ns=bool(cc.flip_ns))
  if arm == "real":
    return train_images, train_labels, {}
  if arm == "augmented":
    return train_images, train_labels, {"augment": augment}
  if arm == "rebalanced":
    kwargs = {"oversample": bool(cc.oversample), "augment": augment}
    if cc.class_weights:
      kwargs["class_weights"] = train_lib.class_weights_for(train_labels, num_classes)
    return train_images, train_labels, kwargs
  if arm == "synthetic":
    images, generated = synthetic
    labels = synthetic_targets(generated, dataset.label_field(config), cc.label)
    return (np.concatenate([train_images, images]), np.concatenate([train_labels, labels]), {})
  raise ValueError(f"Unknown arm {arm!r}; choose from {ARMS}.")


def synthetic_targets(generated, data_label: str, classifier_label: str) -> np.ndarray:
  """Classifier targets of generated images, from the classes they were generated for.

  The diffusion model's classes mean config.data.label. They give the classifier's target where
  the one determines the other: the same label; forecast_binary from forecast_class; and
  forecast_binary from flare classes M and X (the forecast window starts at the image, so its
  peak is at least the image-time class). Any other pair raises ValueError.
  """
  generated = np.asarray(generated, np.int32)
  if classifier_label == data_label:
    return generated
  if classifier_label == "forecast_binary":
    if data_label == "forecast_class" or (data_label == "flare_class" and np.all(generated >= 3)):
      return (generated >= 3).astype(np.int32)
    raise ValueError(
        "The synthetic arm cannot label images generated for flare classes below M with "
        "classifier.label='forecast_binary' (the image-time class does not tell the peak of the "
        "next hours): set classifier.synthetic_classes to M and X only.")
  raise ValueError(
      f"The diffusion model is conditioned on data.label={data_label!r}; its images cannot be "
      f"labelled for classifier.label={classifier_label!r}. Use the same label for both.")


def _save_judge(config, workdir: str, params, images, history) -> str:
  """Saves the real-only classifier where evaluation finds it: <workdir>/classifier."""
  path = os.path.join(workdir, "classifier")
  meta = train_lib.classifier_meta(config, input_shape=images.shape[1:], history=history)
  train_lib.save_classifier(path, params, meta)
  return path


def train_real_classifier(config, workdir: str) -> str:
  """Trains the real-only classifier (first seed) alone and saves it; the evaluation's judge and
  domain feature extractor. Returns its path."""
  cc = config.classifier
  splits = load_splits(config)
  ys = {s: train_lib.labels_of(a, cc.label) for s, a in splits.items()}
  _, params, history = train_lib.train_classifier(
      config, splits["train"]["image"], ys["train"], seed=int(cc.seeds[0]),
      val_images=splits["validation"]["image"], val_labels=ys["validation"],
      logdir=os.path.join(os.path.abspath(workdir), OUT_DIR, f"logs_real_{int(cc.seeds[0])}"))
  return _save_judge(config, os.path.abspath(workdir), params, splits["train"]["image"], history)


def augment_experiment(config, workdir: str) -> dict:
  """Runs every arm over every seed; writes the table, plots and JSON; returns the results."""
  workdir = os.path.abspath(workdir)
  cc = config.classifier
  names = model_lib.class_names(cc.label)
  out_dir = os.path.join(workdir, OUT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  unknown = [arm for arm in cc.arms if arm not in ARMS]
  if unknown:
    raise ValueError(f"Unknown classifier.arms {unknown}; choose from {ARMS}.")
  diffusion_data = None
  if "rebalanced" in cc.arms:
    check_rebalancing(cc)
  if "synthetic" in cc.arms:  # Before hours of training: can the generated images be labelled?
    from solar_ddpm_jax import sample
    synthetic_targets(sample.parse_classes(cc.synthetic_classes),
                      dataset.label_field(config), cc.label)
    diffusion_data = check_diffusion_data(config, cc.diffusion_checkpoint or workdir)
  splits = load_splits(config)
  ys = {s: train_lib.labels_of(a, cc.label) for s, a in splits.items()}
  synthetic = generate_synthetic(config, workdir) if "synthetic" in cc.arms else None

  runs: dict[str, list[dict]] = {}
  for arm in cc.arms:
    images, labels, kwargs = _arm_data(arm, config, splits["train"]["image"], ys["train"],
                                       synthetic)
    runs[arm] = []
    for seed in cc.seeds:
      logging.info("Classifier arm %s, seed %d: %d training images", arm, seed, len(labels))
      apply_fn, params, history = train_lib.train_classifier(
          config, images, labels, seed=int(seed), val_images=splits["validation"]["image"],
          val_labels=ys["validation"], logdir=os.path.join(out_dir, f"logs_{arm}_{seed}"),
          **kwargs)
      pred = train_lib.predict(apply_fn, params, splits["test"]["image"])
      report = metrics_lib.classification_report(ys["test"], pred, names)
      report.update(seed=int(seed), best_step=history["best_step"],
                    num_train_images=int(len(labels)))
      runs[arm].append(report)
      if arm == "real" and seed == cc.seeds[0]:
        _save_judge(config, workdir, params, images, history)

  results = {
      "label": cc.label, "class_names": list(names),
      # A split larger than data.max_real_examples is that many examples, evenly in time.
      "splits": {s: {"num_images": int(len(ys[s])),
                     "max_real_examples": dataset.max_real_examples(config.data),
                     "class_counts": np.bincount(ys[s], minlength=len(names)).tolist(),
                     "time_range_unix_s": _time_range(a)} for s, a in splits.items()},
      "chance": chance_scores(ys["train"], ys["test"], names),
      "arms": {arm: {"runs": r, "summary": metrics_lib.aggregate_over_seeds(r)}
               for arm, r in runs.items()},
      "settings": {"seeds": [int(s) for s in cc.seeds], "num_train_steps": int(cc.num_train_steps),
                   "num_synthetic_per_class": int(cc.num_synthetic_per_class),
                   "synthetic_classes": cc.synthetic_classes,
                   "synthetic_sampler": cc.synthetic_sampler,
                   "synthetic_steps": int(cc.synthetic_steps),
                   "synthetic_guidance": float(cc.synthetic_guidance),
                   **{f"synthetic_{k}": v
                      for k, v in sample_set.guidance_settings(config.sampling).items()},
                   "diffusion_checkpoint": cc.diffusion_checkpoint or workdir,
                   "diffusion_data": diffusion_data,
                   "split_gap_hours": float(config.data.split_gap_hours),
                   "forecast_labels_cross_split_gap": bool(
                       cc.label.startswith("forecast")
                       and dataset.warn_forecast_leakage(config.data)),
                   "data_source": config.data.source},
  }
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(markdown_table(results))
  plot_results(results, out_dir)
  logging.info("Augmentation experiment written to %s", out_dir)
  return results


def chance_scores(train_labels, test_labels, names) -> dict:
  """Reference scores: always the majority training class, and stratified random guessing."""
  majority = np.full_like(test_labels, np.bincount(train_labels).argmax())
  rng = np.random.default_rng(0)
  prior = np.bincount(train_labels, minlength=len(names)) / len(train_labels)
  random = rng.choice(len(names), size=len(test_labels), p=prior)
  out = {}
  for name, pred in (("majority", majority), ("stratified_random", random)):
    rep = metrics_lib.classification_report(test_labels, pred, names)
    out[name] = {k: v for k, v in metrics_lib.scalar_scores(rep).items()
                 if not k.startswith(("precision_", "recall_"))}
  return out


def _fmt(s: dict) -> str:
  if np.isnan(s["mean"]):
    return "n/a"  # TSS/HSS of a test split without events (or without non-events).
  return f"{s['mean']:.3f} ± {s['std']:.3f}"


def markdown_table(results: dict) -> str:
  """Mean ± std over seeds of every arm: per-class F1, macro scores, TSS and HSS."""
  names = results["class_names"]
  arms = results["arms"]
  first = next(iter(arms.values()))["summary"]
  skill = [k for k in first if k.startswith(("TSS", "HSS"))]
  cols = [f"F1 {c}" for c in names] + ["macro F1", "macro P", "macro R", "accuracy"] + skill
  keys = [f"f1_{c}" for c in names] + ["macro_f1", "macro_precision", "macro_recall",
                                       "accuracy"] + skill
  lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for arm, res in arms.items():
    lines.append(f"| {arm} | " + " | ".join(_fmt(res["summary"][k]) for k in keys) + " |")
  for name, ref in results["chance"].items():
    lines.append(f"| chance: {name} | " + " | ".join(
        f"{ref[k]:.3f}" if k in ref else "" for k in keys) + " |")
  n = first["macro_f1"]["n"]
  counts = {s: v["class_counts"] for s, v in results["splits"].items()}
  header = (f"Flare classifier on the real test split, mean ± std over {n} seed(s). "
            f"Class counts (train / validation / test): {counts}. "
            f"Source: {results['settings']['data_source']} data. Macro scores average the "
            "classes that occur in the test truth (the same set for every arm).\n\n")
  return header + "\n".join(lines) + "\n"


def plot_results(results: dict, out_dir: str) -> None:
  """Bar charts: per-class F1 per arm, and TSS/HSS per arm (mean with std error bars)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = results["class_names"]
  arms = list(results["arms"])
  synthetic_tag = " (synthetic data)" if results["settings"]["data_source"] == "synthetic" else ""
  width = 0.8 / max(len(arms), 1)
  for fname, keys, labels, ylabel in (
      ("f1_per_class.png", [f"f1_{c}" for c in names] + ["macro_f1"], list(names) + ["macro"],
       "F1"),
      ("skill.png", [k for k in results["arms"][arms[0]]["summary"]
                     if k.startswith(("TSS", "HSS"))], None, "score")):
    if not keys:
      continue
    labels = labels or keys
    fig, ax = plt.subplots(figsize=(1.2 * len(keys) + 2, 3.5))
    x = np.arange(len(keys))
    for i, arm in enumerate(arms):
      s = results["arms"][arm]["summary"]
      ax.bar(x + (i - (len(arms) - 1) / 2) * width, [s[k]["mean"] for k in keys], width,
             yerr=[s[k]["std"] for k in keys], capsize=3, label=arm)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Flare classifier on the real test split{synthetic_tag}")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, fname), dpi=120)
    plt.close(fig)
