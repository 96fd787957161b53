"""The published network (UNet_conditional of Ramunno et al. 2024) and the config that builds it.

Its tensor shapes, the hyper-parameters a state dict implies (`infer_settings`), the mapping of
every torch tensor onto the faithful Flax paper UNet (`to_flax_tree`), and the check that a config
builds that network (`check_config`), naming each setting to pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from solar_ddpm_jax import errors
from solar_ddpm_jax.evaluation import weights

# Fixed by the published code: 4 attention heads, widths w/2w/4w/4w, bottleneck 8w, attention
# after every down and up block (at w, w/2, w/4 and w/8 px for the w px model).
PUBLISHED_HEADS = 4
PUBLISHED_CHANNEL_MULT = (1, 2, 4, 4)
PUBLISHED_BOTTLENECK_MULT = 8
PUBLISHED_NUM_PARAMS_64PX = 23_332_737  # 1 channel in and out, 5 classes, time_dim 256.

# Where each torch module of UNet_conditional lives in the Flax parameter tree ("/"-separated).
# Blocks: DoubleConv (in Down/Up: the residual block, then the plain one), SelfAttention, the
# per-block embedding projection (emb_layer), the 1x1 output conv and the class embedding.
FLAX_PATHS = {
    "inc": "inc",
    **{f"{d}.maxpool_conv.{i}": f"{d}_{n}" for d in ("down1", "down2", "down3")
       for i, n in ((1, "res"), (2, "conv"))},
    **{f"{u}.conv.{i}": f"{u}_{n}" for u in ("up1", "up2", "up3")
       for i, n in ((0, "res"), (1, "conv"))},
    **{f"{b}.emb_layer.1": f"{b}_emb" for b in ("down1", "down2", "down3", "up1", "up2", "up3")},
    **{f"sa{i}": f"sa{i}" for i in range(1, 7)},
    **{f"bot{i}": f"bot{i}" for i in range(1, 4)},
    "outc": "outc",
    "label_emb": "label_emb",
}
# Layers inside a DoubleConv and a SelfAttention: torch name -> (Flax name, kind).
DOUBLE_CONV = {"double_conv.0": ("conv1", "conv"), "double_conv.1": ("norm1", "norm"),
               "double_conv.3": ("conv2", "conv"), "double_conv.4": ("norm2", "norm")}
ATTENTION = {"ln": ("ln", "norm"), "ff_self.0": ("ff_ln", "norm"), "ff_self.1": ("ff1", "dense"),
             "ff_self.3": ("ff2", "dense")}


def _double_conv_shapes(prefix: str, c_in: int, c_out: int, mid: int | None = None) -> dict:
  mid = mid or c_out
  return {f"{prefix}.double_conv.0.weight": (mid, c_in, 3, 3),
          f"{prefix}.double_conv.1.weight": (mid,), f"{prefix}.double_conv.1.bias": (mid,),
          f"{prefix}.double_conv.3.weight": (c_out, mid, 3, 3),
          f"{prefix}.double_conv.4.weight": (c_out,), f"{prefix}.double_conv.4.bias": (c_out,)}


def _attention_shapes(prefix: str, c: int) -> dict:
  out = {f"{prefix}.mha.in_proj_weight": (3 * c, c), f"{prefix}.mha.in_proj_bias": (3 * c,),
         f"{prefix}.mha.out_proj.weight": (c, c), f"{prefix}.mha.out_proj.bias": (c,)}
  for name in ("ln", "ff_self.0"):
    out.update({f"{prefix}.{name}.weight": (c,), f"{prefix}.{name}.bias": (c,)})
  for name in ("ff_self.1", "ff_self.3"):
    out.update({f"{prefix}.{name}.weight": (c, c), f"{prefix}.{name}.bias": (c,)})
  return out


def published_shapes(width: int = 64, in_channels: int = 1, out_channels: int = 1,
                     num_classes: int | None = 5, time_dim: int = 256) -> dict[str, tuple]:
  """Every tensor of the published UNet_conditional's state_dict, in its order: name -> shape.

  `width` is the published `image_size` argument (the base width); num_classes None is the
  network without a class embedding.
  """
  w, e = int(width), int(time_dim)
  shapes = _double_conv_shapes("inc", in_channels, w)
  downs = (("down1", w, 2 * w), ("down2", 2 * w, 4 * w), ("down3", 4 * w, 4 * w))
  for i, (name, c_in, c_out) in enumerate(downs, start=1):
    shapes.update(_double_conv_shapes(f"{name}.maxpool_conv.1", c_in, c_in))
    shapes.update(_double_conv_shapes(f"{name}.maxpool_conv.2", c_in, c_out))
    shapes.update({f"{name}.emb_layer.1.weight": (c_out, e), f"{name}.emb_layer.1.bias": (c_out,)})
    shapes.update(_attention_shapes(f"sa{i}", c_out))
  shapes.update(_double_conv_shapes("bot1", 4 * w, 8 * w))
  shapes.update(_double_conv_shapes("bot2", 8 * w, 8 * w))
  shapes.update(_double_conv_shapes("bot3", 8 * w, 4 * w))
  ups = (("up1", 8 * w, 2 * w), ("up2", 4 * w, w), ("up3", 2 * w, w))
  for i, (name, c_in, c_out) in enumerate(ups, start=4):
    shapes.update(_double_conv_shapes(f"{name}.conv.0", c_in, c_in))
    shapes.update(_double_conv_shapes(f"{name}.conv.1", c_in, c_out, c_in // 2))
    shapes.update({f"{name}.emb_layer.1.weight": (c_out, e), f"{name}.emb_layer.1.bias": (c_out,)})
    shapes.update(_attention_shapes(f"sa{i}", c_out))
  shapes.update({"outc.weight": (out_channels, w, 1, 1), "outc.bias": (out_channels,)})
  if num_classes is not None:
    shapes["label_emb.weight"] = (int(num_classes), e)
  return shapes


@dataclasses.dataclass(frozen=True)
class PublishedSettings:
  """Hyper-parameters of a published checkpoint, read off its tensors."""
  in_channels: int  # c_in: inc's first conv.
  out_channels: int  # c_out: outc.
  width: int  # The base width, = the published image_size (the pixels it runs at).
  time_dim: int  # Sinusoidal time embedding width (label_emb and every emb_layer).
  num_classes: int | None  # Rows of label_emb; None without a class embedding.

  def shapes(self) -> dict[str, tuple]:
    return published_shapes(self.width, self.in_channels, self.out_channels, self.num_classes,
                            self.time_dim)


def infer_settings(state_dict: dict, source: str = "state dict") -> PublishedSettings:
  """The PublishedSettings of a state dict, from inc, outc and label_emb (or an emb_layer)."""
  needed = {"inc.double_conv.0.weight": 4, "outc.weight": 4, "down1.emb_layer.1.weight": 2}
  absent = [k for k in needed if k not in state_dict]
  if absent:
    some = ", ".join(sorted(state_dict)[:6]) or "none"
    raise TorchCheckpointError(
        f"{source}: not a state dict of the published UNet_conditional: no {', '.join(absent)} "
        f"(its first keys: {some}). Save the network with torch.save(model.state_dict(), path) "
        "(or the EMA model's).")
  for k, ndim in needed.items():
    if np.ndim(state_dict[k]) != ndim:
      raise TorchCheckpointError(f"{source}: {k} has shape {np.shape(state_dict[k])}, not the "
                                 f"published network's ({ndim}-D).")
  width, in_channels = np.shape(state_dict["inc.double_conv.0.weight"])[:2]
  out_channels = np.shape(state_dict["outc.weight"])[0]
  time_dim = np.shape(state_dict["down1.emb_layer.1.weight"])[-1]
  num_classes = None
  if "label_emb.weight" in state_dict:
    label_shape = np.shape(state_dict["label_emb.weight"])
    if len(label_shape) != 2:
      raise TorchCheckpointError(f"{source}: label_emb.weight has shape {label_shape}, not "
                                 "[num_classes, time_dim].")
    num_classes = label_shape[0]
  return PublishedSettings(int(in_channels), int(out_channels), int(width), int(time_dim),
                           None if num_classes is None else int(num_classes))


def _conv(w: np.ndarray) -> np.ndarray:
  """Conv2d weight [out, in, kh, kw] -> Flax Conv kernel [kh, kw, in, out]."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _dense(w: np.ndarray) -> np.ndarray:
  """Linear weight [out, in] -> Flax Dense kernel [in, out]."""
  return np.ascontiguousarray(np.transpose(w))


