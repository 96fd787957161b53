"""How well the demo model follows its class label: one ablation arm per call, and the guidance
sweep of a trained model.

  python bench/conditioning_ablation.py arm --name balanced --seed 0 \
      --set data.class_balanced=True [--set KEY=VALUE ...] \
      [--preset demo] [--judge /tmp/judge] [--results bench/out/conditioning_ablation.jsonl]
  python bench/conditioning_ablation.py table [--results ...]
  python bench/conditioning_ablation.py sweep --workdir W [--judge /tmp/judge] \
      [--scales 0,1,2,3,5,7] [--figure bench/figures/guidance_sweep.png]
  python bench/conditioning_ablation.py signal [--preset demo] [--data_dir D] [--set KEY=VALUE]

`arm` trains the preset with the given settings and seed (config.seed; the sampling seed stays the
preset's), then measures the conditioning accuracy: the judge's accuracy on generated images of a
requested class, evaluation.num_samples_per_class per class, at each evaluation.guidance_scales
value. It skips the classifier augmentation experiment and the full evaluation report. It appends
one JSON row (settings, exact command, training wall time, accuracies) to the results file, so
every row of the table can be run again.

The judge is the real-only flare classifier of solar_ddpm_jax.classifier (trained on real frames
only, on the first classifier seed); --judge names its folder and it is trained there once when
absent, so every arm of an ablation is scored by the same judge. It is never trained on or tuned to
generated images.

`signal` measures how much a class label can tell the network about the training images: the
share of the per-pixel variance over images that the class means explain (at high noise the best
denoiser predicts the class mean, so this bounds what the label can lower the loss by), that
variance against the unit variance of the noise, and per-class statistics of the brightest pixels.

`table` prints the mean and standard deviation over seeds of each arm. `sweep` samples a trained
model at several guidance scales and writes per-class conditioning accuracy (= recall), precision
and FID in the judge's feature space against w as a figure and a JSON file next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

NAMES = ("A", "B", "C", "M", "X")
DEFAULT_RESULTS = os.path.join(REPO, "bench", "out", "conditioning_ablation.jsonl")


def _parse_value(text: str):
  """A --set value as Python data: numbers, booleans and tuples as literals, else a string."""
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def make_config(preset: str, settings: list[str], seed: int):
  """The preset's config with KEY=VALUE settings applied and config.seed = seed."""
  from configs import aia171
  config = aia171.get_config(preset)
  apply_settings(config, settings)
  config.seed = int(seed)
  return config


def apply_settings(config, settings: list[str]) -> None:
  """Sets each KEY=VALUE of `settings` in config (refusing keys the config lacks)."""
  for item in settings:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. data.class_balanced=True.")
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise SystemExit(f"--set {item!r}: the config has no setting {key}.")
    value = _parse_value(value)
    if isinstance(node[leaf], tuple) and not isinstance(value, tuple):
      value = (value,)
    node[leaf] = value


def judge(config, judge_dir: str):
  """(predict_fn, path, meta) of the real-only classifier in judge_dir/classifier, trained there
  first when absent (on real frames only)."""
  from solar_ddpm_jax.classifier import experiment
  from solar_ddpm_jax.classifier import train as classifier_train
  path = os.path.join(judge_dir, "classifier")
  if not os.path.isfile(os.path.join(path, classifier_train.META_FILE)):
    experiment.train_real_classifier(config, judge_dir)
  apply_fn, params, meta = classifier_train.load_classifier(path)
  return (lambda images: np.asarray(classifier_train.predict(apply_fn, params, images))), path, meta


def requested_labels(config) -> np.ndarray:
  n = int(config.evaluation.num_samples_per_class)
  return np.repeat(np.arange(len(NAMES), dtype=np.int32), n)


def conditioning_rows(config, workdir: str, predict_fn, scales) -> dict:
  """{w: {"all": accuracy, "A": recall of A, ...}} of the judge on generated images."""
  from solar_ddpm_jax import sample
  from solar_ddpm_jax.evaluation import report
  labels = requested_labels(config)
  samples = {float(w): (sample.generate(config, workdir, labels, guidance_scale=float(w),
                                        seed=int(config.sampling.seed)), labels) for w in scales}
  return report.conditioning_accuracy(config, workdir, predict_fn, samples)


