"""Domain extractor, feature export and the evaluation report end to end on tiny data."""

import json
import os

import jax
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import sharding
from solar_ddpm_jax.evaluation import domain, export, features, report


def _discs(n, res, seed, brightness_by_class=True):
  """Noisy discs in [-1, 1] whose brightness depends on the class; labels cycle over 0..4."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 5).astype(np.int32)
  r = np.hypot(*(np.indices((res, res)) - (res - 1) / 2)) / (res / 2)
  level = 0.5 + 0.3 * labels / 4 if brightness_by_class else np.full(n, 0.6)
  images = -1 + (r < 0.8)[None] * (1 + level[:, None, None])
  images = images + 0.05 * rng.standard_normal(images.shape)
  return np.clip(images, -1, 1)[..., None].astype(np.float32), labels


@pytest.fixture()
def encoder_dir(tmp_path):
  model = domain.SmallEncoder((4, 8), 6)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 1), np.float32))["params"]
  path = str(tmp_path / "encoder")
  domain.save_encoder(path, jax.device_get(params), (4, 8), 6)
  return path


def _config(tmp_path, encoder_dir, samples_npz=""):
  config = aia171.get_config("test")
  config.evaluation.domain_checkpoint = encoder_dir
  config.evaluation.samples_npz = samples_npz
  config.evaluation.extractors = ("domain", "inception", "clip")
  config.evaluation.classifier_checkpoint = str(tmp_path / "no_classifier")
  return config


def test_domain_features_identical_on_1_and_8_devices(encoder_dir):
  ext = domain.domain_extractor(encoder_dir)
  images, _ = _discs(13, 16, 0)
  one = features.extract(ext, images, batch_size=8,
                         mesh=sharding.create_mesh(devices=jax.devices()[:1]))
  eight = features.extract(ext, images, batch_size=8, mesh=sharding.create_mesh())
  assert one.shape == (13, 6) and len(ext.weights_sha256) == 64
  np.testing.assert_array_equal(one, eight)
  direct = domain.SmallEncoder((4, 8), 6).apply({"params": ext.params}, images)
  np.testing.assert_allclose(one, np.asarray(direct), rtol=1e-5, atol=1e-6)


def test_feature_networks_run_at_full_float32_precision(encoder_dir):
  # Every convolution and matmul of the extraction program asks for HIGHEST (no TF32 on GPUs).
  ext = domain.domain_extractor(encoder_dir)
  mesh = sharding.create_mesh(devices=jax.devices()[:1])
  text = features._jitted(ext.fn, mesh, 8).lower(ext.params, np.zeros((8, 16, 16, 1),
                                                                      np.float32)).as_text()
  ops = [line for line in text.splitlines() if "stablehlo.convolution" in line
         or "stablehlo.dot_general" in line]
  assert ops and all("HIGHEST" in line for line in ops)
  assert ext.settings()["matmul_precision"] == "highest"


def test_missing_domain_checkpoint_names_the_key(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.evaluation.domain_checkpoint"):
    domain.domain_extractor(str(tmp_path / "none"))


def test_export_features_writes_settings(tmp_path, encoder_dir, monkeypatch):
  real = _discs(10, 16, 0)
  fake = _discs(7, 16, 1)
  npz = str(tmp_path / "samples.npz")
  monkeypatch.setattr(export, "load_real", lambda config, split: real)
  config = _config(tmp_path, encoder_dir, npz)
  config.evaluation.extractors = ("domain",)
  made = dict(sampler="ddim", num_steps=50, guidance_scale=1.5, seed=7,
              resolution=config.data.resolution, stretch=config.data.stretch)
  np.savez(npz, images=fake[0], labels=fake[1], settings=json.dumps(made))
  written = export.export_features(config, str(tmp_path / "work"))
  assert set(written) == {"real_test/domain", "samples/domain"}
  out = export.load_features(written["samples/domain"])
  assert out["count"] == 7 and out["features"].shape == (7, 6)
  assert out["extractor"] == "domain_encoder" and len(out["weights_sha256"]) == 64
  assert "no resize" in out["preprocessing"] and out["source"] == "samples"
  assert out["settings"] == made  # How the samples were made travels with their features.
  np.testing.assert_array_equal(out["labels"], fake[1])
  ref = features.extract(domain.domain_extractor(encoder_dir), fake[0])
  np.testing.assert_array_equal(out["features"], ref)
  real_out = export.load_features(written["real_test/domain"])
  assert real_out["settings"]["split"] == "test"
  assert real_out["settings"]["resolution"] == config.data.resolution
  # Samples of another resolution are refused before any features are written.
  np.savez(npz, images=fake[0], labels=fake[1],
           settings=json.dumps(dict(made, resolution=2 * config.data.resolution)))
  with pytest.raises(ValueError, match="samples.npz was sampled with other data .*resolution"):
    export.export_features(config, str(tmp_path / "work2"))
  assert not os.path.exists(tmp_path / "work2")


def test_report_runs_and_skips_missing_pieces_with_reasons(tmp_path, encoder_dir, monkeypatch):
  real = _discs(20, 16, 0)
  fake = _discs(15, 16, 1, brightness_by_class=False)
  npz = str(tmp_path / "samples.npz")
  np.savez(npz, images=fake[0], labels=fake[1])
  monkeypatch.setattr(export, "load_real", lambda config, split: real)
  workdir = str(tmp_path / "work")
  config = _config(tmp_path, encoder_dir, npz)
  out = report.evaluate(config, workdir)
  assert "config.evaluation.inception_weights" in out["features"]["inception"]["skipped"]
  assert "config.evaluation.clip_weights" in out["features"]["clip"]["skipped"]
  dom = out["features"]["domain"]
  assert dom["settings"]["weights_sha256"] and dom["settings"]["reference_split"] == "test"
  assert dom["settings"]["count_real"] == 20 and dom["all"]["fid"] > 0
  assert dom["all"]["fid_ci"]["num_subsets"] == config.evaluation.bootstrap
  assert {"kid", "kid_se", "precision", "coverage", "clusters"} <= set(dom["all"])
  assert dom["A"]["count_real"] == 4 and dom["A"]["count_generated"] == 3
  # FID-infinity of 6-d features: 15 generated images suffice overall (>= 2 x 7), 3 per class not.
  assert len(dom["all"]["fid_inf"]["counts"]) >= 3 and dom["all"]["fid_inf"]["counts"][-1] == 15
  assert "needs 2 x (dim + 1) = 14" in dom["A"]["fid_inf"]["skipped"]
  phys = out["physics"]
  assert phys["X"]["count_real"] == 4 and phys["all"]["wasserstein_dn_s"] > 0
  assert "classifier" in out["conditioning_accuracy"]["skipped"]
  d = os.path.join(workdir, "evaluation")
  with open(os.path.join(d, "report.json")) as f:
    assert json.load(f)["features"]["domain"]["all"]["fid"] == dom["all"]["fid"]
  md = open(os.path.join(d, "report.md")).read()
  assert "Skipped:" in md and "weights_sha256=" in md and "| all |" in md
  # 3 generated A images: precision/recall with k = 2, not pr_k, and the table says so.
  assert dom["A"]["k"] == 2 < config.evaluation.pr_k
  assert "(k=2)" in next(line for line in md.splitlines() if line.startswith("| A |"))
  all_row = next(line for line in md.splitlines() if line.startswith("| all |"))
  assert "(k=" not in all_row and f"| {dom['all']['fid_inf']['fid_inf']:.4g} |" in all_row
  assert next(line for line in md.splitlines() if line.startswith("| A |")).count("|") == 13
  for png in ("histograms.png", "spectra.png", "profiles.png", "metrics_table.png"):
    assert os.path.getsize(os.path.join(d, png)) > 1000, png


def test_conditioning_accuracy_per_class_and_scale():
  labels = np.array([0, 0, 1, 1, 3], np.int32)
  images = np.zeros((5, 4, 4, 1), np.float32)

  def predict(x):
    del x
    return np.array([0, 1, 1, 1, 2])
  out = report.conditioning_accuracy(None, None, predict, {0.0: (images, labels),
                                                           3.0: (images, labels)})
  assert out["0"] == {"all": 0.6, "count": 5, "A": 0.5, "B": 1.0, "M": 0.0}
  assert set(out) == {"0", "3"}


def test_conditioning_accuracy_needs_a_classifier_of_the_conditioning_labels():
  config = aia171.get_config("test")
  shape = (config.data.resolution, config.data.resolution, 1)
  meta = {"label": "flare_class", "class_names": list("ABCMX"), "input_shape": list(shape),
          "data": {"label": "flare_class"}}
  report.check_classifier_matches(meta, config, shape)
  with pytest.raises(ValueError, match="forecast_binary"):
    report.check_classifier_matches(dict(meta, label="forecast_binary", class_names=["<M", ">=M"]),
                                    config, shape)
  with pytest.raises(ValueError, match="classifier.label=flare_class"):
    report.check_classifier_matches(dict(meta, label="forecast_class"), config, shape)
  config.data.label = "forecast_class"  # A forecasting model is judged by a forecast classifier.
  with pytest.raises(ValueError, match="classifier.label=forecast_class"):
    report.check_classifier_matches(meta, config, shape)
  report.check_classifier_matches(dict(meta, label="forecast_class"), config, shape)
  with pytest.raises(ValueError, match="takes images"):
    report.check_classifier_matches(dict(meta, label="forecast_class"), config, (8, 8, 1))


def test_extractor_names_from_tuples_and_command_line_text():
  from solar_ddpm_jax.evaluation import features
  assert features.extractor_names(("inception", "clip")) == ["inception", "clip"]
  assert features.extractor_names(("inception,clip, domain",)) == ["inception", "clip", "domain"]
  assert features.extractor_names("domain") == ["domain"]
  with pytest.raises(ValueError, match="Unknown feature extractors.*config.evaluation"):
    features.extractor_names(("inceptionv4",))


def test_histogram_shows_generated_pixels_brighter_than_any_real_one():
  config = aia171.get_config("test")
  rng = np.random.default_rng(0)
  real = rng.uniform(-1.0, 0.0, (4, 16, 16, 1)).astype(np.float32)
  fake = real.copy()
  fake[:, :8] = 1.0  # Half of every generated image at the clip ceiling, far above the real data.
  labels = np.zeros(4, np.int32)
  hist = report._physics(config, real, labels, fake, labels)["all"]["histogram"]
  edges, f = np.asarray(hist["bin_edges_dn_s"]), np.asarray(hist["fake"])
  from solar_ddpm_jax import outputs
  real_max = outputs.to_dn_per_s(real, config.data).max()
  above = np.sum((f * np.diff(edges))[edges[:-1] >= real_max])  # Mass above every real pixel.
  assert above == pytest.approx(0.5, abs=0.05)


def _stub_classifier(monkeypatch):
  """A classifier that always says C, so that accuracy = the share of requested C images."""
  monkeypatch.setattr(report, "_classifier_predict",
                      lambda config, workdir: (lambda x: np.full(len(x), 2), "stub", {}))
  monkeypatch.setattr(report, "check_classifier_matches", lambda meta, config, shape: None)


def test_sample_npz_settings_are_the_reports(tmp_path, encoder_dir, monkeypatch):
  """The report states how a .npz was sampled (its own record, not config.sampling), and scores
  its conditioning at the guidance scale it was made with."""
  real, fake = _discs(20, 16, 0), _discs(15, 16, 1)
  monkeypatch.setattr(export, "load_real", lambda config, split: real)
  _stub_classifier(monkeypatch)
  config = _config(tmp_path, encoder_dir)
  config.evaluation.extractors = ("domain",)
  config.sampling.guidance_scale = 3.0
  d = config.data  # As sample.sample_and_save records them.
  made = dict(sampler="ddim", num_steps=50, guidance_scale=1.0, seed=7, resolution=d.resolution,
              channels=list(d.channels), dn_ceiling=list(d.dn_ceiling), stretch=d.stretch,
              asinh_a=d.asinh_a, downsample=d.downsample, frame_px=d.synthetic.image_size)
  npz = str(tmp_path / "samples.npz")
  np.savez(npz, images=fake[0], labels=fake[1], settings=json.dumps(made))
  config.evaluation.samples_npz = npz
  out = report.evaluate(config, str(tmp_path / "work"))
  assert out["sampling"]["guidance_scale"] == 1.0 and out["sampling"]["sampler"] == "ddim"
  assert out["sampling"]["seed"] == 7
  acc = out["conditioning_accuracy"]["per_guidance_scale"]
  assert list(acc) == ["1"] and acc["1"]["all"] == pytest.approx(np.mean(fake[1] == 2))
  # A .npz without settings (made elsewhere): no guidance scale is claimed for it.
  bare = str(tmp_path / "bare.npz")
  np.savez(bare, images=fake[0], labels=fake[1])
  config.evaluation.samples_npz = bare
  out = report.evaluate(config, str(tmp_path / "work2"))
  assert out["sampling"]["guidance_scale"] is None
  assert list(out["conditioning_accuracy"]["per_guidance_scale"]) == ["unknown"]
  # Samples of other data settings would be put into DN/s wrongly: refused, naming the file.
  for key, value in (("resolution", 32), ("stretch", "asinh"), ("dn_ceiling", [999.0]),
                     ("downsample", "resize"), ("frame_px", 4096)):
    np.savez(npz, images=fake[0], labels=fake[1], settings=json.dumps(dict(made, **{key: value})))
    config.evaluation.samples_npz = npz
    with pytest.raises(ValueError, match=f"samples.npz was sampled with other data .*{key}"):
      report.evaluate(config, str(tmp_path / "work3"))


def test_the_evaluations_own_samples_record_their_settings(tmp_path, encoder_dir, monkeypatch):
  """evaluation/samples.npz, evaluated again as samples_npz, reads as the same sampling."""
  real = _discs(20, 16, 0)
  monkeypatch.setattr(export, "load_real", lambda config, split: real)
  monkeypatch.setattr(report, "_generate",
                      lambda config, workdir, labels, w: _discs(len(labels), 16, 2)[0])
  _stub_classifier(monkeypatch)
  config = _config(tmp_path, encoder_dir)
  config.evaluation.extractors = ("domain",)
  config.evaluation.guidance_scales = (config.sampling.guidance_scale,)
  workdir = str(tmp_path / "work")
  first = report.evaluate(config, workdir)
  config.evaluation.samples_npz = os.path.join(workdir, "evaluation", "samples.npz")
  with np.load(config.evaluation.samples_npz) as z:
    recorded = json.loads(str(z["settings"]))
  assert recorded["guidance_scale"] == config.sampling.guidance_scale
  assert recorded["resolution"] == config.data.resolution
  again = report.evaluate(config, str(tmp_path / "again"))
  assert again["sampling"] == first["sampling"]
  assert (again["conditioning_accuracy"]["per_guidance_scale"]
          == first["conditioning_accuracy"]["per_guidance_scale"])


def test_a_bug_raises_and_a_missing_weight_file_or_classifier_is_skipped_with_its_reason(
    tmp_path, encoder_dir, monkeypatch):
  """Only "this part cannot run here" is recorded as skipped; any other exception is a bug."""
  real, fake = _discs(10, 16, 0), _discs(10, 16, 1)
  config = _config(tmp_path, encoder_dir)
  config.evaluation.extractors = ("inception",)
  config.evaluation.inception_weights = str(tmp_path / "missing.pth")
  out = report.run_report(config, str(tmp_path), real, fake)
  assert "missing.pth' does not exist" in out["features"]["inception"]["skipped"]
  assert "config.evaluation.inception_weights" in out["features"]["inception"]["skipped"]
  assert out["conditioning_accuracy"]["skipped"].startswith(
      "FileNotFoundError: no classifier checkpoint at")
  assert out["physics"]["all"]["wasserstein_dn_s"] > 0

  def bug(*args, **kwargs):
    raise TypeError("a bug in a metric")

  with monkeypatch.context() as m:
    m.setattr(report.physics, "compare", bug)
    with pytest.raises(TypeError, match="a bug in a metric"):
      report.run_report(config, str(tmp_path), real, fake)
  _stub_classifier(monkeypatch)
  monkeypatch.setattr(report, "conditioning_accuracy", bug)
  with pytest.raises(TypeError, match="a bug in a metric"):
    report.run_report(config, str(tmp_path), real, fake)
