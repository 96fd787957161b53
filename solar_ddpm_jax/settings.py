"""Settings checked before a run builds data or compiles anything.

A bad value that would otherwise surface only after a dataset build, a compilation or hours of
training (a batch of 0, a learning rate of 0, a resolution the UNet cannot halve, a misspelt flare
class for the samples drawn after training) stops the command line at once, with a SettingsError
that names the setting, its value and the values allowed. Values checked elsewhere as soon as they
are read (enumerations such as diffusion.prediction) are left to those places.
"""

from __future__ import annotations

import math
import os
import tempfile

from solar_ddpm_jax import FLARE_CLASSES
from solar_ddpm_jax.errors import SettingsError

# data.source: real FITS + GOES files, the generated archive, or an SDOML v2 store + GOES files.
SOURCES = ("manual", "synthetic", "sdoml")
NO_WORKDIR_MODES = ("build_data",)  # Modes that write only under config.data, not the workdir.

_MISSING = object()


def _get(config, name: str):
  """config's value of a dotted name, or _MISSING where the config has no such field."""
  value = config
  for key in name.split("."):
    if not hasattr(value, "get"):
      return _MISSING
    value = value.get(key, _MISSING)
    if value is _MISSING:
      return _MISSING
  return value


def with_defaults(config) -> list[str]:
  """Adds to `config` every field of configs/aia171.py that it lacks, with the value of its preset
  (config.preset, else "paper"); returns the dotted names added, in order.

  The one place where a missing setting takes a default: a config file written for an older
  version of configs/aia171.py runs as the current preset would. The code reads every setting as
  an attribute, so a field still missing after this is an error naming it. Fields the config has
  are kept as they are; added values are plain values (a field that follows another one in
  configs/aia171.py, such as model.image_size, is added with its preset's value).
  """
  from configs import aia171
  preset = config.preset if "preset" in config else "paper"
  defaults = aia171.get_config(preset if preset in aia171.PRESETS else "paper")
  added = []

  def fill(target, source, prefix):
    for key, value in source.items():
      if key not in target:
        target[key] = value.to_dict() if hasattr(value, "to_dict") else value
        added.append(prefix + key)
      elif hasattr(value, "items") and hasattr(target[key], "items"):
        fill(target[key], value, f"{prefix}{key}.")

  with config.unlocked():
    fill(config, defaults, "")
  return added


def _is_number(value) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _range_problems(config) -> list[str]:
  """Numbers outside their range: (setting, test, allowed values in words)."""
  at_least_1 = (lambda v: isinstance(v, int) and v >= 1, "integers >= 1")
  at_least_0 = (lambda v: isinstance(v, int) and v >= 0, "integers >= 0")
  positive = (lambda v: math.isfinite(v) and v > 0, "finite numbers > 0")
  rules = {
      "training.batch_size": at_least_1,
      "sampling.batch_size": at_least_1,
      "evaluation.batch_size": at_least_1,
      "classifier.batch_size": at_least_1,
      "training.num_train_steps": at_least_0,
      "classifier.num_train_steps": at_least_0,
      "training.learning_rate": positive,
      "classifier.learning_rate": positive,
      "training.ema_decay": (lambda v: 0 <= v < 1, "numbers in [0, 1)"),
      "diffusion.label_dropout": (lambda v: 0 <= v <= 1, "probabilities in [0, 1]"),
      "model.dropout": (lambda v: 0 <= v < 1, "rates in [0, 1)"),
      "sampling.num_per_class": at_least_1,
      "sampling.num_steps": (lambda v: isinstance(v, int) and v >= 0,
                             "integers >= 0 (0: all diffusion.num_timesteps steps)"),
      "data.resolution": at_least_1,
      "data.shuffle_buffer": at_least_1,
      "data.num_loader_workers": at_least_0,
      "data.max_real_examples": (lambda v: isinstance(v, int) and v >= 0,
                                 "integers >= 0 (0: the whole split)"),
      "model.image_size": at_least_1,
  }
  found = []
  for name, (ok, allowed) in rules.items():
    value = _get(config, name)
    if value is _MISSING:
      continue
    if not _is_number(value) or not ok(value):
      found.append(f"{name}={value!r}: allowed values are {allowed}.")
  return found


