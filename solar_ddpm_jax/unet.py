"""Class-conditional UNet in Flax linen; it knows nothing of noise schedules.

    model = create_model(config.model)
    out = model.apply({"params": params}, x, t, labels, train=False)

x [batch, height, width, in_channels] in the data range, t [batch] integer timesteps (0..T-1),
labels [batch] flare classes 0..num_classes-1, or num_classes for the learned null class of
classifier-free guidance. Returns [batch, height, width, out_channels] in float32.

Two block styles:
  paper   the published network (Ramunno et al. 2024, dome272 `UNet_conditional`): DoubleConv
          (conv3x3 without bias, GroupNorm(1), GELU), a residual first block, max-pool down,
          bilinear up with skip concat, pre-LayerNorm self-attention with a feed-forward after
          the down and up blocks at the attention resolutions, a sinusoidal time embedding (no MLP)
          plus a class embedding, projected by SiLU+Dense into every block. 23,332,737 parameters
          at 64 px (plus one class-embedding row for the learned null class; `faithful` keeps the
          original's align-corners upsampling and its null class, a zero class embedding).
  modern  residual blocks with GroupNorm and scale/shift conditioning from a time MLP
          (improved-diffusion / ADM style), strided-conv down, nearest+conv up, zero-initialised
          output layers, num_res_blocks per level.
Width, channel multipliers, blocks, attention resolutions, heads, dropout, dtypes are independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from solar_ddpm_jax import attention

Dtype = Any


def timestep_embedding(t, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding [B, dim] of t [B]: [sin(t f_i), cos(t f_i)], f_i = max_period^(-2i/dim).

  The frequencies of the published code (`pos_encoding`), in float32.
  """
  half = dim // 2
  inv_freq = 1.0 / (max_period ** (jnp.arange(0, dim, 2, dtype=jnp.float32)[:half] / dim))
  args = jnp.asarray(t, jnp.float32)[:, None] * inv_freq[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _interp_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """[n_out, n_in] linear interpolation weights (torch's bilinear convention for each flag)."""
  if align_corners:
    pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
  else:
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
  lo = np.floor(pos).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  m[np.arange(n_out), lo] += 1 - frac
  m[np.arange(n_out), hi] += frac
  return m


def upsample_bilinear(x, align_corners: bool) -> jax.Array:
  """x [B, H, W, C] -> [B, 2H, 2W, C], bilinear (align_corners as in torch's nn.Upsample)."""
  _, h, w, _ = x.shape
  mh = jnp.asarray(_interp_matrix(h, 2 * h, align_corners), x.dtype)
  mw = jnp.asarray(_interp_matrix(w, 2 * w, align_corners), x.dtype)
  return jnp.einsum("ph,qw,bhwc->bpqc", mh, mw, x)


def _groups(channels: int, max_groups: int = 32) -> int:
  return math.gcd(channels, max_groups)


# ------------------------------------------------------------------------------------ paper


class DoubleConv(nn.Module):
  """conv3x3 - GroupNorm(1) - GELU - conv3x3 - GroupNorm(1); residual: GELU(x + that)."""
  features: int
  mid_features: int | None = None
  residual: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    mid = self.mid_features or self.features
    h = nn.Conv(mid, (3, 3), padding=1, use_bias=False, name="conv1", **kw)(x)
    h = nn.GroupNorm(num_groups=1, epsilon=1e-5, name="norm1", **kw)(h)
    h = nn.gelu(h, approximate=False)
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv2", **kw)(h)
    h = nn.GroupNorm(num_groups=1, epsilon=1e-5, name="norm2", **kw)(h)
    if self.residual:
      return nn.gelu(x + h, approximate=False)
    return h


def multi_head_attention(x, num_heads: int, impl: str, chunk: int, *, zero_out: bool = False,
                         **kw):
  """Self-attention over [B, T, C] tokens with query/key/value/out DenseGenerals.

  Call inside a compact method: the projections become parameters of the calling module.
  """
  c = x.shape[-1]
  if c % num_heads:
    raise ValueError(f"{c} channels do not split into {num_heads} attention heads.")
  heads = (num_heads, c // num_heads)
  q, k, v = (nn.DenseGeneral(heads, name=name, **kw)(x) for name in ("query", "key", "value"))
  out = attention.dot_product_attention(q, k, v, implementation=impl, chunk=chunk)
  init = nn.initializers.zeros if zero_out else nn.initializers.lecun_normal()
  return nn.DenseGeneral(c, axis=(-2, -1), kernel_init=init, name="out", **kw)(out)


class AttentionFields(nn.Module):
  """The fields both attention blocks share: heads, kernel (attention.IMPLEMENTATIONS), dtypes."""
  num_heads: int = 4
  impl: str = "auto"
  chunk: int = 512
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32


class PaperAttention(AttentionFields):
  """The published SelfAttention: x + MHA(LN(x)), then + FF(LN(.)) with a GELU MLP."""

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = x.reshape(b, h * w, c)
    normed = nn.LayerNorm(epsilon=1e-5, name="ln", **kw)(tokens)
    y = multi_head_attention(normed, self.num_heads, self.impl, self.chunk, **kw)
    y = y + tokens
    ff = nn.LayerNorm(epsilon=1e-5, name="ff_ln", **kw)(y)
    ff = nn.Dense(c, name="ff1", **kw)(ff)
    ff = nn.Dense(c, name="ff2", **kw)(nn.gelu(ff, approximate=False))
    return (ff + y).reshape(b, h, w, c)


class UNetFields(nn.Module):
  """The fields both block styles share (see config.model)."""
  image_size: int = 64
  out_channels: int = 1
  base_channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 4, 4)
  attention_resolutions: Sequence[int] = (64, 32, 16, 8)
  num_heads: int = 4
  attention_impl: str = "auto"
  attention_chunk: int = 512
  dropout: float = 0.0
  time_embed_dim: int = 256
  num_classes: int = 5
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  class_embed_init: str = "default"  # A key of CLASS_EMBED_INITS.


# Initialisers of the class embedding table (model.class_embed_init): "default" is Flax's
# (std 1/sqrt(width): a class vector ~1/8 the norm of the sinusoidal time embedding), "unit"
# PyTorch nn.Embedding's N(0, 1) (comparable to it), "zeros" starts every class equal.
CLASS_EMBED_INITS = {"default": nn.linear.default_embed_init, "unit": nn.initializers.normal(1.0),
                     "zeros": nn.initializers.zeros}


class PaperUNet(UNetFields):
  """The published architecture, generalised to any widths, levels and attention resolutions."""
  bottleneck_mult: int = 8
  faithful: bool = False  # Align-corners upsampling and a zero (unlearned) null-class embedding.

  @nn.compact
  def __call__(self, x, t, labels, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    widths = [self.base_channels * m for m in self.channel_mult]
    levels = len(widths)
    size = self.image_size
    conv = nn.remat(DoubleConv, static_argnums=(2,)) if self.remat else DoubleConv
    attn = nn.remat(PaperAttention) if self.remat else PaperAttention

    emb = timestep_embedding(t, self.time_embed_dim)
    if self.faithful:  # The original: no null row; the unconditional pass adds no class embedding.
      null = labels == self.num_classes  # Labels above it still look up NaN, as without faithful.
      table = nn.Embed(self.num_classes, self.time_embed_dim, name="label_emb",
                       param_dtype=self.param_dtype,
                       embedding_init=CLASS_EMBED_INITS[self.class_embed_init])
      emb = emb + jnp.where(null[:, None], 0.0, table(jnp.where(null, 0, labels))
                            ).astype(jnp.float32)
    else:
      emb = emb + nn.Embed(self.num_classes + 1, self.time_embed_dim, name="label_emb",
                           param_dtype=self.param_dtype,
                           embedding_init=CLASS_EMBED_INITS[self.class_embed_init]
                           )(labels).astype(jnp.float32)
    emb = nn.silu(emb).astype(self.dtype)

    def add_emb(h, name):
      return h + nn.Dense(h.shape[-1], name=name, **kw)(emb)[:, None, None, :]

    def maybe_attend(h, level, name):
      if size // 2**level in self.attention_resolutions:
        h = attn(self.num_heads, self.attention_impl, self.attention_chunk, name=name, **kw)(h)
      return h

    h = conv(widths[0], dropout=self.dropout, name="inc", **kw)(x.astype(self.dtype), train)
    skips = [h]
    for i in range(1, levels):
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
      h = conv(widths[i - 1], residual=True, dropout=self.dropout, name=f"down{i}_res",
               **kw)(h, train)
      h = conv(widths[i], dropout=self.dropout, name=f"down{i}_conv", **kw)(h, train)
      h = maybe_attend(add_emb(h, f"down{i}_emb"), i, f"sa{i}")
      skips.append(h)
    skips.pop()
    bottleneck = self.base_channels * self.bottleneck_mult
    h = conv(bottleneck, dropout=self.dropout, name="bot1", **kw)(h, train)
    h = conv(bottleneck, dropout=self.dropout, name="bot2", **kw)(h, train)
    h = conv(widths[-1], dropout=self.dropout, name="bot3", **kw)(h, train)
    for j in range(1, levels):
      level = levels - 1 - j
      h = upsample_bilinear(h, align_corners=self.faithful)
      h = jnp.concatenate([skips.pop(), h], axis=-1)
      c_in = h.shape[-1]
      h = conv(c_in, residual=True, dropout=self.dropout, name=f"up{j}_res", **kw)(h, train)
      h = conv(widths[max(level - 1, 0)], mid_features=c_in // 2, dropout=self.dropout,
               name=f"up{j}_conv", **kw)(h, train)
      h = maybe_attend(add_emb(h, f"up{j}_emb"), level, f"sa{levels - 1 + j}")
    out = nn.Conv(self.out_channels, (1, 1), name="outc", **kw)(h)
    return out.astype(jnp.float32)


# ----------------------------------------------------------------------------------- modern


class ResBlock(nn.Module):
  """GN-SiLU-conv, scale/shift from the embedding, GN-SiLU-dropout-conv (zero init), skip."""
  features: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]), name="norm1", **kw)(x))
    h = nn.Conv(self.features, (3, 3), padding=1, name="conv1", **kw)(h)
    scale, shift = jnp.split(nn.Dense(2 * self.features, name="emb", **kw)(nn.silu(emb)), 2, -1)
    h = nn.GroupNorm(_groups(self.features), name="norm2", **kw)(h)
    h = h * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = nn.silu(h)
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.features, (3, 3), padding=1, kernel_init=nn.initializers.zeros,
                name="conv2", **kw)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name="skip", **kw)(x)
    return x + h


