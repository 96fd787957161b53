"""configs/aia171.py and the command line: presets, comments on every field, --help, bad input."""

import ast
import os
import subprocess
import sys

import pytest

from configs import aia171

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ("data", "model", "diffusion", "training", "sampling", "evaluation", "classifier", "mesh")


def test_every_field_set_in_get_config_has_a_comment():
  path = os.path.join(REPO, "configs", "aia171.py")
  lines = open(path).read().splitlines()
  tree = ast.parse("\n".join(lines))
  get_config = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                    and n.name == "get_config")
  missing = []
  for node in ast.walk(get_config):
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
      line = lines[node.end_lineno - 1]
      if "#" not in line and "ConfigDict()" not in line:  # Groups are headed by a comment line.
        missing.append(line.strip())
  assert not missing, missing


@pytest.mark.parametrize("preset", aia171.PRESETS)
def test_presets_have_every_group_and_consistent_shapes(preset):
  config = aia171.get_config(preset)
  assert config.preset == preset
  for group in GROUPS:
    assert group in config
  assert len(config.data.dn_ceiling) == len(config.data.channels) == config.model.in_channels
  assert config.model.out_channels == config.model.in_channels
  assert config.sampling.sampler in ("ddpm", "ddim", "dpm_solver++")


def test_paper_preset_is_the_published_setup():
  c = aia171.get_config()  # The default preset.
  assert c.preset == "paper"
  assert (c.model.image_size, c.model.in_channels, c.model.base_channels) == (64, 1, 64)
  assert tuple(c.model.channel_mult) == (1, 2, 4, 4) and c.model.bottleneck_mult == 8
  assert (c.diffusion.num_timesteps, c.diffusion.beta_schedule, c.diffusion.prediction) == (
      1000, "linear", "eps")
  assert (c.diffusion.beta_start, c.diffusion.beta_end) == (1e-4, 0.02)
  assert c.sampling.guidance_scale == 3.0 and c.diffusion.label_dropout == 0.1
  assert (c.training.learning_rate, c.training.ema_decay) == (3e-4, 0.995)
  assert c.sampling.guidance_rescale == 0.0 and tuple(c.sampling.guidance_interval) == ()


def test_unknown_preset_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown preset 'huge'.*paper"):
    aia171.get_config("huge")


