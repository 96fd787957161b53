"""Feature extractors behind one interface, and batched extraction sharded over the mesh."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from solar_ddpm_jax import sharding
from solar_ddpm_jax.evaluation import weights as weights_lib

EXTRACTORS = ("inception", "clip", "domain")


def extractor_names(value) -> list[str]:
  """config.evaluation.extractors as names: a tuple, or comma-separated text from the command line
  (--config.evaluation.extractors=inception,clip gives the one string "inception,clip")."""
  items = [value] if isinstance(value, str) else list(value)
  names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
  unknown = [n for n in names if n not in EXTRACTORS]
  if unknown:
    raise ValueError(f"Unknown feature extractors {unknown}; choose from {', '.join(EXTRACTORS)} "
                     "(config.evaluation.extractors).")
  return names


@dataclasses.dataclass
class Extractor:
  """A feature network and the settings recorded next to every number computed with it."""
  name: str
  fn: Callable  # (params, images [B, H, W, C] in [-1, 1]) -> features [B, D]; jit-friendly.
  params: Any
  weights_path: str
  weights_sha256: str
  preprocessing: str

  def settings(self) -> dict:
    """What a feature-space number depends on."""
    return dict(extractor=self.name, weights=os.path.basename(self.weights_path),
                weights_sha256=self.weights_sha256, preprocessing=self.preprocessing,
                matmul_precision=PRECISION)


MICRO_BATCH = 8  # Images per network call on one device (results do not depend on the mesh).
# Feature networks run their convolutions and matmuls in full float32: on GPUs XLA's default
# lets float32 products round to TF32 (10-bit mantissa), which moves features by ~1e-3 and FID
# with them, differently on each GPU generation. Recorded with every feature-space number.
PRECISION = "highest"


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


def inception_extractor(path: str, size: int | None = None) -> Extractor:
  """pytorch-fid Inception V3 pool3 from the .pth or jax-fid pickle/npz at `path`."""
  from solar_ddpm_jax.evaluation import inception
  params = inception.load_inception_params(path)
  size = size or inception.INPUT_SIZE
  return Extractor("inception_v3_pool3", functools.partial(inception.apply_features, size=size),
                   params, path, weights_lib.sha256_file(path),
                   inception.PREPROCESSING.replace("299x299", f"{size}x{size}"))


def clip_extractor(path: str, cfg=None) -> Extractor:
  """CLIP ViT-B/32 image embeddings from model.safetensors at `path`."""
  from solar_ddpm_jax.evaluation import clip
  cfg = cfg or clip.VIT_B_32
  params = clip.load_clip_params(path, cfg)
  return Extractor("clip_vit_b32", functools.partial(clip.apply_features, cfg=cfg), params,
                   path, weights_lib.sha256_file(path), clip.PREPROCESSING)


def build_extractor(name: str, config, workdir: str) -> Extractor:
  """The extractor `name` ("inception", "clip", "domain") with the weights the config names."""
  ev = config.evaluation
  if name == "inception":
    return inception_extractor(ev.inception_weights)
  if name == "clip":
    return clip_extractor(ev.clip_weights)
  if name == "domain":
    from solar_ddpm_jax.evaluation import domain
    return domain.domain_extractor(domain.checkpoint_path(config, workdir))
  raise ValueError(f"Unknown extractor {name!r}; choose from {EXTRACTORS}.")
