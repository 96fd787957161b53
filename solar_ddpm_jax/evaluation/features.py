"""Batched feature extraction sharded over the mesh, with every extractor a config can name.

The extractor interface and registry live in `extractors` (re-exported here); importing this
module loads the three extractor modules, which register their builders there.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from solar_ddpm_jax import sharding
from solar_ddpm_jax.evaluation import clip, domain, inception  # noqa: F401  (they register)

# The interface and registry, used through this module by the report, export and tests:
from solar_ddpm_jax.evaluation.extractors import EXTRACTORS as EXTRACTORS
from solar_ddpm_jax.evaluation.extractors import PRECISION as PRECISION
from solar_ddpm_jax.evaluation.extractors import Extractor as Extractor
from solar_ddpm_jax.evaluation.extractors import build_extractor as build_extractor
from solar_ddpm_jax.evaluation.extractors import extractor_names as extractor_names

MICRO_BATCH = 8  # Images per network call on one device (results do not depend on the mesh).


def _jitted(fn, mesh, micro_batch: int):
  """fn over the batch sharded on the mesh, in fixed micro-batches on every device.

  Each device maps the same [micro_batch, H, W, C] program over its rows, so a feature is
  bitwise the same whatever the number of devices.
  """
  spec = P(sharding.DATA_AXES)

  def per_device(params, x):
    chunks = x.reshape(x.shape[0] // micro_batch, micro_batch, *x.shape[1:])
    with jax.default_matmul_precision(PRECISION):
      out = jax.lax.map(lambda c: fn(params, c), chunks)
    return out.reshape(x.shape[0], *out.shape[2:])
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec), out_specs=spec))


def iter_features(extractor: Extractor, images, *, batch_size: int = 64, mesh=None,
                  micro_batch: int = MICRO_BATCH):
  """Yields float32 feature blocks [b, D] of `images` [N, H, W, C], batch-sharded over the mesh.

  `images` may be any indexable of arrays (a numpy memmap streams from disk), the same on every
  process of a multi-host job, which all get every feature. Each call holds a multiple of
  devices x micro_batch images; the last one is padded and the padding dropped.
  """
  mesh = mesh if mesh is not None else sharding.create_mesh()
  unit = mesh.devices.size * int(micro_batch)
  batch_size = max(unit, -(-int(batch_size) // unit) * unit)
  params = jax.tree.map(lambda p: sharding.host_to_global(mesh, p, replicate=True),
                        extractor.params)
  fn = _jitted(extractor.fn, mesh, int(micro_batch))
  for start in range(0, len(images), batch_size):
    chunk = np.asarray(images[start:start + batch_size], np.float32)
    n = len(chunk)
    padded = -(-n // unit) * unit
    if padded != n:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], padded - n, axis=0)])
    out = fn(params, sharding.host_to_global(mesh, chunk))  # Same images on every process.
    yield np.asarray(sharding.global_to_host(out), np.float32)[:n]


def extract(extractor: Extractor, images, *, batch_size: int = 64, mesh=None,
            micro_batch: int = MICRO_BATCH) -> np.ndarray:
  """Features [N, D] float32 of model-range images [N, H, W, C]."""
  blocks = list(iter_features(extractor, images, batch_size=batch_size, mesh=mesh,
                              micro_batch=micro_batch))
  return np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
