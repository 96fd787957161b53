"""A torch checkpoint file of the published network, read without torch into checked state dicts.

The file is untrusted data (solar_ddpm_jax.evaluation.weights reads it through an allow-list
unpickler). Training scripts wrap the state dict (DataParallel prefixes, {"model": ...,
"ema": ...} dicts); `split_weight_sets` finds the model and EMA weight sets in any of the usual
layouts, and `check_state_dict` refuses missing, extra or misshapen tensors by name.
"""

from __future__ import annotations

import os

import numpy as np

from solar_ddpm_jax.conversion.published import PublishedSettings, TorchCheckpointError
from solar_ddpm_jax.evaluation import weights

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
