"""The demo's report (always written, evaluation or not) and, marked slow, the whole demo."""

import glob
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import demo, metrics_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_metrics(workdir, losses):
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for i, loss in enumerate(losses):
      f.write(json.dumps({"step": 10 * (i + 1), "loss": loss}) + "\n")
    f.write(json.dumps({"step": 10 * len(losses), "eval_loss": losses[-1]}) + "\n")


def test_report_has_loss_curve_grid_and_timings(tmp_path):
  _write_metrics(str(tmp_path), [0.9, 0.5, 0.2])
  sample_dir = tmp_path / "samples" / "step30_ddim"
  sample_dir.mkdir(parents=True)
  path = demo.write_report(aia171.get_config("test"), str(tmp_path), str(sample_dir),
                           timings_s={"train": 12.0}, evaluation_note="Evaluation skipped.")
  text = open(path).read()
  assert "from 0.9000" in text and "to 0.2000" in text and "step 30" in text
  assert "![samples](samples/step30_ddim/grid.png)" in text and "![loss](loss.png)" in text
  assert "| train | 12 |" in text and "Evaluation skipped." in text
  assert os.path.getsize(tmp_path / "loss.png") > 0


def test_evaluation_failure_or_absence_never_stops_the_demo(monkeypatch, tmp_path):
  config = aia171.get_config("test")
  broken = types.ModuleType("solar_ddpm_jax.evaluation.report")

  def evaluate(config, workdir):
    raise RuntimeError("no weights")

  broken.evaluate = evaluate
  monkeypatch.setitem(sys.modules, "solar_ddpm_jax.evaluation.report", broken)
  assert "failed (RuntimeError: no weights)" in demo._try_evaluation(config, str(tmp_path))
  empty = types.ModuleType("solar_ddpm_jax.evaluation.report")
  monkeypatch.setitem(sys.modules, "solar_ddpm_jax.evaluation.report", empty)
  assert "not available" in demo._try_evaluation(config, str(tmp_path))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
  """The README command: checkpoints, TensorBoard events, PNG grids, FITS, report; loss falls."""
  import sunpy.map
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # The demo runs as a user would: one CPU device.
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  workdir = tmp_path / "demo"
  proc = subprocess.run([sys.executable, "-m", "solar_ddpm_jax.main",
                         "--config=configs/aia171.py:demo", f"--workdir={workdir}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert glob.glob(str(workdir / "events.out.tfevents.*"))
  assert os.listdir(workdir / "checkpoints")
  assert glob.glob(str(workdir / "samples" / "grid_step*.png"))
  assert glob.glob(str(workdir / "samples" / "*" / "grid.png"))
  fits_files = glob.glob(str(workdir / "samples" / "*" / "fits" / "*.fits"))
  config = aia171.get_config("demo")
  assert len(fits_files) == 5 * config.sampling.num_per_class
  m = sunpy.map.Map(fits_files[0])
  assert m.meta["synthetc"] is True and m.data.shape == (32, 32)
  losses = [r["loss"] for r in metrics_log.read_metrics(str(workdir)) if "loss" in r]
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
  assert os.path.exists(workdir / "report.md")
  npz = np.load(glob.glob(str(workdir / "samples" / "*" / "samples.npz"))[0])
  images = npz["images"][..., 0]
  disc, corners = images[:, 12:20, 12:20].mean(), images[:, :4, :4].mean()
  assert disc > corners + 0.5, (disc, corners)  # Samples show a bright disc on a dark sky.
