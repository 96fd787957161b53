"""--mode=export_features: features of a real split and/or a sample .npz, saved with settings.

Output: <features_dir>/{source}_{extractor}.npz with arrays `features` [N, D] float32 and `labels`
[N] int32, and the settings as 0-d string/int arrays: extractor, weights, weights_sha256,
preprocessing, count, source, image_shape, and `settings` (JSON: the data settings of the images
and, for samples, the sampling settings their .npz records).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import logging

from solar_ddpm_jax import outputs
from solar_ddpm_jax.evaluation import features as features_lib


def features_dir(config, workdir: str) -> str:
  """config.evaluation.features_dir or <workdir>/features."""
  return config.evaluation.features_dir or os.path.join(workdir, "features")


def load_samples(path: str, config=None) -> tuple[np.ndarray, np.ndarray, dict]:
  """Images [N, H, W, C] in [-1, 1], labels [N] and recorded settings ({} for a file without
  them, e.g. made elsewhere) of a sample .npz, read once. With `config`, a file sampled with
  other data settings than config.data is refused (check_samples_settings).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"samples file {path!r} does not exist "
                            "(config.evaluation.samples_npz).")
  with np.load(path, allow_pickle=False) as z:
    if "images" not in z.files or "labels" not in z.files:
      raise KeyError(f"{path} must hold 'images' [N,H,W,C] in [-1,1] and 'labels' [N]; "
                     f"it has {z.files}.")
    settings = json.loads(str(z["settings"])) if "settings" in z.files else {}
    if config is not None:
      check_samples_settings(path, settings, config)
    images = np.asarray(z["images"], np.float32)
    labels = np.asarray(z["labels"], np.int32)
  if images.ndim == 3:
    images = images[..., None]
  if len(images) != len(labels):
    raise ValueError(f"{path} holds {len(images)} images but {len(labels)} labels.")
  return images, labels, settings


def check_samples_settings(path: str, settings: dict, config) -> None:
  """A sample .npz made with other data settings than config.data is refused."""
  wanted = outputs.sample_data_settings(config.data)
  differ = []
  for key, want in wanted.items():
    if key not in settings:  # Files from before a key was recorded.
      continue
    got = settings[key]
    same = (got == want if isinstance(want, str)
            else np.shape(got) == np.shape(want) and bool(np.allclose(got, want)))
    if not same:
      differ.append(f"{key}={got!r} (config: {want!r})")
  if differ:
    raise ValueError(f"{path} was sampled with other data settings than this evaluation's: "
                     f"{', '.join(differ)}. Pass the --config.data.* settings of the run that "
                     "made it, or evaluate samples of this configuration.")


def load_real(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images and conditioning labels of a real split: at most data.max_real_examples of its
  examples, evenly in time (dataset.load_split_arrays)."""
  from solar_ddpm_jax import dataset
  label = dataset.label_field(config)
  arrays = dataset.load_split_arrays(config, split, label)
  return np.asarray(arrays["image"], np.float32), np.asarray(arrays[label], np.int32)


def save_features(path: str, feats, labels, extractor: features_lib.Extractor, *, source: str,
                  image_shape, settings: dict | None = None) -> str:
  """Writes one feature file with its settings (on process 0 of a multi-host job)."""
  import jax
  if jax.process_index() != 0:
    return path
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  s = extractor.settings()
  np.savez(path, features=np.asarray(feats, np.float32), labels=np.asarray(labels, np.int32),
           extractor=s["extractor"], weights=s["weights"], weights_sha256=s["weights_sha256"],
           preprocessing=s["preprocessing"], count=len(feats), source=source,
           image_shape=json.dumps(list(image_shape)), settings=json.dumps(settings or {}))
  return path


def load_features(path: str) -> dict:
  """A feature file as {features, labels, and the settings as Python values}."""
  with np.load(path, allow_pickle=False) as z:
    out = {k: z[k] for k in z.files}
  for k in ("extractor", "weights", "weights_sha256", "preprocessing", "source", "image_shape"):
    out[k] = str(out[k])
  out["count"] = int(out["count"])
  out["settings"] = json.loads(str(out["settings"])) if "settings" in out else {}
  return out


def export_features(config, workdir: str) -> dict:
  """Features of the real split (and of config.evaluation.samples_npz) for every extractor."""
  ev = config.evaluation
  data_settings = outputs.sample_data_settings(config.data)
  from solar_ddpm_jax import dataset
  real_settings = dict(data_settings, split=ev.real_split,
                       max_real_examples=dataset.max_real_examples(config.data))
  sources = {f"real_{ev.real_split}": lambda: (*load_real(config, ev.real_split), real_settings)}
  loaded = {}
  if ev.samples_npz:  # Read (and its data settings checked) before any features are computed.
    sources["samples"] = None
    loaded["samples"] = load_samples(ev.samples_npz, config)
  written = {}
  for name in features_lib.extractor_names(ev.extractors):
    extractor = features_lib.build_extractor(name, config, workdir)
    for source, load in sources.items():
      if source not in loaded:
        loaded[source] = load()
      images, labels, settings = loaded[source]
      feats = features_lib.extract(extractor, images, batch_size=int(ev.batch_size))
      path = os.path.join(features_dir(config, workdir), f"{source}_{name}.npz")
      written[f"{source}/{name}"] = save_features(path, feats, labels, extractor, source=source,
                                                  image_shape=images.shape[1:],
                                                  settings=settings)
      logging.info("Wrote %d %s features of %s to %s", len(feats), name, source, path)
  return written