class AttnBlock(AttentionFields):
  """x + out(MHA(GroupNorm(x))) over the h*w tokens; the output projection starts at zero."""

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.GroupNorm(_groups(c), name="norm", **kw)(x).reshape(b, h * w, c)
    y = multi_head_attention(y, self.num_heads, self.impl, self.chunk, zero_out=True, **kw)
    return x + y.reshape(b, h, w, c)


class ModernUNet(UNetFields):
  """ADM-style UNet: num_res_blocks ResBlocks per level, attention at the given resolutions."""
  num_res_blocks: int = 2

  @nn.compact
  def __call__(self, x, t, labels, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    widths = [self.base_channels * m for m in self.channel_mult]
    emb_dim = 4 * self.base_channels
    res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
    attn = nn.remat(AttnBlock) if self.remat else AttnBlock

    emb = timestep_embedding(t, self.time_embed_dim).astype(self.dtype)
    emb = nn.Dense(emb_dim, name="time_mlp1", **kw)(emb)
    emb = nn.Dense(emb_dim, name="time_mlp2", **kw)(nn.silu(emb))
    emb = emb + nn.Embed(self.num_classes + 1, emb_dim, name="label_emb",
                         param_dtype=self.param_dtype,
                         embedding_init=CLASS_EMBED_INITS[self.class_embed_init]
                         )(labels).astype(self.dtype)

    def block(h, features, size, name):
      h = res_block(features, self.dropout, name=f"{name}_res", **kw)(h, emb, train)
      if size in self.attention_resolutions:
        h = attn(self.num_heads, self.attention_impl, self.attention_chunk, name=f"{name}_attn",
                 **kw)(h)
      return h

    h = nn.Conv(widths[0], (3, 3), padding=1, name="conv_in", **kw)(x.astype(self.dtype))
    skips = [h]
    for i, width in enumerate(widths):
      size = self.image_size // 2**i
      for j in range(self.num_res_blocks):
        h = block(h, width, size, f"down{i}_{j}")
        skips.append(h)
      if i < len(widths) - 1:
        h = nn.Conv(width, (3, 3), strides=(2, 2), padding=1, name=f"down{i}_pool", **kw)(h)
        skips.append(h)
    size = self.image_size // 2**(len(widths) - 1)
    h = block(h, widths[-1], size, "mid0")
    h = res_block(widths[-1], self.dropout, name="mid1_res", **kw)(h, emb, train)
    for i in reversed(range(len(widths))):
      size = self.image_size // 2**i
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(h, widths[i], size, f"up{i}_{j}")
      if i > 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
        h = nn.Conv(widths[i], (3, 3), padding=1, name=f"up{i}_upsample", **kw)(h)
    h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), name="norm_out", **kw)(h))
    out = nn.Conv(self.out_channels, (3, 3), padding=1, kernel_init=nn.initializers.zeros,
                  name="conv_out", **kw)(h)
    return out.astype(jnp.float32)


