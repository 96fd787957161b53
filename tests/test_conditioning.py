"""Class conditioning: class-weighted training batches, the class embedding's init, their settings
checks, and the conditioning-ablation bench's scores."""

import importlib.util
import os

import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import class_balance, input_pipeline, loaders, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  path = os.path.join(REPO, "bench", "conditioning_ablation.py")
  spec = importlib.util.spec_from_file_location("conditioning_ablation", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _class_mass(labels, probabilities, num_classes):
  """Total probability of each class, summed example by example (independent of bincount)."""
  mass = [0.0] * num_classes
  for label, p in zip(labels.tolist(), probabilities.tolist(), strict=True):
    mass[label] += p
  return np.array(mass)


def test_each_class_gets_its_weight_share_of_the_draws():
  labels = np.array([0] * 50 + [1] * 30 + [2] * 15 + [3] * 4 + [4] * 1)
  for weights in ([1, 1, 1, 1, 1], [1, 0, 2, 3, 4], [50, 30, 15, 4, 1]):
    p = class_balance.example_probabilities(labels, weights)
    w = np.asarray(weights, float)
    np.testing.assert_allclose(_class_mass(labels, p, 5), w / w.sum(), atol=1e-12)
    # Within a class every example is equally likely.
    for k in range(5):
      assert np.ptp(p[labels == k]) <= 1e-15
  # Weights equal to the class counts give the frequency draw: every example 1/N.
  np.testing.assert_allclose(class_balance.example_probabilities(labels, [50, 30, 15, 4, 1]),
                             np.full(100, 0.01))


def test_absent_classes_leave_their_weight_to_the_others_and_bad_labels_are_refused():
  labels = np.array([0, 0, 0, 2])
  p = class_balance.example_probabilities(labels, [1, 1, 1, 1, 1])
  np.testing.assert_allclose(_class_mass(labels, p, 5), [0.5, 0, 0.5, 0, 0])
  with pytest.raises(ValueError, match="probability 0"):
    class_balance.example_probabilities(labels, [0, 1, 0, 1, 1])
  with pytest.raises(ValueError, match="outside 0..1"):
    class_balance.example_probabilities(np.array([0, 3]), [1, 1])


def test_draws_follow_the_weights():
  labels = np.array([0] * 121 + [1] * 112 + [2] * 98 + [3] * 46 + [4] * 28)
  idx = class_balance.draw(np.random.default_rng(0), labels, [1, 1, 1, 2, 2], 70_000)
  share = np.bincount(labels[idx], minlength=5) / len(idx)
  np.testing.assert_allclose(share, [1 / 7, 1 / 7, 1 / 7, 2 / 7, 2 / 7], atol=0.006)


def test_class_weights_of_the_data_settings():
  data = aia171.get_config("demo").data
  data.class_balanced, data.class_weights = False, ()
  assert class_balance.class_weights(data, 5) is None
  data.class_balanced = True
  np.testing.assert_array_equal(class_balance.class_weights(data, 5), np.ones(5))
  data.class_weights = (1, 1, 1, 2, 2)  # Explicit weights are used as given.
  np.testing.assert_array_equal(class_balance.class_weights(data, 5), [1, 1, 1, 2, 2])
  for bad in ((1, 1), (1, 1, 1, -1, 1), (0, 0, 0, 0, 0), (1, 1, 1, float("nan"), 1)):
    data.class_weights = bad
    with pytest.raises(ValueError, match="data.class_weights"):
      class_balance.class_weights(data, 5)


def _arrays(labels):
  n = len(labels)
  return {"image": np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1)),
          "flare_class": np.asarray(labels, np.int32)}


def test_training_batches_follow_data_class_weights():
  config = aia171.get_config("test")
  config.training.batch_size = 64
  labels = np.array([0] * 40 + [1] * 30 + [2] * 20 + [3] * 7 + [4] * 3)
  arrays = _arrays(labels)
  config.data.class_weights = (0, 0, 0, 1, 1)  # Only M and X frames in the batches.
  seen = np.concatenate([input_pipeline.local_batch(arrays, config, step)["label"]
                         for step in range(20)])
  assert set(seen.tolist()) == {3, 4}
  assert abs(np.mean(seen == 4) - 0.5) < 0.1  # Equal shares although X is rarer than M.
  # The batch's images are the rows of its labels.
  batch = input_pipeline.local_batch(arrays, config, 3)
  np.testing.assert_array_equal(labels[batch["image"][:, 0, 0, 0].astype(int)], batch["label"])
  # Validation batches are never reweighted: every example once per epoch.
  val = np.concatenate([input_pipeline.local_batch(arrays, config, s, "validation")["image"]
                        [:, 0, 0, 0] for s in range(25)])
  np.testing.assert_array_equal(np.sort(val[:1600].reshape(16, 100), axis=1)[0], np.arange(100))


