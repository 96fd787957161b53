"""Reading a torch state dict (.pth, zip or legacy layout) into numpy, without torch.

The pickles go through `safe_unpickle.WeightUnpickler`; a tensor's offset, sizes and strides are
checked against its storage before any byte is read, so a file cannot make the loader read memory
outside the file's own bytes.
"""

from __future__ import annotations

import collections
import io
import os
import re
import struct
import zipfile
import zlib

import numpy as np

from solar_ddpm_jax.evaluation.safe_unpickle import (
  TORCH_DTYPES,
  Marker,
  Refused,
  StorageRecord,
  TensorRecord,
  is_int,
  short,
  unpickle,
)
from solar_ddpm_jax.evaluation.weight_files import FileError, corrupt_zip, starts_like_zip

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy (pre-zip) serialization.
_LEGACY_PROTOCOL = 1001
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


def _storage_ids(records: dict, legacy: bool):
  """persistent_load of torch's pickles: ("storage", type, key, location, numel[, view]) ->
  StorageRecord, each field checked; records[key] collects them."""
  length = 6 if legacy else 5

  def persistent_load(pid):
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
      raise Refused(f"persistent id {short(pid)} is not a torch storage reference of "
                    f"{length} fields")
    _, storage_type, key, location, numel = pid[:5]
    name = storage_type.name.removeprefix("torch.") if isinstance(storage_type, Marker) else None
    if TORCH_DTYPES.get(name) is None:
      raise Refused(f"storage type {short(storage_type)} is not supported (supported: "
                    + ", ".join(k for k, v in TORCH_DTYPES.items() if v is not None) + ")")
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
      raise Refused(f"storage key {short(key)} is not a short alphanumeric name")
    if not isinstance(location, str):
      raise Refused(f"storage location {short(location)} is not a device name")
    if not is_int(numel) or numel < 0:
      raise Refused(f"storage {key!r} has element count {short(numel)}")
    if legacy and pid[5] is not None:
      raise Refused(f"storage {key!r} is a view of another storage (pre-1.0 torch files)")
    record = StorageRecord(key, np.dtype(TORCH_DTYPES[name]), numel)
    if records.setdefault(key, record) != record:
      raise Refused(f"storage {key!r} is declared twice with different types or sizes")
    return record

  return persistent_load


def _tensor(record: TensorRecord, storage: np.ndarray, path: str, key: str) -> np.ndarray:
  """The tensor `record` of `storage`, after checking that its view lies inside the storage."""
  def bad(why):
    return FileError(f"{path!r}: tensor {key!r} {why}; the file is corrupt or crafted, do not "
                     "use it")
  offset, size, stride = record.offset, record.size, record.stride
  if not is_int(offset) or offset < 0:
    raise bad(f"has storage offset {short(offset)}, not a non-negative integer")
  if (not isinstance(size, tuple) or len(size) > 32
      or not all(is_int(s) and s >= 0 for s in size)):
    raise bad(f"has sizes {short(size)}, not up to 32 non-negative integers")
  if (not isinstance(stride, tuple) or len(stride) != len(size)
      or not all(is_int(s) and s >= 0 for s in stride)):
    raise bad(f"has strides {short(stride)}, not {len(size)} non-negative integers")
  numel, count = storage.size, int(np.prod(size, dtype=object))
  if count == 0:
    if offset > numel:
      raise bad(f"starts at element {offset} of a storage of {numel} elements")
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
  if last >= numel:
    raise bad(f"addresses element {last} of a storage of {numel} elements (offset {offset}, "
              f"sizes {size}, strides {stride})")
  if count > numel:
    raise bad(f"has {count} elements, more than the {numel} of its storage (overlapping strides "
              "are not supported in weight files)")
  itemsize = storage.dtype.itemsize
  strides = tuple(0 if n == 1 else s * itemsize for n, s in zip(size, stride, strict=True))
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=strides, writeable=False).copy()


def _state_dict(obj, path: str, storage_of) -> dict[str, np.ndarray]:
  """{name: array} of an unpickled torch object; storage_of(StorageRecord) -> its elements.

  Tensors are read wherever they sit in the file's dicts, lists and tuples (a checkpoint
  {"model": state dict, "ema": state dict} holds them one level down); a nested container is
  returned as numpy makes it (np.asarray of a dict: a 0-d object array holding it).
  """
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise FileError(f"{path!r} holds a {type(obj).__name__}, not a state dict of tensors")
  storages, memo = {}, {}  # memo: id -> resolved, so a shared object is read once.

  def resolve(v, name):
    if id(v) in memo:
      return memo[id(v)]
    if isinstance(v, TensorRecord):
      if not isinstance(v.storage, StorageRecord):
        raise FileError(f"{path!r}: tensor {name!r} has no torch storage "
                        f"({short(v.storage)}); the file is corrupt or crafted")
      if v.storage.key not in storages:
        storages[v.storage.key] = storage_of(v.storage)
      memo[id(v)] = _tensor(v, storages[v.storage.key], path, name)
    elif type(v) in (dict, collections.OrderedDict):
      memo[id(v)] = out = type(v)()
      for k, x in v.items():
        out[k] = resolve(x, f"{name}.{k}")
    elif type(v) is list:
      memo[id(v)] = out = []
      out.extend(resolve(x, f"{name}.{i}") for i, x in enumerate(v))
    elif type(v) is tuple:
      out = tuple(resolve(x, f"{name}.{i}") for i, x in enumerate(v))
      memo.setdefault(id(v), out)
    else:
      return v
    return memo[id(v)]

  try:
    return {str(k): np.asarray(resolve(v, str(k))) for k, v in obj.items()}
  except RecursionError:
    raise FileError(f"{path!r} nests its containers too deeply for a state dict") from None


