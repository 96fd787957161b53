"""Test set-up: 8 virtual CPU devices, TensorFlow off the GPU, no network."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow first, at a shallow stack: pytest rewrites TensorFlow's own test_util.py (its name
# matches test_*.py), and CPython 3.11 can fail that compile when the first import of TensorFlow
# happens deep inside a test ("SystemError: AST constructor recursion depth mismatch").
import tensorflow  # noqa: E402, F401

from solar_ddpm_jax import sharding  # noqa: E402

sharding.configure_xla_cpu()  # The XLA:CPU settings of the command line (mesh.cpu_convolutions).
