r"""Published PyTorch checkpoints in, shareable safetensors weights out.

    python -m solar_ddpm_jax.convert --config=configs/aia171.py:paper \
        --config.model.faithful=True --torch_checkpoint=ema_ckpt.pt --workdir=runs/published
    python -m solar_ddpm_jax.convert --export --config=configs/aia171.py:paper \
        --config.model.faithful=True --workdir=runs/published --out=hub/solar-ddpm-aia171
    python -m solar_ddpm_jax.convert --import_dir=hub/solar-ddpm-aia171 --workdir=runs/imported

Conversion reads a `torch.save(model.state_dict(), ...)` file of the published network
(`UNet_conditional` of Ramunno et al. 2024, whose base width is its `image_size` argument: 64
channels at 64 px, 128 at 128 px) without torch, infers its hyper-parameters from the tensors,
refuses a config that would build another network, maps every tensor onto the faithful Flax paper
UNet (solar_ddpm_jax.unet, model.faithful=True) and writes a workdir that --mode=sample,
--mode=evaluate and the classifier experiment read like a trained one: an orbax checkpoint of the
whole TrainState (params and EMA both the converted weights, a fresh optimizer state so that
--mode=train fine-tunes from them) and config.json. Export writes the EMA parameters of a workdir
as model.safetensors ("a.b.c" keys) plus config.json (model and diffusion settings); import reads
them back into a workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from solar_ddpm_jax import FLARE_CLASSES, errors
from solar_ddpm_jax.evaluation import weights

EXPORT_FORMAT_VERSION = 1
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONVERSION_RECORD = "conversion.json"  # What a converted workdir was made from.

# ------------------------------------------------------------------ the published network

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


# ------------------------------------------------------------------ reading a checkpoint


class TorchCheckpointError(weights.WeightError, errors.UserError):
  """A checkpoint file that is not a state dict of the published network, or of another one."""


class ConversionSettingsError(errors.SettingsError):
  """A config that would build another network than the weights being converted or imported."""


# Keys under which training scripts keep the network's state dict next to other things.
MODEL_WRAPPERS = ("state_dict", "model", "model_state_dict", "net", "online_model")
EMA_WRAPPERS = ("ema_model", "ema", "ema_state_dict", "model_ema", "ema_params")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile.


def _flatten_containers(obj, prefix: str = "") -> dict:
  """Nested dicts (or 0-d object arrays holding them, as a flat reader returns) -> "a.b" keys."""
  out = {}
  for k, v in obj.items():
    name = f"{prefix}.{k}" if prefix else str(k)
    if isinstance(v, np.ndarray) and v.dtype == object and v.ndim == 0:
      v = v.item()
    if isinstance(v, dict):
      out.update(_flatten_containers(v, name))
    else:
      out[name] = v
  return out


def _strip_prefixes(sd: dict) -> tuple[dict, list[str]]:
  """Removes a DataParallel `module.` (or torch.compile `_orig_mod.`) prefix shared by all keys."""
  stripped = []
  changed = True
  while changed and sd:
    changed = False
    for p in STRIPPED_PREFIXES:
      if all(k.startswith(p) for k in sd):
        sd = {k[len(p):]: v for k, v in sd.items()}
        stripped.append(p)
        changed = True
  return sd, stripped


def split_weight_sets(flat: dict) -> tuple[dict, dict | None, str]:
  """(model state dict, EMA state dict or None, layout in words) of a checkpoint's contents.

  A plain state dict is the model; a dict with MODEL_WRAPPERS / EMA_WRAPPERS entries (nested, or
  flattened as "model.<name>") gives the model and the EMA; anything else beside them (an epoch,
  an optimizer state) is ignored. A shared `module.` prefix is removed.
  """
  groups: dict[str, dict] = {}
  for k, v in flat.items():
    head, _, rest = k.partition(".")
    if rest and head in MODEL_WRAPPERS + EMA_WRAPPERS:
      groups.setdefault(head, {})[rest] = v
  if not groups:
    sd, stripped = _strip_prefixes(dict(flat))
    return sd, None, "state dict" + (f" with {'/'.join(stripped)} prefix" if stripped else "")
  model_key = next((k for k in MODEL_WRAPPERS if k in groups), None)
  ema_key = next((k for k in EMA_WRAPPERS if k in groups), None)
  model = _strip_prefixes(groups[model_key])[0] if model_key else None
  ema = _strip_prefixes(groups[ema_key])[0] if ema_key else None
  layout = " + ".join(f"{{{k!r}: state dict}}" for k in (model_key, ema_key) if k)
  return (model if model is not None else ema), (ema if model is not None else None), layout


def read_torch_checkpoint(path: str) -> tuple[dict, dict | None, str]:
  """(model, EMA or None, layout) state dicts {name: numpy array} of a torch checkpoint file.

  Read by the restricted torch-free reader of solar_ddpm_jax.evaluation.weights (no code in the
  file runs).
  """
  if not path or not os.path.isfile(path):
    given = "no path was given" if not path else (
        f"{path!r} is a directory" if os.path.isdir(path) else f"{path!r} does not exist")
    raise TorchCheckpointError(
        f"Torch checkpoint: {given}. Pass the file written by torch.save(model.state_dict(), "
        "path) with --torch_checkpoint=PATH (config.convert.torch_checkpoint).")
  try:
    raw = weights.load_torch_state_dict(path)
  except Exception as e:  # Zip, unpickling and storage errors alike: the file is data.
    raise TorchCheckpointError(
        f"Torch checkpoint {path!r} could not be read as a torch.save file of a state dict "
        f"({type(e).__name__}: {e}). Save the network with torch.save(model.state_dict(), "
        "path); pickled modules and other objects are not read.") from e
  model, ema, layout = split_weight_sets(_flatten_containers(raw))
  for sd in (model, ema):
    unread = [k for k, v in (sd or {}).items()
              if not isinstance(v, np.ndarray) or v.dtype == object]
    if unread:
      raise TorchCheckpointError(
          f"Torch checkpoint {path!r} ({layout}): {', '.join(unread[:5])} "
          f"{'is' if len(unread) == 1 else 'are'} not tensors the reader could resolve (nested "
          "deeper than it reads). Save the network's state dict itself, e.g. "
          "torch.save(checkpoint['model'], 'model.pt'), and convert that file.")
  return model, ema, layout


def check_state_dict(state_dict: dict, settings: PublishedSettings, source: str) -> None:
  """Refuses missing, extra and misshapen tensors (and non-numeric ones), naming each."""
  expected = settings.shapes()
  missing = [k for k in expected if k not in state_dict]
  extra = sorted(k for k in state_dict if k not in expected)
  wrong = [f"{k}: file {tuple(np.shape(state_dict[k]))}, expected {expected[k]}"
           for k in expected if k in state_dict
           and tuple(np.shape(state_dict[k])) != tuple(expected[k])]
  not_float = [f"{k} ({np.asarray(state_dict[k]).dtype})" for k in expected if k in state_dict
               and not np.issubdtype(np.asarray(state_dict[k]).dtype, np.floating)]
  if missing or extra or wrong or not_float:
    msg = [f"{source} is not a state dict of the published UNet_conditional of width "
           f"{settings.width} ({settings.in_channels} -> {settings.out_channels} channels, "
           f"{settings.num_classes} classes, time_dim {settings.time_dim}):"]
    for what, names, sep in (("missing", missing, ", "), ("extra", extra, ", "),
                             ("misshapen", wrong, "; "), ("not floating point", not_float, ", ")):
      if names:
        msg.append(f"{what} tensors ({len(names)}): {sep.join(names[:20])}"
                   + (" ..." if len(names) > 20 else "") + ".")
    msg.append("Convert the state dict of the published network, saved unchanged.")
    raise TorchCheckpointError(" ".join(msg))


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


def _same(a, b) -> bool:
  if isinstance(a, list | tuple) or isinstance(b, list | tuple):
    return isinstance(a, list | tuple) and isinstance(b, list | tuple) and (
        [_plain(x) for x in a] == [_plain(x) for x in b])
  return _plain(a) == _plain(b)


def _plain(v):
  return v.item() if isinstance(v, np.generic) else v


def _flag(name: str, value) -> str:
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
            if not _same(_config_value(config, k), v)]
  w = settings.width
  sizes = (w, w // 2, w // 4, w // 8)
  attn = tuple(int(r) for r in config.model.attention_resolutions)
  if any(s not in attn for s in sizes):
    differ.append(("model.attention_resolutions", attn, sizes))
  if not differ:
    return
  listed = "; ".join(f"{k}={_plain(have)!r} (needs {_plain(need)!r})" for k, have, need in differ)
  passes = " ".join(_flag(k, need) for k, _, need in differ)
  raise ConversionSettingsError(
      f"{source} holds the published network of width {w} (it runs at {w}x{w} px: the "
      f"published image_size), {settings.in_channels} -> {settings.out_channels} channels, "
      f"{settings.num_classes} classes, time_dim {settings.time_dim}; this config builds "
      f"another: {listed}. Pass {passes}.")


def _warn_about_schedule(config) -> None:
  from absl import logging
  d = config.diffusion
  published = {"beta_schedule": "linear", "num_timesteps": 1000, "beta_start": 1e-4,
               "beta_end": 0.02}
  differ = {k: d[k] for k, v in published.items() if d[k] != v}
  if differ:
    logging.warning("diffusion settings %s differ from the published training schedule (linear "
                    "betas 1e-4..0.02 over T=1000): sampling assumes the schedule the weights were "
                    "trained with.", differ)


# ------------------------------------------------------------------ the model's tree


def flatten_tree(tree, sep: str = "/") -> dict:
  """Nested dicts -> {"a/b/c": leaf}; leaves are kept as they are (arrays or shape structs)."""
  from flax import traverse_util
  return {sep.join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def expected_params(model_config) -> dict:
  """ShapeDtypeStructs of the configured model's parameters (jax.eval_shape: nothing computed)."""
  import jax

  from solar_ddpm_jax import unet
  return jax.eval_shape(lambda k: unet.init_params(model_config, k), jax.random.key(0))


