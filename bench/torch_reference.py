"""The published network and sampler in PyTorch: the reference the benchmarks compare against.

The class-conditional UNet of Ramunno et al. 2024 (dome272 Diffusion-Models-pytorch
`UNet_conditional`): DoubleConv blocks (conv3x3 without bias, GroupNorm(1), GELU), residual first
block, max-pool down, bilinear (align_corners=True) up with skip concat, 4-head self-attention
(nn.MultiheadAttention, LayerNorm, feed-forward) after every down and up block, a 256-d sinusoidal
time embedding added through SiLU+Linear per block, and a 5-way class embedding added to it.
23,332,737 parameters at 64 px, 1 channel. `ReferenceDiffusion` is the original's training step and
Python-loop ancestral sampler with CFG (two forward passes per step, torch.lerp).

`to_flax_params` copies the weights into the parameter tree of the Flax `paper` UNet
(solar_ddpm_jax.unet) so that both can be checked for equal outputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

PUBLISHED_NUM_PARAMS = 23_332_737  # 64 px, 1 channel in and out, 5 classes.


class SelfAttention(nn.Module):
  """Pre-LayerNorm multi-head self-attention and feed-forward over the size*size tokens."""

  def __init__(self, channels: int, size: int, need_weights: bool = True):
    super().__init__()
    self.channels = channels
    self.size = size
    self.need_weights = need_weights  # True as in the original (no fused attention kernel).
    self.mha = nn.MultiheadAttention(channels, 4, batch_first=True)
    self.ln = nn.LayerNorm([channels])
    self.ff_self = nn.Sequential(
        nn.LayerNorm([channels]),
        nn.Linear(channels, channels),
        nn.GELU(),
        nn.Linear(channels, channels),
    )

  def forward(self, x):
    x = x.view(-1, self.channels, self.size * self.size).swapaxes(1, 2)
    x_ln = self.ln(x)
    attention_value, _ = self.mha(x_ln, x_ln, x_ln, need_weights=self.need_weights)
    attention_value = attention_value + x
    attention_value = self.ff_self(attention_value) + attention_value
    return attention_value.swapaxes(2, 1).reshape(-1, self.channels, self.size, self.size)


class DoubleConv(nn.Module):
  """conv3x3 - GroupNorm(1) - GELU - conv3x3 - GroupNorm(1), optionally residual (+ GELU)."""

  def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
               residual: bool = False):
    super().__init__()
    self.residual = residual
    if not mid_channels:
      mid_channels = out_channels
    self.double_conv = nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(1, mid_channels),
        nn.GELU(),
        nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(1, out_channels),
    )

  def forward(self, x):
    if self.residual:
      return F.gelu(x + self.double_conv(x))
    return self.double_conv(x)


class Down(nn.Module):
  """Max-pool, residual DoubleConv, DoubleConv, plus the projected time(+class) embedding."""

  def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 256):
    super().__init__()
    self.maxpool_conv = nn.Sequential(
        nn.MaxPool2d(2),
        DoubleConv(in_channels, in_channels, residual=True),
        DoubleConv(in_channels, out_channels),
    )
    self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

  def forward(self, x, t):
    x = self.maxpool_conv(x)
    emb = self.emb_layer(t)[:, :, None, None].repeat(1, 1, x.shape[-2], x.shape[-1])
    return x + emb


class Up(nn.Module):
  """Bilinear up (align_corners), skip concat, two DoubleConvs, plus the embedding."""

  def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 256):
    super().__init__()
    self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    self.conv = nn.Sequential(
        DoubleConv(in_channels, in_channels, residual=True),
        DoubleConv(in_channels, out_channels, in_channels // 2),
    )
    self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))

  def forward(self, x, skip_x, t):
    x = self.up(x)
    x = torch.cat([skip_x, x], dim=1)
    x = self.conv(x)
    emb = self.emb_layer(t)[:, :, None, None].repeat(1, 1, x.shape[-2], x.shape[-1])
    return x + emb


class UNetConditional(nn.Module):
  """The published UNet; images [batch, channels, height, width] (NCHW), t [batch], y [batch].

  `width` is the base width (widths w, 2w, 4w, 4w, bottleneck 8w); None: `image_size`, as the
  published code, whose `image_size` argument is both (a 128 px network is 128 channels wide).
  Pass width=64 for the `paper` preset's Flax UNet, 64 wide at any size.
  """

  def __init__(self, c_in: int = 1, c_out: int = 1, time_dim: int = 256, num_classes: int = 5,
               image_size: int = 64, need_weights: bool = True, width: int | None = None):
    super().__init__()
    self.time_dim = time_dim
    s = image_size
    w = image_size if width is None else width
    self.inc = DoubleConv(c_in, w)
    self.down1 = Down(w, 2 * w)
    self.sa1 = SelfAttention(2 * w, s // 2, need_weights)
    self.down2 = Down(2 * w, 4 * w)
    self.sa2 = SelfAttention(4 * w, s // 4, need_weights)
    self.down3 = Down(4 * w, 4 * w)
    self.sa3 = SelfAttention(4 * w, s // 8, need_weights)
    self.bot1 = DoubleConv(4 * w, 8 * w)
    self.bot2 = DoubleConv(8 * w, 8 * w)
    self.bot3 = DoubleConv(8 * w, 4 * w)
    self.up1 = Up(8 * w, 2 * w)
    self.sa4 = SelfAttention(2 * w, s // 4, need_weights)
    self.up2 = Up(4 * w, w)
    self.sa5 = SelfAttention(w, s // 2, need_weights)
    self.up3 = Up(2 * w, w)
    self.sa6 = SelfAttention(w, s, need_weights)
    self.outc = nn.Conv2d(w, c_out, kernel_size=1)
    if num_classes is not None:
      self.label_emb = nn.Embedding(num_classes, time_dim)

  def pos_encoding(self, t, channels):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, channels, 2, device=t.device).float() / channels))
    pos_enc_a = torch.sin(t.repeat(1, channels // 2) * inv_freq)
    pos_enc_b = torch.cos(t.repeat(1, channels // 2) * inv_freq)
    return torch.cat([pos_enc_a, pos_enc_b], dim=-1)

  def forward(self, x, t, y=None):
    t = t.unsqueeze(-1).type(torch.float)
    t = self.pos_encoding(t, self.time_dim)
    if y is not None:
      t = t + self.label_emb(y)
    x1 = self.inc(x)
    x2 = self.sa1(self.down1(x1, t))
    x3 = self.sa2(self.down2(x2, t))
    x4 = self.sa3(self.down3(x3, t))
    x4 = self.bot3(self.bot2(self.bot1(x4)))
    x = self.sa4(self.up1(x4, x3, t))
    x = self.sa5(self.up2(x, x2, t))
    x = self.sa6(self.up3(x, x1, t))
    return self.outc(x)


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def use_explicit_attention(model: nn.Module) -> None:
  """Switches a model's attention to explicit softmax(QK^T)V matmuls (same function).

  torch's FlopCounterMode counts matmuls but not every fused attention kernel (the CPU flash
  kernel is missing), so FLOP counts are taken in this mode.
  """
  for m in model.modules():
    if isinstance(m, SelfAttention):
      m.need_weights = True
  if hasattr(model, "set_attn_processor"):  # diffusers
    from diffusers.models.attention_processor import AttnProcessor
    model.set_attn_processor(AttnProcessor())


class ReferenceDiffusion:
  """The original's linear-beta DDPM: its training step and its Python-loop CFG sampler."""

  def __init__(self, noise_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               img_size: int = 64, channels: int = 1, device: str = "cpu"):
    self.noise_steps = noise_steps
    self.img_size = img_size
    self.channels = channels
    self.device = device
    self.beta = torch.linspace(beta_start, beta_end, noise_steps, device=device)
    self.alpha = 1.0 - self.beta
    self.alpha_hat = torch.cumprod(self.alpha, dim=0)

  def noise_images(self, x, t):
    sqrt_alpha_hat = torch.sqrt(self.alpha_hat[t])[:, None, None, None]
    sqrt_one_minus_alpha_hat = torch.sqrt(1 - self.alpha_hat[t])[:, None, None, None]
    eps = torch.randn_like(x)
    return sqrt_alpha_hat * x + sqrt_one_minus_alpha_hat * eps, eps

  def sample_timesteps(self, n):
    return torch.randint(low=1, high=self.noise_steps, size=(n,), device=self.device)

  @torch.no_grad()
  def sample(self, model, labels, cfg_scale: float = 3.0, num_steps: int | None = None,
             generator: torch.Generator | None = None):
    """Ancestral sampling from t = T-1 down to 1 (the last `num_steps` of them when given).

    Returns float images in [-1, 1] (the original then casts to uint8); one model call per step
    for the conditional branch and one for the unconditional branch (y=None) when cfg_scale > 0.
    """
    model.eval()
    n = len(labels)
    x = torch.randn((n, self.channels, self.img_size, self.img_size), generator=generator,
                    device=self.device)
    steps = list(reversed(range(1, self.noise_steps)))
    if num_steps is not None:
      steps = steps[:num_steps]
    for i in steps:
      t = torch.full((n,), i, dtype=torch.long, device=self.device)
      predicted_noise = model(x, t, labels)
      if cfg_scale > 0:
        uncond_predicted_noise = model(x, t, None)
        predicted_noise = torch.lerp(uncond_predicted_noise, predicted_noise, cfg_scale)
      alpha = self.alpha[t][:, None, None, None]
      alpha_hat = self.alpha_hat[t][:, None, None, None]
      beta = self.beta[t][:, None, None, None]
      if i > 1:
        noise = torch.randn(x.shape, generator=generator, device=self.device)
      else:
        noise = torch.zeros_like(x)
      x = 1 / torch.sqrt(alpha) * (
          x - ((1 - alpha) / (torch.sqrt(1 - alpha_hat))) * predicted_noise) + torch.sqrt(
              beta) * noise
    model.train()
    return x.clamp(-1, 1)


