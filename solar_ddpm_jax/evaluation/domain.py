"""Domain features: the penultimate layer of the flare classifier trained on real images.

A Fréchet distance in this space needs no external weights. Two checkpoint kinds are read:
  * the project's classifier directory (solar_ddpm_jax.classifier.load_classifier), whose
    features function gives the penultimate activations;
  * an encoder file `encoder.npz` (params flattened "a/b/c", plus "meta/widths" and
    "meta/feature_dim"), read into `SmallEncoder`: any checkpointed encoder given by path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from solar_ddpm_jax.evaluation import extractors
from solar_ddpm_jax.evaluation import weights as weights_lib

ENCODER_FILE = "encoder.npz"
PREPROCESSING = "model-range [-1,1] images at the training resolution, no resize"


class SmallEncoder(nn.Module):
  """Conv stages (3x3, GELU, stride 2) -> global mean -> Dense feature layer."""
  widths: Sequence[int] = (16, 32)
  feature_dim: int = 32

  @nn.compact
  def __call__(self, x):
    for i, w in enumerate(self.widths):
      x = nn.gelu(nn.Conv(w, (3, 3), (2, 2), name=f"conv_{i}")(x))
    return nn.Dense(self.feature_dim, name="features")(jnp.mean(x, axis=(1, 2)))


def save_encoder(path: str, params, widths, feature_dim: int) -> str:
  """Writes a SmallEncoder checkpoint readable by `domain_extractor`."""
  os.makedirs(path, exist_ok=True)
  flat = weights_lib.flatten(params)
  flat["meta/widths"] = np.asarray(widths, np.int64)
  flat["meta/feature_dim"] = np.asarray(feature_dim, np.int64)
  out = os.path.join(path, ENCODER_FILE)
  np.savez(out, **flat)
  return out


def checkpoint_path(config, workdir: str) -> str:
  """config.evaluation.domain_checkpoint, or <workdir>/classifier."""
  return config.evaluation.domain_checkpoint or os.path.join(workdir, "classifier")


def _params_sha256(params) -> str:
  """sha256 over the parameter arrays (path, dtype, shape and bytes of each leaf, sorted by
  path): the same weights give the same digest however and whenever they were saved (an orbax
  checkpoint folder also holds timestamps and randomly named files, which a file digest would
  mix in)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for name, leaf in sorted((jax.tree_util.keystr(path), leaf) for path, leaf in leaves):
    a = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def _encoder_extractor(file: str) -> extractors.Extractor:
  with np.load(file, allow_pickle=False) as z:
    flat = {k: np.asarray(z[k]) for k in z.files}
  widths = tuple(int(w) for w in flat.pop("meta/widths"))
  feature_dim = int(flat.pop("meta/feature_dim"))
  model = SmallEncoder(widths, feature_dim)
  params = weights_lib.unflatten(flat)

  def fn(p, images):
    return model.apply({"params": p}, jnp.asarray(images, jnp.float32))
  return extractors.Extractor("domain_encoder", fn, params, file,
                              weights_lib.sha256_file(file), PREPROCESSING)


def _classifier_extractor(path: str) -> extractors.Extractor:
  from solar_ddpm_jax import classifier
  apply_fn, params, meta = classifier.load_classifier(path)
  features_fn = getattr(classifier, "features", None)
  if features_fn is None:
    raise RuntimeError("solar_ddpm_jax.classifier provides no `features(apply_fn, params, "
                       "images)` function for the penultimate layer.")

  def fn(p, images):
    return features_fn(apply_fn, p, images)
  name = "domain_classifier"
  if isinstance(meta, dict) and meta.get("label"):
    name += f"_{meta['label']}"
  return extractors.Extractor(name, fn, params, path, _params_sha256(params), PREPROCESSING)


def domain_extractor(path: str) -> extractors.Extractor:
  """Penultimate-layer features of the classifier (or encoder file) at `path`."""
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"domain features: no checkpoint at {path!r}. Train the real-only flare classifier "
        "(--mode=augment_experiment writes <workdir>/classifier) or pass an encoder with "
        "--config.evaluation.domain_checkpoint=/path (config.evaluation.domain_checkpoint).")
  encoder = path if path.endswith(".npz") else os.path.join(path, ENCODER_FILE)
  if os.path.isfile(encoder):
    return _encoder_extractor(encoder)
  return _classifier_extractor(path)


@extractors.register("domain")
def _build(config, workdir: str) -> extractors.Extractor:
  return domain_extractor(checkpoint_path(config, workdir))