def cast_to_model(tree: dict, model_config, source: str, expected=None) -> dict:
  """`tree` with every leaf in model.param_dtype, checked leaf by leaf (path, shape, dtype)
  against jax.eval_shape of the configured model's init (`expected`, when already computed)."""
  expected = flatten_tree(expected_params(model_config) if expected is None else expected)
  found = flatten_tree(tree)
  missing = sorted(k for k in expected if k not in found)
  extra = sorted(k for k in found if k not in expected)
  wrong = sorted(f"{k}: weights {tuple(np.shape(found[k]))}, model {tuple(expected[k].shape)}"
                 for k in expected if k in found
                 and tuple(np.shape(found[k])) != tuple(expected[k].shape))
  if missing or extra or wrong:
    parts = [f"{source}: the weights do not fit the model of this config:"]
    for what, names in (("parameters the model has and the weights lack", missing),
                        ("parameters the model lacks", extra), ("misshapen", wrong)):
      if names:
        parts.append(f"{what} ({len(names)}): {'; '.join(names[:20])}.")
    parts.append("Pass the model settings the weights were made with (config.json beside them).")
    raise ConversionSettingsError(" ".join(parts))
  out = {}
  for k, spec in expected.items():
    value = np.asarray(found[k])
    if not np.issubdtype(value.dtype, np.floating) and value.dtype != spec.dtype:
      raise TorchCheckpointError(f"{source}: parameter {k} is {value.dtype}, not a float.")
    value = value.astype(spec.dtype)
    if not np.all(np.isfinite(value.astype(np.float32))):
      raise TorchCheckpointError(f"{source}: parameter {k} holds NaN or infinite values.")
    out[k] = value
  return weights.unflatten(out)


