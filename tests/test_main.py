"""The command line: settings refused up front by name, the default workdir, user errors as one
message and an exit status, bugs with their traceback."""

import errno
import os
import subprocess
import sys

import pytest

from configs import aia171
from solar_ddpm_jax import errors, input_pipeline, main, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "aia171.py")


def _set(config, name, value):
  *groups, key = name.split(".")
  for group in groups:
    config = config[group]
  config[key] = value


@pytest.mark.parametrize("preset,name,value,expected", [
    ("test", "training.batch_size", 0, r"training\.batch_size=0: allowed values are integers >= 1"),
    ("test", "training.batch_size", -8, r"training\.batch_size=-8"),
    ("test", "sampling.batch_size", 0, r"sampling\.batch_size=0: allowed values are integers"),
    ("test", "training.learning_rate", 0.0, r"training\.learning_rate=0\.0: .* > 0"),
    ("test", "training.num_train_steps", -1, r"training\.num_train_steps=-1: .* >= 0"),
    ("test", "training.ema_decay", 1.0, r"training\.ema_decay=1\.0: .*\[0, 1\)"),
    ("test", "diffusion.label_dropout", 1.5, r"diffusion\.label_dropout=1\.5: .*\[0, 1\]"),
    ("test", "model.image_size", 15, r"model\.image_size=15: allowed values are multiples of 2"),
    ("test", "model.in_channels", 2, r"model\.in_channels=2 with data\.channels=\(171,\)"),
    ("test", "data.resolution", 24, r"data\.resolution=24 with data\.synthetic\.image_size=64"),
    ("test", "sampling.guidance_scale", -1.0,
     r"sampling\.guidance_scale=-1\.0: allowed values are numbers >= 0 .*"
     r"--config\.sampling\.allow_negative_guidance=True"),
    ("test", "evaluation.guidance_scales", (0.0, -2.0), r"evaluation\.guidance_scales\[1\]=-2\.0"),
    ("test", "classifier.synthetic_guidance", -3.0, r"classifier\.synthetic_guidance=-3\.0"),
    ("test", "sampling.guidance_scale", float("nan"), r"sampling\.guidance_scale=nan: .* finite"),
    ("test", "sampling.classes", "A,Q", r"sampling\.classes='A,Q': .* A,B,C,M,X"),
    ("test", "data.source", "fits", r"data\.source='fits': allowed values are 'manual', "),
    ("demo", "data.manual_dir", "/data/aia",
     r"data\.manual_dir='/data/aia' is not read with data\.source='synthetic' \(the demo preset.*"
     r"add --config\.data\.source=manual"),
])
def test_check_refuses_a_bad_setting_by_name_and_allowed_values(preset, name, value, expected,
                                                                tmp_path):
  config = aia171.get_config(preset)
  _set(config, name, value)
  with pytest.raises(errors.SettingsError, match=expected):
    settings.check(config, str(tmp_path / "run"), "train")


def test_negative_guidance_needs_the_explicit_flag_and_problems_are_listed_together(tmp_path):
  config = aia171.get_config("test")
  config.sampling.guidance_scale = -1.0
  config.evaluation.guidance_scales = (-1.0, 0.0, 3.0)
  config.sampling.allow_negative_guidance = True
  settings.check(config, str(tmp_path), "sample")  # Allowed.
  config.training.batch_size = 0
  config.sampling.batch_size = 0
  with pytest.raises(errors.SettingsError, match=r"^2 settings are not allowed:\n") as e:
    settings.check(config, str(tmp_path), "train")
  assert "training.batch_size=0" in str(e.value) and "sampling.batch_size=0" in str(e.value)


def test_check_refuses_a_workdir_that_is_a_file_or_cannot_be_written(tmp_path):
  config = aia171.get_config("test")
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  with pytest.raises(errors.SettingsError, match=r"--workdir=.*a_file is a file: allowed values "
                     "are directories"):
    settings.check(config, str(a_file), "train")
  with pytest.raises(errors.SettingsError, match=r"a_file is a file, so the directory cannot be"):
    settings.check(config, str(a_file / "run"), "sample")
  if os.path.isdir("/sys"):  # Not writable, also for root (chmod does not stop root).
    with pytest.raises(errors.SettingsError, match=r"--workdir=/sys/run .* cannot be written"):
      settings.check(config, "/sys/run", "train")
  settings.check(config, str(a_file), "build_data")  # Writes under data.data_dir only.
  settings.check(config, str(tmp_path / "new" / "run"), "train")  # Created by the run.
  assert not (tmp_path / "new").exists()  # The check writes nothing.


@pytest.fixture
def run_main(monkeypatch):
  """Runs main.main with command-line flags in this process; the mode function is `mode_fn`."""
  calls = []

  def run(mode_fn, *flags):
    def fake(config, workdir):
      calls.append(workdir)
      mode_fn()

    monkeypatch.setitem(main.MODES, "train", fake)
    _main_with_flags(monkeypatch, f"--config={CONFIG}:test", *flags)

  run.calls = calls
  return run