# ---------------------------------------------------------------------------------- factory


def create_model(model_config) -> nn.Module:
  """The UNet of `config.model` (block_style "paper" or "modern")."""
  c = model_config
  levels = len(c.channel_mult)
  size = int(c.image_size)
  if size % 2 ** (levels - 1):
    raise ValueError(f"model.image_size={size} is not divisible by 2^{levels - 1} "
                     f"(model.channel_mult has {levels} levels).")
  common = dict(
      image_size=size, out_channels=int(c.out_channels), base_channels=int(c.base_channels),
      channel_mult=tuple(int(m) for m in c.channel_mult),
      attention_resolutions=tuple(int(r) for r in c.attention_resolutions),
      num_heads=int(c.num_heads), attention_impl=str(c.attention_impl),
      attention_chunk=int(c.attention_chunk), dropout=float(c.dropout),
      time_embed_dim=int(c.time_embed_dim), num_classes=int(c.num_classes), remat=bool(c.remat),
      dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
      class_embed_init=str(c.class_embed_init))
  if c.block_style == "paper":
    return PaperUNet(bottleneck_mult=int(c.bottleneck_mult), faithful=bool(c.faithful), **common)
  if c.block_style == "modern":
    return ModernUNet(num_res_blocks=int(c.num_res_blocks), **common)
  raise ValueError(f"Unknown model.block_style {c.block_style!r}: 'paper' or 'modern'.")


def dummy_inputs(model_config, batch: int = 1):
  """(x, t, labels) of the shapes the model of `model_config` takes."""
  size, channels = int(model_config.image_size), int(model_config.in_channels)
  return (jnp.zeros((batch, size, size, channels), jnp.float32), jnp.zeros((batch,), jnp.int32),
          jnp.zeros((batch,), jnp.int32))


def init_params(model_config, key):
  """Freshly initialised parameters of the UNet of `model_config` (one compiled init)."""
  model = create_model(model_config)
  init = lambda k: model.init({"params": k}, *dummy_inputs(model_config))["params"]
  return jax.jit(init)(key)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def make_apply_fn(model):
  """apply_fn(params, x, t, labels, train=False, rngs=None) over a linen model.

  The one signature the diffusion loss, the samplers and the training loop call a model with.
  """
  def apply_fn(params, x, t, labels, train=False, rngs=None):
    return model.apply({"params": params}, x, t, labels, train=train, rngs=rngs)
  return apply_fn
