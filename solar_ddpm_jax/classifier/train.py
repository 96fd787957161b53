"""Training of the flare classifier on in-memory arrays, with the project's mesh/orbax/clu.

Batches are drawn on the host from numpy arrays (a split fits in memory at classifier sizes),
sharded over the mesh's batch axes and fed to one jitted train step. Model selection keeps the
parameters with the best validation macro F1; the test split is never seen here.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from solar_ddpm_jax import sharding
from solar_ddpm_jax.classifier import metrics as metrics_lib
from solar_ddpm_jax.classifier import model as model_lib

META_FILE = "meta.json"
PARAMS_DIR = "params"
CREATE_COMMAND = ("python -m solar_ddpm_jax.main --config=configs/aia171.py:demo "
                  "--workdir=<workdir> --mode=augment_experiment")


def labels_of(arrays: dict, label: str) -> np.ndarray:
  """Integer targets [N] of a split: flare or forecast class index, or forecast class >= M (0/1)."""
  if label in ("flare_class", "forecast_class"):
    return np.asarray(arrays[label], np.int32)
  if label == "forecast_binary":
    return (np.asarray(arrays["forecast_class"]) >= 3).astype(np.int32)
  raise ValueError(f"Unknown classifier label {label!r}: one of {model_lib.LABELS}.")


def make_apply_fn(model):
  """apply_fn(params, images, return_features=False) -> logits [B, K] or features [B, D]."""
  def apply_fn(params, images, return_features: bool = False):
    return model.apply({"params": params}, images, return_features=return_features)
  apply_fn.model = model
  return apply_fn


def augment_images(key, images, *, max_rotation_deg: float, flip_ew: bool, flip_ns: bool):
  """Sun-respecting augmentation of [B, H, W, C] images centred on the disc.

  Rotations are small and about the image centre (the disc centre after AIA level-1.5 and our
  preprocessing), filled with the off-disc value -1; no crops, so the limb is never cut.
  East-west flips mirror the rotation direction of the Sun and north-south flips swap the
  hemispheres (Joy's law, Hale polarity): both are optional, off by default.
  """
  b, h, w, _ = images.shape
  k_rot, k_ew, k_ns = jax.random.split(key, 3)
  angle = jnp.deg2rad(max_rotation_deg) * jax.random.uniform(k_rot, (b,), minval=-1.0, maxval=1.0)
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

  def rotate(image, theta):
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    src_y = cy + cos * (yy - cy) - sin * (xx - cx)
    src_x = cx + sin * (yy - cy) + cos * (xx - cx)
    channels = [jax.scipy.ndimage.map_coordinates(image[..., c], [src_y, src_x], order=1,
                                                  mode="constant", cval=-1.0)
                for c in range(image.shape[-1])]
    return jnp.stack(channels, axis=-1)

  out = jax.vmap(rotate)(images, angle) if max_rotation_deg > 0 else images
  if flip_ew:
    do = jax.random.bernoulli(k_ew, 0.5, (b, 1, 1, 1))
    out = jnp.where(do, out[:, :, ::-1], out)
  if flip_ns:
    do = jax.random.bernoulli(k_ns, 0.5, (b, 1, 1, 1))
    out = jnp.where(do, out[:, ::-1], out)
  return out


def class_weights_for(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Inverse-frequency weights [K] normalised to mean 1 over the present classes."""
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
  present = counts > 0
  weights[present] /= weights[present].mean()
  return weights.astype(np.float32)


def sampling_probabilities(labels: np.ndarray, oversample: bool) -> np.ndarray | None:
  """Per-example draw probabilities: uniform over classes when oversampling, else None."""
  if not oversample:
    return None
  counts = np.bincount(labels)
  p = 1.0 / counts[labels]
  return p / p.sum()


def _optimizer(cc, num_steps: int):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, float(cc.learning_rate), max(1, min(100, num_steps // 10)), max(num_steps, 2))
  return optax.adamw(schedule, weight_decay=float(cc.weight_decay))


def make_train_step(apply_fn, tx, *, augment: dict | None):
  """Pure train step (params, opt_state, images, labels, weights, key) -> (..., loss)."""
  def train_step(params, opt_state, images, labels, class_weights, key):
    if augment is not None:
      images = augment_images(key, images, **augment)

    def loss_fn(p):
      logits = apply_fn(p, images)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      w = class_weights[labels]
      return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1e-6)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return train_step


def predict_logits(apply_fn, params, images, *, batch_size: int = 256,
                   return_features: bool = False) -> np.ndarray:
  """Logits [N, K] (or penultimate features [N, D]) of images [N, H, W, C], in host batches."""
  fn = jax.jit(apply_fn, static_argnames="return_features")
  images = np.asarray(images, np.float32)
  out = [np.asarray(fn(params, jnp.asarray(images[i:i + batch_size]),
                       return_features=return_features))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict(apply_fn, params, images, *, batch_size: int = 256) -> np.ndarray:
  """Predicted class indices [N] of images [N, H, W, C] in [-1, 1]."""
  return np.argmax(predict_logits(apply_fn, params, images, batch_size=batch_size), axis=-1)


def features(apply_fn, params, images):
  """Penultimate-layer features [B, D] (global mean and max pools of the last stage) of images
  [B, H, W, C] in [-1, 1]; pure and jit-friendly (the evaluation traces it under shard_map)."""
  return apply_fn(params, jnp.asarray(images, jnp.float32), return_features=True)


def train_classifier(config, images, labels, *, seed: int, val_images=None, val_labels=None,
                     class_weights: np.ndarray | None = None, oversample: bool = False,
                     augment: dict | None = None, num_steps: int | None = None,
                     logdir: str | None = None):
  """Trains the classifier of config.classifier; returns (apply_fn, params, history).

  images [N, H, W, C] in [-1, 1]; labels int [N]. With a validation set, the parameters with the
  best validation macro F1 (checked every config.classifier.eval_every_steps) are returned.
  """
  from clu import metric_writers
  cc = config.classifier
  names = model_lib.class_names(cc.label)
  num_classes = len(names)
  num_steps = int(cc.num_train_steps if num_steps is None else num_steps)
  batch_size = int(cc.batch_size)
  mesh = sharding.create_mesh(config.mesh)
  if batch_size % mesh.size:
    raise ValueError(f"classifier.batch_size={batch_size} must divide over {mesh.size} devices.")
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  model = model_lib.create_model(cc)
  apply_fn = make_apply_fn(model)
  tx = _optimizer(cc, num_steps)
  key = jax.random.key(seed)
  init_key, key = jax.random.split(key)
  repl = sharding.replicated(mesh)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, *images.shape[1:])))["params"],
                   out_shardings=repl)(init_key)
  opt_state = jax.jit(tx.init, out_shardings=repl)(params)
  step_fn = jax.jit(
      make_train_step(apply_fn, tx, augment=augment),
      in_shardings=(repl, repl, sharding.batch_sharding(mesh, 4), sharding.batch_sharding(mesh, 1),
                    repl, repl),
      out_shardings=(repl, repl, repl), donate_argnums=(0, 1))
  weights = jnp.asarray(np.ones(num_classes, np.float32) if class_weights is None
                        else class_weights, jnp.float32)
  probs = sampling_probabilities(labels, oversample)
  rng = np.random.default_rng(seed)
  per_process = sharding.per_process_batch_size(batch_size)
  rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  writer = metric_writers.create_default_writer(logdir, just_logging=logdir is None
                                                or jax.process_index() != 0)
  eval_every = int(cc.eval_every_steps)
  history = {"loss": [], "val_macro_f1": [], "best_step": None}
  best = (-1.0, None)
  losses = []
  for step in range(1, num_steps + 1):
    idx = rng.choice(len(labels), size=batch_size, replace=probs is not None or
                     len(labels) < batch_size, p=probs)
    idx = idx[rows]  # Every process draws the same global batch and feeds its own rows.
    batch = sharding.shard_batch(mesh, {"image": images[idx], "label": labels[idx]})
    key, step_key = jax.random.split(key)
    params, opt_state, loss = step_fn(params, opt_state, batch["image"], batch["label"], weights,
                                      step_key)
    losses.append(loss)
    last = step == num_steps
    if step % max(1, int(cc.log_every_steps)) == 0 or last:
      mean_loss = float(np.mean(jax.device_get(losses)))
      losses = []
      history["loss"].append((step, mean_loss))
      writer.write_scalars(step, {"classifier_loss": mean_loss})
    if val_images is not None and (step % eval_every == 0 or last):
      pred = predict(apply_fn, params, val_images)
      f1 = metrics_lib.classification_report(val_labels, pred, names)["macro_f1"]
      history["val_macro_f1"].append((step, f1))
      writer.write_scalars(step, {"classifier_val_macro_f1": f1})
      if f1 > best[0]:
        best = (f1, jax.device_get(params))
        history["best_step"] = step
  writer.flush()
  final = best[1] if best[1] is not None else jax.device_get(params)
  return apply_fn, final, history


