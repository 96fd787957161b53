"""--mode=evaluate: generated vs real images in feature space and in physical units.

Writes <workdir>/evaluation/report.json (every number with its settings), report.md, and PNG plots
(intensity histograms, power spectra, radial profiles, a per-class sample grid, the metric table).
A missing optional piece (no Inception/CLIP weights, no classifier) is skipped with its reason.
"""

from __future__ import annotations

import json
import os
import time
import traceback

import numpy as np
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, input_pipeline, outputs
from solar_ddpm_jax.evaluation import clusters, export, physics
from solar_ddpm_jax.evaluation import features as features_lib
from solar_ddpm_jax.evaluation import fid as fid_lib


def _class_names(labels) -> dict[str, np.ndarray]:
  """{"all": all rows, "A": rows of class A, ...} as index arrays."""
  labels = np.asarray(labels)
  out = {"all": np.arange(len(labels))}
  for i, name in enumerate(FLARE_CLASSES):
    out[name] = np.flatnonzero(labels == i)
  return out


def feature_metrics(real, fake, ev, seed: int = 0) -> dict:
  """FID (+half-sampling interval, FID-infinity), KID (+jackknife s.e.), PRDC (+bootstrap CI),
  NDB/JS."""
  out = {}
  n_min = min(len(real), len(fake))
  if n_min < 2:
    return {"skipped": f"too few images (real {len(real)}, generated {len(fake)}; need >= 2)"}
  boot = int(ev.bootstrap)
  out["fid"] = fid_lib.fid(real, fake)
  if boot > 1 and n_min >= 4:
    out["fid_ci"] = fid_lib.subsample_interval(fid_lib.fid, real, fake, num_subsets=boot,
                                               seed=seed)
  points = int(ev.get("fid_infinity_points", 15))
  if points > 0:
    try:
      out["fid_inf"] = fid_lib.fid_infinity(real, fake, num_points=points, seed=seed)
    except ValueError as e:  # Too few generated images for the dimension.
      out["fid_inf"] = {"skipped": str(e)}
  out.update(fid_lib.kid(real, fake, subset_size=int(ev.kid_subset_size),
                         num_subsets=int(ev.kid_subsets), seed=seed))
  cap = int(ev.get("pr_max_count", 10_000))
  rng = np.random.default_rng(seed)
  r = real if len(real) <= cap else real[rng.choice(len(real), cap, replace=False)]
  f = fake if len(fake) <= cap else fake[rng.choice(len(fake), cap, replace=False)]
  if min(len(r), len(f)) >= 3:
    k = int(ev.pr_k)
    out.update(fid_lib.prdc(r, f, k=k))
    out["prdc_count_real"], out["prdc_count_fake"] = len(r), len(f)
    if boot > 1:
      cis = fid_lib.prdc_bootstrap_ci(r, f, k=k, num_resamples=boot, seed=seed)
      out.update({f"{name}_ci": ci for name, ci in cis.items()})
  if len(real) >= 2:
    out["clusters"] = clusters.ndb_js(real, fake, num_clusters=int(ev.num_clusters), seed=seed)
  return out


def _physics(config, real_images, real_labels, fake_images, fake_labels) -> dict:
  real_dn = outputs.to_dn_per_s(real_images, config.data)[..., 0]
  fake_dn = outputs.to_dn_per_s(fake_images, config.data)[..., 0]
  ceiling = float(max(real_dn.max(), fake_dn.max(), 1.0))  # Over-bright samples stay in view.
  q = float(config.evaluation.get("bright_quantile", 0.99))
  threshold = float(np.quantile(real_dn, q))
  out = {"settings": dict(units="DN/s per output pixel (outputs.to_dn_per_s with config.data)",
                          bright_threshold=f"quantile {q} of real pixels = {threshold:.4g} DN/s",
                          channel=int(config.data.channels[0]))}
  real_idx, fake_idx = _class_names(real_labels), _class_names(fake_labels)
  for name in real_idx:
    r, f = real_idx[name], fake_idx[name]
    if len(r) == 0 or len(f) == 0:
      out[name] = {"skipped": f"no images (real {len(r)}, generated {len(f)})"}
      continue
    out[name] = physics.compare(real_dn[r], fake_dn[f], ceiling=ceiling,
                                bright_threshold_dn=threshold)
  return out


