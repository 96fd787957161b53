"""A small Flax ResNet that classifies AIA images by flare class."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ResidualBlock(nn.Module):
  """Pre-activation residual block (SiLU, conv3x3, twice) without normalisation.

  No GroupNorm/LayerNorm: they would divide out the absolute brightness of an image, which is
  what tells flare classes apart. The branch's last conv starts at zero (Fixup-style), so a deep
  stack starts as the identity and trains stably without normalisation.
  """
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), strides=self.strides)(nn.silu(x))
    y = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(nn.silu(y))
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False)(x)
    return x + y


class FlareResNet(nn.Module):
  """ResNet over [batch, height, width, channels] images in [-1, 1] -> logits [batch, classes].

  Stage i has widths[i] channels and halves the resolution (except the first); the penultimate
  layer (global mean and max pools of the last stage) has 2 * widths[-1] features.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64, 128, 256)
  blocks_per_stage: int = 2

  @nn.compact
  def __call__(self, x, return_features: bool = False):
    x = jnp.asarray(x, jnp.float32)
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name="stem")(x)
    for i, width in enumerate(self.widths):
      for j in range(self.blocks_per_stage):
        x = ResidualBlock(width, strides=2 if (i > 0 and j == 0) else 1)(x)
    x = nn.silu(x)
    # Mean and max pooling: a flare is a small, bright kernel that a mean alone dilutes.
    features = jnp.concatenate([jnp.mean(x, axis=(1, 2)), jnp.max(x, axis=(1, 2))], axis=-1)
    if return_features:
      return features
    return nn.Dense(self.num_classes, name="head")(features)


LABELS = ("flare_class", "forecast_class", "forecast_binary")


def class_names(label: str) -> tuple[str, ...]:
  """Class names of a classifier label: "flare_class" (A..X at the image time), "forecast_class"
  (A..X of the peak in the forecast window) or "forecast_binary" (<M, >=M of that peak)."""
  from solar_ddpm_jax import FLARE_CLASSES
  if label in ("flare_class", "forecast_class"):
    return tuple(FLARE_CLASSES)
  if label == "forecast_binary":
    return ("<M", ">=M")
  raise ValueError(f"Unknown classifier label {label!r}: one of {LABELS}.")


def create_model(classifier_config) -> FlareResNet:
  """The classifier of `config.classifier`."""
  return FlareResNet(num_classes=len(class_names(classifier_config.label)),
                     widths=tuple(int(w) for w in classifier_config.widths),
                     blocks_per_stage=int(classifier_config.blocks_per_stage))
