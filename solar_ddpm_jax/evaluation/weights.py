"""Reading published weight files into numpy without their frameworks (torch .pth, pickle, npz,
safetensors).

Every loader returns a flat dict {tensor name: numpy array}; `check_tensors` then compares it with
the names and shapes a network expects, so a missing or misshapen tensor is an error naming it.

A weight file is untrusted data. Every pickle in it (jax-fid's .pickle, the pickles of a torch
.pth) goes through one allow-list unpickler (`safe_unpickle`), which builds only containers,
numpy arrays and torch tensor records and refuses any other global, so a file cannot run code.
Torch files are read by `torch_pth`; where the files are published and the errors of unusable
ones are in `weight_files`. This module is where callers import all of them from.
"""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

from solar_ddpm_jax.evaluation.safe_unpickle import unpickle
from solar_ddpm_jax.evaluation.torch_pth import load_torch_state_dict
from solar_ddpm_jax.evaluation.weight_files import (
  PUBLISHED,
  FileError,
  WeightError,
  corrupt_zip,
  read_weights,
  require_file,
  sha256_file,
  starts_like_zip,
)

__all__ = ["PUBLISHED", "WeightError", "check_tensors", "flatten", "load_numpy_tree",
           "load_safetensors", "load_torch_state_dict", "read_weights", "require_file",
           "sha256_file", "unflatten"]


def flatten(tree, prefix: str = "", sep: str = "/") -> dict[str, np.ndarray]:
  """Flattens nested dicts into {"a/b/c": array}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{sep}{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(flatten(v, name, sep))
    else:
      out[name] = np.asarray(v)
  return out


def load_numpy_tree(path: str) -> dict[str, np.ndarray]:
  """Reads a .npz or a pickle of nested dicts of arrays (jax-fid's layout) into {"a/b/c": array}.

  The .npz is read without pickles; the pickle goes through `WeightUnpickler`.
  """
  if starts_like_zip(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
      raise corrupt_zip(path, e) from e
    except Exception as e:  # Object arrays (pickles) refused by allow_pickle=False, bad headers.
      raise FileError(f"{path!r} is not a readable .npz ({type(e).__name__}: {e})") from e
  with open(path, "rb") as f:
    tree = unpickle(f, path)
  if not isinstance(tree, dict):
    raise FileError(f"{path!r} holds a {type(tree).__name__}, not nested dicts of arrays")
  return flatten(tree)

def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file into numpy (no torch)."""
  from safetensors.numpy import load_file
  return dict(load_file(path))


def check_tensors(found: dict, expected: dict, what: str) -> None:
  """Raises WeightError naming every expected tensor that is missing or has another shape."""
  missing = sorted(k for k in expected if k not in found)
  wrong = sorted(f"{k}: file {tuple(found[k].shape)}, expected {tuple(expected[k])}"
                 for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k]))
  if missing or wrong:
    msg = [f"{what}: weight file does not match the network."]
    if missing:
      msg.append(f"missing tensors ({len(missing)}): " + ", ".join(missing[:20]))
    if wrong:
      msg.append(f"misshapen tensors ({len(wrong)}): " + "; ".join(wrong[:20]))
    raise WeightError(" ".join(msg))


def unflatten(flat: dict, sep: str = "/") -> dict:
  """{"a/b": x} -> {"a": {"b": x}}."""
  tree = {}
  for k, v in flat.items():
    node = tree
    parts = k.split(sep)
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree
