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
