"""Test set-up: 8 virtual CPU devices, TensorFlow off the GPU, no network, and no use of the user's
home folder: every library's data, config and cache folder lies in one temporary folder.
"""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

from tests._helpers import isolation

# Before TensorFlow, TFDS, matplotlib, sunpy or astropy is imported: each reads its folder once.
SCRATCH = tempfile.mkdtemp(prefix="solar_ddpm_jax_tests_")
_OWNER = os.getpid()  # A forked child that exits through atexit must not remove it.
atexit.register(lambda: os.getpid() == _OWNER and shutil.rmtree(SCRATCH, ignore_errors=True))
REDIRECTED = isolation.redirect(SCRATCH)
REAL_HOME = os.path.expanduser("~")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes this process makes into the home folders the libraries default to, or next to the
# repository (a relative path), fail the test that made them (see home_and_repo_untouched).
WRITES = isolation.WriteRecorder(
    [os.path.join(REAL_HOME, d) for d in isolation.HOME_DEFAULTS] + [REPO],
    ignored=[sys.prefix, SCRATCH])
WRITES.start()

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow first, at a shallow stack: pytest rewrites TensorFlow's own test_util.py (its name
# matches test_*.py), and CPython 3.11 can fail that compile when the first import of TensorFlow
# happens deep inside a test ("SystemError: AST constructor recursion depth mismatch").
import tensorflow  # noqa: E402, F401
from astropy.utils import iers  # noqa: E402

from solar_ddpm_jax import sharding  # noqa: E402

sharding.configure_xla_cpu()  # The XLA:CPU settings of the command line (mesh.cpu_convolutions).
# astropy's bundled leap-second table only: past its expiry date astropy would download a new one
# (network, and a file in its cache) in every test that converts UTC times.
iers.conf.auto_download = False


def pytest_configure(config):
  if config.option.basetemp:  # tmp_path's root, wherever --basetemp puts it.
    WRITES.ignore(config.option.basetemp)


@pytest.fixture(autouse=True)
def home_and_repo_untouched(request):
  """Fails a test (at teardown) that wrote into the user's home folders or the repository."""
  before = WRITES.take()  # Writes between tests (module imports, collection, fixtures).
  WRITES.context = request.node.nodeid
  yield
  WRITES.context = "set-up or teardown between tests"
  written = before + WRITES.take()
  if written:
    pytest.fail("The tests must write only under their temporary folders (tmp_path; the library "
                f"folders redirected to {SCRATCH}); written:\n  " + "\n  ".join(written[:20]),
                pytrace=False)
