"""Helpers of bench/ that decide what the GPU figures mean: the device peak of the MFU."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import common  # noqa: E402


def test_device_peaks_match_the_most_specific_name():
  # Names as torch.cuda.get_device_name() and jax report them.
  assert common.peak_flops_of("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12  # SXM.
  assert common.peak_flops_of("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
  assert common.peak_flops_of("NVIDIA H100 NVL", "float32")[0] == 418e12
  assert common.peak_flops_of("NVIDIA H200", "float32")[0] == 494e12
  assert common.peak_flops_of("NVIDIA H200 NVL", "bfloat16")[0] == 835e12
  assert common.peak_flops_of("cpu", "float32")[0] is None
