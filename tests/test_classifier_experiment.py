"""The augmentation experiment end to end: arms x seeds, table, plots, JSON, saved classifier."""

import json
import os

import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import classifier, input_pipeline, sample
from solar_ddpm_jax.classifier import experiment


def _split(n, t0, seed, res=16):
  """Time-ordered discs whose brightness encodes the flare class (skewed like flare data)."""
  rng = np.random.default_rng(seed)
  labels = rng.choice(5, size=n, p=[0.3, 0.3, 0.25, 0.1, 0.05]).astype(np.int32)
  yy, xx = np.mgrid[:res, :res]
  disc = np.hypot(yy - (res - 1) / 2, xx - (res - 1) / 2) < 0.4 * res
  images = np.where(disc, -0.8 + 0.4 * labels[:, None, None], -1.0)
  images = images + 0.05 * rng.normal(size=images.shape)
  return {"image": images[..., None].astype(np.float32), "flare_class": labels,
          "forecast_class": labels, "subclass": np.ones(n, np.float32),
          "goes_flux_w_m2": 10.0 ** (labels - 8.0), "time_unix_s": t0 + 3600.0 * np.arange(n),
          "forecast_coverage": np.ones(n, np.float32)}


@pytest.fixture
def fake_data(monkeypatch):
  splits = {"train": _split(96, 0.0, 0), "validation": _split(32, 1e6, 1),
            "test": _split(48, 2e6, 2)}
  monkeypatch.setattr(input_pipeline, "load_split_arrays",
                      lambda config, split, label=None: {k: v.copy()
                                                         for k, v in splits[split].items()})
  calls = []

  def fake_generate(config, workdir, labels, **kwargs):
    calls.append(dict(workdir=workdir, labels=np.asarray(labels), **kwargs))
    level = -0.8 + 0.4 * np.asarray(labels, np.float32)
    return np.broadcast_to(level[:, None, None, None], (len(labels), 16, 16, 1)).copy()
  monkeypatch.setattr(sample, "generate", fake_generate)
  return splits, calls


def test_experiment_writes_results(tmp_path, fake_data):
  _, calls = fake_data
  config = aia171.get_config("test")
  config.classifier.num_train_steps = 40
  config.classifier.eval_every_steps = 20
  config.classifier.learning_rate = 3e-3
  config.classifier.diffusion_checkpoint = str(tmp_path / "diffusion")
  os.makedirs(tmp_path / "diffusion")
  (tmp_path / "diffusion" / "config.json").write_text(config.to_json_best_effort())
  results = experiment.augment_experiment(config, str(tmp_path))

  assert len(calls) == 1
  assert calls[0]["workdir"] == str(tmp_path / "diffusion")
  assert calls[0]["sampler"] == config.classifier.synthetic_sampler
  np.testing.assert_array_equal(calls[0]["labels"], [3] * 4 + [4] * 4)  # M, X x 4 each.
  out = tmp_path / "augment_experiment"
  for name in ("results.json", "results.md", "f1_per_class.png", "skill.png"):
    assert (out / name).is_file(), name
  saved = json.loads((out / "results.json").read_text())
  assert set(saved["arms"]) == {"real", "rebalanced", "synthetic"}
  assert saved["arms"]["synthetic"]["runs"][0]["num_train_images"] == 96 + 8
  assert saved["splits"]["test"]["num_images"] == 48
  for arm in saved["arms"].values():
    assert sum(map(sum, arm["runs"][0]["confusion_matrix"])) == 48  # The same real test split.
    assert "TSS>=M" in arm["summary"] and "HSS>=C" in arm["summary"]
  table = (out / "results.md").read_text()
  assert "| real |" in table and "| synthetic |" in table and "chance: majority" in table
  assert results["arms"]["real"]["summary"]["macro_f1"]["n"] == 1
  assert saved["settings"]["diffusion_data"]["train_end"] == config.data.train_end

  apply_fn, params, meta = classifier.load_classifier(str(tmp_path / "classifier"))
  assert meta["class_names"] == list("ABCMX") and meta["input_shape"] == [16, 16, 1]
  assert classifier.features(apply_fn, params, fake_data[0]["test"]["image"][:3]).shape == (3, 32)


def test_train_real_classifier_alone_saves_the_judge(tmp_path, fake_data):
  config = aia171.get_config("test")
  config.classifier.num_train_steps = 60
  config.classifier.eval_every_steps = 20
  config.classifier.learning_rate = 3e-3
  path = experiment.train_real_classifier(config, str(tmp_path))
  assert path == str(tmp_path / "classifier")
  apply_fn, params, meta = classifier.load_classifier(path)
  test = fake_data[0]["test"]
  pred = classifier.predict(apply_fn, params, test["image"])
  # The classes are brightness levels: far better than the majority class (30%).
  assert np.mean(pred == test["flare_class"]) > 0.6
  assert meta["input_shape"] == [16, 16, 1]


def test_experiment_refuses_overlapping_splits(tmp_path, fake_data, monkeypatch):
  splits, _ = fake_data
  splits["validation"]["time_unix_s"] = splits["train"]["time_unix_s"] + 1.0
  config = aia171.get_config("test")
  with pytest.raises(ValueError, match="overlap"):
    experiment.augment_experiment(config, str(tmp_path))