def test_class_balanced_stream_is_the_equal_weight_draw():
  """class_balanced=True gives the same batches as before: a draw by 1 / (examples of its
  class) from the epoch's generator."""
  labels = np.array([0] * 10 + [1] * 5 + [3] * 2)
  order = input_pipeline.epoch_order(len(labels), 7, 2, "train", labels)
  rng = np.random.default_rng([7, loaders._split_seed("train"), 2])
  weights = 1.0 / np.bincount(labels)[labels]
  np.testing.assert_array_equal(order, rng.choice(len(labels), size=len(labels),
                                                  p=weights / weights.sum()))


def test_settings_name_a_bad_class_embedding_init_and_bad_class_weights():
  config = aia171.get_config("demo")
  assert not settings.problems(config)
  config.model.class_embed_init = "large"
  config.data.class_weights = (1, 1, 1)
  found = settings.problems(config)
  assert any("model.class_embed_init='large'" in f and "'unit'" in f for f in found), found
  assert any("data.class_weights" in f and "5 finite weights" in f for f in found), found


def test_class_embedding_inits_and_their_setting_reach_the_model():
  import jax

  from solar_ddpm_jax import unet
  key, shape = jax.random.key(0), (6, 256)
  stds = {name: float(np.std(np.asarray(init(key, shape))))
          for name, init in unet.CLASS_EMBED_INITS.items()}
  # Flax's default: std 1/sqrt(width) = 1/16; "unit": std 1 (PyTorch nn.Embedding's); zeros.
  assert stds["default"] == pytest.approx(1 / 16, rel=0.1)
  assert stds["unit"] == pytest.approx(1.0, rel=0.1)
  assert stds["zeros"] == 0.0
  config = aia171.get_config("test")
  assert unet.create_model(config.model).class_embed_init == "default"
  for block_style in ("paper", "modern"):
    config.model.block_style, config.model.class_embed_init = block_style, "unit"
    assert unet.create_model(config.model).class_embed_init == "unit"


@pytest.mark.slow
def test_class_embedding_init_sets_the_table_scale():
  import jax

  from solar_ddpm_jax import unet
  config = aia171.get_config("test")
  m = config.model  # One level of 4 channels at 8 px, no attention: a quick eager init.
  m.image_size, m.base_channels, m.channel_mult, m.attention_resolutions = 8, 4, (1,), ()
  m.time_embed_dim = 64
  tables = {}
  for init in ("default", "unit", "zeros"):
    m.class_embed_init = init
    model = unet.create_model(m)
    params = model.init({"params": jax.random.key(0)}, *unet.dummy_inputs(m))["params"]
    tables[init] = np.asarray(params["label_emb"]["embedding"])
  width = m.time_embed_dim
  assert tables["unit"].shape == (config.model.num_classes + 1, width)
  # Flax's default: std 1/sqrt(width); "unit": std 1 (PyTorch nn.Embedding's); "zeros": 0.
  assert 0.5 / np.sqrt(width) < tables["default"].std() < 1.6 / np.sqrt(width)
  assert 0.7 < tables["unit"].std() < 1.3
  assert not tables["zeros"].any()


