"""CLIP ViT-B/32 image tower (openai/clip-vit-base-patch32) in Flax, loaded from safetensors.

Preprocessing (CLIPImageProcessor on square images): model-range [-1, 1] -> [0, 1], one channel
tiled to three, bicubic resize to 224x224 (antialiased; the centre crop of a square image is the
whole image), then (x - mean) / std with CLIP's constants. Features: the 512-d projected image
embedding (visual_projection of the post-layernorm class token), not normalised.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from solar_ddpm_jax.evaluation import extractors
from solar_ddpm_jax.evaluation import weights as weights_lib

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "vision_model."


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
  """Sizes of the image tower (defaults: ViT-B/32)."""
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  projection_dim: int = 512
  layer_norm_eps: float = 1e-5


VIT_B_32 = ClipVisionConfig()


def quick_gelu(x):
  """CLIP's activation: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


class EncoderLayer(nn.Module):
  """Pre-LN transformer block with the Hugging Face CLIP parameter names."""
  cfg: ClipVisionConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    ln = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps)
    b, n, d = x.shape
    hd = d // cfg.heads
    h = ln(name="layer_norm1")(x)

    def proj(name):
      return nn.Dense(d, name=name)(h).reshape(b, n, cfg.heads, hd)
    q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * hd ** -0.5, k)
    attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(b, n, d)
    x = x + nn.Dense(d, name="out_proj")(attn)
    h = ln(name="layer_norm2")(x)
    h = nn.Dense(cfg.mlp_dim, name="fc1")(h)
    h = nn.Dense(d, name="fc2")(quick_gelu(h))
    return x + h


