"""Shared helpers of the benchmarks: thread settings, timing, memory, subprocess cases, tables.

Every benchmark runs each measured case in its own subprocess (`run_case`), so that peak memory
(ru_maxrss) belongs to that case alone and XLA flags (virtual devices) can differ per case; the
parent prints one table with the figures and ratios of that same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE_MARK = "BENCH_CASE_RESULT "  # Prefix of the JSON line a case subprocess prints.

# Dense peak throughput (FLOP/s, no sparsity) of the accelerators the MFU figures are given for.
# float32 is the TF32 tensor-core peak: XLA's default precision for float32 dots and convolutions
# on these GPUs, and cuDNN's for torch's convolutions (the plain fp32 units: 67 TFLOP/s on H100).
# Device names are matched longest key first ("H100 PCIe" before "H100").
PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12},
    "H100 NVL": {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12},
    "H200 NVL": {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},  # SXM.
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},  # SXM.
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
}


def configure_threads(threads: int) -> None:
  """Same intra-op thread count for torch and XLA:CPU; call before importing jax or torch."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ["OMP_NUM_THREADS"] = str(threads)
  os.environ["MKL_NUM_THREADS"] = str(threads)
  os.environ["OPENBLAS_NUM_THREADS"] = str(threads)  # numpy's BLAS (bench_fid).
  # XLA:CPU sizes its intra-op pool from the visible cores; restrict them where there are more.
  if hasattr(os, "sched_setaffinity") and threads < len(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def torch_threads(threads: int) -> None:
  import torch
  torch.set_num_threads(threads)
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:  # Already set, or parallel work has started.
    pass


def peak_rss_mib() -> float:
  """Peak resident memory of this process (MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def jax_peak_device_mib() -> float | None:
  """Peak bytes in use on the first JAX device (MiB), where the backend reports it (GPU/TPU)."""
  import jax
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def time_calls(fn, repeats: int, sync=lambda out: out) -> tuple[float, float]:
  """(mean, min) seconds of `repeats` calls of fn() after it has been warmed up by the caller."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return sum(times) / len(times), min(times)


def hardware() -> str:
  """One line: CPU model, cores, and the accelerator when JAX sees one."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} cores"


def load_average() -> str:
  one, five, _ = os.getloadavg()
  return f"load {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def emit(result: dict) -> None:
  """Prints the result of a case subprocess for `run_case` to read."""
  print(CASE_MARK + json.dumps(result), flush=True)


def run_case(script: str, args: list[str], env: dict | None = None,
             timeout_s: float | None = None) -> dict:
  """Runs `python bench/<script> <args>` and returns the dict it emitted (or an error)."""
  cmd = [sys.executable, os.path.join(REPO, "bench", script), *args]
  full_env = dict(os.environ)
  full_env.update(env or {})
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout_s:.0f} s"}
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith(CASE_MARK):
      out = json.loads(line[len(CASE_MARK):])
      out["wall_s"] = time.perf_counter() - t0
      return out
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
  if value is None:
    return missing
  if isinstance(value, str):
    return value
  return format(value, spec)


def print_table(headers: list[str], rows: list[list[str]]) -> str:
  """Prints (and returns) a Markdown table."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  text = "\n".join(lines)
  print(text, flush=True)
  return text


def header(title: str, args) -> None:
  """Prints what was run, on what, and how loaded the machine was."""
  print(f"## {title}")
  print(f"command: python {' '.join(sys.argv)}")
  print(f"hardware: {hardware()}; threads {args.threads}; {load_average()}")
  print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)


def add_common_args(parser) -> None:
  parser.add_argument("--quick", action="store_true", help="short run (small batch, few steps)")
  parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                      help="intra-op threads of torch and XLA:CPU")
  parser.add_argument("--case", default="", help=argparse.SUPPRESS)  # Set for subprocesses.