def _generate(config, workdir, labels, guidance_scale):
  from solar_ddpm_jax import sample
  return sample.generate(config, workdir, labels, guidance_scale=guidance_scale,
                         seed=int(config.sampling.seed))


def _requested_labels(config) -> np.ndarray:
  from solar_ddpm_jax import sample
  classes = sample.parse_classes(config.sampling.classes)
  return np.repeat(np.asarray(classes, np.int32), int(config.evaluation.num_samples_per_class))


def _classifier_predict(config, workdir):
  """fn(images) -> predicted class indices, from the real-only classifier; raises if absent."""
  import jax.numpy as jnp

  from solar_ddpm_jax import classifier
  path = config.evaluation.get("classifier_checkpoint", "") or os.path.join(workdir, "classifier")
  if not hasattr(classifier, "load_classifier"):
    raise RuntimeError("solar_ddpm_jax.classifier.load_classifier is not available")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no classifier checkpoint at {path} "
                            "(config.evaluation.classifier_checkpoint)")
  apply_fn, params, meta = classifier.load_classifier(path)
  predict = getattr(classifier, "predict", None)

  def fn(images):
    if predict is not None:
      return np.asarray(predict(apply_fn, params, images))
    return np.asarray(jnp.argmax(apply_fn(params, jnp.asarray(images)), axis=-1))
  return fn, path, meta


def check_classifier_matches(meta: dict, config, image_shape) -> None:
  """Raises ValueError unless the classifier predicts what the diffusion model is conditioned on.

  Conditioning accuracy compares the classifier's class with the requested label, so both must
  mean the same thing: a five-class classifier of the label the model is conditioned on
  (config.data.label: "flare_class" or "forecast_class"), on images of the same shape.
  """
  label, names = meta.get("label"), list(meta.get("class_names", []))
  wanted = input_pipeline.label_field(config)
  if label != wanted or names != list(FLARE_CLASSES):
    raise ValueError(f"the classifier predicts {label!r} ({names}), not the {wanted!r} classes "
                     f"{list(FLARE_CLASSES)} the model is conditioned on (data.label); train it "
                     f"with --config.classifier.label={wanted}")
  shape = meta.get("input_shape")
  if shape is not None and list(shape) != list(image_shape):
    raise ValueError(f"the classifier takes images {list(shape)}, the samples are "
                     f"{list(image_shape)}")


def conditioning_accuracy(config, workdir, predict_fn, samples_by_scale: dict) -> dict:
  """Per requested class accuracy of the classifier on generated images, per guidance scale
  (keys "3", "0", ...; "unknown" for a None scale)."""
  del config, workdir
  out = {}
  for w, (images, labels) in samples_by_scale.items():
    pred = predict_fn(images)
    row = {"all": float(np.mean(pred == labels)), "count": int(len(labels))}
    for i, name in enumerate(FLARE_CLASSES):
      m = labels == i
      if m.any():
        row[name] = float(np.mean(pred[m] == i))
    out["unknown" if w is None else f"{float(w):g}"] = row
  return out


def _skip(reason) -> dict:
  return {"skipped": reason}


def config_sampling_settings(config) -> dict:
  """The sampling settings evaluate() samples with, as the report records them."""
  s = config.sampling
  return dict(sampler=s.sampler, num_steps=int(s.num_steps),
              guidance_scale=float(s.guidance_scale), seed=int(s.seed))