def run_arm(args) -> dict:
  from solar_ddpm_jax import input_pipeline, sample_set, train
  config = make_config(args.preset, args.set, args.seed)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  workdir = args.workdir or os.path.join("/tmp", "conditioning_ablation",
                                         f"{args.name}_s{args.seed}")
  if os.path.exists(os.path.join(workdir, "checkpoints")):
    raise SystemExit(f"{workdir} already holds a run: give another --workdir or delete it.")
  input_pipeline.build_dataset(config)
  t0 = time.time()
  train.train_and_evaluate(config, workdir)
  train_s = time.time() - t0
  predict_fn, judge_path, _ = judge(config, args.judge)
  t0 = time.time()
  accuracy = conditioning_rows(config, workdir, predict_fn, config.evaluation.guidance_scales)
  row = dict(arm=args.name, seed=int(args.seed), preset=args.preset, settings=list(args.set),
             data_dir=config.data.data_dir, judge=judge_path, workdir=workdir,
             train_s=round(train_s, 1), sample_s=round(time.time() - t0, 1),
             accuracy=accuracy, created_unix_s=time.time(),
             **sample_set.guidance_settings(config.sampling), command=command_line())
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results, "a") as f:
    f.write(json.dumps(row) + "\n")
  print(json.dumps(row, indent=1))
  return row


