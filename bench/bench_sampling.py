"""Sampling throughput with CFG: the jitted lax.scan samplers against the Python-loop reference.

  python bench/bench_sampling.py [--quick] [--batch 8] [--steps 4] [--attention auto]

JAX: solar_ddpm_jax.samplers.make_sample_fn (one compiled scan, CFG as one batched forward pass
over [cond, uncond]) for DDPM 1000 steps, DDIM 50 and DPM-Solver++ 20 with guidance w = 3.
Reference: bench/torch_reference.py ReferenceDiffusion.sample, the published Python loop (two
forward passes per step, torch.lerp), with the published network, in float32 on CUDA when there is
a GPU. Both with the paper preset.
On CPU each sampler runs `--steps` steps (DDPM: a schedule of that many timesteps; the work per
step does not depend on T) and the table gives seconds per step and the images/s that the full
step counts would reach; on a GPU pass --steps 0 for the full counts. Each case runs in its own
subprocess after one warm-up (compile) call. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FULL_STEPS = {"ddpm": 1000, "ddim": 50, "dpm_solver++": 20}
GUIDANCE = 3.0


def _jax_case(args) -> dict:
  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import sharding
  config = common.bench_config("paper", image_size=args.image_size or None,
                               attention_impl=None if args.attention == "auto" else args.attention,
                               batch_size=args.batch)
  sharding.configure_xla_cpu(config.mesh)  # Before the backend starts.
  import jax
  import numpy as np

  from solar_ddpm_jax import diffusion, samplers, train, unet
  common.set_jax_dtype(config, args.dtype)
  steps = args.steps or FULL_STEPS[args.sampler]
  with config.unlocked():
    config.sampling.sampler = args.sampler
    config.sampling.guidance_scale = GUIDANCE
    config.sampling.num_steps = steps
    if args.sampler == "ddpm":
      config.diffusion.num_timesteps = steps  # DDPM visits every timestep.
  mesh = sharding.create_mesh(config.mesh)
  apply_fn = train.make_apply_fn(unet.create_model(config.model))
  schedule = diffusion.make_schedule(config.diffusion)
  params = unet.init_params(config.model, jax.random.key(0))
  fn = samplers.make_sample_fn(apply_fn, schedule, config, mesh)
  labels = jax.numpy.asarray(np.arange(args.batch) % 5, jax.numpy.int32)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(params, labels, jax.random.key(1)))
  warm_s = time.perf_counter() - t0
  mean_s, _ = common.time_calls(lambda: fn(params, labels, jax.random.key(2)), args.repeats,
                                jax.block_until_ready)
  return {"steps": steps, "warm_s": warm_s, "run_s": mean_s, "step_s": mean_s / steps,
          "rss_mib": common.peak_rss_mib(), "device_mib": common.jax_peak_device_mib()}


def _torch_case(args) -> dict:
  import torch
  import torch_reference as ref
  common.torch_threads(args.threads)
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  size = args.image_size or 64
  model = ref.UNetConditional(image_size=size, width=64,  # The paper preset's width.
                              need_weights=args.case == "torch").to(device)
  diff = ref.ReferenceDiffusion(img_size=size, device=device)
  labels = torch.arange(args.batch, device=device) % 5
  steps = args.steps or FULL_STEPS["ddpm"] - 1
  run = lambda: diff.sample(model, labels, cfg_scale=GUIDANCE, num_steps=steps)
  t0 = time.perf_counter()
  diff.sample(model, labels, cfg_scale=GUIDANCE, num_steps=1)
  warm_s = time.perf_counter() - t0
  mean_s, _ = common.time_calls(run, args.repeats, lambda x: x.cpu())
  return {"steps": steps, "warm_s": warm_s, "run_s": mean_s, "step_s": mean_s / steps,
          "rss_mib": common.peak_rss_mib(),
          "device_mib": (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                         else None)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--batch", type=int, default=None, help="images per call (default 8; quick 2)")
  ap.add_argument("--steps", type=int, default=None,
                  help="steps run per sampler (default 4 on CPU; quick 2; 0 = full counts)")
  ap.add_argument("--repeats", type=int, default=1, help="timed calls per case")
  ap.add_argument("--samplers", default="ddpm,ddim,dpm_solver++")
  ap.add_argument("--sampler", default="ddpm", help=argparse.SUPPRESS)
  ap.add_argument("--attention", default="auto",
                  help="JAX attention implementation(s), comma-separated: auto, xla, blockwise, "
                       "off")
  ap.add_argument("--frameworks", default="jax,torch,torch_sdpa")
  ap.add_argument("--image_size", type=int, default=0, help="resolution (default 64)")
  ap.add_argument("--dtype", default="", help="JAX compute dtype (default float32 on CPU)")
  ap.add_argument("--timeout", type=float, default=3600.0, help="per-case limit (s)")
  args = ap.parse_args()
  common.configure_threads(args.threads)
  if args.case:
    common.emit(_jax_case(args) if args.case == "jax" else _torch_case(args))
    return
  args.batch = args.batch or (2 if args.quick else 8)
  if args.steps is None:
    args.steps = 2 if args.quick else 4
  common.header("Sampling with CFG (w = 3): lax.scan samplers vs the Python-loop reference", args)
  print(f"batch {args.batch}; steps run per sampler: "
        f"{args.steps or 'full'} (full: {FULL_STEPS}); paper preset", flush=True)
  base = ["--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
          "--repeats", str(args.repeats)]
  if args.image_size:
    base += ["--image_size", str(args.image_size)]
  if args.dtype:
    base += ["--dtype", args.dtype]
  frameworks = args.frameworks.split(",")
  results = {}
  for fw in ("torch", "torch_sdpa"):
    if fw in frameworks:
      print(f"  running reference loop ({fw}) ...", flush=True)
      results[fw] = common.run_case("bench_sampling.py", ["--case", fw, *base],
                                    timeout_s=args.timeout)
  if "jax" in frameworks:
    for attention in args.attention.split(","):
      for sampler in args.samplers.split(","):
        print(f"  running jax {sampler} ({attention}) ...", flush=True)
        results[(sampler, attention)] = common.run_case(
            "bench_sampling.py", ["--case", "jax", "--sampler", sampler, "--attention", attention,
                                  *base], timeout_s=args.timeout)
  ref = results.get("torch", {})
  rows = []
  for key, r in results.items():
    if isinstance(key, tuple):
      name, sampler = f"jax scan ({key[1]})", key[0]
    else:
      name, sampler = f"reference loop ({key.replace('_', ' ')})", "ddpm"
    if "error" in r:
      rows.append([name, sampler, "-", "-", "-", "-", "-", r["error"][:60]])
      continue
    full = FULL_STEPS[sampler]
    ratio = f"{ref['step_s'] / r['step_s']:.2f}x" if "step_s" in ref else "-"
    rows.append([name, sampler, f"{full}", f"{r['steps']}", f"{r['warm_s']:.1f}",
                 f"{r['step_s']:.3f}", f"{args.batch / (r['step_s'] * full):.4f}", ratio])
  print()
  common.print_table(["row", "sampler", "full steps", "steps run", "compile/warm-up s", "s/step",
                      "images/s at full steps", "per-step speed vs reference"], rows)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