def save_classifier(path: str, params, meta: dict) -> str:
  """Writes params (orbax) and meta.json (config, class names, resolution) to directory `path`."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  target = os.path.join(path, PARAMS_DIR)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, jax.device_get(params), force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(os.path.join(path, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  logging.info("Classifier saved to %s", path)
  return path


def classifier_meta(config, *, input_shape, history: dict | None = None) -> dict:
  """What a loader needs to rebuild the network and what it was trained on."""
  cc = config.classifier
  return {"label": cc.label, "class_names": list(model_lib.class_names(cc.label)),
          "widths": [int(w) for w in cc.widths], "blocks_per_stage": int(cc.blocks_per_stage),
          "input_shape": [int(s) for s in input_shape], "resolution": int(input_shape[0]),
          "data": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in config.data.to_dict().items() if not isinstance(v, dict)},
          "config": json.loads(config.to_json_best_effort()), "history": history or {}}


def load_classifier(path: str):
  """(apply_fn, params, meta) of a classifier saved by save_classifier."""
  path = os.path.abspath(path)
  meta_file = os.path.join(path, META_FILE)
  if not os.path.isfile(meta_file):
    raise FileNotFoundError(f"No flare classifier at {path} (missing {META_FILE}). Create it with: "
                            f"{CREATE_COMMAND.replace('<workdir>', os.path.dirname(path))}")
  with open(meta_file) as f:
    meta = json.load(f)
  model = model_lib.FlareResNet(num_classes=len(meta["class_names"]),
                                widths=tuple(meta["widths"]),
                                blocks_per_stage=int(meta["blocks_per_stage"]))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, *meta["input_shape"])))["params"])
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(os.path.join(path, PARAMS_DIR), abstract)
  checkpointer.close()
  return make_apply_fn(model), params, meta