class ClipVision(nn.Module):
  """[B, 224, 224, 3] normalised images -> [B, projection_dim] image embeddings."""
  cfg: ClipVisionConfig = VIT_B_32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    p = cfg.patch_size
    x = nn.Conv(cfg.width, (p, p), (p, p), padding="VALID", use_bias=False,
                name="patch_embedding")(x)
    b = x.shape[0]
    x = x.reshape(b, -1, cfg.width)
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.width,))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, cfg.width)), x], axis=1)
    pos = self.param("position_embedding", nn.initializers.normal(0.02),
                     ((cfg.image_size // p) ** 2 + 1, cfg.width))
    x = x + pos[None]
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="pre_layrnorm")(x)
    for i in range(cfg.layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x)
    pooled = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="post_layernorm")(x[:, 0])
    return nn.Dense(cfg.projection_dim, use_bias=False, name="visual_projection")(pooled)


def preprocess(images, size: int = 224):
  """Model-range images [B, H, W, C] -> CLIP input [B, size, size, 3] (normalised)."""
  x = (jnp.clip(jnp.asarray(images, jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  x = jnp.tile(x[..., :1], (1, 1, 1, 3))  # Multichannel data too: the first channel (171 A).
  x = jax.image.resize(x, (x.shape[0], size, size, 3), "bicubic", antialias=True)
  x = jnp.clip(x, 0.0, 1.0)  # As CLIP's image processors, whose resize works on 8-bit images.
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


PREPROCESSING = ("[-1,1] -> [0,1]; 1 channel tiled to 3 (several channels: first tiled); bicubic "
                 "antialiased resize to 224x224 (centre crop of a square is the identity), "
                 "clipped to [0,1]; normalise with CLIP mean/std")

# Hugging Face name of every Flax leaf: (flax path suffix) -> (hf name, transpose).
_LAYER_LEAVES = {
    "layer_norm1/scale": "layer_norm1.weight", "layer_norm1/bias": "layer_norm1.bias",
    "layer_norm2/scale": "layer_norm2.weight", "layer_norm2/bias": "layer_norm2.bias",
    "fc1/kernel": "mlp.fc1.weight", "fc1/bias": "mlp.fc1.bias",
    "fc2/kernel": "mlp.fc2.weight", "fc2/bias": "mlp.fc2.bias",
}
for _p in ("q_proj", "k_proj", "v_proj", "out_proj"):
  _LAYER_LEAVES[f"{_p}/kernel"] = f"self_attn.{_p}.weight"
  _LAYER_LEAVES[f"{_p}/bias"] = f"self_attn.{_p}.bias"


def hf_name(flat_name: str) -> str:
  """Flax path ("layers_3/q_proj/kernel") -> safetensors name."""
  top, _, rest = flat_name.partition("/")
  if top.startswith("layers_"):
    return f"{PREFIX}encoder.layers.{top[len('layers_'):]}.{_LAYER_LEAVES[rest]}"
  fixed = {
      "patch_embedding/kernel": "embeddings.patch_embedding.weight",
      "class_embedding": "embeddings.class_embedding",
      "position_embedding": "embeddings.position_embedding.weight",
      "pre_layrnorm/scale": "pre_layrnorm.weight", "pre_layrnorm/bias": "pre_layrnorm.bias",
      "post_layernorm/scale": "post_layernorm.weight",
      "post_layernorm/bias": "post_layernorm.bias",
  }
  if flat_name == "visual_projection/kernel":
    return "visual_projection.weight"
  return PREFIX + fixed[flat_name]


def _to_hf(flat_name: str, array_or_shape, forward: bool):
  """Layout change between Flax and torch for one tensor (shape tuple or array)."""
  if flat_name.endswith("patch_embedding/kernel"):
    perm = (3, 2, 0, 1) if forward else (2, 3, 1, 0)  # HWIO <-> OIHW
  elif flat_name.endswith("kernel"):
    perm = (1, 0)  # Dense [in, out] <-> Linear [out, in]
  else:
    perm = None
  if isinstance(array_or_shape, tuple):
    return tuple(array_or_shape[i] for i in perm) if perm else array_or_shape
  return np.transpose(array_or_shape, perm) if perm else array_or_shape


@functools.cache
def expected_flat_shapes(cfg: ClipVisionConfig = VIT_B_32) -> dict[str, tuple]:
  """Flax leaf path -> shape (no compute)."""
  x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  tree = jax.eval_shape(lambda y: ClipVision(cfg).init(jax.random.PRNGKey(0), y), x)["params"]
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def expected_hf_shapes(cfg: ClipVisionConfig = VIT_B_32) -> dict[str, tuple]:
  """safetensors name -> shape of the published file for this config."""
  return {hf_name(k): _to_hf(k, s, True) for k, s in expected_flat_shapes(cfg).items()}


def params_from_hf(tensors: dict, cfg: ClipVisionConfig = VIT_B_32) -> dict:
  """Hugging Face CLIP tensors (numpy) -> Flax params; missing/misshapen tensors raise by name."""
  expected = expected_flat_shapes(cfg)
  weights_lib.check_tensors(tensors, {hf_name(k): _to_hf(k, s, True) for k, s in expected.items()},
                            "CLIP ViT image tower (safetensors)")
  flat = {k: np.asarray(_to_hf(k, tensors[hf_name(k)], False), np.float32) for k in expected}
  return weights_lib.unflatten(flat)


def load_clip_params(path: str, cfg: ClipVisionConfig = VIT_B_32) -> dict:
  """Reads model.safetensors of openai/clip-vit-base-patch32 into Flax params (no torch)."""
  return weights_lib.read_weights(
      path, "clip", lambda p: params_from_hf(weights_lib.load_safetensors(p), cfg))


def apply_features(params, images, cfg: ClipVisionConfig = VIT_B_32):
  """CLIP image embeddings [B, projection_dim] of model-range images [B, H, W, C]."""
  return ClipVision(cfg).apply({"params": params}, preprocess(images, cfg.image_size))


def clip_extractor(path: str, cfg: ClipVisionConfig | None = None) -> extractors.Extractor:
  """CLIP ViT-B/32 image embeddings from model.safetensors at `path`."""
  cfg = cfg or VIT_B_32
  params = load_clip_params(path, cfg)
  return extractors.Extractor("clip_vit_b32", functools.partial(apply_features, cfg=cfg), params,
                              path, weights_lib.sha256_file(path), PREPROCESSING)


@extractors.register("clip")
def _build(config, workdir: str) -> extractors.Extractor:
  del workdir
  return clip_extractor(config.evaluation.clip_weights)
