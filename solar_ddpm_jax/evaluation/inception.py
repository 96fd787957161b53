"""Inception V3 as used for FID (the pytorch-fid network: FIDInceptionA/C/E), pool3 features.

Input scaling: pytorch-fid takes RGB in [0, 1] and maps it to [-1, 1] (2x - 1) before the network.
Our images are already in the model range [-1, 1], so they are clipped to [-1, 1], tiled from one
channel to three, resized to 299x299 bilinearly (align_corners=False, no antialiasing, like
torch.nn.functional.interpolate), and fed as they are. Output: the 2048-d average-pooled
activations before the classifier ("pool3").

Parameters use the names of jax-fid's pickle ({block}/{branch}/conv/kernel, .../bn/{scale, bias,
mean, var}); `load_inception_params` reads either that pickle/npz or pytorch-fid's .pth.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from solar_ddpm_jax.evaluation import extractors
from solar_ddpm_jax.evaluation import weights as weights_lib

INPUT_SIZE = 299  # pytorch-fid resizes every image to 299x299.
FEATURE_DIM = 2048
BN_EPS = 1e-3  # torchvision's BasicConv2d BatchNorm epsilon.


class BatchNormFrozen(nn.Module):
  """Inference batch norm whose statistics are ordinary parameters (scale, bias, mean, var)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias


class BasicConv2d(nn.Module):
  """Conv (no bias) -> frozen BN -> ReLU; padding as ((top, bottom), (left, right))."""
  features: int
  kernel: Sequence[int] = (1, 1)
  strides: Sequence[int] = (1, 1)
  padding: tuple = ((0, 0), (0, 0))

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, tuple(self.kernel), tuple(self.strides), padding=self.padding,
                use_bias=False, name="conv")(x)
    return nn.relu(BatchNormFrozen(name="bn")(x))


def _pad(h, w):
  return ((h, h), (w, w))