def run_report(config, workdir: str, real, fake, *, generate_fn=None,
               sampling: dict | None = None) -> dict:
  """All configured metrics of real (images, labels) vs generated (images, labels) -> report.

  `sampling`: how `fake` was made (a sample .npz's own settings); default config.sampling's.
  Without `generate_fn` the conditioning accuracy is that of `fake`, at its guidance scale.
  """
  ev = config.evaluation
  real_images, real_labels = real
  fake_images, fake_labels = fake
  sampling = dict(sampling) if sampling else config_sampling_settings(config)
  report = dict(
      created_unix_s=time.time(), preset=config.get("preset", ""),
      reference_split=ev.real_split, count_real=int(len(real_images)),
      count_generated=int(len(fake_images)), image_shape=list(real_images.shape[1:]),
      samples=ev.samples_npz or f"sampled from {workdir} (sampling settings below)",
      sampling=sampling, features={}, physics=None, conditioning_accuracy=None)
  real_idx, fake_idx = _class_names(real_labels), _class_names(fake_labels)
  for name in features_lib.extractor_names(ev.extractors):
    try:
      extractor = features_lib.build_extractor(name, config, workdir)
    except (FileNotFoundError, RuntimeError, ImportError, ValueError) as e:
      report["features"][name] = _skip(str(e))
      logging.warning("Skipping %s features: %s", name, e)
      continue
    fr = features_lib.extract(extractor, real_images, batch_size=int(ev.batch_size))
    ff = features_lib.extract(extractor, fake_images, batch_size=int(ev.batch_size))
    entry = {"settings": dict(extractor.settings(), reference_split=ev.real_split,
                              count_real=len(fr), count_generated=len(ff),
                              kid_subset_size=int(ev.kid_subset_size),
                              kid_subsets=int(ev.kid_subsets), pr_k=int(ev.pr_k),
                              num_clusters=int(ev.num_clusters), bootstrap=int(ev.bootstrap),
                              feature_dim=int(fr.shape[1]))}
    for cls in real_idx:
      r, f = real_idx[cls], fake_idx[cls]
      entry[cls] = dict(feature_metrics(fr[r], ff[f], ev), count_real=len(r),
                        count_generated=len(f))
    report["features"][name] = entry
  try:
    report["physics"] = _physics(config, real_images, real_labels, fake_images, fake_labels)
  except Exception as e:  # Physical units need the data settings; report rather than stop.
    report["physics"] = _skip(f"{type(e).__name__}: {e}")
  try:
    predict_fn, path, meta = _classifier_predict(config, workdir)
    check_classifier_matches(meta, config, fake_images.shape[1:])
    samples = {}
    if generate_fn is not None:
      labels = _requested_labels(config)
      for w in ev.guidance_scales:
        if float(w) == float(config.sampling.guidance_scale):
          samples[w] = (fake_images, fake_labels)  # generate_fn made them: same labels and seed.
        else:
          samples[w] = (generate_fn(labels, float(w)), labels)
    else:  # Keyed "unknown" for samples that record no guidance scale.
      w = sampling.get("guidance_scale")
      samples[None if w is None else float(w)] = (fake_images, fake_labels)
    report["conditioning_accuracy"] = dict(
        classifier=path, per_guidance_scale=conditioning_accuracy(config, workdir, predict_fn,
                                                                  samples))
  except Exception as e:
    report["conditioning_accuracy"] = _skip(f"{type(e).__name__}: {e}")
  return report


def evaluate(config, workdir: str) -> dict:
  """Samples (or reads config.evaluation.samples_npz), evaluates, writes report.json/.md + PNGs."""
  ev = config.evaluation
  import jax
  writer = jax.process_index() == 0  # Every process computes; the first one writes.
  out_dir = os.path.join(workdir, "evaluation")
  if writer:
    os.makedirs(out_dir, exist_ok=True)
  generate_fn = None
  if ev.samples_npz:  # Read (and its data settings checked) before anything else is done.
    images, labels, recorded = export.load_samples(ev.samples_npz, config)
    fake = (images, labels)
    # The .npz's own record of how it was sampled, not this config's sampling settings.
    sampling = {k: recorded[k] for k in recorded if k not in outputs.SAMPLE_DATA_KEYS}
    if not sampling:
      sampling = {"guidance_scale": None,
                  "note": "the .npz records no settings; how it was sampled is unknown"}
  else:
    def generate_fn(labels, w):
      return _generate(config, workdir, labels, w)
    labels = _requested_labels(config)
    fake = (generate_fn(labels, float(config.sampling.guidance_scale)), labels)
    sampling = config_sampling_settings(config)
    if writer:
      np.savez(os.path.join(out_dir, "samples.npz"), images=fake[0], labels=fake[1],
               settings=json.dumps(dict(sampling, **outputs.sample_data_settings(config.data))))
  real = export.load_real(config, ev.real_split)
  report = run_report(config, workdir, real, fake, generate_fn=generate_fn, sampling=sampling)
  if writer:
    write_report(report, out_dir, real, fake, config)
  return report


