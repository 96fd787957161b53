"""--mode=sample from a checkpoint: npz, PNG grid and FITS files; generate() is reproducible."""

import json
import os

import jax
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import FLARE_CLASSES, diffusion, sample, samplers, sharding, train
from tests._helpers import data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A test-preset checkpoint at step 2 and its config."""
  workdir = str(tmp_path_factory.mktemp("sample_run"))
  config = aia171.get_config("test")
  config.training.num_train_steps = 2
  config.training.eval_every_steps = 0
  config.training.sample_every_steps = 0
  config.sampling.classes = "A,M"
  config.sampling.num_per_class = 3
  mesh = sharding.create_mesh(config.mesh)
  train.train_and_evaluate(config, workdir, train_iterator_fn=data.iterator_fn(config, mesh),
                           eval_iterator_fn=data.eval_iterator_fn(config, mesh))
  return config, workdir


def test_sample_and_save_writes_npz_grid_and_fits(trained):
  import astropy.units as u
  import sunpy.map
  config, workdir = trained
  out_dir = sample.sample_and_save(config, workdir)
  assert os.path.basename(out_dir).startswith("step2_")
  npz = np.load(os.path.join(out_dir, "samples.npz"))
  res = config.data.resolution
  assert npz["images"].shape == (6, res, res, 1) and npz["images"].dtype == np.float32
  np.testing.assert_array_equal(npz["labels"], [0, 0, 0, 3, 3, 3])
  settings = json.loads(str(npz["settings"]))
  assert settings["sampler"] == config.sampling.sampler and settings["checkpoint_step"] == 2
  assert settings["guidance_scale"] == config.sampling.guidance_scale
  assert settings["batch_size"] == config.sampling.batch_size
  assert settings["grid_steps"] == len(samplers.timestep_grid(
      diffusion.alphas_cumprod_f64(config.diffusion), config.sampling.num_steps,
      spacing="logsnr" if config.sampling.sampler == "dpm_solver++" else "time"))
  assert np.all(np.isfinite(npz["images_dn_per_s"])) and np.all(npz["images_dn_per_s"] >= 0)
  assert os.path.getsize(os.path.join(out_dir, "grid.png")) > 0
  # The per-batch files of a run in progress are gone once samples.npz is written.
  assert sorted(os.listdir(out_dir)) == ["fits", "grid.png", "samples.npz"]

  fits_files = sorted(os.listdir(os.path.join(out_dir, "fits")))
  assert len(fits_files) == 6
  for i, name in enumerate(fits_files):
    m = sunpy.map.Map(os.path.join(out_dir, "fits", name))
    label = int(npz["labels"][m.meta["sampidx"]])
    assert m.meta["flarecls"] == FLARE_CLASSES[label] == name[0]
    assert m.meta["guidance"] == config.sampling.guidance_scale
    assert m.meta["sampler"] == config.sampling.sampler
    assert m.meta["nsteps"] == config.sampling.num_steps
    assert m.meta["seed"] == config.sampling.seed and m.meta["ckptstep"] == 2
    assert m.meta["batchsz"] == config.sampling.batch_size
    assert m.meta["ngrid"] == settings["grid_steps"]
    assert m.meta["synthetc"] is True
    assert m.unit == u.DN / u.s and m.wavelength == 171 * u.angstrom
    assert m.scale.axis1.to_value(u.arcsec / u.pix) == pytest.approx(0.6 * 4096 / res)
    np.testing.assert_allclose(m.data, npz["images_dn_per_s"][m.meta["sampidx"], ..., 0])
    assert m.meta["sampidx"] == i


def test_generate_is_reproducible_and_follows_its_arguments(trained):
  config, workdir = trained
  labels = np.array([0, 4, 2], np.int32)
  a = sample.generate(config, workdir, labels, seed=1)
  assert a.shape == (3, config.data.resolution, config.data.resolution, 1)
  assert np.all(np.isfinite(a))
  np.testing.assert_array_equal(sample.generate(config, workdir, labels, seed=1), a)
  assert not np.allclose(sample.generate(config, workdir, labels, seed=2), a)
  assert not np.allclose(sample.generate(config, workdir, labels, seed=1, guidance_scale=0.0), a)


def test_a_guidance_sweep_builds_one_sampler(trained, monkeypatch):
  config, workdir = trained
  from solar_ddpm_jax import samplers
  built = []
  real = samplers.make_sample_fn
  monkeypatch.setattr(samplers, "make_sample_fn", lambda *a, **k: built.append(1) or real(*a, **k))
  sample._SAMPLE_FN_CACHE.clear()
  labels = np.array([1, 3], np.int32)
  sweep = {w: sample.generate(config, workdir, labels, seed=1, guidance_scale=w)
           for w in (0.0, 1.0, 3.0)}
  assert len(built) == 1
  assert not np.allclose(sweep[0.0], sweep[3.0])
  sample._SAMPLE_FN_CACHE.clear()
  np.testing.assert_allclose(sample.generate(config, workdir, labels, seed=1, guidance_scale=1.0),
                             sweep[1.0], atol=1e-6)
  assert len(built) == 2
  three = sample.generate(config, workdir, labels, seed=1, num_steps=3)
  assert len(built) == 3
  # Alternating between two settings reuses both programs while they fit in the cache ...
  np.testing.assert_allclose(sample.generate(config, workdir, labels, seed=1, guidance_scale=1.0),
                             sweep[1.0], atol=1e-6)
  np.testing.assert_allclose(sample.generate(config, workdir, labels, seed=1, num_steps=3), three,
                             atol=1e-6)
  assert len(built) == 3
  # ... and rebuilds the least recently used one once it has been evicted.
  monkeypatch.setattr(sample, "_SAMPLE_FN_CACHE_SIZE", 1)
  sample.generate(config, workdir, labels, seed=1, num_steps=2)
  assert len(sample._SAMPLE_FN_CACHE) == 1
  sample.generate(config, workdir, labels, seed=1, num_steps=3)
  assert len(built) == 5


def test_sample_images_pads_to_whole_sharded_batches():
  mesh = sharding.create_mesh(None)
  seen = []

  def fake_sample_fn(params, labels, key):
    seen.append((labels.shape, labels.sharding.spec))
    return jax.numpy.broadcast_to(labels[:, None, None, None].astype(np.float32), (len(labels),
                                                                                  2, 2, 1))

  labels = np.arange(11, dtype=np.int32) % 5
  out = sample.sample_images(fake_sample_fn, None, labels, seed=0, batch_size=5, mesh=mesh)
  assert [s for s, _ in seen] == [(8,), (8,), (8,)]  # Batches of 5, 5, 1, padded to 8 devices.
  assert seen[0][1] == jax.sharding.PartitionSpec(("data", "fsdp"))
  np.testing.assert_array_equal(out[:, 0, 0, 0], labels)
  with pytest.raises(ValueError, match="not classes 0..4"):
    sample.sample_images(fake_sample_fn, None, [0, 5], seed=0, batch_size=5, mesh=mesh,
                         num_classes=5)
  with pytest.raises(ValueError, match="No labels"):
    sample.sample_images(fake_sample_fn, None, [], seed=0, batch_size=5, mesh=mesh)


def test_same_seed_is_bitwise_on_one_mesh_and_float32_close_across_device_counts():
  """10 images in batches of 4 on 1, 3 and 8 devices: the batches, keys and noise agree.

  A rerun on the same mesh gives bitwise the same images; another device count compiles another
  program, whose images agree to float32 rounding (about 1e-6 on CPU), not bitwise.
  """
  from solar_ddpm_jax import unet
  config = aia171.get_config("test")
  config.sampling.sampler, config.sampling.num_steps = "ddim", 2
  apply_fn = train.make_apply_fn(unet.create_model(config.model))
  schedule = diffusion.make_schedule(config.diffusion)
  params = jax.tree.map(lambda p: p + 0.05, unet.init_params(config.model, jax.random.key(0)))
  labels = np.arange(10, dtype=np.int32) % 5
  outs = {}
  for n in (1, 3, 8):
    mesh = sharding.create_mesh(None, devices=jax.devices()[:n])
    fn = samplers.make_sample_fn(apply_fn, schedule, config, mesh)
    run = lambda fn=fn, mesh=mesh: sample.sample_images(
        fn, jax.device_put(params, sharding.replicated(mesh)), labels, seed=3, batch_size=4,
        mesh=mesh, num_classes=5)
    outs[n] = run()
    if n == 8:
      np.testing.assert_array_equal(run(), outs[8])  # Same mesh, same machine: bitwise.
  for n in (3, 8):
    np.testing.assert_allclose(outs[n], outs[1], rtol=1e-5, atol=1e-5)
  assert not np.allclose(outs[1][:4], outs[1][4:8])  # Each batch has its own key.


def test_sample_sets_of_other_settings_get_their_own_folders(trained):
  config, workdir = trained
  tags = set()
  for sampler, eta, variance, clip, ema, batch in [("ddim", 0.0, "beta", False, True, 8),
                                                   ("ddim", 1.0, "beta", False, True, 8),
                                                   ("ddim", 0.0, "beta", False, True, 4),
                                                   ("ddpm", 0.0, "beta", False, True, 8),
                                                   ("ddpm", 0.0, "posterior", False, True, 8),
                                                   ("ddpm", 0.0, "beta", True, True, 8),
                                                   ("ddpm", 0.0, "beta", False, False, 8)]:
    cfg = sample.sampling_config(config, sampler=sampler, num_steps=4)
    cfg.sampling.eta, cfg.sampling.ddpm_variance = eta, variance
    cfg.sampling.clip_x0, cfg.sampling.use_ema, cfg.sampling.batch_size = clip, ema, batch
    tags.add(sample.settings_tag(cfg, 2))
  assert len(tags) == 7
  assert sample.settings_tag(sample.sampling_config(config, sampler="ddim", num_steps=4),
                             2) == "step2_ddim_n4_w3_seed0_b8_gi0.3-1"


def test_a_timestep_grid_and_the_guidance_convention_name_their_own_sample_sets(tmp_path):
  import hashlib
  base = sample.sampling_config(aia171.get_config("test"), sampler="ddim", num_steps=4)
  tags = {sample.settings_tag(base, 2)}
  for timesteps, convention in [((99, 50, 0), "project"), ((99, 49, 0), "project"),
                                ((), "published"), ((99, 50, 0), "published")]:
    cfg = base.copy_and_resolve_references()
    cfg.sampling.timesteps, cfg.sampling.guidance_convention = timesteps, convention
    tags.add(sample.settings_tag(cfg, 2))
    settings = sample.SampleSetWriter(str(tmp_path), cfg, 2, np.zeros(1, np.int32)).settings
    assert settings["timesteps"] == list(timesteps)
    assert settings["grid_steps"] == (len(timesteps) or 4)
    assert settings["guidance_convention"] == convention
  assert len(tags) == 5
  digest = hashlib.sha256(b"99,50,0").hexdigest()[:8]
  assert f"step2_ddim_n3_t{digest}_w3_seed0_b8_cfgpub_gi0.3-1" in tags  # The demo's interval.
  # A step count given per call (the classifier's synthetic images) asks for its own grid.
  cfg.sampling.timesteps = (99, 50, 0)
  assert sample.sampling_config(cfg, num_steps=5).sampling.timesteps == ()
  assert sample.sampling_config(cfg, guidance_scale=2.0).sampling.timesteps == (99, 50, 0)


def test_guidance_interval_and_rescale_name_their_own_sample_sets_and_programs(monkeypatch,
                                                                                tmp_path):
  import collections
  base = sample.sampling_config(aia171.get_config("test"), sampler="ddim", num_steps=4)
  built = []
  monkeypatch.setattr(samplers, "make_sample_fn", lambda *a: built.append(1) or (lambda: None))
  monkeypatch.setattr(sample, "_SAMPLE_FN_CACHE", collections.OrderedDict())
  tags = set()
  for interval, rescale in [((), 0.0), ((0.3, 1.0), 0.0), ((0.2, 1.0), 0.0), ((), 0.7),
                            ((0.3, 1.0), 0.7), ((0.3, 1.0), 0.7)]:
    cfg = base.copy_and_resolve_references()
    cfg.sampling.guidance_interval, cfg.sampling.guidance_rescale = interval, rescale
    tags.add(sample.settings_tag(cfg, 2))
    sample._sample_fn(cfg)
    settings = sample.SampleSetWriter(str(tmp_path), cfg, 2, np.zeros(1, np.int32)).settings
    assert settings["guidance_interval"] == list(interval)
    assert settings["guidance_rescale"] == rescale
  assert len(tags) == 5 and len(built) == 5  # The repeated settings reuse tag and program.
  assert "step2_ddim_n4_w3_seed0_b8_gi0.3-1_gr0.7" in tags


def test_the_compiled_sampler_cache_tells_grids_and_conventions_apart(monkeypatch):
  import collections
  built = []
  monkeypatch.setattr(samplers, "make_sample_fn", lambda *a: built.append(
      (a[2].sampling.timesteps, a[2].sampling.guidance_convention)) or object())
  monkeypatch.setattr(sample, "_SAMPLE_FN_CACHE", collections.OrderedDict())
  cfg = aia171.get_config("test")
  for timesteps, convention in [((), "project"), ((99, 0), "project"), ((99, 0), "project"),
                                ((99, 1), "project"), ((99, 1), "published")]:
    cfg.sampling.timesteps, cfg.sampling.guidance_convention = timesteps, convention
    sample._sample_fn(cfg)
  assert built == [
      ((), "project"), ((99, 0), "project"), ((99, 1), "project"), ((99, 1), "published")]


def test_a_rerun_replaces_the_fits_files_of_the_last(trained):
  config, workdir = trained
  cfg = config.copy_and_resolve_references()
  cfg.sampling.num_steps, cfg.sampling.num_per_class, cfg.sampling.classes = 2, 2, "A,M"
  out = sample.sample_and_save(cfg, workdir)
  assert len(os.listdir(os.path.join(out, "fits"))) == 4
  cfg.sampling.num_per_class, cfg.sampling.classes = 1, "X"
  assert sample.sample_and_save(cfg, workdir) == out
  assert sorted(os.listdir(os.path.join(out, "fits"))) == ["X_00000_171.fits"]
  cfg.sampling.classes = ""
  with pytest.raises(ValueError, match="at least one of A,B,C,M,X"):
    sample.sample_and_save(cfg, workdir)


def test_fits_headers_say_how_many_steps_the_grid_took(trained):
  """A grid can hold fewer points than asked for (all T of them when more are asked): both noted."""
  import sunpy.map
  config, workdir = trained
  num_timesteps = int(config.diffusion.num_timesteps)
  cfg = sample.sampling_config(config, sampler="dpm_solver++", num_steps=num_timesteps + 50)
  cfg.sampling.classes, cfg.sampling.num_per_class = "B", 1
  out = sample.sample_and_save(cfg, workdir)
  settings = json.loads(str(np.load(os.path.join(out, "samples.npz"))["settings"]))
  assert settings["grid_steps"] == num_timesteps and settings["num_steps"] == num_timesteps + 50
  m = sunpy.map.Map(os.path.join(out, "fits", "B_00000_171.fits"))
  assert m.meta["ngrid"] == num_timesteps and m.meta["nsteps"] == num_timesteps + 50


def test_parse_classes():
  assert sample.parse_classes("A, m,X") == [0, 3, 4]
  with pytest.raises(ValueError, match="Unknown flare classes"):
    sample.parse_classes("A,Q")