# ------------------------------------------------------------------ writing a workdir


def _new_workdir(workdir: str, step: int) -> str:
  """The absolute workdir, refused when it already holds checkpoints (or the step is < 0)."""
  from solar_ddpm_jax import checkpointing
  workdir = os.path.abspath(os.path.expanduser(str(workdir)))
  existing = checkpointing.latest_step(workdir)
  if existing is not None:
    raise errors.UserError(
        f"--workdir={workdir} already holds checkpoints (latest step {existing}): writing "
        "these weights beside them would mix two models. Pass a new --workdir.")
  if int(step) < 0:
    raise ConversionSettingsError(f"--step={step}: give a step >= 0.")
  return workdir


def write_workdir(config, workdir: str, params: dict, ema_params: dict, *, step: int = 0,
                  record: dict | None = None) -> str:
  """Writes the orbax TrainState checkpoint (with a fresh optimizer state) and config.json of a
  trained workdir, plus `record` as conversion.json. Returns the absolute workdir."""
  import jax
  import jax.numpy as jnp

  from solar_ddpm_jax import checkpointing, train_state
  workdir = _new_workdir(workdir, step)
  os.makedirs(workdir, exist_ok=True)
  params = jax.tree.map(jnp.asarray, params)
  ema_params = jax.tree.map(jnp.asarray, ema_params)
  tx = train_state.make_optimizer(config.training)
  state = train_state.TrainState(step=jnp.asarray(int(step), jnp.int32), params=params,
                                 ema_params=ema_params, opt_state=jax.jit(tx.init)(params))
  manager = checkpointing.create_manager(workdir, config.training)
  try:
    checkpointing.save(manager, state, data_seed=int(config.seed),
                       batch_size=int(config.training.batch_size),
                       settings=checkpointing.run_settings(config), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  with open(os.path.join(workdir, CONFIG_NAME), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  if record is not None:
    with open(os.path.join(workdir, CONVERSION_RECORD), "w") as f:
      json.dump(record, f, indent=2, default=str)
  return workdir


def convert_torch_checkpoint(config, checkpoint_path: str, workdir: str, step: int = 0) -> str:
  """Converts a published torch checkpoint into a workdir for sampling, evaluation and training.

  Reads the file (model and, where present, EMA state dicts), infers the published
  hyper-parameters, refuses a config that builds another network and a file with missing, extra
  or misshapen tensors, maps every tensor onto the faithful Flax UNet, checks the tree against
  the configured model and writes the workdir (params = the model weights, EMA = the EMA weights,
  each the other when the file has one set). Returns the workdir.
  """
  from absl import logging
  _new_workdir(workdir, step)  # Refused before anything is read.
  path = os.path.abspath(os.path.expanduser(str(checkpoint_path))) if checkpoint_path else ""
  model_sd, ema_sd, layout = read_torch_checkpoint(path)
  settings = infer_settings(model_sd, path)
  check_config(config, settings, path)
  _warn_about_schedule(config)
  trees, expected = {}, expected_params(config.model)
  for name, sd in (("model", model_sd), ("ema", ema_sd)):
    if sd is None:
      continue
    where = f"{path} ({name} weights)" if ema_sd is not None else path
    if name == "ema" and infer_settings(sd, where) != settings:
      raise TorchCheckpointError(f"{path}: its model and EMA weights are of different networks "
                                 f"({settings} and {infer_settings(sd, where)}).")
    check_state_dict(sd, settings, where)
    trees[name] = cast_to_model(to_flax_tree(sd), config.model, where, expected)
  params = trees["model"]
  ema_params = trees.get("ema", params)
  dtypes = sorted({str(np.asarray(v).dtype) for v in model_sd.values()})
  record = {"source": path, "sha256": weights.sha256_file(path), "layout": layout,
            "published": dataclasses.asdict(settings), "source_dtypes": dtypes,
            "params_from": "model", "ema_params_from": "ema" if "ema" in trees else "model",
            "step": int(step), "format": "torch state dict of UNet_conditional"}
  out = write_workdir(config, workdir, params, ema_params, step=step, record=record)
  logging.info("Converted %s (%s; width %d, %d classes) into %s at step %d.", path, layout,
               settings.width, settings.num_classes, out, int(step))
  return out


def convert_from_config(config, workdir: str) -> str:
  """--mode=convert: converts config.convert.torch_checkpoint at config.convert.step (0)."""
  convert = config.get("convert") or {}
  path = convert.get("torch_checkpoint", "")
  if not path:
    raise ConversionSettingsError(
        "config.convert.torch_checkpoint is empty: pass the published checkpoint with "
        "--config.convert.torch_checkpoint=/path/to/ckpt.pt.")
  return convert_torch_checkpoint(config, path, workdir, step=int(convert.get("step", 0) or 0))


# ------------------------------------------------------------------ safetensors export/import

# Model settings that shape the weights or their meaning (the rest: compute dtype, attention
# kernel, remat, dropout, only change how they are used).
WEIGHT_MODEL_SETTINGS = ("block_style", "image_size", "in_channels", "out_channels",
                         "base_channels", "channel_mult", "bottleneck_mult", "num_res_blocks",
                         "attention_resolutions", "num_heads", "time_embed_dim", "num_classes",
                         "faithful", "param_dtype")
WEIGHT_DIFFUSION_SETTINGS = ("prediction", "beta_schedule", "num_timesteps", "beta_start",
                             "beta_end")
# Data settings that say what the images mean (model range <-> DN/s), exported with the weights.
IMAGE_DATA_SETTINGS = ("resolution", "channels", "dn_ceiling", "stretch", "asinh_a", "label")


def _jsonable(d: dict) -> dict:
  return json.loads(json.dumps(d, default=str))


def export_safetensors(config, workdir: str, out_dir: str) -> str:
  """Writes the EMA parameters of a workdir's checkpoint (config.sampling.checkpoint_step, -1:
  latest) as <out_dir>/model.safetensors ("a.b.c" keys) plus config.json. Returns out_dir."""
  import jax
  from safetensors.numpy import save_file

  from solar_ddpm_jax import checkpointing
  params, step = checkpointing.restore_params_and_step(
      config, workdir, int(config.sampling.checkpoint_step), ema=True)
  flat = {k: np.ascontiguousarray(np.asarray(jax.device_get(v)))
          for k, v in flatten_tree(params, sep=".").items()}
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  save_file(flat, os.path.join(out_dir, SAFETENSORS_NAME),
            metadata={"format": "flax", "library": "solar_ddpm_jax", "step": str(step),
                      "weights": "ema_params"})
  meta = {
      "library": "solar_ddpm_jax", "format_version": EXPORT_FORMAT_VERSION,
      "architecture": {"paper": "PaperUNet", "modern": "ModernUNet"}.get(
          config.model.block_style, str(config.model.block_style)),
      "weights": "ema_params", "step": int(step), "preset": str(config.preset),
      "model": _jsonable(config.model.to_dict()),
      "diffusion": _jsonable(config.diffusion.to_dict()),
      "data": _jsonable({k: config.data[k] for k in IMAGE_DATA_SETTINGS}),
      "class_names": list(FLARE_CLASSES[:int(config.model.num_classes)]),
      "null_class": int(config.model.num_classes),
      "guidance": "eps = eps_uncond + w (eps_cond - eps_uncond); w=1 conditional, w=0 "
                  "unconditional (the null class)",
      "num_parameters": int(sum(v.size for v in flat.values())),
  }
  source = os.path.join(os.path.abspath(workdir), CONVERSION_RECORD)
  if os.path.exists(source):
    with open(source) as f:
      meta["converted_from"] = json.load(f)
  with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def _as_config_value(v):
  return tuple(v) if isinstance(v, list) else v


def _read_export(src_dir: str) -> tuple[dict, str]:
  src_dir = os.path.abspath(os.path.expanduser(src_dir))
  meta_path = os.path.join(src_dir, CONFIG_NAME)
  weights_path = os.path.join(src_dir, SAFETENSORS_NAME)
  for p in (meta_path, weights_path):
    if not os.path.isfile(p):
      raise errors.UserError(f"{p} does not exist: --import_dir must hold {SAFETENSORS_NAME} "
                             f"and {CONFIG_NAME} as --export writes them.")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"{meta_path} is not a JSON file ({e}).") from e
  if not isinstance(meta, dict) or meta.get("library") != "solar_ddpm_jax" or not isinstance(
      meta.get("model"), dict) or not isinstance(meta.get("diffusion"), dict):
    raise errors.UserError(f"{meta_path} is not the config.json of an export of solar_ddpm_jax "
                           "weights (no library/model/diffusion entries).")
  if int(meta.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
    raise errors.UserError(f"{meta_path}: format_version {meta.get('format_version')} is newer "
                           f"than this version reads ({EXPORT_FORMAT_VERSION}); update "
                           "solar_ddpm_jax.")
  return meta, weights_path


def config_from_export(meta: dict, config=None):
  """`config` (default: the paper preset) with the exported model, diffusion and image settings;
  a given config is refused where its weight settings differ (naming the value to pass)."""
  if config is None:
    from configs import aia171
    config = aia171.get_config("paper")
    with config.unlocked():
      for group in ("model", "diffusion", "data"):
        for k, v in (meta.get(group) or {}).items():
          if k in config[group] and not isinstance(config[group][k], dict):
            config[group][k] = _as_config_value(v)
    return config
  checks = [("model", k) for k in WEIGHT_MODEL_SETTINGS] + [
      ("diffusion", k) for k in WEIGHT_DIFFUSION_SETTINGS]
  differ = [(f"{g}.{k}", config[g][k], meta[g][k]) for g, k in checks
            if k in meta.get(g, {}) and k in config[g] and not _same(
                _as_config_value(meta[g][k]), config[g][k])]
  if differ:
    listed = "; ".join(f"{k}={have!r} (weights: {need!r})" for k, have, need in differ)
    raise ConversionSettingsError(
        f"The exported weights were made with other settings ({listed}). Pass "
        f"{' '.join(_flag(k, _as_config_value(need)) for k, _, need in differ)}, or leave out "
        "--config to take them all from config.json.")
  return config


def import_safetensors(config, src_dir: str, workdir: str, step: int | None = None) -> str:
  """Loads an export (model.safetensors + config.json) into a new workdir for sampling.

  config None takes the model, diffusion and image settings from config.json (other settings
  from the paper preset); a given config must agree with them. The weights become both params
  and EMA, at the exported step unless `step` is given. Returns the workdir.
  """
  _new_workdir(workdir, step or 0)
  meta, weights_path = _read_export(src_dir)
  config = config_from_export(meta, config)
  try:
    flat = weights.load_safetensors(weights_path)
  except Exception as e:  # The safetensors header and buffers are data.
    raise TorchCheckpointError(f"{weights_path} could not be read as safetensors "
                               f"({type(e).__name__}: {e}).") from e
  tree = cast_to_model(weights.unflatten(flat, sep="."), config.model, weights_path)
  step = int(meta.get("step", 0)) if step is None else int(step)
  record = {"source": weights_path, "sha256": weights.sha256_file(weights_path),
            "format": "safetensors export", "exported": {k: meta.get(k) for k in (
                "step", "preset", "weights", "converted_from") if k in meta}, "step": step}
  return write_workdir(config, workdir, tree, tree, step=step, record=record)


# ------------------------------------------------------------------ command line


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Config file and preset, e.g. configs/aia171.py:paper.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Workdir to write (convert, import) or read (export).")
  flags.DEFINE_string("torch_checkpoint", None, "torch.save file of the published network's "
                      "state_dict to convert.")
  flags.DEFINE_integer("step", None, "Checkpoint step of the written workdir (convert: 0; "
                       "import: the exported step).")
  flags.DEFINE_bool("export", False, "Export the EMA weights of --workdir as safetensors to --out.")
  flags.DEFINE_string("out", None, "Directory that --export writes.")
  flags.DEFINE_string("import_dir", None, "Directory of an export to load into --workdir.")
  return flags.FLAGS


def _main(flags_values) -> str:
  f = flags_values
  config = f.config
  if not f.workdir:
    raise errors.SettingsError("--workdir is required.")
  if f.import_dir:
    return import_safetensors(config, f.import_dir, f.workdir, f.step)
  if config is None:
    raise errors.SettingsError("--config is required (e.g. --config=configs/aia171.py:paper).")
  if f.export:
    if not f.out:
      raise errors.SettingsError("--export needs --out=DIR, the directory to write.")
    return export_safetensors(config, f.workdir, f.out)
  if not f.torch_checkpoint:
    raise errors.SettingsError("Pass --torch_checkpoint=ckpt.pt to convert, --export with --out "
                               "to export, or --import_dir to import.")
  return convert_torch_checkpoint(config, f.torch_checkpoint, f.workdir, f.step or 0)


def run() -> None:
  """Command-line entry: convert, --export or --import_dir (see the module docstring)."""
  from absl import app
  flags_values = _define_flags()

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
      out = _main(flags_values)
    except errors.UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2 if isinstance(e, errors.SettingsError) else 1)
    print(out)

  app.run(main)


if __name__ == "__main__":
  run()