def bench_config(preset: str, *, image_size: int | None = None, attention_impl: str | None = None,
                 dtype: str | None = None, batch_size: int | None = None,
                 faithful: bool | None = None, remat: str = "preset",
                 cpu_convolutions: str | None = None):
  """configs/aia171.py preset with the benchmark's overrides (None / "preset" keep the preset's)."""
  sys.path.insert(0, REPO)
  from configs import aia171
  config = aia171.get_config(preset)
  with config.unlocked():
    if image_size is not None:
      config.model.image_size = image_size
      config.data.resolution = image_size
    if attention_impl == "off":
      config.model.attention_resolutions = tuple(
          r for r in config.model.attention_resolutions if r <= 16)
    elif attention_impl is not None:
      config.model.attention_impl = attention_impl
    if dtype is not None:
      config.model.dtype = dtype
    if batch_size is not None:
      config.training.batch_size = batch_size
      config.sampling.batch_size = batch_size
    if faithful is not None:
      config.model.faithful = faithful
    if remat != "preset":
      config.model.remat = {"on": True, "off": False}[remat]
    if cpu_convolutions is not None:
      config.mesh.cpu_convolutions = cpu_convolutions
  return config


def set_jax_dtype(config, requested: str | None = None):
  """Sets config.model.dtype to `requested`, else to float32 on CPU (where bf16 is emulated), else
  keeps the preset's; returns `config`. Starts JAX's backend: call after configure_xla_cpu."""
  import jax
  dtype = requested or ("float32" if jax.default_backend() == "cpu" else None)
  if dtype:
    with config.unlocked():
      config.model.dtype = dtype
  return config


def jax_train_setup(config, mesh):
  """(apply_fn, schedule, state, jitted train step) of `config` on `mesh`, as train.py has them."""
  sys.path.insert(0, REPO)
  from solar_ddpm_jax import diffusion, train, unet
  apply_fn = train.make_apply_fn(unet.create_model(config.model))
  schedule = diffusion.make_schedule(config.diffusion)
  state, shardings = train.create_train_state(config, mesh)
  step = train.jit_train_step(train.make_train_step(config, apply_fn, schedule), mesh, shardings)
  return apply_fn, schedule, state, step


def jax_model_flops(config, mesh, batch: int) -> float | None:
  """Model FLOPs of one train step of `config`: XLA's cost analysis of the step lowered (not
  compiled) with attention "xla" and remat off, so every FLOP is a plain dot or convolution that
  the analysis counts once (loops count their body once; custom calls are not counted).

  The step is lowered for one CPU device, not for `mesh`: Lowered.cost_analysis() is None on
  PJRT C API backends (the CUDA plugin), and the count depends on the architecture and batch only.
  `mesh` is the fallback where JAX has no CPU backend.
  """
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, REPO)
  from solar_ddpm_jax import diffusion, sharding, train, train_state, unet
  try:
    mesh = sharding.create_mesh(None, devices=jax.devices("cpu")[:1])
  except RuntimeError:  # JAX_PLATFORMS without cpu.
    pass
  plain = config.copy_and_resolve_references()
  with plain.unlocked():
    plain.model.attention_impl = "xla"
    plain.model.remat = False
  apply_fn = train.make_apply_fn(unet.create_model(plain.model))
  abstract = train_state.abstract_state(plain)
  step = train.jit_train_step(train.make_train_step(plain, apply_fn,
                                                    diffusion.make_schedule(plain.diffusion)),
                              mesh, train.state_shardings(mesh, abstract))
  size, channels = int(plain.model.image_size), int(plain.model.in_channels)
  batch_shapes = {"image": jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32),
                  "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  return jax_cost_flops(step.lower(abstract, batch_shapes))


def jax_cost_flops(compiled) -> float | None:
  """FLOPs from the cost analysis of a compiled or lowered step (None when not reported)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Not every backend implements it.
    return None
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def peak_flops_of(device_name: str, dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s, device name) for a device named `device_name` (None on CPU/unknown)."""
  for name, peaks in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0])):
    if name in device_name:
      return peaks.get(dtype), device_name
  return None, device_name


def device_peak_flops(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s, device name) of the first JAX device for `dtype` (None on CPU/unknown)."""
  import jax
  return peak_flops_of(jax.devices()[0].device_kind, dtype)