def summarize(rows: list[dict]) -> list[dict]:
  """Mean and standard deviation (ddof 1) over seeds of each arm (same name, settings, data)."""
  groups: dict = {}
  for r in rows:
    key = (r["arm"], json.dumps(r["settings"]), r.get("data_dir", ""),
           json.dumps(r.get("guidance_interval", [])))
    groups.setdefault(key, []).append(r)
  out = []
  for (arm, settings, data_dir, interval), rs in groups.items():
    entry = dict(arm=arm, settings=json.loads(settings), data_dir=data_dir, seeds=len(rs),
                 guidance_interval=json.loads(interval),
                 train_s=float(np.mean([r["train_s"] for r in rs])))
    for w in rs[0]["accuracy"]:
      for name in ("all", *NAMES):
        values = np.array([r["accuracy"][w][name] for r in rs if w in r["accuracy"]])
        entry[f"w{w}_{name}"] = (float(values.mean()),
                                 float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    out.append(entry)
  return out


def read_rows(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def print_table(args) -> None:
  entries = summarize(read_rows(args.results))
  print("| arm | settings | guidance interval | seeds | w=0 all | w=3 all | w=3 M | w=3 X "
        "| train s (mean) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  fmt = lambda e, k: f"{e[k][0]:.3f} ± {e[k][1]:.3f}" if k in e else "-"
  for e in entries:
    interval = "({:g}, {:g})".format(*e["guidance_interval"]) if e["guidance_interval"] else "all"
    print(f"| {e['arm']} | {' '.join(e['settings']) or '(preset)'} | {interval} | {e['seeds']} | "
          f"{fmt(e, 'w0_all')} | {fmt(e, 'w3_all')} | {fmt(e, 'w3_M')} | {fmt(e, 'w3_X')} | "
          f"{e['train_s']:.0f} |")


def sweep_scores(pred: np.ndarray, labels: np.ndarray) -> dict:
  """Per class recall (= conditioning accuracy of that class) and precision of the judge's
  predictions `pred` of generated images of requested `labels`, and the overall accuracy."""
  out = {"all": float(np.mean(pred == labels))}
  for i, name in enumerate(NAMES):
    asked, said = labels == i, pred == i
    out[f"recall_{name}"] = float(np.mean(pred[asked] == i)) if asked.any() else float("nan")
    out[f"precision_{name}"] = (float(np.mean(labels[said] == i)) if said.any()
                                else float("nan"))
  # Rows: requested (or true) class, columns: the judge's class.
  out["confusion"] = np.bincount(labels * len(NAMES) + pred, minlength=len(NAMES) ** 2
                                 ).reshape(len(NAMES), len(NAMES)).tolist()
  return out


def run_sweep(args) -> dict:
  from solar_ddpm_jax import input_pipeline, sample, sample_set
  from solar_ddpm_jax.classifier import train as classifier_train
  from solar_ddpm_jax.evaluation import fid as fid_lib
  with open(os.path.join(args.workdir, "config.json")) as f:
    recorded = json.load(f)
  config = make_config(recorded.get("preset", "demo"), [], int(recorded.get("seed", 0)))
  _update(config, recorded)
  apply_settings(config, args.set)  # After the run's own settings: --set wins.
  predict_fn, judge_path, _ = judge(config, args.judge)
  apply_fn, params, _ = classifier_train.load_classifier(judge_path)
  real = input_pipeline.load_split_arrays(config, "test")
  real_features = np.asarray(classifier_train.features(apply_fn, params, real["image"]))
  labels = requested_labels(config)
  scales = [float(s) for s in args.scales.split(",")]
  judge_real = sweep_scores(predict_fn(real["image"]), np.asarray(real["flare_class"]))
  print("judge on real test images", json.dumps(judge_real))
  result = {"workdir": args.workdir, "judge": judge_path, "scales": scales, "rows": {},
            "judge_real": judge_real,
            **sample_set.guidance_settings(config.sampling),
            "brightness_real": brightness(real["image"], np.asarray(real["flare_class"])),
            "command": command_line()}
  for w in scales:
    images = sample.generate(config, args.workdir, labels, guidance_scale=w,
                             seed=int(config.sampling.seed))
    row = sweep_scores(predict_fn(images), labels)
    row["brightness"] = brightness(images, labels)
    fake_features = np.asarray(classifier_train.features(apply_fn, params, images))
    row["fid_all"] = float(fid_lib.fid(real_features, fake_features))
    for i, name in enumerate(NAMES):
      r, g = real_features[real["flare_class"] == i], fake_features[labels == i]
      row[f"fid_{name}"] = float(fid_lib.fid(r, g)) if min(len(r), len(g)) >= 2 else float("nan")
    result["rows"][f"{w:g}"] = row
    print(f"w={w:g}", json.dumps(row))
  plot_sweep(result, args.figure)
  with open(os.path.splitext(args.figure)[0] + ".json", "w") as f:
    json.dump(result, f, indent=1)
  return result


def command_line() -> str:
  """This process's command line, quoted to be run again."""
  return " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])


def _update(config, recorded: dict) -> None:
  """Sets the config's settings to a run's recorded config.json values (fields it still has)."""
  for key, value in recorded.items():
    if key not in config:
      continue
    if isinstance(value, dict):
      _update(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) else value


def plot_sweep(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ws = [float(w) for w in result["rows"]]
  rows = list(result["rows"].values())
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
  for name in NAMES:
    axes[0].plot(ws, [r[f"recall_{name}"] for r in rows], "o-", label=name)
    axes[1].plot(ws, [r[f"precision_{name}"] for r in rows], "o-", label=name)
    axes[2].plot(ws, [r[f"fid_{name}"] for r in rows], "o-", label=name)
  axes[0].plot(ws, [r["all"] for r in rows], "k--", lw=2, label="all (accuracy)")
  axes[2].plot(ws, [r["fid_all"] for r in rows], "k--", lw=2, label="all")
  titles = ("conditioning accuracy (judge recall)", "judge precision on generated",
            "FID, judge features (vs real test)")
  for ax, title in zip(axes, titles, strict=True):
    ax.set_xlabel("guidance scale w")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  axes[2].set_yscale("log")
  axes[0].set_ylim(0, 1.02)
  axes[1].set_ylim(0, 1.02)
  axes[0].legend(fontsize=8)
  from solar_ddpm_jax.sample_set import guidance_note
  steps = "" if result.get("guidance_interval") else " at every step"
  fig.suptitle(f"{result['workdir']}: guided{steps}{guidance_note(result)}", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def _top4(x: np.ndarray) -> np.ndarray:
  """Mean of each row's 4 largest values (the flare kernel of a flattened image)."""
  return np.sort(x, 1)[:, -4:].mean(1)


def class_signal(images: np.ndarray, labels: np.ndarray, num_classes: int = 5) -> dict:
  """Per-pixel variance over images (mean over pixels), the fraction of it between class means,
  and per class: count, mean of the 4 brightest pixels, fraction of pixels above 0.9 ([-1, 1])."""
  x = images.reshape(len(images), -1).astype(np.float64)
  mu = x.mean(0)
  total = float(((x - mu) ** 2).sum(1).mean())
  between = 0.0
  per_class = {}
  top4 = _top4(x)
  for k in range(num_classes):
    sel = labels == k
    if not sel.any():
      continue
    between += float(sel.mean() * ((x[sel].mean(0) - mu) ** 2).sum())
    per_class[NAMES[k]] = dict(count=int(sel.sum()), top4_mean=float(top4[sel].mean()),
                               top4_std=float(top4[sel].std()),
                               bright_fraction=float((x[sel] > 0.9).mean()))
  return dict(pixel_variance=total / x.shape[1], between_class_fraction=between / total,
              per_class=per_class)


def brightness(images: np.ndarray, labels: np.ndarray) -> dict:
  """Per class: the mean over images of the 4 brightest pixels (the flare kernel) and of every
  pixel (the disc and its active regions), in [-1, 1] units."""
  x = images.reshape(len(images), -1).astype(np.float64)
  top4, mean = _top4(x), x.mean(1)
  return {NAMES[k]: dict(top4=float(top4[labels == k].mean()), mean=float(mean[labels == k].mean()))
          for k in range(len(NAMES)) if (labels == k).any()}


def run_signal(args) -> dict:
  from solar_ddpm_jax import input_pipeline
  config = make_config(args.preset, args.set, 0)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  input_pipeline.build_dataset(config)
  split = input_pipeline.load_split_arrays(config, "train")
  result = class_signal(split["image"], split["flare_class"])
  print(json.dumps(result, indent=1))
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  arm = sub.add_parser("arm", help="train one arm and append its conditioning accuracy")
  arm.add_argument("--name", required=True)
  arm.add_argument("--seed", type=int, default=0)
  arm.add_argument("--preset", default="demo")
  arm.add_argument("--set", action="append", default=[], help="KEY=VALUE config setting")
  arm.add_argument("--data_dir", default="", help="TFDS data dir (default: the preset's)")
  arm.add_argument("--workdir", default="")
  arm.add_argument("--judge", default="/tmp/conditioning_ablation/judge")
  arm.add_argument("--results", default=DEFAULT_RESULTS)
  table = sub.add_parser("table", help="mean and spread over seeds of each arm")
  table.add_argument("--results", default=DEFAULT_RESULTS)
  sweep = sub.add_parser("sweep", help="guidance sweep of a trained model, as a figure")
  sweep.add_argument("--workdir", required=True)
  sweep.add_argument("--set", action="append", default=[], help="KEY=VALUE config setting")
  sweep.add_argument("--judge", default="/tmp/conditioning_ablation/judge")
  sweep.add_argument("--scales", default="0,1,2,3,5,7")
  sweep.add_argument("--figure", default=os.path.join(REPO, "bench", "figures",
                                                      "guidance_sweep.png"))
  signal = sub.add_parser("signal", help="how much the class label explains of the images")
  signal.add_argument("--preset", default="demo")
  signal.add_argument("--set", action="append", default=[], help="KEY=VALUE config setting")
  signal.add_argument("--data_dir", default="", help="TFDS data dir (default: the preset's)")
  args = parser.parse_args(argv)
  if args.command == "signal":
    run_signal(args)
  elif args.command == "arm":
    run_arm(args)
  elif args.command == "table":
    print_table(args)
  else:
    run_sweep(args)


if __name__ == "__main__":
  main()