def _main_with_flags(monkeypatch, *flags):
  """main.main with these command-line flags (and one process), in this process."""
  argv = ["main", *flags, "--config.mesh.distributed=off"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv.
  main.FLAGS.unparse_flags()
  main.FLAGS(argv)
  try:
    main.main(["main"])
  finally:
    main.FLAGS.unparse_flags()
    for name in [n for n in main.FLAGS if n.startswith("config.")]:
      delattr(main.FLAGS, name)  # Override flags are defined anew by each parse.


def _raise(error):
  def fn():
    raise error
  return fn


def test_user_errors_end_with_one_message_and_a_status_bugs_keep_their_traceback(
    run_main, capsys, tmp_path):
  from tfds_aia import fetch, fits_io, goes
  workdir = f"--workdir={tmp_path}"
  user_errors = [
      (errors.SettingsError("data.data_dir=/x holds another build"), 2),
      (errors.UserError("weights file /w.pth is missing"), 1),
      (input_pipeline.LabelRangeError("labels [7] outside 0..4"), 1),
      (FileNotFoundError("No checkpoint under /w/checkpoints: train first (--mode=train)."), 1),
      (fits_io.BadFileError("/d/a.fits", "no EXPTIME keyword"), 1),
      (fetch.OfflineError("Cannot reach sdac.virtualsolar.org:443"), 1),
      (goes.GoesGapError("no valid GOES 1-8 A flux within 60 s"), 1),
  ]
  for error, status in user_errors:
    with pytest.raises(SystemExit) as e:
      run_main(_raise(error), workdir)
    assert e.value.code == status, error
    assert capsys.readouterr().err == f"error: {error}\n"
  bugs = [RuntimeError("a bug"), ValueError("a bug"), KeyError("a bug"),
          FileNotFoundError(errno.ENOENT, "No such file or directory", "/internal")]
  for bug in bugs:
    with pytest.raises(type(bug)):
      run_main(_raise(bug), workdir)
    assert "error:" not in capsys.readouterr().err


def test_a_bad_setting_stops_before_the_mode_runs_and_the_workdir_defaults_to_the_preset(
    run_main, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    run_main(lambda: None, "--config.training.batch_size=0")
  assert e.value.code == 2 and not run_main.calls
  assert "error: training.batch_size=0: allowed values are integers >= 1" in capsys.readouterr().err
  run_main(lambda: None)
  assert run_main.calls == [os.path.join("workdir", "test")]


def _command_line(tmp_path, *flags):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "solar_ddpm_jax.main", *flags], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=120)


def test_command_line_logs_the_default_workdir_and_refuses_a_bad_setting_without_traceback(
    tmp_path):
  proc = _command_line(tmp_path, f"--config={CONFIG}:test", "--config.training.batch_size=0")
  assert proc.returncode == 2, proc.stderr
  workdir = os.path.join(os.path.realpath(tmp_path), "workdir", "test")
  assert f"workdir: {workdir}" in proc.stderr
  assert "error: training.batch_size=0: allowed values are integers >= 1." in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(workdir)  # Refused before anything is written.


def test_command_line_demo_preset_refuses_manual_dir_naming_the_source_setting(tmp_path):
  proc = _command_line(tmp_path, f"--config={CONFIG}:demo",
                       f"--config.data.manual_dir={tmp_path}/fits")
  assert proc.returncode == 2, proc.stderr
  assert "error: data.manual_dir=" in proc.stderr
  assert "add --config.data.source=manual" in proc.stderr and "Traceback" not in proc.stderr


def test_no_dataset_to_read_or_build_is_a_settings_error(tmp_path):
  config = aia171.get_config("test")
  config.data.source, config.data.data_dir = "manual", str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "no_such_folder")
  with pytest.raises(errors.SettingsError, match=r"data\.manual_dir=.*no_such_folder does not "
                     r"exist or is empty, and there is no dataset in data\.data_dir="):
    input_pipeline.build_dataset(config)
  config.data.manual_dir = ""
  with pytest.raises(errors.SettingsError, match=r"Pass --config\.data\.manual_dir=FOLDER"):
    input_pipeline.build_dataset(config)


def test_the_console_script_lists_the_flags_in_its_help(tmp_path):
  """`solar-ddpm --help` (the pyproject entry point, a script calling main.run) names the flags;
  absl lists only the started program's own flags, which for a script were none."""
  script = tmp_path / "solar-ddpm"
  script.write_text("from solar_ddpm_jax.main import run\nrun()\n")
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  for flag in ("--config:", "--workdir:", "--mode:"):  # (absl's --help exits with status 1.)
    assert flag in proc.stdout, proc.stdout


def test_every_mode_is_a_function_whose_import_and_call_a_static_reader_can_follow():
  """Each mode is a plain function importing its module and calling a function defined there."""
  import ast
  import inspect
  assert set(main.MODES) == {"train", "demo", "sample", "build_data", "export_features",
                             "evaluate", "augment_experiment", "convert"}
  for mode, fn in main.MODES.items():
    assert callable(fn), mode
    body = ast.parse(inspect.getsource(fn)).body[0].body
    (imported,) = [n for n in body if isinstance(n, ast.ImportFrom)]
    (call,) = [n.value for n in body if isinstance(n, ast.Expr)]
    module = f"{imported.module}.{call.func.value.id}"
    assert [a.name for a in imported.names] == [call.func.value.id], mode
    with open(os.path.join(REPO, *module.split(".")) + ".py") as f:
      tree = ast.parse(f.read())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
        a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert call.func.attr in defined, (mode, module, call.func.attr)


@pytest.mark.parametrize("preset,expected", [("demo", "demo"), ("demo_modern", "demo"),
                                             ("test", "train"), ("paper", "train")])
def test_auto_mode_runs_the_whole_demo_for_the_demo_presets(preset, expected, monkeypatch,
                                                            tmp_path):
  ran = []
  for mode in ("demo", "train"):
    monkeypatch.setitem(main.MODES, mode, lambda config, workdir, mode=mode: ran.append(mode))
  _main_with_flags(monkeypatch, f"--config={CONFIG}:{preset}", f"--workdir={tmp_path}")
  assert ran == [expected]