# --------------------------------------------------------------------------------- writing
def _fmt(x) -> str:
  return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def markdown(report: dict) -> str:
  """The short human-readable report."""
  lines = ["# Evaluation report", "",
           f"Preset `{report['preset']}`; {report['count_generated']} generated vs "
           f"{report['count_real']} real images of split `{report['reference_split']}`; "
           f"image shape {report['image_shape']}. Samples: {report['samples']}.", ""]
  for name, entry in report["features"].items():
    lines.append(f"## Features: {name}")
    if "skipped" in entry:
      lines += [f"Skipped: {entry['skipped']}", ""]
      continue
    s = entry["settings"]
    lines.append("Settings: " + "; ".join(f"{k}={v}" for k, v in s.items()))
    lines += ["", "| class | n real | n gen | FID [CI] | FID∞ | KID ± s.e. | precision | "
              "recall | density | coverage | NDB/K | JS |", "|" + "---|" * 12]
    for cls, m in entry.items():
      if cls == "settings":
        continue
      if "skipped" in m:
        lines.append(f"| {cls} | {m['count_real']} | {m['count_generated']} | "
                     f"skipped: {m['skipped']} |" + " |" * 8)
        continue
      ci = m.get("fid_ci")
      fid_s = _fmt(m["fid"]) + (f" [{ci['low']:.4g}, {ci['high']:.4g}]" if ci else "")
      c = m.get("clusters", {})
      k = m.get("k")  # Lowered for a class of fewer than pr_k + 1 images: another metric.
      k_s = f" (k={k})" if k is not None and k != s.get("pr_k") else ""
      lines.append(
          f"| {cls} | {m['count_real']} | {m['count_generated']} | {fid_s} | "
          f"{_fmt(m.get('fid_inf', {}).get('fid_inf'))} | {_fmt(m['kid'])} ± "
          f"{_fmt(m.get('kid_se'))} | {_fmt(m.get('precision'))}{k_s} | "
          f"{_fmt(m.get('recall'))} | {_fmt(m.get('density'))} | {_fmt(m.get('coverage'))} | "
          f"{_fmt(c.get('ndb_fraction'))} | {_fmt(c.get('js'))} |")
    lines.append("")
  phys = report["physics"]
  lines.append("## Physics (DN/s)")
  if "skipped" in phys:
    lines.append(f"Skipped: {phys['skipped']}")
  else:
    lines.append("Settings: " + "; ".join(f"{k}={v}" for k, v in phys["settings"].items()))
    lines += ["", "| class | W1 (DN/s) | brightness rel. diff | spectrum |dlog10| | "
              "slope real/gen | profile |dlog10| | bright area real/gen (px) |",
              "|" + "---|" * 7]
    for cls, p in phys.items():
      if cls == "settings":
        continue
      if "skipped" in p:
        lines.append(f"| {cls} | skipped: {p['skipped']} |" + " |" * 5)
        continue
      ps, ba = p["power_spectrum"], p["bright_area_px"]
      lines.append(
          f"| {cls} | {_fmt(p['wasserstein_dn_s'])} | "
          f"{_fmt(p['total_brightness_dn_s']['relative_difference'])} | "
          f"{_fmt(ps['mean_abs_log10_ratio'])} | {_fmt(ps['slope_real'])}/"
          f"{_fmt(ps['slope_fake'])} | {_fmt(p['radial_profile']['mean_abs_log10_ratio'])} | "
          f"{_fmt(ba['real_mean'])}/{_fmt(ba['fake_mean'])} |")
  lines += ["", "## Conditioning accuracy"]
  acc = report["conditioning_accuracy"]
  if acc is None or "skipped" in acc:
    lines.append(f"Skipped: {acc['skipped'] if acc else 'not run'}")
  else:
    lines += [f"Classifier (real images only): `{acc['classifier']}`", "",
              "| guidance w | all | " + " | ".join(FLARE_CLASSES) + " |", "|" + "---|" * 7]
    for w, row in acc["per_guidance_scale"].items():
      lines.append(f"| {w} | {_fmt(row['all'])} | "
                   + " | ".join(_fmt(row.get(c)) for c in FLARE_CLASSES) + " |")
  lines += ["", "Plots: histograms.png, spectra.png, profiles.png, samples_grid.png, "
            "metrics_table.png."]
  return "\n".join(lines) + "\n"


