"""Input pipeline time per batch against the train step time: does the data keep up?

  python bench/bench_input.py [--quick] [--preset paper] [--batch 8] [--batches 50]

On the synthetic AIA archive (built once, then reused from the TFDS data dir): the time to build
and to load the split, then per global batch
  - producer: input_pipeline.local_batch + sharding.shard_batch (the work behind every batch),
  - iterator: next() of input_pipeline.create_train_iterator (with its background prefetch),
  - step: the jitted train step of the same preset and batch on a fixed batch,
  - fed: the train step fed by the iterator, in blocks alternating with the fixed-batch ones;
    fed - step is the time the device waits for data, next to the noise of the step time,
  - the producer alone at the batch sizes of GPU training (--producer_batches): the images/s the
    pipeline can feed, to hold against a GPU's train-step images/s.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _producer_s(arrays, config, mesh, batches: int) -> float:
  """Mean seconds to make one global batch: local_batch + shard_batch, to the device."""
  import jax

  from solar_ddpm_jax import input_pipeline, sharding
  jax.block_until_ready(sharding.shard_batch(mesh, input_pipeline.local_batch(arrays, config, 0)))
  t0 = time.perf_counter()
  for step in range(1, batches + 1):
    jax.block_until_ready(sharding.shard_batch(
        mesh, input_pipeline.local_batch(arrays, config, step)))
  return (time.perf_counter() - t0) / batches


def _measure(args) -> list[list[str]]:
  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import input_pipeline, sharding
  config = common.bench_config(args.preset, batch_size=args.batch)
  sharding.configure_xla_cpu(config.mesh)  # Before the backend starts.
  import jax
  import numpy as np
  common.set_jax_dtype(config)
  with config.unlocked():
    config.data.source = "synthetic"
    config.data.synthetic.num_images = args.num_images
    if args.data_dir:
      config.data.data_dir = args.data_dir
  mesh = sharding.create_mesh(config.mesh)
  t0 = time.perf_counter()
  input_pipeline.build_dataset(config)
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  arrays = input_pipeline.load_split_arrays(config, "train")
  load_s = time.perf_counter() - t0
  n = args.batches
  producer_s = _producer_s(arrays, config, mesh, n)

  iterator = input_pipeline.create_train_iterator(config, mesh)
  jax.block_until_ready(next(iterator))
  t0 = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(next(iterator))
  iterator_s = (time.perf_counter() - t0) / n

  num_train = len(arrays["flare_class"])
  print(f"dataset: {num_train} training frames of {int(config.data.resolution)} px; build "
        f"{build_s:.1f} s (0 when already built), load split {load_s:.2f} s", flush=True)
  _, _, state, step_fn = common.jax_train_setup(config, mesh)
  fixed = next(iterator)
  state, metrics = step_fn(state, fixed)
  jax.block_until_ready(metrics)

  def block(batch_fn) -> float:
    nonlocal state
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, out = step_fn(state, batch_fn())
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / args.steps

  # Alternate blocks of steps on a fixed batch and on the iterator, so that drifts of the machine
  # fall on both; the spread of the fixed-batch blocks is the noise floor of the difference.
  fixed_s, loop_s = [], []
  for _ in range(args.rounds):
    fixed_s.append(block(lambda: fixed))
    loop_s.append(block(lambda: next(iterator)))
  step_s, fed_s = float(np.median(fixed_s)), float(np.median(loop_s))
  spread_s = (max(fixed_s) - min(fixed_s)) / 2
  rows = [
      ["producer (local_batch + shard_batch)", f"{producer_s * 1e3:.2f}",
       f"{100 * producer_s / step_s:.2f}%", f"{args.batch / producer_s:,.0f}"],
      ["iterator next() (prefetched)", f"{iterator_s * 1e3:.2f}",
       f"{100 * iterator_s / step_s:.2f}%", f"{args.batch / iterator_s:,.0f}"],
      ["train step, fixed batch (median of blocks)", f"{step_s * 1e3:.1f}", "100%",
       f"{args.batch / step_s:,.1f}"],
      ["train step fed by the iterator (median)", f"{fed_s * 1e3:.1f}",
       f"{100 * fed_s / step_s:.1f}%", f"{args.batch / fed_s:,.1f}"],
      ["difference (fed - fixed), against the spread of the fixed blocks",
       f"{(fed_s - step_s) * 1e3:.1f} ± {spread_s * 1e3:.1f}",
       f"{100 * (fed_s - step_s) / step_s:.1f}%", "-"],
  ]
  for batch in args.producer_batches:  # Batch sizes of GPU training (images/s a GPU could use).
    with config.unlocked():
      config.training.batch_size = batch
    big_s = _producer_s(arrays, config, mesh, max(5, n // 5))
    rows.append([f"producer at batch {batch}", f"{big_s * 1e3:.2f}", "-",
                 f"{batch / big_s:,.0f}"])
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--preset", default=None, help="config preset (default paper; quick demo)")
  ap.add_argument("--batch", type=int, default=8, help="global batch size")
  ap.add_argument("--batches", type=int, default=None, help="batches timed (default 50; quick 10)")
  ap.add_argument("--steps", type=int, default=None,
                  help="train steps per timed block (default 3; quick 1)")
  ap.add_argument("--rounds", type=int, default=None,
                  help="alternating fixed / fed blocks (default 3; quick 2)")
  ap.add_argument("--producer_batches", default="64,256",
                  help="further batch sizes whose producer time is measured (no train step)")
  ap.add_argument("--num_images", type=int, default=None,
                  help="frames of the synthetic archive (default 600; quick 120)")
  ap.add_argument("--data_dir", default="", help="TFDS data dir (default: the config's)")
  args = ap.parse_args()
  common.configure_threads(args.threads)
  args.preset = args.preset or ("demo" if args.quick else "paper")
  args.batches = args.batches or (10 if args.quick else 50)
  args.steps = args.steps or (1 if args.quick else 3)
  args.rounds = args.rounds or (2 if args.quick else 3)
  args.producer_batches = [int(b) for b in args.producer_batches.split(",") if b]
  args.num_images = args.num_images or (120 if args.quick else 600)
  common.header("Input pipeline vs train step", args)
  print(f"preset {args.preset}; global batch {args.batch}", flush=True)
  rows = _measure(args)
  print()
  common.print_table(["per batch", "ms", "of the step time", "images/s"], rows)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
