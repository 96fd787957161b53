"""Training input throughput: batches/s of both loaders by resolution and workers, against the
batches/s the train step consumes.

  python bench/bench_input.py [--resolutions 128,256] [--workers 1,2,4] [--frames 512]
                              [--batch 32] [--batches 30] [--step_preset demo] [--quick]

Writes --frames random images per resolution in both file formats (bench_input_memory.write: the
dataset's features, one channel, float32), then runs each case in its own subprocess:
  - tfdata: loaders.tfdata_batches over TFRecord, the pipeline on a private pool of W threads;
  - grain: loaders.grain_batches over ArrayRecord, W worker processes;
and times --batches batches after the first (numpy on the host: the input's own cost). The train
step row: the jitted train step of --step_preset at the same resolution and batch on this
machine's devices (input_pipeline's global arrays on the mesh): 1 / its seconds is the batches/s
training consumes; the input keeps up where its batches/s are larger. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_input_memory  # noqa: E402
import common  # noqa: E402


def case(args) -> None:
  """One loader at one resolution with W workers, in this process."""
  import tensorflow_datasets as tfds
  sys.path.insert(0, common.REPO)
  builder = tfds.builder_from_directory(args.path)
  t0 = time.perf_counter()
  it = bench_input_memory.streaming_batches(builder, args.loader, args.batch, args.workers,
                                           num_threads=args.workers)
  next(it)
  start_s = time.perf_counter() - t0
  t1 = time.perf_counter()
  for _ in range(args.batches):
    batch = next(it)
  assert batch["image"].shape == (args.batch, args.resolution, args.resolution, 1)
  common.emit({"start_s": start_s, "s_per_batch": (time.perf_counter() - t1) / args.batches,
               "peak_mib": common.peak_rss_mib()})


def step_case(args) -> None:
  """Seconds of one train step of --step_preset at --resolution and --batch (after compiling)."""
  sys.path.insert(0, common.REPO)
  config = common.bench_config(args.step_preset, image_size=args.resolution,
                               batch_size=args.batch)
  from solar_ddpm_jax import sharding
  sharding.configure_xla_cpu(config.mesh)
  import jax
  import numpy as np
  mesh = sharding.create_mesh(config.mesh)
  _, _, state, step_fn = common.jax_train_setup(config, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch(mesh, {
      "image": rng.uniform(-1, 1, (args.batch, args.resolution, args.resolution,
                                   int(config.model.in_channels))).astype(np.float32),
      "label": rng.integers(0, 5, args.batch).astype(np.int32)})
  t0 = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  common.emit({"compile_s": compile_s, "s_per_step": (time.perf_counter() - t0) / args.steps})


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_common_args(ap)
  ap.add_argument("--resolutions", default="128,256")
  ap.add_argument("--workers", default="1,2,4", help="tf.data threads / grain processes")
  ap.add_argument("--loaders", default="tfdata,grain")
  ap.add_argument("--frames", type=int, default=512, help="frames written per resolution")
  ap.add_argument("--batch", type=int, default=32, help="global batch (one process reads all)")
  ap.add_argument("--batches", type=int, default=30)
  ap.add_argument("--step_preset", default="demo",
                  help="preset of the train-step row ('' for none); the model at each resolution")
  ap.add_argument("--steps", type=int, default=3, help="timed train steps")
  ap.add_argument("--data_dir", default="/tmp/bench_input")
  ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
  ap.add_argument("--loader", default="", help=argparse.SUPPRESS)
  ap.add_argument("--path", default="", help=argparse.SUPPRESS)
  ap.add_argument("--resolution", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--worker_count", type=int, default=0, help=argparse.SUPPRESS)
  args = ap.parse_args()
  common.configure_threads(args.threads)
  if args.case == "step":
    step_case(args)
    return
  if args.case:
    args.workers = args.worker_count
    case(args)
    return
  if args.quick:
    args.resolutions, args.workers, args.frames, args.batches = "128", "1,2", 256, 10
  common.header("Training input: batches/s by loader and workers vs the train step", args)
  rows = []
  for res in [int(r) for r in args.resolutions.split(",")]:
    paths = {}
    for loader in args.loaders.split(","):
      fmt = "array_record" if loader == "grain" else "tfrecord"
      if fmt not in paths:
        paths[fmt] = bench_input_memory.write(args.data_dir, args.frames, res, fmt)
      for workers in [int(w) for w in args.workers.split(",")]:
        r = common.run_case("bench_input.py", [
            "--case", "1", "--loader", loader, "--path", paths[fmt], "--batch", str(args.batch),
            "--batches", str(args.batches), "--worker_count", str(workers), "--resolution",
            str(res), "--threads", str(args.threads)], timeout_s=args.timeout)
        if "error" in r:
          rows.append([str(res), loader, str(workers), r["error"], "", "", ""])
          continue
        rows.append([str(res), loader, str(workers), common.fmt(1 / r["s_per_batch"], ".1f"),
                     common.fmt(args.batch / r["s_per_batch"], ".0f"),
                     common.fmt(r["start_s"], ".1f"), common.fmt(r["peak_mib"], ".0f")])
    if args.step_preset:
      r = common.run_case("bench_input.py", [
          "--case", "step", "--step_preset", args.step_preset, "--resolution", str(res),
          "--batch", str(args.batch), "--steps", str(args.steps), "--threads",
          str(args.threads)], timeout_s=args.timeout)
      if "error" in r:
        rows.append([str(res), f"train step ({args.step_preset})", "-", r["error"], "", "", ""])
      else:
        rows.append([str(res), f"train step ({args.step_preset}, consumes)", "-",
                     common.fmt(1 / r["s_per_step"], ".2f"),
                     common.fmt(args.batch / r["s_per_step"], ".1f"),
                     common.fmt(r["compile_s"], ".1f"), "-"])
  common.print_table(["px", "loader", "workers", "batches/s", "images/s", "start s",
                      "peak MiB"], rows)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