class ReferenceTrainer:
  """The original's training step: random t, 10% whole-batch label dropout, MSE, AdamW, EMA."""

  def __init__(self, model: nn.Module, diffusion: ReferenceDiffusion, lr: float = 3e-4,
               ema_beta: float = 0.995, forward=None):
    self.model = model
    # forward(model, x, t, labels or None) -> predicted noise; the published UNet by default.
    self.forward = forward or (lambda m, x, t, y: m(x, t, y))
    self.diffusion = diffusion
    self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    self.ema_model = _copy_model(model)
    self.ema_beta = ema_beta
    self.mse = nn.MSELoss()
    self.rng = np.random.default_rng(0)

  def step(self, images, labels) -> float:
    t = self.diffusion.sample_timesteps(images.shape[0])
    x_t, noise = self.diffusion.noise_images(images, t)
    if self.rng.random() < 0.1:
      labels = None
    predicted_noise = self.forward(self.model, x_t, t, labels)
    loss = self.mse(noise, predicted_noise)
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    with torch.no_grad():  # EMA, parameter by parameter as in the original.
      for current, ema in zip(self.model.parameters(), self.ema_model.parameters(), strict=True):
        ema.data = ema.data * self.ema_beta + (1 - self.ema_beta) * current.data
    return float(loss.detach())


