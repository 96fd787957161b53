"""mesh.cpu_convolutions: the XLA:CPU flags the library sets before the backend starts.

Each case runs in a fresh interpreter: XLA reads XLA_FLAGS once, when the backend starts, and the
test process's backend is already running.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASE = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = sys.argv[1]
from configs import aia171
from solar_ddpm_jax import sharding
config = aia171.get_config("test")
config.mesh.cpu_convolutions = sys.argv[2]
if sys.argv[3] == "late":
    import jax.numpy as jnp
    jnp.ones(1).block_until_ready()  # The backend starts before the flags are set.
added = sharding.configure_xla_cpu(config.mesh)
import jax
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jax.ShapeDtypeStruct((2, 16, 16, 32), "float32"),
                 jax.ShapeDtypeStruct((3, 3, 32, 32), "float32")).compile().as_text()
print("RESULT " + json.dumps({"added": added, "xla_flags": os.environ["XLA_FLAGS"],
                              "ynnpack_conv": "__ynn_fusion" in hlo,
                              "devices": jax.device_count()}))
"""


def _run(xla_flags: str, choice: str, when: str = "early") -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", CASE, xla_flags, choice, when], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_eigen_moves_convolutions_off_ynnpack_and_keeps_the_users_flags():
  eigen = _run("--xla_force_host_platform_device_count=2", "eigen")
  assert eigen["added"] and eigen["added"] in eigen["xla_flags"]
  assert eigen["xla_flags"].startswith("--xla_force_host_platform_device_count=2 ")
  assert eigen["devices"] == 2  # The user's flag still applies.
  assert not eigen["ynnpack_conv"]
  ynnpack = _run("--xla_force_host_platform_device_count=2", "ynnpack")
  assert ynnpack["added"] == "" and ynnpack["ynnpack_conv"]  # XLA's default.


def test_a_flag_the_user_set_wins():
  own = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  got = _run(own, "eigen")
  assert got["added"] == "" and got["xla_flags"] == own and got["ynnpack_conv"]


def test_too_late_is_reported_not_applied():
  got = _run("", "eigen", when="late")
  assert got["added"] == "" and got["ynnpack_conv"]


def test_unknown_choice_is_an_error():
  from configs import aia171
  from solar_ddpm_jax import sharding
  config = aia171.get_config("test")
  config.mesh.cpu_convolutions = "mkl"
  with pytest.raises(ValueError, match="mesh.cpu_convolutions='mkl'"):
    sharding.configure_xla_cpu(config.mesh)