def _load_torch_zip(path: str) -> dict[str, np.ndarray]:
  """torch.save's zip layout: <prefix>data.pkl, <prefix>data/<storage key>, <prefix>byteorder."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
    raise corrupt_zip(path, e) from e
  with archive:
    try:
      names = archive.namelist()
      pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
      if len(pickles) != 1:
        raise FileError(f"{path!r} is a zip archive with {len(pickles)} data.pkl entries, not "
                        "one: not a torch .pth")
      prefix = pickles[0][:-len("data.pkl")]
      big_endian = (f"{prefix}byteorder" in names
                    and archive.read(f"{prefix}byteorder").strip() == b"big")
      records = {}
      obj = unpickle(io.BytesIO(archive.read(pickles[0])), path,
                      _storage_ids(records, legacy=False))

      def storage_of(record: StorageRecord) -> np.ndarray:
        name = f"{prefix}data/{record.key}"
        if name not in names:
          raise FileError(f"{path!r}: storage {record.key!r} has no entry {name!r}")
        size, itemsize = archive.getinfo(name).file_size, record.dtype.itemsize
        nbytes = record.numel * itemsize
        if size % itemsize or size != nbytes:
          raise FileError(
              f"{path!r}: storage {record.key!r} holds {size} bytes, but the pickle declares "
              f"{record.numel} {record.dtype} elements ({nbytes} bytes); the file is corrupt or "
              "crafted, do not use it")
        data = archive.read(name)
        if len(data) != nbytes:
          raise FileError(f"{path!r}: storage {record.key!r} is {len(data)} of {nbytes} bytes")
        return np.frombuffer(data, record.dtype.newbyteorder(">" if big_endian else "<"))

      return _state_dict(obj, path, storage_of)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
      raise corrupt_zip(path, e) from e


def _load_torch_legacy(path: str) -> dict[str, np.ndarray]:
  """torch's legacy layout: pickles of the magic number, protocol, system info, the state dict
  and its storage keys, then per key an int64 element count and the elements."""
  with open(path, "rb") as f:
    if unpickle(f, path) != _LEGACY_MAGIC:
      raise FileError(f"{path!r} is neither a torch zip archive nor a legacy torch file "
                      "(no torch magic number)")
    version = unpickle(f, path)
    if version != _LEGACY_PROTOCOL:
      raise FileError(f"{path!r} has legacy torch protocol {short(version)}, not "
                      f"{_LEGACY_PROTOCOL}")
    sys_info = unpickle(f, path)
    order = ">" if isinstance(sys_info, dict) and sys_info.get("little_endian") is False else "<"
    records = {}
    obj = unpickle(f, path, _storage_ids(records, legacy=True))
    keys = unpickle(f, path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise FileError(f"{path!r}: the storage key list is {short(keys)}, not a list of names")
    file_size, storages = os.fstat(f.fileno()).st_size, {}
    for key in keys:
      record = records.get(key)
      if record is None or key in storages:
        raise FileError(f"{path!r}: storage {key!r} of the key list is not declared by the "
                        "pickle or listed twice; the file is corrupt or crafted")
      head = f.read(8)
      numel = struct.unpack(f"{order}q", head)[0] if len(head) == 8 else None
      if numel != record.numel:
        raise FileError(f"{path!r}: storage {key!r} has a record of {short(numel)} elements, "
                        f"but the pickle declares {record.numel}; the file is truncated, "
                        "corrupt or crafted")
      nbytes = numel * record.dtype.itemsize
      if nbytes > file_size - f.tell():
        raise FileError(f"{path!r}: storage {key!r} is shorter than its {nbytes} bytes (the "
                        "file ends early); download it again")
      data = f.read(nbytes)
      if len(data) != nbytes:
        raise FileError(f"{path!r}: storage {key!r} is {len(data)} of {nbytes} bytes")
      storages[key] = np.frombuffer(data, record.dtype.newbyteorder(order))
    missing = sorted(set(records) - set(storages))
    if missing:
      raise FileError(f"{path!r}: storages {missing[:5]} declared by the pickle have no data")
  return _state_dict(obj, path, lambda record: storages[record.key])


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state dict (.pth, zip or legacy format) into numpy, without torch.

  Untrusted bytes: unpickled through `WeightUnpickler`, every tensor checked against its
  storage; anything else raises WeightError naming the file.
  """
  return _load_torch_zip(path) if starts_like_zip(path) else _load_torch_legacy(path)
