"""Flare classifier: shapes, augmentation, training on separable data, save/load round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import classifier
from solar_ddpm_jax.classifier import model as model_lib
from solar_ddpm_jax.classifier import train as train_lib
from solar_ddpm_jax.evaluation import domain


def _config(**overrides):
  config = aia171.get_config("test")
  for k, v in overrides.items():
    setattr(config.classifier, k, v)
  return config


def _separable_set(n, size=16, seed=0):
  """Discs whose brightness encodes the class: separable, but only from the image content."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 5, size=n).astype(np.int32)
  yy, xx = np.mgrid[:size, :size]
  disc = ((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2) < (0.4 * size) ** 2
  level = -0.8 + 0.4 * labels[:, None, None]
  images = np.where(disc, level, -1.0) + 0.05 * rng.normal(size=(n, size, size))
  return images[..., None].astype(np.float32), labels


def test_model_shapes_and_features():
  model = model_lib.create_model(_config().classifier)
  x = jnp.zeros((3, 16, 16, 1))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  logits = jax.eval_shape(lambda p: model.apply({"params": p}, x), params)
  feats = jax.eval_shape(lambda p: model.apply({"params": p}, x, return_features=True), params)
  assert logits.shape == (3, 5)
  assert feats.shape == (3, 32)  # Mean and max pools of widths[-1] = 16 (test preset).
  binary = model_lib.create_model(_config(label="forecast_binary").classifier)
  params_b = jax.eval_shape(lambda: binary.init(jax.random.key(0), x))["params"]
  assert params_b["head"]["kernel"].shape == (32, 2)


def test_labels_of_each_classifier_label():
  arrays = {"flare_class": np.array([0, 4]), "forecast_class": np.array([2, 3])}
  np.testing.assert_array_equal(train_lib.labels_of(arrays, "forecast_binary"), [0, 1])
  np.testing.assert_array_equal(train_lib.labels_of(arrays, "forecast_class"), [2, 3])
  np.testing.assert_array_equal(train_lib.labels_of(arrays, "flare_class"), [0, 4])


def test_synthetic_images_get_the_targets_their_classes_determine():
  from solar_ddpm_jax.classifier import experiment
  mx, cmx = np.array([3, 4, 3]), np.array([2, 3, 4])
  targets = experiment.synthetic_targets
  np.testing.assert_array_equal(targets(cmx, "forecast_class", "forecast_class"), cmx)
  np.testing.assert_array_equal(targets(cmx, "forecast_class", "forecast_binary"), [0, 1, 1])
  np.testing.assert_array_equal(targets(mx, "flare_class", "forecast_binary"), [1, 1, 1])
  with pytest.raises(ValueError, match="below M"):  # A C-class image: the peak is unknown.
    targets(cmx, "flare_class", "forecast_binary")
  for data_label, label in (("forecast_class", "flare_class"), ("flare_class", "forecast_class")):
    with pytest.raises(ValueError, match="Use the same label"):
      targets(mx, data_label, label)


def test_augmentation_keeps_disc_and_centre():
  images, _ = _separable_set(4)
  out = np.asarray(train_lib.augment_images(jax.random.key(0), jnp.asarray(images),
                                            max_rotation_deg=10.0, flip_ew=False, flip_ns=False))
  assert out.shape == images.shape
  centre = slice(5, 11)  # Inside the disc, far from the limb: unchanged by a small rotation.
  np.testing.assert_allclose(out[:, centre, centre], images[:, centre, centre], atol=0.2)
  assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5
  flipped = np.asarray(train_lib.augment_images(jax.random.key(1), jnp.asarray(images[:1]),
                                                max_rotation_deg=0.0, flip_ew=False,
                                                flip_ns=False))
  np.testing.assert_array_equal(flipped, images[:1])


def test_class_weights_and_oversampling():
  labels = np.array([0] * 8 + [1] * 2)
  w = train_lib.class_weights_for(labels, 3)
  assert w[1] == pytest.approx(4 * w[0]) and w[2] == 0.0
  p = train_lib.sampling_probabilities(labels, oversample=True)
  assert p[labels == 0].sum() == pytest.approx(0.5)
  assert train_lib.sampling_probabilities(labels, oversample=False) is None


def test_training_beats_chance_and_round_trips(tmp_path):
  config = _config(num_train_steps=150, learning_rate=3e-3, eval_every_steps=50)
  images, labels = _separable_set(160, seed=0)
  val_images, val_labels = _separable_set(40, seed=1)
  test_images, test_labels = _separable_set(100, seed=2)
  apply_fn, params, history = classifier.train_classifier(
      config, images, labels, seed=0, val_images=val_images, val_labels=val_labels,
      augment=dict(max_rotation_deg=10.0, flip_ew=True, flip_ns=False))
  pred = classifier.predict(apply_fn, params, test_images)
  accuracy = np.mean(pred == test_labels)
  assert accuracy > 0.6, accuracy  # Chance is 0.2.
  assert history["best_step"] in (50, 100, 150)

  meta = train_lib.classifier_meta(config, input_shape=images.shape[1:], history=history)
  path = classifier.save_classifier(str(tmp_path / "classifier"), params, meta)
  apply2, params2, meta2 = classifier.load_classifier(path)
  assert meta2["class_names"] == list("ABCMX") and meta2["resolution"] == 16
  np.testing.assert_array_equal(classifier.predict(apply2, params2, test_images), pred)
  feats = classifier.features(apply2, params2, test_images[:7])
  np.testing.assert_allclose(feats, classifier.features(apply_fn, params, test_images[:7]),
                             rtol=1e-5, atol=1e-6)
  assert feats.shape == (7, 32)
  jitted = jax.jit(lambda p, x: classifier.features(apply2, p, x))(params2, test_images[:7])
  np.testing.assert_allclose(jitted, feats, rtol=1e-5, atol=1e-6)
  assert not np.allclose(feats[0], feats[-1])  # Features depend on the image.

  # The judge's fingerprint in feature exports names its weights, not the checkpoint's files
  # (orbax writes timestamps and random file names): same weights saved again, same digest.
  again = classifier.save_classifier(str(tmp_path / "again"), params2, meta2)
  changed = jax.tree_util.tree_map(np.array, params2)  # Writable copies.
  first = jax.tree_util.tree_leaves(changed)[0]
  first[(0,) * first.ndim] += 1.0
  other = classifier.save_classifier(str(tmp_path / "other"), changed, meta2)
  digests = [domain.domain_extractor(p).weights_sha256 for p in (path, again, other)]
  assert digests[0] == digests[1] != digests[2] and len(digests[0]) == 64


def test_missing_checkpoint_names_path_and_command(tmp_path):
  missing = tmp_path / "nowhere" / "classifier"
  with pytest.raises(FileNotFoundError, match="augment_experiment") as err:
    classifier.load_classifier(str(missing))
  assert str(missing) in str(err.value)