def test_main_help_and_missing_flags():
  env = dict(os.environ, PYTHONPATH=REPO)
  help_out = subprocess.run([sys.executable, "-m", "solar_ddpm_jax.main", "--help"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
  assert help_out.returncode in (0, 1), help_out.stderr  # absl exits 1 after --help.
  assert "Traceback" not in help_out.stderr and "export_features" in help_out.stdout
  for flag in ("--config", "--workdir", "--mode"):
    assert flag in help_out.stdout
  assert "workdir/<preset>" in help_out.stdout  # --workdir is optional, with this default.
  missing = subprocess.run([sys.executable, "-m", "solar_ddpm_jax.main", "--mode=sample"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert missing.returncode != 0 and "--config" in missing.stderr
  assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("preset", aia171.PRESETS)
def test_presets_pass_the_up_front_settings_checks(preset, tmp_path):
  from solar_ddpm_jax import settings
  assert settings.problems(aia171.get_config(preset), str(tmp_path), "train") == []
  assert aia171.get_config(preset).sampling.allow_negative_guidance is False


def _parse_flags(monkeypatch, *argv):
  """The config of a command line, parsed as solar_ddpm_jax.main parses it (config_flags)."""
  from absl import flags
  from ml_collections import config_flags
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  monkeypatch.setattr(sys, "argv", ["main", *argv])  # config_flags reads overrides from argv.
  values(sys.argv)
  return values.config


@pytest.mark.parametrize("preset", aia171.PRESETS)
def test_model_shape_follows_the_data_settings(preset):
  config = aia171.get_config(preset)
  assert config.model.image_size == config.data.resolution
  assert config.model.in_channels == config.model.out_channels == len(config.data.channels)
  config.data.resolution = 2 * config.data.resolution
  config.data.channels = (171, 193, 211)
  assert config.model.image_size == config.data.resolution
  assert config.model.in_channels == config.model.out_channels == 3
  config.model.image_size = 48  # One value: setting the model's sets the data's.
  assert config.data.resolution == 48
  saved = config.model.to_dict()  # What checkpoints and reports record: plain numbers.
  assert (saved["image_size"], saved["in_channels"], saved["out_channels"]) == (48, 3, 3)


def test_command_line_data_overrides_change_the_model(monkeypatch, tmp_path):
  from solar_ddpm_jax import settings
  path = os.path.join(REPO, "configs", "aia171.py")
  config = _parse_flags(monkeypatch, f"--config={path}:demo", "--config.data.resolution=64",
                        "--config.data.channels=(171,193)", "--config.data.dn_ceiling=(1.,2.)")
  assert (config.data.resolution, config.model.image_size) == (64, 64)
  assert (config.model.in_channels, config.model.out_channels) == (2, 2)
  assert settings.problems(config, str(tmp_path), "train") == []
  config = _parse_flags(monkeypatch, f"--config={path}:res128", "--config.model.image_size=256")
  assert config.data.resolution == 256
  # A channel count set apart from data.channels no longer follows it: refused up front.
  config = _parse_flags(monkeypatch, f"--config={path}:multichannel",
                        "--config.model.out_channels=1")
  assert config.model.in_channels == 4
  found = settings.problems(config, str(tmp_path), "train")
  assert len(found) == 1 and "model.out_channels=1" in found[0]
  assert "data.channels=(171, 193, 211, 304)" in found[0]


def test_missing_settings_take_the_preset_values_in_one_place():
  from solar_ddpm_jax import settings
  old = aia171.get_config("demo")  # As a config file of an older version would lack them.
  del old.sampling["guidance_convention"], old.evaluation["bright_quantile"], old["convert"]
  old.training.batch_size = 5  # Present settings are kept.
  old.lock()
  added = settings.with_defaults(old)
  assert added == ["convert", "evaluation.bright_quantile", "sampling.guidance_convention"]
  demo = aia171.get_config("demo")
  assert old.sampling.guidance_convention == demo.sampling.guidance_convention
  assert old.evaluation.bright_quantile == demo.evaluation.bright_quantile
  assert old.convert.to_dict() == demo.convert.to_dict() and old.training.batch_size == 5
  assert settings.with_defaults(old) == []
  with old.unlocked():
    del old.sampling["guidance_convention"]
  with pytest.raises(AttributeError, match="guidance_convention"):
    _ = old.sampling.guidance_convention  # Read without the fill: an error, not a default.


def test_dataset_builder_defaults_are_the_paper_preset_values():
  """tfds_aia builds without a config too (`tfds build`): its defaults are configs/aia171.py's."""
  from tfds_aia import builder
  data = aia171.get_config("paper").data
  defaults = {**builder.DEFAULT_SETTINGS, **builder.SDOML_SETTINGS, **builder.RUNTIME_SETTINGS}
  del defaults["frame_source"]  # Not a setting: "sdoml" with data.source="sdoml".
  differ = {k: (v, data[k]) for k, v in defaults.items()
            if (tuple(v) if isinstance(v, tuple) else v) != (
                tuple(data[k]) if isinstance(data[k], tuple | list) else data[k])}
  assert not differ
  assert builder.settings_from_config(data) == builder.DEFAULT_SETTINGS


def test_guidance_shape_settings_are_checked_up_front(monkeypatch, tmp_path):
  from solar_ddpm_jax import settings
  path = os.path.join(REPO, "configs", "aia171.py")
  config = _parse_flags(monkeypatch, f"--config={path}:demo",
                        "--config.sampling.guidance_interval=(0.2,1.0)",
                        "--config.sampling.guidance_rescale=0.5")
  assert settings.problems(config, str(tmp_path), "sample") == []
  config.sampling.guidance_interval = (0.8, 0.2)
  config.sampling.guidance_rescale = 2.0
  found = settings.problems(config, str(tmp_path), "sample")
  assert len(found) == 1 and "sampling.guidance_rescale=2.0" in found[0]
  config.sampling.guidance_rescale = 0.0
  found = settings.problems(config, str(tmp_path), "sample")
  assert len(found) == 1 and "sampling.guidance_interval=(0.8, 0.2)" in found[0]


def test_demo_modern_is_the_demo_with_modern_blocks_and_balanced_batches():
  demo, modern = aia171.get_config("demo"), aia171.get_config("demo_modern")
  assert (demo.model.block_style, modern.model.block_style) == ("paper", "modern")
  assert (demo.data.class_balanced, modern.data.class_balanced) == (False, True)
  assert (demo.model.class_embed_init, modern.model.class_embed_init) == ("default", "unit")
  demo.model.block_style, demo.preset = "modern", "demo_modern"
  demo.data.class_balanced, demo.model.class_embed_init = True, "unit"
  assert demo.to_dict() == modern.to_dict()  # Every other setting is the demo's.