@pytest.mark.slow
def test_experiment_on_synthetic_archive(tmp_path):
  """The whole chain at the test preset: synthetic archive, diffusion training, experiment."""
  from solar_ddpm_jax import train
  config = aia171.get_config("test")
  config.data.data_dir = str(tmp_path / "tfds")
  train.train_and_evaluate(config, str(tmp_path))
  config.classifier.arms = ("real", "synthetic")
  results = experiment.augment_experiment(config, str(tmp_path))
  assert os.path.isfile(tmp_path / "augment_experiment" / "results.md")
  assert results["arms"]["synthetic"]["runs"][0]["num_train_images"] == (
      results["splits"]["train"]["num_images"] + 8)


def test_unlabellable_synthetic_arm_fails_before_any_work(tmp_path, fake_data):
  _, calls = fake_data
  config = aia171.get_config("test")
  config.data.label = "forecast_class"  # The model draws forecast classes; the judge flare classes.
  with pytest.raises(ValueError, match="Use the same label"):
    experiment.augment_experiment(config, str(tmp_path))
  assert calls == [] and not (tmp_path / "augment_experiment" / "logs_real_0").exists()


def test_diffusion_model_of_other_data_is_refused_before_any_work(tmp_path, fake_data):
  """A diffusion model trained past this experiment's train_end has seen its validation period."""
  _, calls = fake_data
  config = aia171.get_config("test")
  trained = config.copy_and_resolve_references()
  trained.data.train_end = config.data.val_end
  os.makedirs(tmp_path / "diffusion")
  (tmp_path / "diffusion" / "config.json").write_text(trained.to_json_best_effort())
  config.classifier.diffusion_checkpoint = str(tmp_path / "diffusion")
  with pytest.raises(ValueError, match=r"other data.*data\.train_end"):
    experiment.augment_experiment(config, str(tmp_path))
  assert calls == [] and not (tmp_path / "augment_experiment" / "logs_real_0").exists()


@pytest.mark.parametrize("field,value", [
    ("stretch", "asinh"), ("dn_ceiling", (20000.0,)), ("downsample", "resize"),
    ("goes_scaling", "noaa_0.7"), ("hek_scaling", "science"), ("hek_events", "/x/hek.json")])
def test_a_diffusion_model_of_other_pixels_or_classes_is_refused(tmp_path, field, value):
  # Images on another stretch or ceiling, or classes of another GOES/HEK policy, would enter the
  # synthetic arm mislabelled or misscaled.
  config = aia171.get_config("test")
  trained = config.copy_and_resolve_references()
  setattr(trained.data, field, value)
  os.makedirs(tmp_path / "diffusion")
  (tmp_path / "diffusion" / "config.json").write_text(trained.to_json_best_effort())
  with pytest.raises(ValueError, match=rf"other data.*data\.{field}: diffusion"):
    experiment.check_diffusion_data(config, str(tmp_path / "diffusion"))


def test_the_same_data_settings_pass_wherever_the_hek_list_lies(tmp_path):
  config = aia171.get_config("test")
  config.data.hek_events = "/here/hek_flares.json"
  trained = config.copy_and_resolve_references()
  trained.data.hek_events = "/elsewhere/hek_flares.json"
  os.makedirs(tmp_path / "diffusion")
  (tmp_path / "diffusion" / "config.json").write_text(trained.to_json_best_effort())
  assert experiment.check_diffusion_data(config, str(tmp_path / "diffusion"))["label"] == (
      config.data.label)


def test_augmented_arm_trains_on_the_real_images_with_augmentation_only(tmp_path, fake_data,
                                                                         monkeypatch):
  from solar_ddpm_jax.classifier import train as train_lib
  seen = []
  real_train = train_lib.train_classifier
  monkeypatch.setattr(train_lib, "train_classifier",
                      lambda *a, **k: seen.append(k) or real_train(*a, **k))
  config = aia171.get_config("test")
  config.classifier.num_train_steps, config.classifier.eval_every_steps = 4, 2
  config.classifier.arms = ("augmented",)
  results = experiment.augment_experiment(config, str(tmp_path))
  assert set(results["arms"]) == {"augmented"}
  assert "oversample" not in seen[0] and "class_weights" not in seen[0]
  assert seen[0]["augment"]["max_rotation_deg"] == config.classifier.max_rotation_deg
  assert results["arms"]["augmented"]["runs"][0]["num_train_images"] == 96
  config.classifier.arms = ("real", "mixup")
  trained = len(seen)
  with pytest.raises(ValueError, match="Unknown classifier.arms"):
    experiment.augment_experiment(config, str(tmp_path / "other"))
  assert len(seen) == trained and not (tmp_path / "other" / "augment_experiment" /
                                       "logs_real_0").exists()


def test_oversampling_and_loss_weights_together_are_refused(tmp_path, fake_data):
  config = aia171.get_config("test")
  config.classifier.class_weights = True
  with pytest.raises(ValueError, match="oversample=False"):
    experiment.augment_experiment(config, str(tmp_path))


def test_a_rebalanced_arm_without_a_correction_is_refused(tmp_path, fake_data):
  _, calls = fake_data
  config = aia171.get_config("test")
  config.classifier.oversample = False
  with pytest.raises(ValueError, match="would train exactly as 'augmented'"):
    experiment.augment_experiment(config, str(tmp_path))
  assert calls == []
