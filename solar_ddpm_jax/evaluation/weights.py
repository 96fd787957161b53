"""Reading published weight files into numpy without their frameworks (torch .pth, pickle, npz).

Every loader returns a flat dict {tensor name: numpy array}; `check_tensors` then compares it with
the names and shapes a network expects, so a missing or misshapen tensor is an error naming it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile

import numpy as np

# Where the supported weight files are published (given as text: nothing here downloads them).
PUBLISHED = {
    "inception": dict(
        files="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
              "inception_v3_weights_fid.pickle (jax-fid)",
        urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
              "pt_inception-2015-12-05-6726825d.pth",
              "https://www.dropbox.com/s/xt6zvlvt22dcwck/inception_v3_weights_fid.pickle?dl=1"),
        key="config.evaluation.inception_weights"),
    "clip": dict(
        files="model.safetensors of openai/clip-vit-base-patch32",
        urls=("https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/"
              "model.safetensors",),
        key="config.evaluation.clip_weights"),
}


class WeightError(ValueError):
  """A weight file is missing, unreadable, or lacks a tensor of the right shape."""


def require_file(path: str, extractor: str) -> str:
  """Returns `path` if it is a file; otherwise raises naming the file, its source and config key."""
  if path and os.path.isfile(path):
    return path
  if not path:
    given = "no path was given"
  elif os.path.isdir(path):
    given = f"{path!r} is a directory, not a weight file"
  else:
    given = f"{path!r} does not exist"
  raise FileNotFoundError(f"{extractor} weights: {given}. {_where_to_get(extractor)}")


def _where_to_get(extractor: str) -> str:
  info = PUBLISHED[extractor]
  return (f"Download {info['files']} from {' or '.join(info['urls'])} and pass its path with "
          f"--config.{info['key'].removeprefix('config.')}=/path/to/file ({info['key']}).")


def read_weights(path: str, extractor: str, reader):
  """reader(path) of an existing weight file; a file of another format (a pytorch_model.bin for
  model.safetensors, a saved download page for the pickle) raises WeightError naming the file,
  what was expected and where to get it."""
  require_file(path, extractor)
  try:
    return reader(path)
  except WeightError:
    raise
  except Exception as e:  # Unpickling, zip, safetensors and numpy errors alike.
    raise WeightError(
        f"{extractor} weights: {path!r} could not be read as {PUBLISHED[extractor]['files']} "
        f"({type(e).__name__}: {e}). {_where_to_get(extractor)}") from e


def sha256_file(path: str) -> str:
  """Hex sha256 of a file (recorded next to every number computed with its weights)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# ------------------------------------------------------------------------------ torch .pth
_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": None,
}


class _StorageType:
  def __init__(self, name):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused
  if not size:
    return np.asarray(storage[offset]).copy()
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a torch state dict into numpy arrays; only the classes a state dict needs."""

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      import collections
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, *unused: data
    if module == "torch" and name.endswith("Storage"):
      return _StorageType(name)
    if module == "torch" and name == "Size":
      return tuple
    raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a torch state dict")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
    dtype = _TORCH_DTYPES.get(storage_type.name)
    if dtype is None:
      raise pickle.UnpicklingError(f"unsupported storage {storage_type.name}")
    return self._load_storage(str(key), np.dtype(dtype), int(numel))


def _load_torch_zip(path):
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = next(n for n in names if n.endswith("data.pkl"))
    prefix = pkl[:-len("data.pkl")]

    def load_storage(key, dtype, numel):
      del numel
      return np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)

    return _TorchUnpickler(io.BytesIO(zf.read(pkl)), load_storage).load()


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state dict (.pth, zip or legacy format) into numpy, without torch."""
  if zipfile.is_zipfile(path):
    obj = _load_torch_zip(path)
  else:
    obj = _load_torch_legacy_deferred(path)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  return {str(k): np.asarray(v) for k, v in obj.items()}


class _Deferred:
  """A tensor of a legacy file whose storage bytes come after the pickle."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, size, stride)


class _LegacyUnpickler(_TorchUnpickler):
  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return lambda storage, offset, size, stride, *unused: _Deferred(storage, offset, size, stride)
    return super().find_class(module, name)


def _load_torch_legacy_deferred(path):
  with open(path, "rb") as f:
    for _ in range(3):
      pickle.load(f)  # Magic number, protocol version, system info.
    storages = {}

    def load_storage(key, dtype, numel):
      if key not in storages:
        storages[key] = np.empty(numel, dtype)
      return storages[key]

    obj = _LegacyUnpickler(f, load_storage).load()
    for key in pickle.load(f):
      buf = storages[str(key)]
      numel = int(np.frombuffer(f.read(8), "<i8")[0])
      buf[:numel] = np.frombuffer(f.read(numel * buf.dtype.itemsize), dtype=buf.dtype)

  def resolve(v):
    return _rebuild_tensor(*v.args) if isinstance(v, _Deferred) else v
  return type(obj)((k, resolve(v)) for k, v in obj.items())


# ---------------------------------------------------------------------- pickle / npz / safetensors
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
  """Reads a .npz or a pickle of nested dicts of arrays into {"a/b/c": array}."""
  if zipfile.is_zipfile(path) and path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as z:
      return {k: np.asarray(z[k]) for k in z.files}
  with open(path, "rb") as f:
    return flatten(pickle.load(f))


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