_avg_pool = functools.partial(nn.avg_pool, window_shape=(3, 3), strides=(1, 1),
                              padding=_pad(1, 1), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """FIDInceptionA: average pool without padded zeros."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, name="branch1x1")(x)
    b5 = BasicConv2d(48, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=_pad(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC: factorised 7x7 branches, average pool without padded zeros."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, name="branch1x1")(x)
    b7 = BasicConv2d(c7, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=_pad(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=_pad(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=_pad(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=_pad(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=_pad(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=_pad(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (average pool, no padded zeros) or FIDInceptionE_2 (max pool)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, name="branch1x1")(x)
    b3 = BasicConv2d(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=_pad(0, 1), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=_pad(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=_pad(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=_pad(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=_pad(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=_pad(1, 1))
    else:
      pooled = _avg_pool(x)
    bp = BasicConv2d(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID Inception V3 up to pool3: [B, 299, 299, 3] in [-1, 1] -> [B, 2048]."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv2d(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=_pad(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def preprocess(images, size: int = INPUT_SIZE):
  """Model-range images [B, H, W, C] -> Inception input [B, size, size, 3] in [-1, 1]."""
  x = jnp.clip(jnp.asarray(images, jnp.float32), -1.0, 1.0)
  x = jnp.tile(x[..., :1], (1, 1, 1, 3))  # Multichannel data too: the first channel (171 A).
  return jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=False)


PREPROCESSING = ("clip to [-1,1]; 1 channel tiled to 3 (several channels, 3 too: first tiled); "
                 "bilinear resize to 299x299 (align_corners=False, no antialias); "
                 "no further scaling ([-1,1] = pytorch-fid's 2*x-1 of [0,1])")


@functools.cache
def abstract_params(size: int = INPUT_SIZE):
  """Shapes of the Flax parameters (no compute)."""
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda y: InceptionV3().init(jax.random.PRNGKey(0), y), x)["params"]


def expected_flat_shapes() -> dict[str, tuple]:
  """{"Mixed_5b/branch1x1/conv/kernel": (1, 1, 192, 64), ...} in the jax-fid layout."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_params())[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


_BN_TORCH = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def torch_name(flat_name: str) -> str:
  """jax-fid name -> pytorch-fid name (conv/kernel -> conv.weight, bn/scale -> bn.weight)."""
  parts = flat_name.split("/")
  if parts[-2] == "conv":
    parts[-1] = "weight"
  else:
    parts[-1] = _BN_TORCH[parts[-1]]
  return ".".join(parts)


def torch_shape(flat_name: str, shape) -> tuple:
  """Shape of the torch tensor: conv kernels are [out, in, h, w] there, [h, w, in, out] here."""
  if flat_name.endswith("conv/kernel"):
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(shape)


def params_from_torch(state_dict: dict) -> dict:
  """pytorch-fid state dict (numpy) -> Flax params; missing or misshapen tensors raise by name."""
  expected = expected_flat_shapes()
  check = {torch_name(k): torch_shape(k, s) for k, s in expected.items()}
  weights_lib.check_tensors(state_dict, check, "Inception V3 (pytorch-fid .pth)")
  fc = state_dict.get("fc.weight")
  if (fc is not None and tuple(np.shape(fc)) != (1008, 2048)) or any(
      k.startswith("AuxLogits.") for k in state_dict):
    shape = tuple(np.shape(fc)) if fc is not None else None
    raise weights_lib.WeightError(
        f"Inception V3: this file has an ImageNet head (fc {shape}, AuxLogits), as torchvision's "
        "inception_v3_google weights do, not the 1008-class FID network of pytorch-fid. FIDs "
        "computed with it are not comparable with published ones: use "
        + weights_lib.PUBLISHED["inception"]["files"] + " from "
        + " or ".join(weights_lib.PUBLISHED["inception"]["urls"]) + ".")
  flat = {}
  for k in expected:
    v = np.asarray(state_dict[torch_name(k)], np.float32)
    flat[k] = v.transpose(2, 3, 1, 0) if k.endswith("conv/kernel") else v
  return weights_lib.unflatten(flat)


def params_from_jax_fid(flat_tree: dict) -> dict:
  """jax-fid pickle/npz ({"Mixed_5b/branch1x1/conv/kernel": ...}) -> Flax params."""
  expected = expected_flat_shapes()
  if not any(k in flat_tree for k in expected):  # Flax variables {"params": {...}}.
    flat_tree = {k.removeprefix("params/"): v for k, v in flat_tree.items()}
  weights_lib.check_tensors(flat_tree, expected, "Inception V3 (jax-fid pickle)")
  return weights_lib.unflatten({k: np.asarray(flat_tree[k], np.float32) for k in expected})


def load_inception_params(path: str) -> dict:
  """Reads pytorch-fid's .pth or jax-fid's pickle/npz into Flax params (no torch needed)."""
  if path and path.endswith((".pth", ".pt")):
    return weights_lib.read_weights(
        path, "inception", lambda p: params_from_torch(weights_lib.load_torch_state_dict(p)))
  return weights_lib.read_weights(
      path, "inception", lambda p: params_from_jax_fid(weights_lib.load_numpy_tree(p)))


def apply_features(params, images, size: int = INPUT_SIZE):
  """Pool3 features [B, 2048] of model-range images [B, H, W, C] (jit-friendly)."""
  return InceptionV3().apply({"params": params}, preprocess(images, size))


def inception_extractor(path: str, size: int | None = None) -> extractors.Extractor:
  """pytorch-fid Inception V3 pool3 from the .pth or jax-fid pickle/npz at `path`."""
  params = load_inception_params(path)
  size = size or INPUT_SIZE
  return extractors.Extractor("inception_v3_pool3", functools.partial(apply_features, size=size),
                              params, path, weights_lib.sha256_file(path),
                              PREPROCESSING.replace("299x299", f"{size}x{size}"))


@extractors.register("inception")
def _build(config, workdir: str) -> extractors.Extractor:
  del workdir
  return inception_extractor(config.evaluation.inception_weights)
