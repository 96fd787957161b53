"""Data-parallel scaling over 1, 2, 4, 8 virtual CPU devices: same results, and the overhead.

  python bench/bench_scaling.py [--quick] [--preset test] [--batch 8] [--devices 1,2,4,8]

Each device count runs in its own process with XLA_FLAGS=--xla_force_host_platform_device_count=N:
the jitted train step of train.py on a (data=N) mesh at the same global batch and seed, then the
DDIM sampler (CFG) on the same mesh. Correctness: the loss of every step, the parameters after the
steps and the samples, compared with one device (max absolute difference). Overhead: step time
relative to one device. The virtual devices share the same cores, so this measures partitioning
and collective overhead, not speed-up. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _case(args) -> dict:
  import jax
  import numpy as np

  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import samplers, sharding
  config = common.bench_config(args.preset, batch_size=args.batch, dtype="float32")
  sharding.configure_xla_cpu(config.mesh)  # Before the backend starts.
  with config.unlocked():
    config.sampling.sampler = "ddim"
    config.sampling.num_steps = args.sample_steps
  mesh = sharding.create_mesh(config.mesh)
  apply_fn, schedule, state, step = common.jax_train_setup(config, mesh)
  size, channels = int(config.model.image_size), int(config.model.in_channels)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch(mesh, {
      "image": rng.uniform(-1, 1, (args.batch, size, size, channels)).astype(np.float32),
      "label": rng.integers(0, 5, args.batch).astype(np.int32)})
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  losses = [float(metrics["loss"])]
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
    times.append(time.perf_counter() - t0)
  sample_fn = samplers.make_sample_fn(apply_fn, schedule, config, mesh)
  labels = sharding.shard_batch(mesh, (np.arange(args.batch) % 5).astype(np.int32))
  jax.block_until_ready(sample_fn(state.params, labels, jax.random.key(3)))
  t0 = time.perf_counter()
  images = np.asarray(jax.block_until_ready(sample_fn(state.params, labels, jax.random.key(3))))
  sample_s = time.perf_counter() - t0
  params = np.concatenate([np.asarray(x, np.float64).ravel()
                           for x in jax.tree.leaves(state.params)])
  np.savez(args.out, params=params, images=images, losses=np.asarray(losses))
  return {"devices": jax.device_count(), "compile_s": compile_s,
          "step_s": float(np.median(times)), "sample_s": sample_s,
          "mesh": {k: int(v) for k, v in mesh.shape.items()}}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--preset", default=None, help="config preset (default demo; quick test)")
  ap.add_argument("--batch", type=int, default=8, help="global batch (divisible by the devices)")
  ap.add_argument("--steps", type=int, default=None, help="timed train steps (default 5; quick 2)")
  ap.add_argument("--sample_steps", type=int, default=4, help="DDIM steps of the sample check")
  ap.add_argument("--devices", default="1,2,4,8")
  ap.add_argument("--out", default="", help=argparse.SUPPRESS)
  ap.add_argument("--timeout", type=float, default=3600.0, help="per-case limit (s)")
  args = ap.parse_args()
  common.configure_threads(args.threads)
  if args.case:
    common.emit(_case(args))
    return
  import numpy as np
  args.preset = args.preset or ("test" if args.quick else "demo")
  args.steps = args.steps or (2 if args.quick else 5)
  common.header("Scaling over virtual CPU devices (correctness and overhead)", args)
  print(f"preset {args.preset}; global batch {args.batch}; {args.steps} timed steps; "
        f"DDIM {args.sample_steps} steps with CFG", flush=True)
  rows, first = [], None
  with tempfile.TemporaryDirectory() as tmp:
    for n in (int(d) for d in args.devices.split(",")):
      out = os.path.join(tmp, f"devices{n}.npz")
      print(f"  running {n} device(s) ...", flush=True)
      env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
      r = common.run_case("bench_scaling.py", [
          "--case", "1", "--preset", args.preset, "--batch", str(args.batch), "--steps",
          str(args.steps), "--sample_steps", str(args.sample_steps), "--threads",
          str(args.threads), "--out", out], env=env, timeout_s=args.timeout)
      if "error" in r:
        rows.append([str(n), "-", "-", "-", "-", "-", "-", r["error"][:60]])
        continue
      got = dict(np.load(out))
      if first is None:
        first = (r, got)
      base_r, base = first
      diff = {k: float(np.max(np.abs(got[k] - base[k]))) for k in ("losses", "params", "images")}
      rows.append([str(r["devices"]), f"{r['compile_s']:.1f}", f"{r['step_s']:.3f}",
                   f"{r['step_s'] / base_r['step_s']:.2f}x", f"{r['sample_s']:.2f}",
                   f"{diff['losses']:.1e}", f"{diff['params']:.1e}", f"{diff['images']:.1e}"])
  print()
  common.print_table(["devices", "compile s", "s/step", "step time vs 1 device", "sample s",
                      "max |loss - loss_1|", "max |params - params_1|",
                      "max |samples - samples_1|"], rows)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