def _plots(report, out_dir, real, fake, config) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  written = []
  phys = report["physics"]
  if phys and "skipped" not in phys:
    classes = [c for c in phys if c != "settings" and "skipped" not in phys[c]]
    for fname, key, xkey, logx in (("histograms.png", "histogram", "bin_edges_dn_s", True),
                                   ("spectra.png", "power_spectrum", "k", True),
                                   ("profiles.png", "radial_profile", "r_over_half_size", False)):
      fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3), squeeze=False)
      for ax, cls in zip(axes[0], classes, strict=True):
        d = phys[cls][key]
        x = np.asarray(d[xkey])
        if key == "histogram":
          x = 0.5 * (x[1:] + x[:-1])
        ax.plot(x, d["real"], label="real")
        ax.plot(x, d["fake"], label="generated")
        ax.set_yscale("log")
        if logx:
          ax.set_xscale("log")
        ax.set_title(cls)
      axes[0][0].legend()
      fig.suptitle(f"{key.replace('_', ' ')} (DN/s)")
      fig.tight_layout()
      fig.savefig(os.path.join(out_dir, fname), dpi=80)
      plt.close(fig)
      written.append(fname)
  try:
    from solar_ddpm_jax import outputs
    images, labels = fake
    order = np.argsort(labels, kind="stable")
    outputs.save_class_grid(images[order], labels[order], os.path.join(out_dir,
                                                                       "samples_grid.png"),
                            wavelength_a=int(config.data.channels[0]))
    written.append("samples_grid.png")
  except Exception as e:  # A grid is a picture: never fails the report.
    logging.warning("No sample grid: %s", e)
  rows = []
  for name, entry in report["features"].items():
    if "skipped" in entry:
      continue
    m = entry.get("all", {})
    if "fid" in m:
      rows.append([name, f"{m['fid']:.3g}", f"{m['kid']:.3g}±{m.get('kid_se', float('nan')):.2g}",
                   _fmt(m.get("precision")), _fmt(m.get("recall")),
                   f"{entry['settings']['weights_sha256'][:10]}",
                   str(entry["settings"]["count_real"]), str(entry["settings"]["count_generated"])])
  if rows:
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.4 * len(rows)))
    ax.axis("off")
    ax.table(cellText=rows, colLabels=["extractor", "FID", "KID", "precision", "recall",
                                       "weights sha256", "n real", "n gen"], loc="center")
    ax.set_title(f"all classes; reference split {report['reference_split']}")
    fig.savefig(os.path.join(out_dir, "metrics_table.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append("metrics_table.png")
  return written


def write_report(report: dict, out_dir: str, real, fake, config) -> dict:
  """report.json, report.md and the plots in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  try:
    report["plots"] = _plots(report, out_dir, real, fake, config)
  except Exception:  # Plots are optional: record why they are missing.
    report["plots"] = _skip(traceback.format_exc(limit=2))
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1, default=float)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report))
  return report
