"""Peak host memory and time per batch of the training input as the split grows.

  python bench/bench_input_memory.py [--resolution 64] [--base 500] [--factors 1,4,16]
                                     [--batch 32] [--batches 50] [--loaders whole,tfdata,grain]

Writes datasets of base x factor frames (random smooth images with the dataset's features; the
loaders read bytes, what they show does not matter) in both file formats, then runs each loader
in its own subprocess, which starts the input and takes `--batches` batches:
  - whole: the former training input, loading a split whole (tf.data, batch_size=-1, then the
    arrays in time order, as the in-memory pipeline did) and indexing batches out of it;
  - tfdata: loaders.tfdata_batches over TFRecord (this process's share, file and buffer shuffles);
  - grain: loaders.grain_batches over ArrayRecord (global batch indices, --workers processes).
Prints peak resident memory (ru_maxrss of the case's process), the start time and the seconds per
batch, each loader's peak against its own at the smallest size, and whether it stays within 10 % of
it (the streaming loaders must; the whole split grows with it). Asserts nothing.
The archive-size run (128 px, 2,000 to 32,000 frames) is `--resolution 128 --base 2000`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FEATURE_NAMES = ("flare_class", "forecast_class")


def streaming_batches(builder, loader: str, batch: int, workers: int, num_threads=None):
  """The training reader `loader` ("tfdata" or "grain") of the train split, one process."""
  import numpy as np

  from solar_ddpm_jax import loaders
  if loader == "tfdata":
    kwargs = {} if num_threads is None else {"num_threads": num_threads}
    return loaders.tfdata_batches(builder, "train", label="flare_class", batch_rows=batch,
                                  seed=0, **kwargs)
  source = loaders.ArrayRecordExamples(builder, "train")
  cols = loaders.source_label_columns(source)
  order = np.argsort(cols["time_unix_s"], kind="stable")
  indices = loaders.GlobalBatchIndices(order, batch_size=batch, seed=0, split="train")
  return loaders.grain_batches(source, cols["flare_class"], label="flare_class", indices=indices,
                               rows=slice(0, batch), num_workers=workers)


def _features(res: int):
  import numpy as np
  import tensorflow_datasets as tfds
  classes = ["A", "B", "C", "M", "X"]
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(res, res, 1), dtype=np.float32),
      "flare_class": tfds.features.ClassLabel(names=classes),
      "forecast_class": tfds.features.ClassLabel(names=classes),
      "forecast_coverage": tfds.features.Scalar(dtype=np.float32),
      "subclass": tfds.features.Scalar(dtype=np.float32),
      "goes_flux_w_m2": tfds.features.Scalar(dtype=np.float32),
      "time_unix_s": tfds.features.Tensor(shape=(), dtype=np.float64,
                                          encoding=tfds.features.Encoding.BYTES),
  })


def _examples(n: int, res: int):
  import numpy as np
  rng = np.random.default_rng(0)
  base = rng.standard_normal((64, res, res, 1)).astype(np.float32)
  labels = rng.choice(5, size=n, p=[0.3, 0.28, 0.24, 0.11, 0.07])
  for i in range(n):
    yield {"image": np.tanh(base[i % 64] + 0.01 * i), "flare_class": int(labels[i]),
           "forecast_class": int(labels[i]), "forecast_coverage": 1.0, "subclass": 1.0,
           "goes_flux_w_m2": 1e-7, "time_unix_s": 1.3e9 + 720.0 * i}


def write(data_dir: str, n: int, res: int, file_format: str) -> str:
  import tensorflow_datasets as tfds
  name = f"bench_input_{file_format}_{n}_{res}"
  path = os.path.join(data_dir, name, "1.0.0")
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=_features(res), data_dir=data_dir,
        split_datasets={"train": enumerate(_examples(n, res))}, file_format=file_format)
  return path


def case(args) -> None:
  """One loader on one dataset, in this process."""
  import numpy as np
  import tensorflow_datasets as tfds
  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import loaders
  builder = tfds.builder_from_directory(args.path)
  t0 = time.perf_counter()
  if args.loader == "whole":
    arrays = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1, shuffle_files=False))
    order = np.argsort(arrays["time_unix_s"], kind="stable")
    arrays = {k: np.asarray(arrays[k])[order] for k in ("image", "flare_class", "time_unix_s")}
    n = len(order)

    def batches():
      for k in range(10**9):
        idx = loaders.batch_indices(n, args.batch, k, 0)
        yield {"image": arrays["image"][idx], "label": arrays["flare_class"][idx]}
    it = batches()
  else:
    it = streaming_batches(builder, args.loader, args.batch, args.workers)
  next(it)
  start_s = time.perf_counter() - t0
  t1 = time.perf_counter()
  for _ in range(args.batches):
    batch = next(it)
  assert batch["image"].shape[0] == args.batch
  common.emit({"start_s": start_s, "s_per_batch": (time.perf_counter() - t1) / args.batches,
               "peak_mib": common.peak_rss_mib()})


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--resolution", type=int, default=64)
  ap.add_argument("--base", type=int, default=500, help="frames at factor 1")
  ap.add_argument("--factors", default="1,4,16")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--batches", type=int, default=50)
  ap.add_argument("--workers", type=int, default=0, help="grain worker processes")
  ap.add_argument("--loaders", default="whole,tfdata,grain")
  ap.add_argument("--data_dir", default="/tmp/bench_input_memory")
  ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
  ap.add_argument("--loader", default="", help=argparse.SUPPRESS)
  ap.add_argument("--path", default="", help=argparse.SUPPRESS)
  common.add_common_args(ap)
  args = ap.parse_args()
  common.configure_threads(args.threads)
  if args.case:
    case(args)
    return
  common.header("Training input: peak host memory and time per batch as the split grows", args)
  rows, first = [], {}
  for factor in [int(f) for f in args.factors.split(",")]:
    n = args.base * factor
    paths = {}
    for loader in args.loaders.split(","):
      fmt = "array_record" if loader == "grain" else "tfrecord"
      if fmt not in paths:
        t0 = time.perf_counter()
        paths[fmt] = write(args.data_dir, n, args.resolution, fmt)
        print(f"  {n} frames as {fmt}: {time.perf_counter() - t0:.1f} s", flush=True)
      r = common.run_case("bench_input_memory.py", [
          "--case", "1", "--loader", loader, "--path", paths[fmt], "--batch", str(args.batch),
          "--batches", str(args.batches), "--workers", str(args.workers),
          "--threads", str(args.threads)], timeout_s=args.timeout)
      if "error" in r:
        rows.append([loader, str(n), f"{factor}x", r["error"], "", "", "", "", ""])
        continue
      first.setdefault(loader, r["peak_mib"])
      split_mib = n * args.resolution ** 2 * 4 / 2**20
      rows.append([loader, str(n), f"{factor}x", common.fmt(split_mib, ".0f"),
                   common.fmt(r["peak_mib"], ".0f"), f"{r['peak_mib'] / first[loader]:.2f}x",
                   "yes" if r["peak_mib"] <= 1.1 * first[loader] else "no",
                   common.fmt(r["start_s"], ".1f"), common.fmt(1e3 * r["s_per_batch"], ".1f")])
  common.print_table(["loader", "frames", "size", "split images MiB", "peak MiB",
                      "peak vs 1x", "within 10 %", "start s", "ms/batch"], rows)


if __name__ == "__main__":
  main()
