"""Training-step throughput and peak memory: the JAX train step against PyTorch, in one run.

  python bench/bench_train.py [--quick] [--batch 8] [--steps 3] [--presets paper,res128,res256]
      [--attention auto,xla,blockwise,off] [--dtype float32]

Rows, each measured in its own subprocess (so its peak memory is its own):
  jax        solar_ddpm_jax.train.make_train_step (fwd + bwd + AdamW + EMA, donated state), jitted
             as in training; per attention implementation ("off": no attention above 16 px);
  torch      bench/torch_reference.py, the published UNet and its training step
             (nn.MultiheadAttention with need_weights=True, as published);
  torch sdpa the same with need_weights=False (torch's fused scaled_dot_product_attention);
  diffusers  diffusers' UNet2DModel of about the same size, same training step.
All at the same resolution and batch, random images (the data pipeline is bench_input.py).
images/s = batch / mean step time after one warm-up (compile) step. "vs torch" is the ratio of
images/s to the published network in torch at the same resolution and batch. FLOPs come from XLA's
cost analysis of the compiled JAX step; MFU is given where the device's peak is known (GPU).
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _jax_case(args) -> dict:
  import jax
  import numpy as np

  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import sharding, train
  dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else None)
  config = common.bench_config(args.preset, image_size=args.image_size or None,
                               attention_impl=None if args.attention == "auto" else args.attention,
                               dtype=dtype, batch_size=args.batch)
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
  flops = common.jax_cost_flops(compiled)
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics["loss"]

  t0 = time.perf_counter()
  jax.block_until_ready(one_step())
  warm_s = time.perf_counter() - t0
  mean_s, min_s = common.time_calls(one_step, args.steps, jax.block_until_ready)
  peak, kind = common.device_peak_flops(str(config.model.dtype))
  return {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params)),
          "image_size": size, "compile_s": compile_s, "warm_s": warm_s, "step_s": mean_s,
          "min_step_s": min_s, "flops": flops, "peak_flops": peak, "device": kind,
          "dtype": str(config.model.dtype), "attention": str(config.model.attention_impl),
          "attention_resolutions": list(config.model.attention_resolutions),
          "rss_mib": common.peak_rss_mib(), "device_mib": common.jax_peak_device_mib()}


def _torch_case(args, kind: str) -> dict:
  import torch
  import torch_reference as ref
  common.torch_threads(args.threads)
  torch.manual_seed(0)
  config = common.bench_config(args.preset, image_size=args.image_size or None)
  size = int(config.model.image_size)
  if kind == "diffusers":
    model, forward = ref.diffusers_unet(config.model)
  else:
    model = ref.UNetConditional(c_in=int(config.model.in_channels),
                                c_out=int(config.model.out_channels), image_size=size,
                                need_weights=kind == "torch")
    forward = None
  model.train()
  diff = ref.ReferenceDiffusion(img_size=size, channels=int(config.model.in_channels))
  trainer = ref.ReferenceTrainer(model, diff, forward=forward)
  images = torch.rand(args.batch, int(config.model.in_channels), size, size) * 2 - 1
  labels = torch.randint(0, 5, (args.batch,))
  one_step = lambda: trainer.step(images, labels)
  t0 = time.perf_counter()
  one_step()
  warm_s = time.perf_counter() - t0
  mean_s, min_s = common.time_calls(one_step, args.steps)
  return {"params": ref.num_params(model), "image_size": size, "compile_s": None,
          "warm_s": warm_s, "step_s": mean_s, "min_step_s": min_s, "flops": None,
          "rss_mib": common.peak_rss_mib(), "device_mib": None}


def _run_case(args) -> None:
  framework = args.case
  if framework == "jax":
    common.emit(_jax_case(args))
  else:
    common.emit(_torch_case(args, framework))


def _case_args(args, framework: str, preset: str, attention: str = "auto") -> list[str]:
  out = ["--case", framework, "--preset", preset, "--batch", str(args.batch), "--steps",
         str(args.steps), "--threads", str(args.threads), "--attention", attention]
  if args.image_size:
    out += ["--image_size", str(args.image_size)]
  if args.dtype:
    out += ["--dtype", args.dtype]
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--batch", type=int, default=None, help="batch size (default 8; quick 2)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3; quick 1)")
  ap.add_argument("--presets", default=None,
                  help="configs/aia171.py presets (default paper,res128,res256; quick paper)")
  ap.add_argument("--preset", default="paper", help=argparse.SUPPRESS)
  ap.add_argument("--attention", default=None,
                  help="JAX attention implementations of the paper preset: auto, xla, blockwise, "
                       "cudnn, off (default auto,xla,blockwise,off; quick auto)")
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
  args.batch = args.batch or (2 if args.quick else 8)
  args.steps = args.steps or (1 if args.quick else 3)
  presets = (args.presets or ("paper" if args.quick else "paper,res128,res256")).split(",")
  attentions = (args.attention or ("auto" if args.quick else "auto,xla,blockwise,off")).split(",")
  frameworks = args.frameworks.split(",")
  common.header("Training step: JAX vs PyTorch", args)
  print(f"batch {args.batch}; {args.steps} timed step(s) after one warm-up step; JAX dtype "
        f"{args.dtype or 'float32 on CPU (bf16 is emulated there), the preset dtype on GPU'}",
        flush=True)

  rows = []
  for preset in presets:
    cases = []
    for fw in frameworks:
      if fw == "jax":
        for attention in (attentions if preset == "paper" else ["auto"]):
          cases.append((f"jax ({attention})", _case_args(args, "jax", preset, attention)))
      elif fw in ("torch", "torch_sdpa") and preset != "paper":
        continue  # The published network exists at 64 px only (its attention sizes are fixed).
      else:
        cases.append((fw.replace("_", " "), _case_args(args, fw, preset)))
    results = []
    for name, case_args in cases:
      print(f"  running {preset} / {name} ...", flush=True)
      res = common.run_case("bench_train.py", case_args, timeout_s=args.timeout)
      if "error" in res:
        print(f"    failed: {res['error']}", flush=True)
      results.append((name, res))
    ref_ips = next((args.batch / r["step_s"] for n, r in results
                    if n == "torch" and "step_s" in r), None)
    jax_flops = next((r["flops"] for n, r in results if n.startswith("jax") and r.get("flops")),
                     None)
    for name, r in results:
      if "error" in r:
        rows.append([preset, name, "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]])
        continue
      ips = args.batch / r["step_s"]
      flops = r.get("flops") or (jax_flops if name.startswith("torch") else None)
      achieved = flops / r["step_s"] if flops else None
      mfu = (f"{100 * achieved / r['peak_flops']:.1f}%"
             if achieved and r.get("peak_flops") else "-")
      warm = r["compile_s"] if r.get("compile_s") is not None else r["warm_s"]
      rows.append([preset, name, f"{r['image_size']}", f"{r['params'] / 1e6:.2f}",
                   f"{warm:.1f}", f"{r['step_s']:.3f}", f"{ips:.2f}",
                   f"{ips / ref_ips:.2f}x" if ref_ips else "-",
                   common.fmt(r.get("device_mib") or r["rss_mib"], ".0f"),
                   common.fmt(achieved / 1e9 if achieved else None, ".1f"), mfu])
  print()
  common.print_table(["preset", "row", "px", "params (M)", "compile/warm-up s", "s/step",
                      "images/s", "vs torch", "peak MiB", "GFLOP/s", "MFU"], rows)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