def _layer(sd: dict, prefix: str, kind: str) -> dict:
  """One torch layer (conv / norm / dense) as a Flax parameter dict."""
  w = np.asarray(sd[f"{prefix}.weight"])
  bias = sd.get(f"{prefix}.bias")
  out = {"conv": lambda: {"kernel": _conv(w)}, "norm": lambda: {"scale": w.copy()},
         "dense": lambda: {"kernel": _dense(w)}}[kind]()
  if bias is not None:
    out["bias"] = np.array(bias)
  return out


def _attention(sd: dict, heads: int) -> dict:
  """nn.MultiheadAttention (packed in_proj) -> DenseGeneral query/key/value/out over heads.

  in_proj_weight [3C, C] stacks W_q, W_k, W_v; each output row h*d_head + i is head h, feature i,
  so W.T [C_in, C] reshapes to the [C_in, heads, d_head] kernel. out_proj's input columns are
  the concatenated heads: W.T [C, C_out] reshapes to [heads, d_head, C_out].
  """
  out = {name: _layer(sd, prefix, kind) for prefix, (name, kind) in ATTENTION.items()}
  in_w, in_b = np.asarray(sd["mha.in_proj_weight"]), np.asarray(sd["mha.in_proj_bias"])
  c = in_w.shape[1]
  for i, name in enumerate(("query", "key", "value")):
    w = in_w[i * c:(i + 1) * c]
    out[name] = {"kernel": np.ascontiguousarray(w.T.reshape(c, heads, c // heads)),
                 "bias": np.ascontiguousarray(in_b[i * c:(i + 1) * c].reshape(heads, c // heads))}
  out["out"] = {"kernel": np.ascontiguousarray(
                    np.asarray(sd["mha.out_proj.weight"]).T.reshape(heads, c // heads, c)),
                "bias": np.array(sd["mha.out_proj.bias"])}
  return out


def to_flax_tree(state_dict: dict, heads: int = PUBLISHED_HEADS, paths: dict | None = None,
                 null_row: bool = False) -> dict:
  """A published state dict {torch name: numpy array} as the Flax paper UNet's parameter tree.

  Pure numpy; the keys must be complete (check_state_dict). `paths` maps torch module names to
  Flax paths (default FLAX_PATHS). With `null_row` the class embedding gets a zero row for the
  learned null class of the non-faithful model; the faithful model (model.faithful=True), like
  the published code, adds no class embedding for the unconditional pass: no null row.
  """
  paths = FLAX_PATHS if paths is None else paths
  blocks: dict = {}  # "/"-separated Flax path -> that block's parameters.
  for torch_name, flax_path in paths.items():
    sub = {k[len(torch_name) + 1:]: v for k, v in state_dict.items()
           if k.startswith(torch_name + ".")}
    if not sub:
      continue
    if torch_name == "label_emb":
      table = np.array(sub["weight"])
      if null_row:
        table = np.concatenate([table, np.zeros_like(table[:1])])
      blocks[flax_path] = {"embedding": table}
    elif torch_name.startswith("sa"):
      blocks[flax_path] = _attention(sub, heads)
    elif torch_name == "outc":
      blocks[flax_path] = {"kernel": _conv(np.asarray(sub["weight"])),
                           "bias": np.array(sub["bias"])}
    elif "emb_layer" in torch_name:
      blocks[flax_path] = {"kernel": _dense(np.asarray(sub["weight"])),
                           "bias": np.array(sub["bias"])}
    else:
      blocks[flax_path] = {name: _layer(sub, prefix, kind)
                           for prefix, (name, kind) in DOUBLE_CONV.items()}
  return weights.unflatten(blocks)


class TorchCheckpointError(weights.WeightError, errors.UserError):
  """A checkpoint file that is not a state dict of the published network, or of another one."""


class ConversionSettingsError(errors.SettingsError):
  """A config that would build another network than the weights being converted or imported."""


# ------------------------------------------------------------------ the config it needs


def required_settings(settings: PublishedSettings) -> dict:
  """Config values (dotted name -> value) that build the published network of `settings`."""
  w = settings.width
  return {
      "model.block_style": "paper",
      "model.faithful": True,
      "model.image_size": w,
      "data.resolution": w,
      "model.base_channels": w,
      "model.channel_mult": PUBLISHED_CHANNEL_MULT,
      "model.bottleneck_mult": PUBLISHED_BOTTLENECK_MULT,
      "model.num_heads": PUBLISHED_HEADS,
      "model.in_channels": settings.in_channels,
      "model.out_channels": settings.out_channels,
      "model.num_classes": settings.num_classes,
      "model.time_embed_dim": settings.time_dim,
      "diffusion.prediction": "eps",
  }


def _config_value(config, name: str):
  group, key = name.split(".")
  return config[group][key]


def same_value(a, b) -> bool:
  if isinstance(a, list | tuple) or isinstance(b, list | tuple):
    return isinstance(a, list | tuple) and isinstance(b, list | tuple) and (
        [_plain(x) for x in a] == [_plain(x) for x in b])
  return _plain(a) == _plain(b)


def _plain(v):
  return v.item() if isinstance(v, np.generic) else v


def config_flag(name: str, value) -> str:
  if isinstance(value, list | tuple):
    value = "'(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")'"
  return f"--config.{name}={value}"


def check_config(config, settings: PublishedSettings, source: str) -> None:
  """Refuses a config whose model is not the published network of `settings`, naming each key
  and the value to pass."""
  if settings.num_classes is None:
    raise TorchCheckpointError(
        f"{source} has no label_emb: it is a UNet_conditional built with num_classes=None "
        "(unconditional); the models here are conditioned on the flare class. Convert a "
        "class-conditional checkpoint.")
  if settings.width % 8:
    raise TorchCheckpointError(
        f"{source}: base width {settings.width} (the published image_size) is not a multiple "
        "of 8; the published network halves its resolution three times.")
  want = required_settings(settings)
  differ = [(k, _config_value(config, k), v) for k, v in want.items()
            if not same_value(_config_value(config, k), v)]
  w = settings.width
  sizes = (w, w // 2, w // 4, w // 8)
  attn = tuple(int(r) for r in config.model.attention_resolutions)
  if any(s not in attn for s in sizes):
    differ.append(("model.attention_resolutions", attn, sizes))
  if not differ:
    return
  listed = "; ".join(f"{k}={_plain(have)!r} (needs {_plain(need)!r})" for k, have, need in differ)
  passes = " ".join(config_flag(k, need) for k, _, need in differ)
  raise ConversionSettingsError(
      f"{source} holds the published network of width {w} (it runs at {w}x{w} px: the "
      f"published image_size), {settings.in_channels} -> {settings.out_channels} channels, "
      f"{settings.num_classes} classes, time_dim {settings.time_dim}; this config builds "
      f"another: {listed}. Pass {passes}.")


def warn_about_schedule(config) -> None:
  from absl import logging
  d = config.diffusion
  published = {"beta_schedule": "linear", "num_timesteps": 1000, "beta_start": 1e-4,
               "beta_end": 0.02}
  differ = {k: d[k] for k, v in published.items() if d[k] != v}
  if differ:
    logging.warning("diffusion settings %s differ from the published training schedule (linear "
                    "betas 1e-4..0.02 over T=1000): sampling assumes the schedule the weights were "
                    "trained with.", differ)
