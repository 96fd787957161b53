"""--mode=evaluate: generated vs real images in feature space and in physical units.

Computes every number (`run_report`); `render` writes <workdir>/evaluation/report.json (every
number with its settings), report.md, and PNG plots (intensity histograms, power spectra, radial
profiles, a per-class sample grid, the metric table).

A part that cannot run here is recorded as {"skipped": reason}: UNAVAILABLE errors (no Inception
or CLIP weights file, one that cannot be read, no classifier checkpoint), a classifier of other
labels (ClassifierMismatch), too few images for a metric (fid.TooFewImages). Any other exception
is a bug and stops the evaluation.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import logging

from solar_ddpm_jax import FLARE_CLASSES, dataset, outputs, sample_set
from solar_ddpm_jax.evaluation import clusters, export, physics, render
from solar_ddpm_jax.evaluation import features as features_lib
from solar_ddpm_jax.evaluation import fid as fid_lib
from solar_ddpm_jax.evaluation import weights as weights_lib

# Errors that mean an optional input is not here (a weight file or classifier checkpoint missing,
# or a weight file that cannot be read): the part that needs it is skipped with the message.
UNAVAILABLE = (FileNotFoundError, weights_lib.WeightError)


class ClassifierMismatch(ValueError):
  """The classifier predicts other labels, or takes other images, than the samples have."""


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
  points = int(ev.fid_infinity_points)
  if points > 0:
    try:
      out["fid_inf"] = fid_lib.fid_infinity(real, fake, num_points=points, seed=seed)
    except fid_lib.TooFewImages as e:  # Too few generated images for the dimension.
      out["fid_inf"] = {"skipped": str(e)}
  out.update(fid_lib.kid(real, fake, subset_size=int(ev.kid_subset_size),
                         num_subsets=int(ev.kid_subsets), seed=seed))
  cap = int(ev.pr_max_count)
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
  q = float(config.evaluation.bright_quantile)
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
  path = config.evaluation.classifier_checkpoint or os.path.join(workdir, "classifier")
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
  """ClassifierMismatch unless the classifier predicts what the diffusion model is conditioned on.

  Conditioning accuracy compares the classifier's class with the requested label, so both must
  mean the same thing: a five-class classifier of the label the model is conditioned on
  (config.data.label: "flare_class" or "forecast_class"), on images of the same shape.
  """
  label, names = meta.get("label"), list(meta.get("class_names", []))
  wanted = dataset.label_field(config)
  if label != wanted or names != list(FLARE_CLASSES):
    raise ClassifierMismatch(
        f"the classifier predicts {label!r} ({names}), not the {wanted!r} classes "
        f"{list(FLARE_CLASSES)} the model is conditioned on (data.label); train it "
        f"with --config.classifier.label={wanted}")
  shape = meta.get("input_shape")
  if shape is not None and list(shape) != list(image_shape):
    raise ClassifierMismatch(f"the classifier takes images {list(shape)}, the samples are "
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


def config_sampling_settings(config) -> dict:
  """The sampling settings evaluate() samples with, as the report records them."""
  s = config.sampling
  return dict(sampler=s.sampler, num_steps=int(s.num_steps),
              guidance_scale=float(s.guidance_scale), seed=int(s.seed),
              **sample_set.guidance_settings(s))


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
      created_unix_s=time.time(), preset=config.preset,
      reference_split=ev.real_split, count_real=int(len(real_images)),
      # The real split's examples read: at most this many, evenly in time (0: all).
      max_real_examples=dataset.max_real_examples(config.data),
      count_generated=int(len(fake_images)), image_shape=list(real_images.shape[1:]),
      samples=ev.samples_npz or f"sampled from {workdir} (sampling settings below)",
      sampling=sampling, features={}, physics=None, conditioning_accuracy=None)
  real_idx, fake_idx = _class_names(real_labels), _class_names(fake_labels)
  for name in features_lib.extractor_names(ev.extractors):
    try:
      extractor = features_lib.build_extractor(name, config, workdir)
    except UNAVAILABLE as e:
      report["features"][name] = {"skipped": str(e)}
      logging.warning("Skipping %s features: %s", name, e)
      continue
    fr = features_lib.extract(extractor, real_images, batch_size=int(ev.batch_size))
    ff = features_lib.extract(extractor, fake_images, batch_size=int(ev.batch_size))
    entry = {"settings": dict(extractor.settings(), reference_split=ev.real_split,
                              count_real=len(fr), count_generated=len(ff),
                              max_real_examples=dataset.max_real_examples(config.data),
                              kid_subset_size=int(ev.kid_subset_size),
                              kid_subsets=int(ev.kid_subsets), pr_k=int(ev.pr_k),
                              num_clusters=int(ev.num_clusters), bootstrap=int(ev.bootstrap),
                              feature_dim=int(fr.shape[1]))}
    for cls in real_idx:
      r, f = real_idx[cls], fake_idx[cls]
      entry[cls] = dict(feature_metrics(fr[r], ff[f], ev), count_real=len(r),
                        count_generated=len(f))
    report["features"][name] = entry
  report["physics"] = _physics(config, real_images, real_labels, fake_images, fake_labels)
  report["conditioning_accuracy"] = _conditioning(config, workdir, fake, sampling, generate_fn)
  return report


def _conditioning(config, workdir: str, fake, sampling: dict, generate_fn) -> dict:
  """The conditioning accuracy entry: per guidance scale, or skipped without a fitting classifier.

  With `generate_fn`, each of config.evaluation.guidance_scales is sampled (the configured scale
  is `fake` itself); without it, `fake` is scored at the scale `sampling` records.
  """
  fake_images, fake_labels = fake
  try:
    predict_fn, path, meta = _classifier_predict(config, workdir)
    check_classifier_matches(meta, config, fake_images.shape[1:])
  except (*UNAVAILABLE, ClassifierMismatch) as e:
    logging.warning("Skipping the conditioning accuracy: %s", e)
    return {"skipped": f"{type(e).__name__}: {e}"}
  samples = {}
  if generate_fn is not None:
    labels = _requested_labels(config)
    for w in config.evaluation.guidance_scales:
      if float(w) == float(config.sampling.guidance_scale):
        samples[w] = (fake_images, fake_labels)  # generate_fn made them: same labels and seed.
      else:
        samples[w] = (generate_fn(labels, float(w)), labels)
  else:  # Keyed "unknown" for samples that record no guidance scale.
    w = sampling.get("guidance_scale")
    samples[None if w is None else float(w)] = (fake_images, fake_labels)
  return dict(classifier=path,
              per_guidance_scale=conditioning_accuracy(config, workdir, predict_fn, samples))


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
    render.write_report(report, out_dir, real, fake, config)
  return report