def test_sweep_scores_are_recall_and_precision_of_the_generated_images():
  labels = np.array([0, 0, 1, 1, 3, 3, 4, 4])
  pred = np.array([0, 1, 1, 1, 2, 3, 3, 4])
  s = _bench().sweep_scores(pred, labels)
  assert s["all"] == pytest.approx(5 / 8)
  assert s["recall_A"] == 0.5 and s["precision_A"] == 1.0
  assert s["recall_B"] == 1.0 and s["precision_B"] == pytest.approx(2 / 3)
  assert s["recall_M"] == 0.5 and s["precision_M"] == 0.5
  assert np.isnan(s["recall_C"]) and s["precision_C"] == 0.0
  # Confusion matrix: requested class by row, the judge's class by column (counted by hand).
  assert s["confusion"] == [[1, 1, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 0, 0, 0],
                            [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_ablation_table_averages_seeds_of_one_arm():
  bench = _bench()
  row = lambda seed, acc: {"arm": "a", "seed": seed, "settings": ["x=1"], "data_dir": "",
                           "train_s": 10.0 * (seed + 1),
                           "accuracy": {"3": {"all": acc, **dict.fromkeys("ABCMX", acc)}}}
  (entry,) = bench.summarize([row(0, 0.5), row(1, 0.7), row(2, 0.9)])
  assert entry["seeds"] == 3 and entry["train_s"] == 20.0
  assert entry["w3_all"][0] == pytest.approx(0.7)
  assert entry["w3_all"][1] == pytest.approx(0.2)  # Sample standard deviation (ddof 1).
  config = bench.make_config("test", ["data.class_weights=(1, 1, 1, 2, 2)",
                                      "model.class_embed_init=unit"], seed=4)
  assert config.data.class_weights == (1, 1, 1, 2, 2)
  assert config.model.class_embed_init == "unit" and config.seed == 4


def test_class_signal_is_the_between_class_share_of_the_variance():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(5), [30, 20, 10, 6, 4])
  offsets = np.array([-0.4, -0.1, 0.0, 0.3, 0.8])
  images = rng.normal(0.0, 0.2, (70, 4, 4, 1)) + offsets[labels][:, None, None, None]
  result = _bench().class_signal(images, labels)
  x = images.reshape(70, -1)
  # Independently: 1 - (within-class variance / total variance), with numpy's var per pixel.
  within = sum(np.var(x[labels == k], axis=0).sum() * (labels == k).sum() for k in range(5)) / 70
  total = np.var(x, axis=0).sum()
  assert result["between_class_fraction"] == pytest.approx(1 - within / total, rel=1e-9)
  assert result["pixel_variance"] == pytest.approx(total / 16, rel=1e-9)
  assert result["per_class"]["X"]["count"] == 4
  assert result["per_class"]["X"]["top4_mean"] > result["per_class"]["A"]["top4_mean"]
  # No class structure: the share is near zero.
  flat = _bench().class_signal(rng.normal(0, 0.2, (70, 4, 4, 1)), labels)
  assert flat["between_class_fraction"] < 0.15


def test_brightness_is_the_flare_kernel_and_disc_level_per_requested_class():
  images = np.full((4, 3, 3, 1), -1.0)
  images[0, 0, :, 0] = [0.5, 0.3, 0.1]  # Class A: 4 brightest = 0.5, 0.3, 0.1, -1.
  images[1, :, :, 0] = 0.2  # Class A: a uniform disc.
  images[2, 1, 1, 0] = 1.0  # Class X: one bright pixel.
  images[3, 2, :, 0] = 0.9  # Class X.
  labels = np.array([0, 0, 4, 4])
  b = _bench().brightness(images, labels)
  assert set(b) == {"A", "X"}
  assert b["A"]["top4"] == pytest.approx(((0.5 + 0.3 + 0.1 - 1.0) / 4 + 0.2) / 2)
  assert b["A"]["mean"] == pytest.approx(((0.9 - 6.0) / 9 + 0.2) / 2)
  assert b["X"]["top4"] == pytest.approx(((1.0 - 3.0) / 4 + (2.7 - 1.0) / 4) / 2)


def test_sweep_figure_names_how_guidance_was_applied(tmp_path, monkeypatch):
  import matplotlib.figure
  titles = []
  monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                      lambda self, t, **kw: titles.append(t))
  row = {"all": 0.5, "fid_all": 10.0, **{f"{k}_{n}": 0.5 for k in ("recall", "precision", "fid")
                                         for n in "ABCMX"}}
  result = {"workdir": "w", "rows": {"0": row, "3": row}}
  bench = _bench()
  bench.plot_sweep({**result, "guidance_interval": [0.3, 1.0]}, str(tmp_path / "a.png"))
  bench.plot_sweep({**result, "guidance_interval": [], "guidance_rescale": 0.7},
                   str(tmp_path / "b.png"))
  assert titles == ["w: guided on t/T in [0.3, 1]", "w: guided at every step, rescaled 0.7"]
  assert (tmp_path / "a.png").stat().st_size > 0
