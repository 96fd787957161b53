"""Training-step throughput, peak memory and MFU: the JAX train step against PyTorch, in one run.

  python bench/bench_train.py [--quick] [--batch 8] [--steps 3] [--presets paper,res128,res256]
      [--attention auto,xla,blockwise,off] [--dtype float32] [--remat preset]
      [--cpu_convolutions eigen,ynnpack]

Rows, each measured in its own subprocess (so its peak memory is its own):
  jax        solar_ddpm_jax.train.make_train_step (fwd + bwd + AdamW + EMA, donated state), jitted
             as in training; per attention implementation ("off": no attention above 16 px), per
             remat setting and, on CPU, per XLA:CPU convolution library (mesh.cpu_convolutions);
  torch      bench/torch_reference.py, the published UNet and its training step
             (nn.MultiheadAttention with need_weights=True, as published), on CUDA when there is
             a GPU, in float32 as published;
  torch sdpa the same with need_weights=False (torch's fused scaled_dot_product_attention);
  diffusers  diffusers' UNet2DModel of about the same size, same training step.
All at the same resolution and batch (--batch 0: each preset's training.batch_size), random
images (the data pipeline is bench_input.py). images/s = batch / mean step time after one warm-up
(compile) step. "vs torch" is the ratio of images/s to the published network in torch.

FLOPs are model FLOPs of one step (forward, backward, optimizer): for JAX rows XLA's cost analysis
of the step lowered with attention "xla" and remat off, where every FLOP is a plain dot or
convolution (the blockwise kernel is a loop and cuDNN's a custom call, whose FLOPs the analysis
of the compiled step misses or counts once; remat recomputes). For torch rows torch's own
FlopCounterMode over one step with explicit attention matmuls (it does not see every fused
kernel), an independent count of the same architecture. MFU = model FLOPs /
step time / the device's dense peak for the dtype (float32 on a GPU: TF32 tensor cores, JAX's and
cuDNN's default for float32 matmuls and convolutions). Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _jax_case(args) -> dict:
  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import sharding
  config = common.bench_config(args.preset, image_size=args.image_size or None,
                               attention_impl=None if args.attention == "auto" else args.attention,
                               batch_size=args.batch, remat=args.remat,
                               cpu_convolutions=args.cpu_convolutions)
  sharding.configure_xla_cpu(config.mesh)  # Before the backend starts.
  import jax
  import numpy as np

  from solar_ddpm_jax import train
  common.set_jax_dtype(config, args.dtype)
  mesh = sharding.create_mesh(config.mesh)
  _, _, state, step = common.jax_train_setup(config, mesh)
  size, channels = int(config.model.image_size), int(config.model.in_channels)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {"image": rng.uniform(-1, 1, (args.batch, size, size, channels)).astype(np.float32),
       "label": rng.integers(0, 5, args.batch).astype(np.int32)},
      train.batch_shardings(mesh))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics["loss"]

  t0 = time.perf_counter()
  jax.block_until_ready(one_step())
  warm_s = time.perf_counter() - t0
  mean_s, min_s = common.time_calls(one_step, args.steps, jax.block_until_ready)
  rss_mib, device_mib = common.peak_rss_mib(), common.jax_peak_device_mib()
  model_flops = common.jax_model_flops(config, mesh, args.batch)  # After the memory figures.
  peak, kind = common.device_peak_flops(str(config.model.dtype))
  return {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params)),
          "image_size": size, "compile_s": compile_s, "warm_s": warm_s, "step_s": mean_s,
          "min_step_s": min_s, "flops": model_flops,
          "compiled_flops": common.jax_cost_flops(compiled), "peak_flops": peak, "device": kind,
          "dtype": str(config.model.dtype), "attention": str(config.model.attention_impl),
          "attention_resolutions": list(config.model.attention_resolutions),
          "remat": bool(config.model.remat), "rss_mib": rss_mib, "device_mib": device_mib}


def _torch_case(args, kind: str) -> dict:
  import torch
  import torch_reference as ref
  common.torch_threads(args.threads)
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  config = common.bench_config(args.preset, image_size=args.image_size or None)
  size = int(config.model.image_size)
  if kind == "diffusers":
    model, forward = ref.diffusers_unet(config.model)
  else:
    model = ref.UNetConditional(c_in=int(config.model.in_channels),
                                c_out=int(config.model.out_channels), image_size=size,
                                width=int(config.model.base_channels),
                                need_weights=kind == "torch")
    forward = None
  model = model.to(device).train()
  diff = ref.ReferenceDiffusion(img_size=size, channels=int(config.model.in_channels),
                                device=device)
  trainer = ref.ReferenceTrainer(model, diff, forward=forward)
  images = torch.rand(args.batch, int(config.model.in_channels), size, size, device=device)
  images = images * 2 - 1
  labels = torch.randint(0, 5, (args.batch,), device=device)
  one_step = lambda: trainer.step(images, labels)  # Returns the loss as a float: synchronises.
  t0 = time.perf_counter()
  one_step()
  warm_s = time.perf_counter() - t0
  mean_s, min_s = common.time_calls(one_step, args.steps)
  rss_mib = common.peak_rss_mib()
  device_mib = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
  from torch.utils.flop_counter import FlopCounterMode
  ref.use_explicit_attention(model)  # After timing: FlopCounterMode misses fused attention.
  with FlopCounterMode(display=False) as counter:
    one_step()
  peak, name = common.peak_flops_of(torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                    "float32")
  return {"params": ref.num_params(model), "image_size": size, "compile_s": None,
          "warm_s": warm_s, "step_s": mean_s, "min_step_s": min_s,
          "flops": float(counter.get_total_flops()), "peak_flops": peak, "device": name,
          "rss_mib": rss_mib, "device_mib": device_mib}


def _run_case(args) -> None:
  framework = args.case
  if framework == "jax":
    common.emit(_jax_case(args))
  else:
    common.emit(_torch_case(args, framework))


def _case_args(args, framework: str, preset: str, batch: int, attention: str = "auto",
               remat: str = "preset", convs: str = "eigen") -> list[str]:
  out = ["--case", framework, "--preset", preset, "--batch", str(batch), "--steps",
         str(args.steps), "--threads", str(args.threads), "--attention", attention,
         "--remat", remat, "--cpu_convolutions", convs]
  if args.image_size:
    out += ["--image_size", str(args.image_size)]
  if args.dtype:
    out += ["--dtype", args.dtype]
  return out


def _jax_variants(args, preset: str) -> list[tuple[str, str, str]]:
  """(attention, remat, convolutions) of the JAX rows of `preset`; the first is the default."""
  attentions = args.attentions if preset == "paper" else args.attentions[:1]
  out = [(a, args.remats[0], args.convs[0]) for a in attentions]
  preset_remat = bool(common.bench_config(preset).model.remat)
  out += [(attentions[0], r, args.convs[0]) for r in args.remats[1:]
          if r != "preset" and (r == "on") != preset_remat]  # Not a copy of the first row.
  out += [(attentions[0], args.remats[0], c) for c in args.convs[1:]]
  return out


def _row_name(framework: str, variant=None) -> str:
  if framework != "jax":
    return framework.replace("_", " ")
  attention, remat, convs = variant
  extras = [attention] + ([f"remat {remat}"] if remat != "preset" else []) + (
      [f"{convs} convs"] if convs != "eigen" else [])
  return f"jax ({', '.join(extras)})"


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--batch", type=int, default=None,
                  help="batch size (default 8; quick 2; 0 = each preset's training.batch_size)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3; quick 1)")
  ap.add_argument("--presets", default=None,
                  help="configs/aia171.py presets (default paper,res128,res256; quick paper)")
  ap.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
  ap.add_argument("--attention", default=None,
                  help="JAX attention implementations, comma-separated: auto, xla, blockwise, "
                       "cudnn, off; one row each for the paper preset, the first one alone for "
                       "the others and the remat rows (default auto,xla,blockwise,off; quick "
                       "auto)")
  ap.add_argument("--remat", default="preset",
                  help="JAX remat settings, comma-separated: preset, on, off (extra rows)")
  ap.add_argument("--cpu_convolutions", default=None,
                  help="XLA:CPU convolution libraries, comma-separated: eigen, ynnpack (extra "
                       "rows; default eigen,ynnpack; quick eigen; pass eigen on a GPU)")
  ap.add_argument("--frameworks", default="jax,torch,torch_sdpa,diffusers",
                  help="rows to run: jax, torch, torch_sdpa, diffusers")
  ap.add_argument("--image_size", type=int, default=0, help="override every preset's resolution")
  ap.add_argument("--dtype", default="",
                  help="JAX compute dtype override (default: float32 on CPU, the preset's on GPU)")
  ap.add_argument("--timeout", type=float, default=3600.0, help="per-case limit (s)")
  args = ap.parse_args()
  common.configure_threads(args.threads)
  if args.case:
    _run_case(args)
    return
  if args.batch is None:
    args.batch = 2 if args.quick else 8
  args.steps = args.steps or (1 if args.quick else 3)
  presets = (args.presets or ("paper" if args.quick else "paper,res128,res256")).split(",")
  args.attentions = (args.attention or ("auto" if args.quick else "auto,xla,blockwise,off")
                     ).split(",")
  args.remats = args.remat.split(",")
  args.convs = (args.cpu_convolutions or ("eigen" if args.quick else "eigen,ynnpack")).split(",")
  frameworks = args.frameworks.split(",")
  common.header("Training step: JAX vs PyTorch", args)
  print(f"batch {args.batch or 'of each preset'}; {args.steps} timed step(s) after one warm-up "
        f"step; JAX dtype "
        f"{args.dtype or 'float32 on CPU (bf16 is emulated there), the preset dtype on GPU'}",
        flush=True)

  rows = []
  for preset in presets:
    batch = args.batch or int(common.bench_config(preset).training.batch_size)
    cases = []
    for fw in frameworks:
      if fw == "jax":
        for variant in _jax_variants(args, preset):
          cases.append((_row_name(fw, variant), _case_args(args, "jax", preset, batch, *variant)))
      elif fw in ("torch", "torch_sdpa") and preset != "paper":
        continue  # The published network exists at 64 px only (its attention sizes are fixed).
      else:
        cases.append((_row_name(fw), _case_args(args, fw, preset, batch)))
    results = []
    for name, case_args in cases:
      print(f"  running {preset} / {name} ...", flush=True)
      res = common.run_case("bench_train.py", case_args, timeout_s=args.timeout)
      if "error" in res:
        print(f"    failed: {res['error']}", flush=True)
      results.append((name, res))
    ref_ips = next((batch / r["step_s"] for n, r in results if n == "torch" and "step_s" in r),
                   None)
    for name, r in results:
      if "error" in r:
        rows.append([preset, name, "-", "-", str(batch)] + ["-"] * 8 + [r["error"][:60]])
        continue
      ips = batch / r["step_s"]
      achieved = r["flops"] / r["step_s"] if r.get("flops") else None
      mfu = (f"{100 * achieved / r['peak_flops']:.1f}%"
             if achieved and r.get("peak_flops") else "-")
      warm = r["compile_s"] if r.get("compile_s") is not None else r["warm_s"]
      rows.append([preset, name, f"{r['image_size']}", f"{r['params'] / 1e6:.2f}", str(batch),
                   r.get("dtype", "float32"), f"{warm:.1f}", f"{r['step_s']:.4f}", f"{ips:.2f}",
                   f"{ips / ref_ips:.2f}x" if ref_ips else "-",
                   common.fmt(r.get("device_mib") or r["rss_mib"], ".0f"),
                   common.fmt(r["flops"] / 1e9 if r.get("flops") else None, ".1f"),
                   common.fmt(achieved / 1e12 if achieved else None, ".3f"), mfu])
  print()
  common.print_table(["preset", "row", "px", "params (M)", "batch", "dtype", "compile/warm-up s",
                      "s/step", "images/s", "vs torch", "peak MiB", "model GFLOP/step",
                      "TFLOP/s", "MFU"], rows)
  print(f"device: {next((r.get('device') for _, r in results if r.get('device')), '-')}; "
        f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