def _guidance_problems(config) -> list[str]:
  """Classifier-free guidance scales: finite, and >= 0 unless explicitly allowed.

  Read in the published convention (sampling.guidance_convention), a scale <= 0 is the
  conditional prediction alone, so negative ones steer nowhere and are not refused.
  """
  allow_negative = bool(_get(config, "sampling.allow_negative_guidance") is True
                        or _get(config, "sampling.guidance_convention") == "published")
  scales = [("sampling.guidance_scale", _get(config, "sampling.guidance_scale")),
            ("classifier.synthetic_guidance", _get(config, "classifier.synthetic_guidance"))]
  sweep = _get(config, "evaluation.guidance_scales")
  if sweep is not _MISSING:
    scales += [(f"evaluation.guidance_scales[{i}]", w) for i, w in enumerate(sweep)]
  found = []
  for name, w in scales:
    if w is _MISSING:
      continue
    if not _is_number(w) or not math.isfinite(w):
      found.append(f"{name}={w!r}: allowed values are finite numbers (>= 0).")
    elif w < 0 and not allow_negative:
      found.append(f"{name}={w!r}: allowed values are numbers >= 0 (0: unconditional, 1: "
                   "conditional without guidance, > 1: stronger guidance); for a negative scale "
                   "pass --config.sampling.allow_negative_guidance=True.")
  return found


def _model_problems(config) -> list[str]:
  """UNet and data shapes that do not fit each other (found otherwise after a build or compile)."""
  found = []
  size, resolution = _get(config, "model.image_size"), _get(config, "data.resolution")
  mult = _get(config, "model.channel_mult")
  if not (_is_number(size) and _is_number(resolution)) or min(size, resolution) < 1:
    return found  # Reported by _range_problems.
  if mult is not _MISSING and len(mult) >= 1:
    halvings = 2 ** (len(mult) - 1)
    if size % halvings:
      found.append(f"model.image_size={size}: allowed values are multiples of {halvings} "
                   f"(the UNet halves it {len(mult) - 1} times, once per extra level of "
                   f"model.channel_mult={tuple(mult)}).")
  if size != resolution:
    found.append(f"model.image_size={size} and data.resolution={resolution}: they must be equal "
                 "(the model sees the data's images).")
  channels = _get(config, "data.channels")
  for name in ("model.in_channels", "model.out_channels"):
    count = _get(config, name)
    if channels is not _MISSING and count is not _MISSING and len(channels) != count:
      found.append(f"{name}={count} with data.channels={tuple(channels)}: they must agree (one "
                   f"image channel per wavelength); leave {name} unset, it follows "
                   f"data.channels ({len(channels)}).")
  return found


def _data_problems(config) -> list[str]:
  found = []
  source = _get(config, "data.source")
  if source is _MISSING:
    return found
  if source not in SOURCES:
    found.append(f"data.source={source!r}: allowed values are {', '.join(map(repr, SOURCES))}.")
    return found
  manual_dir = _get(config, "data.manual_dir")
  if source == "synthetic" and manual_dir not in (_MISSING, "", None):
    found.append(
        f"data.manual_dir={manual_dir!r} is not read with data.source='synthetic' (the "
        f"{_get(config, 'preset')} preset trains on a generated archive). To build the dataset "
        "from the FITS and GOES files in that folder, add --config.data.source=manual; else "
        "leave data.manual_dir unset.")
  if source == "sdoml" and not _get(config, "data.sdoml_store"):
    found.append("data.source='sdoml' with no data.sdoml_store: give the root of an SDOML v2 zarr "
                 "store, a folder or a URL (see docs/data.md), e.g. --config.data.sdoml_store="
                 "s3://gov-nasa-hdrl-data1/contrib/fdl-sdoml/fdl-sdoml-v2/sdomlv2.zarr.")
  loader, file_format = _get(config, "data.loader"), _get(config, "data.file_format")
  if loader not in (_MISSING, "tfdata", "grain"):
    found.append(f"data.loader={loader!r}: allowed values are 'tfdata' and 'grain'.")
  elif loader == "grain" and file_format not in (_MISSING, "array_record"):
    found.append(f"data.loader='grain' with data.file_format={file_format!r}: grain reads "
                 "ArrayRecord files; set --config.data.file_format=array_record (a new build) or "
                 "--config.data.loader=tfdata.")
  elif loader == "tfdata" and file_format == "array_record":
    found.append("data.loader='tfdata' with data.file_format='array_record': tf.data reads "
                 "TFRecord files; set --config.data.loader=grain for ArrayRecord.")
  resolution = _get(config, "data.resolution")
  if source == "synthetic":
    frame_name, frame = "data.synthetic.image_size", _get(config, "data.synthetic.image_size")
  else:
    frame_name, frame = "data.frame_px", _get(config, "data.frame_px")
  if (_is_number(frame) and _is_number(resolution) and resolution >= 1
      and _get(config, "data.downsample") == "sum" and frame % resolution):
    found.append(f"data.resolution={resolution} with {frame_name}={frame}: allowed resolutions "
                 f"divide {frame} (block sums need whole blocks, every frame would be skipped); "
                 "or set --config.data.downsample=resize.")
  return found


