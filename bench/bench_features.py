"""Feature-extraction throughput (images/s) of the Flax extractors, with ratios in the same run.

  python bench/bench_features.py [--images 32] [--size 64] [--inception_size 299] [--threads 2]
                                 [--quick]

Random weights in the published shapes (throughput does not depend on values). For each extractor:
the jitted, mesh-sharded path (features.extract) against the same network applied without jit,
image by image (the reference). On CPU the reference runs on fewer images to keep the run short;
ratios are per image. Prints; asserts nothing.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def _random_params(module_init, shapes_fn):
  import numpy as np
  del module_init
  rng = np.random.default_rng(0)
  flat = {k: (0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes_fn().items()}
  for k in flat:
    if k.endswith("bn/var"):
      flat[k] = np.abs(flat[k]) + 1.0
  from solar_ddpm_jax.evaluation import weights
  return weights.unflatten(flat)


def _time(fn, repeats=1):
  fn()  # Compile / warm up.
  t = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - t) / repeats


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--images", type=int, default=32)
  ap.add_argument("--reference_images", type=int, default=2)
  ap.add_argument("--size", type=int, default=64, help="input image size (px)")
  ap.add_argument("--inception_size", type=int, default=299)
  ap.add_argument("--batch_size", type=int, default=32)
  common.add_common_args(ap)  # --quick: 8 images, one by one for the reference.
  args = ap.parse_args()
  if args.quick:
    args.images, args.reference_images, args.batch_size = 8, 1, 8
  common.configure_threads(args.threads)  # Before jax starts.
  import jax
  import numpy as np

  from solar_ddpm_jax import sharding
  from solar_ddpm_jax.evaluation import clip, domain, features, inception
  sharding.configure_xla_cpu()  # The library's XLA:CPU settings, before the backend starts.
  mesh = sharding.create_mesh()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}); images {args.images} of {args.size}px")
  images = np.random.default_rng(0).uniform(-1, 1, (args.images, args.size, args.size, 1))
  images = images.astype(np.float32)

  enc = domain.SmallEncoder((32, 64, 128), 128)
  enc_params = enc.init(jax.random.PRNGKey(0), images[:1])["params"]
  extractors = {
      "inception": features.Extractor(
          "inception", lambda p, x: inception.apply_features(p, x, size=args.inception_size),
          _random_params(None, inception.expected_flat_shapes), "-", "-", "-"),
      "clip": features.Extractor(
          "clip", clip.apply_features, _random_params(None, clip.expected_flat_shapes),
          "-", "-", "-"),
      "domain": features.Extractor("domain", lambda p, x: enc.apply({"params": p}, x),
                                   enc_params, "-", "-", "-"),
  }
  for name, ext in extractors.items():
    fast = _time(lambda ext=ext: features.extract(ext, images, batch_size=args.batch_size,
                                                  mesh=mesh))
    ref_imgs = images[:args.reference_images]

    def reference(ext=ext, ref_imgs=ref_imgs):
      with jax.disable_jit():
        for i in range(len(ref_imgs)):
          jax.block_until_ready(ext.fn(ext.params, ref_imgs[i:i + 1]))
    slow = _time(reference)
    fast_ips = args.images / fast
    slow_ips = len(ref_imgs) / slow
    print(f"{name:10s} jit+sharded {fast_ips:9.1f} img/s | unjitted per-image "
          f"{slow_ips:8.2f} img/s | ratio {fast_ips / slow_ips:6.1f}x")


if __name__ == "__main__":
  main()
