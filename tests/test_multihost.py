"""Two processes on this machine (CPU, loopback coordinator, gloo) train together and agree."""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reserved_port() -> socket.socket:
  """A socket bound to a free loopback port, to hold while the processes start.

  A port only looked up (bound, then closed) stays free for the seconds the processes take to
  start, and any connection on the machine may take it as its local port meanwhile: process 0's
  coordinator then fails to start ("Failed to start RPC server") and process 1 waits for it until
  the timeout. A held port is not given to others; with SO_REUSEPORT (which gRPC's server sets
  too) the coordinator can still bind it.
  """
  s = socket.socket()
  if hasattr(socket, "SO_REUSEPORT"):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(("127.0.0.1", 0))
  return s


def _run_two(module, *args, returncode=0, timeout=600):
  """Runs `module` as processes 0 and 1; returns their stderr tails. `timeout`: seconds for both
  together (the two-process training took 285 s on 2 CPU cores shared with other work)."""
  with _reserved_port() as reserved:
    return _run_two_on(reserved.getsockname()[1], module, *args, returncode=returncode,
                       timeout=timeout)


def _run_two_on(port, module, *args, returncode, timeout):
  deadline = time.monotonic() + timeout
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  for name in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS"):
    env.pop(name, None)
  procs = [subprocess.Popen([sys.executable, "-m", module, str(i), str(port), *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
           for i in range(2)]
  errors = []
  for p in procs:
    try:
      _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    errors.append(err[-3000:])
  assert [p.returncode for p in procs] == [returncode] * 2, "\n".join(errors)
  return errors


def test_a_reserved_port_is_free_for_the_coordinator_only():
  """While the test holds the port, a socket of another program cannot bind it (so no connection
  takes it as its local port either), and a server with SO_REUSEPORT, as gRPC's, can."""
  with _reserved_port() as reserved:
    port = reserved.getsockname()[1]
    with socket.socket() as other, pytest.raises(OSError):
      other.bind(("127.0.0.1", port))
    if hasattr(socket, "SO_REUSEPORT"):
      with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        server.bind(("0.0.0.0", port))  # As the coordinator binds: every address.
        server.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
          pass


def test_hosts_without_a_shared_data_dir_build_the_same_data_and_gather_features(tmp_path):
  prefix = str(tmp_path / "out_")
  _run_two("tests._helpers.multihost_data", tmp_path / "data", prefix)
  out = [np.load(f"{prefix}{i}.npz") for i in range(2)]
  assert os.listdir(tmp_path / "data" / "host0") and os.listdir(tmp_path / "data" / "host1")
  np.testing.assert_array_equal(out[0]["image"], out[1]["image"])
  np.testing.assert_array_equal(out[0]["flare_class"], out[1]["flare_class"])
  images = out[0]["image"][:13]
  expected = images.reshape(len(images), -1).astype(np.float64) @ out[0]["w"]
  for o in out:  # Every process gets all 13 features, gathered from the 4 devices of 2 hosts.
    assert o["features"].shape == (13, 3)
    np.testing.assert_allclose(o["features"], expected, rtol=1e-4, atol=1e-4)


def test_a_host_that_finds_the_shared_dataset_built_still_joins_the_build_barriers(tmp_path):
  prefix = str(tmp_path / "out_")
  _run_two("tests._helpers.multihost_data", tmp_path / "data", prefix, "shared_late")
  assert os.listdir(tmp_path / "data") == ["shared"]
  out = [np.load(f"{prefix}{i}.npz") for i in range(2)]
  np.testing.assert_array_equal(out[0]["image"], out[1]["image"])
  np.testing.assert_allclose(out[0]["features"], out[1]["features"])


def test_every_host_stops_when_there_is_no_dataset_and_no_manual_dir(tmp_path):
  """No process waits in a build barrier for a build that cannot happen."""
  errors = _run_two("tests._helpers.multihost_data", tmp_path / "data", str(tmp_path / "out_"),
                    "no_manual_dir", returncode=3, timeout=120)
  assert all("--config.data.manual_dir" in e for e in errors), errors


def test_every_host_stops_when_process_0_fails_to_build_the_dataset(tmp_path):
  """Process 1 is told of process 0's failure instead of waiting for it in a barrier."""
  errors = _run_two("tests._helpers.multihost_data", tmp_path / "data", str(tmp_path / "out_"),
                    "empty_manual_dir", returncode=3, timeout=120)
  assert "does not exist or is empty" in errors[0], errors[0]
  assert "building the dataset failed on process 0" in errors[1], errors[1]


def test_every_host_stops_when_one_holds_a_dataset_of_other_settings(tmp_path):
  from solar_ddpm_jax import input_pipeline
  other = aia171.get_config("test")
  raw = str(tmp_path / "data" / "raw")
  input_pipeline._write_synthetic_archive(other, raw)  # A manual archive both hosts build from.
  other.data.source, other.data.manual_dir = "manual", raw
  other.data.frame_px = other.data.synthetic.image_size
  other.data.data_dir = str(tmp_path / "data" / "host1")
  other.data.dn_ceiling = (2000.0,)
  input_pipeline.build_dataset(other)
  errors = _run_two("tests._helpers.multihost_data", tmp_path / "data", str(tmp_path / "out_"),
                    "other_settings", returncode=3, timeout=240)
  assert "built with other data settings" in errors[1], errors[1]
  assert "checking the dataset's data settings failed on process 1" in errors[0], errors[0]


def test_every_host_stops_when_one_lacks_the_dataset_and_none_can_build(tmp_path):
  """Process 0 has the dataset but must not train on alone while process 1 has stopped."""
  from solar_ddpm_jax import input_pipeline
  built = aia171.get_config("test")
  raw = str(tmp_path / "data" / "raw")
  input_pipeline._write_synthetic_archive(built, raw)
  built.data.source, built.data.manual_dir = "manual", raw
  built.data.frame_px = built.data.synthetic.image_size
  built.data.data_dir = str(tmp_path / "data" / "host0")
  input_pipeline.build_dataset(built)
  errors = _run_two("tests._helpers.multihost_data", tmp_path / "data", str(tmp_path / "out_"),
                    "one_host_has_it", returncode=3, timeout=240)
  assert "--config.data.manual_dir" in errors[1], errors[1]
  assert "finding the dataset failed on process 1" in errors[0], errors[0]


def test_two_processes_train_together_and_agree(tmp_path):
  workdir, prefix = tmp_path / "run", str(tmp_path / "params_")
  _run_two("tests._helpers.multihost_train", workdir, prefix)

  out = [np.load(f"{prefix}{i}.npz") for i in range(2)]
  names = [k for k in out[0].files if k.startswith("arr_")]
  assert names and int(out[0]["step"]) == int(out[1]["step"]) == 4
  for k in names:
    np.testing.assert_array_equal(out[0][k], out[1][k], err_msg=k)  # Same params everywhere.
  assert bool(out[0]["restored_equal"]) and bool(out[1]["restored_equal"])  # Collective ckpt.

  config = aia171.get_config("test")
  init = jax.tree.leaves(unet.init_params(config.model, jax.random.key(config.seed)))
  assert len(init) == len(names)
  assert any(not np.allclose(np.asarray(a), out[0][k]) for a, k in zip(init, names, strict=True))

  files = os.listdir(workdir)
  assert sum(f.startswith("events.out.tfevents") for f in files) == 1  # Only process 0 logs.
  assert os.path.exists(workdir / "samples" / "grid_step0000004.png")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