def _copy_model(model: nn.Module) -> nn.Module:
  import copy
  ema = copy.deepcopy(model).eval()
  ema.requires_grad_(False)
  return ema


# ------------------------------------------------------------------ weights torch -> Flax

def to_flax_params(model: UNetConditional, paths: dict | None = None, heads: int = 4,
                   null_row: bool = True) -> dict:
  """The weights of `model` as the Flax parameter tree of the paper UNet (numpy arrays).

  The mapping is the package's torch-free one (solar_ddpm_jax.convert), checked here against
  torch's forward pass. `paths` maps torch module names to Flax paths (default
  convert.FLAX_PATHS). With `null_row`, the class embedding gets a zero row for the null class: the
  Flax model's unconditional pass then equals the torch model called with y=None (no class
  embedding added). The faithful Flax model (model.faithful=True) has no null row and adds
  nothing for the null class: null_row=False.
  """
  from solar_ddpm_jax import convert
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  return convert.to_flax_tree(sd, heads=heads, paths=paths, null_row=null_row)


# ------------------------------------------------------------------ diffusers comparison


def diffusers_unet(model_config):
  """diffusers' UNet2DModel of about the size of the Flax UNet of `model_config`.

  The `paper` block style maps to widths 64/128/256/320, one ResBlock and attention at every level
  (23.3 M parameters, like the published UNet); the `modern` style to its own widths, residual
  blocks and attention resolutions. Class labels 0..num_classes (the last is the null class).
  Returns (model, forward) with forward(model, x, t, labels or None) -> predicted noise.
  """
  from diffusers import UNet2DModel
  size = int(model_config.image_size)
  if model_config.block_style == "paper":
    widths, layers, attn_levels = (64, 128, 256, 320), 1, (True,) * 4
  else:
    widths = tuple(int(model_config.base_channels) * m for m in model_config.channel_mult)
    layers = int(model_config.num_res_blocks)
    attn_levels = tuple(size // 2**i in tuple(model_config.attention_resolutions)
                        for i in range(len(widths)))
  down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn_levels)
  up = tuple(b.replace("Down", "Up") for b in reversed(down))
  null = int(model_config.num_classes)
  model = UNet2DModel(sample_size=size, in_channels=int(model_config.in_channels),
                      out_channels=int(model_config.out_channels), block_out_channels=widths,
                      layers_per_block=layers, down_block_types=down, up_block_types=up,
                      num_class_embeds=null + 1, attention_head_dim=widths[0] // 2,
                      norm_num_groups=32)

  def forward(m, x, t, y):
    if y is None:
      y = torch.full((x.shape[0],), null, dtype=torch.long, device=x.device)
    return m(x, t, class_labels=y).sample

  return model, forward