def _sampling_problems(config) -> list[str]:
  found = []
  classes = _get(config, "sampling.classes")
  if classes is not _MISSING:
    names = [c.strip().upper() for c in str(classes).split(",") if c.strip()]
    if not names or any(c not in FLARE_CLASSES for c in names):
      found.append(f"sampling.classes={classes!r}: allowed values are comma-separated flare "
                   f"classes out of {','.join(FLARE_CLASSES)}.")
  from solar_ddpm_jax import samplers
  for name in ("sampling.sampler", "classifier.synthetic_sampler"):
    sampler = _get(config, name)
    if sampler is not _MISSING and sampler not in samplers.SAMPLERS:
      found.append(f"{name}={sampler!r}: allowed values are "
                   f"{', '.join(map(repr, samplers.SAMPLERS))}.")
  convention = _get(config, "sampling.guidance_convention")
  if convention is not _MISSING and convention not in samplers.GUIDANCE_CONVENTIONS:
    found.append(f"sampling.guidance_convention={convention!r}: allowed values are "
                 f"{', '.join(map(repr, samplers.GUIDANCE_CONVENTIONS))} (see docs/sampling.md).")
  rescale = _get(config, "sampling.guidance_rescale")
  interval = _get(config, "sampling.guidance_interval")
  try:
    problem = samplers.guidance_problem(0.0 if rescale is _MISSING else rescale,
                                        () if interval is _MISSING else interval)
  except (TypeError, ValueError):
    problem = (f"sampling.guidance_rescale={rescale!r} / sampling.guidance_interval={interval!r}: "
               "a number in [0, 1] and () or two numbers (lo, hi).")
  if problem:
    found.append(problem)
  found += _timesteps_problems(config)
  return found


def _timesteps_problems(config) -> list[str]:
  """sampling.timesteps, an explicit grid (empty: the sampler's own): see samplers.sampler_grid."""
  from solar_ddpm_jax import samplers
  timesteps = _get(config, "sampling.timesteps")
  if timesteps is _MISSING or timesteps is None or (
      isinstance(timesteps, list | tuple) and not timesteps):
    return []
  num_timesteps = _get(config, "diffusion.num_timesteps")
  if not (isinstance(num_timesteps, int) and num_timesteps >= 1):
    return []  # Without a schedule length the grid is checked when sampling starts.
  faithful = _get(config, "diffusion.faithful_timesteps") is True
  problem = samplers.timesteps_problem(timesteps, num_timesteps, faithful)
  if problem:
    return [f"sampling.timesteps={timesteps!r}: {problem}; it is used by every sampler "
            f"({', '.join(samplers.SAMPLERS)}) in place of sampling.num_steps's grid."]
  return []


def _conditioning_problems(config) -> list[str]:
  """The class embedding's init (unet.CLASS_EMBED_INITS) and the per-class sampling weights."""
  found = []
  init = _get(config, "model.class_embed_init")
  from solar_ddpm_jax import class_balance, unet
  if init is not _MISSING and init not in unet.CLASS_EMBED_INITS:
    found.append(f"model.class_embed_init={init!r}: allowed values are "
                 f"{', '.join(map(repr, unet.CLASS_EMBED_INITS))}.")
  num_classes = _get(config, "model.num_classes")
  if _get(config, "data.class_weights") is not _MISSING and _is_number(num_classes):
    try:
      class_balance.class_weights(config.data, int(num_classes))
    except ValueError as e:
      found.append(str(e))
  return found


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def workdir_problems(workdir: str) -> list[str]:
  """--workdir must be a directory this process can write in, or one it can create."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    return [f"--workdir={workdir} is a file: allowed values are directories (created when "
            "missing); give another path."]
  existing = _nearest_existing(path)
  if not os.path.isdir(existing):
    return [f"--workdir={workdir}: {existing} is a file, so the directory cannot be created; "
            "give another path."]
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    where = "" if existing == path else f" (its nearest existing folder {existing})"
    return [f"--workdir={workdir}{where} cannot be written ({e.strerror or e}): allowed values "
            "are directories this user can write in."]
  return []


def problems(config, workdir: str | None = None, mode: str = "train") -> list[str]:
  """Every problem check() finds, one message each (empty when the settings are fine)."""
  found = (_range_problems(config) + _guidance_problems(config) + _model_problems(config)
           + _data_problems(config) + _sampling_problems(config) + _conditioning_problems(config))
  if workdir is not None and mode not in NO_WORKDIR_MODES:
    found += workdir_problems(workdir)
  return found


def check(config, workdir: str | None, mode: str) -> None:
  """Raises a SettingsError naming each bad setting of `config` (and `workdir` for `mode`).

  Cheap and free of side effects: no data, devices or compilation; run it before all of them.
  """
  found = problems(config, workdir, mode)
  if len(found) == 1:
    raise SettingsError(found[0])
  if found:
    raise SettingsError(f"{len(found)} settings are not allowed:\n  " + "\n  ".join(found))
