"""Reading published weight files into numpy without their frameworks (torch .pth, pickle, npz).

Every loader returns a flat dict {tensor name: numpy array}; `check_tensors` then compares it with
the names and shapes a network expects, so a missing or misshapen tensor is an error naming it.

A weight file is untrusted data. Every pickle in it (jax-fid's .pickle, the pickles of a torch
.pth) goes through one allow-list unpickler, `_WeightUnpickler`, which builds only containers,
numpy arrays and torch tensor records and refuses any other global, so a file cannot run code.
A torch tensor's offset, sizes and strides are checked against its storage before any byte is
read, so a file cannot make the loader read memory outside the file's own bytes.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import hashlib
import io
import os
import pickle
import re
import struct
import zipfile
import zlib

import numpy as np

from solar_ddpm_jax.errors import UserError

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


class WeightError(UserError, ValueError):
  """A weight file is missing, unreadable, refused as unsafe, or lacks a tensor of its shape."""


class _FileError(WeightError):
  """The bytes of a weight file cannot be used: corrupt, of another format, or refused as unsafe.

  Raised by the loaders with the file named; `read_weights` adds which file was expected and
  where the published one is.
  """


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
  model.safetensors, a saved download page for the pickle), a corrupt one or one refused as unsafe
  raises WeightError naming the file, what was expected and where to get it."""
  require_file(path, extractor)
  try:
    return reader(path)
  except Exception as e:  # The loaders' _FileError; safetensors and numpy errors alike.
    if isinstance(e, WeightError) and not isinstance(e, _FileError):
      raise  # Missing or misshapen tensors: check_tensors' message names them.
    detail = str(e) if isinstance(e, _FileError) else f"{type(e).__name__}: {e}"
    raise WeightError(
        f"{extractor} weights: {path!r} could not be read as {PUBLISHED[extractor]['files']} "
        f"({detail}). {_where_to_get(extractor)}") from e


def sha256_file(path: str) -> str:
  """Hex sha256 of a file (recorded next to every number computed with its weights)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# ----------------------------------------------------------------- the allow-list unpickler
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what a weight can hold.


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _short(x, limit: int = 120) -> str:
  text = repr(x)
  return text if len(text) <= limit else text[:limit] + "..."


class _Refused(Exception):
  """A pickle asks for something a weight file never needs; `_unpickle` names the file."""


class _Marker:
  """A class a pickle may name only as an argument (numpy.ndarray, torch.FloatStorage, ...).

  Not callable, so a pickle cannot use the real class's constructor on its own arguments.
  """

  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name

  def __repr__(self):
    return self.name


_NDARRAY = _Marker("numpy.ndarray")


def _numeric_dtype(dtype) -> np.dtype:
  if (not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS
      or dtype.fields is not None or dtype.subdtype is not None):
    raise _Refused(f"array dtype {_short(dtype)} is not a plain numeric type")
  return dtype


def _np_dtype(spec, align=False, copy=True):
  """numpy.dtype as numpy's pickles call it ("f4", False, True): numeric types, always a copy
  (a BUILD on the copy must never change numpy's shared float32 dtype)."""
  del align, copy
  if not isinstance(spec, str):
    raise _Refused(f"dtype {_short(spec)} is not given by its type code")
  try:
    dtype = np.dtype(spec, False, True)
  except TypeError as e:
    raise _Refused(f"dtype {_short(spec)} is not a numpy type code") from e
  return _numeric_dtype(dtype)


def _set_dtype_state(dtype, state) -> None:
  """BUILD of a dtype: only the byte order may differ from the type code's defaults."""
  if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
          and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
          and state[5:7] in ((-1, -1), (dtype.itemsize, dtype.alignment))
          and state[7] == dtype.flags):
    raise _Refused(f"dtype state {_short(state)} is not that of a plain numeric type")
  dtype.__setstate__(state)
  _numeric_dtype(dtype)


def _np_reconstruct(subtype, shape, dtype):
  """numpy.core.multiarray._reconstruct: an empty ndarray that the following BUILD fills."""
  del shape, dtype  # numpy passes (0,) and b"b"; the BUILD state sets both.
  if subtype is not _NDARRAY:
    raise _Refused(f"array subtype {_short(subtype)} is not numpy.ndarray")
  return np.empty((0,), np.int8)


def _set_array_state(array: np.ndarray, state) -> None:
  """BUILD of an ndarray: (1, shape, dtype, is_fortran, raw bytes) of exactly that many bytes."""
  if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1
          and isinstance(state[1], tuple) and all(_is_int(s) and s >= 0 for s in state[1])
          and isinstance(state[2], np.dtype) and state[3] in (0, 1)
          and isinstance(state[4], (bytes, bytearray))):
    raise _Refused(f"array state {_short(state)} is not (1, shape, dtype, fortran, bytes)")
  _, shape, dtype, _, data = state
  nbytes = _numeric_dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
  if len(data) != nbytes:
    raise _Refused(f"array of shape {shape} and dtype {dtype} holds {len(data)} bytes, "
                   f"not {nbytes}")
  array.__setstate__(state)


def _np_frombuffer(buf, dtype, shape, order):
  """numpy.core.numeric._frombuffer (protocol 5 arrays), with its sizes checked."""
  if not (isinstance(buf, (bytes, bytearray)) and isinstance(shape, tuple)
          and all(_is_int(s) and s >= 0 for s in shape) and order in ("C", "F")):
    raise _Refused("protocol-5 array arguments are not (bytes, dtype, shape, order)")
  nbytes = _numeric_dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
  if len(buf) != nbytes:
    raise _Refused(f"array of shape {shape} and dtype {dtype} holds {len(buf)} bytes, "
                   f"not {nbytes}")
  return np.frombuffer(buf, dtype).reshape(shape, order=order)


def _np_scalar(dtype, data=None):
  """numpy.core.multiarray.scalar: a numeric scalar from exactly itemsize bytes."""
  if not isinstance(data, bytes) or len(data) != _numeric_dtype(dtype).itemsize:
    raise _Refused(f"scalar of dtype {_short(dtype)} does not hold exactly its itemsize in bytes")
  return np.frombuffer(data, dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
  """_codecs.encode as protocol 0-2 pickles write bytes: latin-1 text only."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise _Refused(f"_codecs.encode with {_short(encoding)} (only latin-1 bytes are allowed)")
  return text.encode("latin-1")


def _bytes(*args):
  """builtins.bytes as protocol 0-2 pickles write b"": no arguments."""
  if args:
    raise _Refused("builtins.bytes with arguments")
  return b""


def _bytearray(*args):
  """builtins.bytearray as pickles write it: (), (bytes,) or (latin-1 text, "latin-1")."""
  if not args:
    return bytearray()
  if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
    return bytearray(args[0])
  return bytearray(_codecs_encode(*args))


# torch storage types (the element types of its state dicts); None: no numpy equivalent here.
_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": None,
}


@dataclasses.dataclass(frozen=True)
class _StorageRecord:
  """A storage a torch pickle refers to: its key, element type and element count."""
  key: str
  dtype: np.dtype
  numel: int


class _TensorRecord:
  """A tensor of a torch pickle: read from its storage only after its view is checked."""

  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 (and _rebuild_tensor): recorded, checked when read."""
  del unused  # requires_grad, backward hooks, metadata.
  return _TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
  del unused
  if not isinstance(data, _TensorRecord):
    raise _Refused(f"torch parameter of {_short(data)}, not of a tensor")
  return data


def _torch_size(sizes=()):
  return tuple(sizes)


# Every global a weight file may name (module, name) -> what the unpickler uses for it. Nothing
# here runs code from the file or reads memory it does not hold.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): _bytes, ("builtins", "bytearray"): _bytearray,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    **{("torch", name): _Marker(f"torch.{name}") for name in _TORCH_DTYPES},
}
# Classes a pickle may create with NEWOBJ (cls.__new__(cls, *args)).
_CONTAINERS = (collections.OrderedDict, dict, list, tuple, set, frozenset)


# The pure-Python unpickler: its opcode table can be narrowed (the C one cannot).
class _WeightUnpickler(pickle._Unpickler):
  """Unpickles plain data only: containers, numeric numpy arrays and torch tensor records.

  An allow-list: `find_class` gives only the globals in `_ALLOWED` (numpy and torch names map to
  checked stand-ins, never to the real constructors), BUILD sets the state of arrays, dtypes and
  dicts only, and NEWOBJ creates containers only, so a file can neither call a function of its
  choosing nor rewrite the attributes of the ones it may call. Persistent ids (torch's storage
  references) go to the format's own checked `persistent_load`.
  """

  dispatch = dict(pickle._Unpickler.dispatch)

  def __init__(self, file, persistent_load=None):
    super().__init__(file)
    self._persistent_load = persistent_load

  def find_class(self, module, name):
    if self.proto < 3 and self.fix_imports:  # Python 2 names, as in protocol 0-2 pickles.
      if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
      elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    found = _ALLOWED.get((module, name))
    if found is None:
      raise _Refused(f"refused global {module}.{name} (a weight file may only hold containers, "
                     "numeric arrays and torch tensors: this is not a published weight file, do "
                     "not use it)")
    return found

  def persistent_load(self, pid):
    if self._persistent_load is None:
      raise _Refused(f"refused persistent id {_short(pid)}: this format has none")
    return self._persistent_load(pid)

  def _load_build(self):
    state = self.stack.pop()
    inst = self.stack[-1]
    if type(inst) is np.ndarray:
      _set_array_state(inst, state)
    elif isinstance(inst, np.dtype):
      _set_dtype_state(inst, state)
    elif type(inst) in (dict, collections.OrderedDict) and isinstance(state, (dict, type(None))):
      pass  # torch's `_metadata` attribute of a state dict: not needed for the weights.
    else:
      raise _Refused(f"refused to set the state of a {type(inst).__name__}")

  def _new(self, cls, args, kwargs):
    if not any(cls is c for c in _CONTAINERS) or not isinstance(args, tuple) or kwargs:
      raise _Refused(f"refused to create a {_short(cls)} object")
    self.append(cls.__new__(cls, *args))

  def _load_newobj(self):
    args = self.stack.pop()
    self._new(self.stack.pop(), args, None)

  def _load_newobj_ex(self):
    kwargs = self.stack.pop()
    args = self.stack.pop()
    self._new(self.stack.pop(), args, kwargs)

  dispatch[pickle.BUILD[0]] = _load_build
  dispatch[pickle.NEWOBJ[0]] = _load_newobj
  dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex


def _unpickle(file, path: str, persistent_load=None):
  """The next pickle of `file` through `_WeightUnpickler`; any refusal or error names `path`."""
  try:
    return _WeightUnpickler(file, persistent_load).load()
  except _Refused as e:
    raise _FileError(f"{path!r}: {e}; nothing in the file was run") from None
  except KeyError as e:  # The pure-Python unpickler's word for an unknown opcode.
    code = e.args[0] if e.args else None
    load_key = bytes([code]) if isinstance(code, int) and 0 <= code < 256 else code
    raise _FileError(f"{path!r} is not a pickle (invalid load key {load_key!r})") from None
  except Exception as e:  # Truncated, corrupt or another format: unpickling errors alike.
    raise _FileError(f"{path!r} is not a readable pickle ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------ torch .pth
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy (pre-zip) serialization.
_LEGACY_PROTOCOL = 1001
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


def _storage_ids(records: dict, legacy: bool):
  """persistent_load of torch's pickles: ("storage", type, key, location, numel[, view]) ->
  _StorageRecord, each field checked; records[key] collects them."""
  length = 6 if legacy else 5

  def persistent_load(pid):
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
      raise _Refused(f"persistent id {_short(pid)} is not a torch storage reference of "
                     f"{length} fields")
    _, storage_type, key, location, numel = pid[:5]
    name = storage_type.name.removeprefix("torch.") if isinstance(storage_type, _Marker) else None
    if _TORCH_DTYPES.get(name) is None:
      raise _Refused(f"storage type {_short(storage_type)} is not supported (supported: "
                     + ", ".join(k for k, v in _TORCH_DTYPES.items() if v is not None) + ")")
    if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
      raise _Refused(f"storage key {_short(key)} is not a short alphanumeric name")
    if not isinstance(location, str):
      raise _Refused(f"storage location {_short(location)} is not a device name")
    if not _is_int(numel) or numel < 0:
      raise _Refused(f"storage {key!r} has element count {_short(numel)}")
    if legacy and pid[5] is not None:
      raise _Refused(f"storage {key!r} is a view of another storage (pre-1.0 torch files)")
    record = _StorageRecord(key, np.dtype(_TORCH_DTYPES[name]), numel)
    if records.setdefault(key, record) != record:
      raise _Refused(f"storage {key!r} is declared twice with different types or sizes")
    return record

  return persistent_load


def _tensor(record: _TensorRecord, storage: np.ndarray, path: str, key: str) -> np.ndarray:
  """The tensor `record` of `storage`, after checking that its view lies inside the storage."""
  def bad(why):
    return _FileError(f"{path!r}: tensor {key!r} {why}; the file is corrupt or crafted, do not "
                      "use it")
  offset, size, stride = record.offset, record.size, record.stride
  if not _is_int(offset) or offset < 0:
    raise bad(f"has storage offset {_short(offset)}, not a non-negative integer")
  if (not isinstance(size, tuple) or len(size) > 32
      or not all(_is_int(s) and s >= 0 for s in size)):
    raise bad(f"has sizes {_short(size)}, not up to 32 non-negative integers")
  if (not isinstance(stride, tuple) or len(stride) != len(size)
      or not all(_is_int(s) and s >= 0 for s in stride)):
    raise bad(f"has strides {_short(stride)}, not {len(size)} non-negative integers")
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
  """{name: array} of an unpickled torch object; storage_of(_StorageRecord) -> its elements.

  Tensors are read wherever they sit in the file's dicts, lists and tuples (a checkpoint
  {"model": state dict, "ema": state dict} holds them one level down); a nested container is
  returned as numpy makes it (np.asarray of a dict: a 0-d object array holding it).
  """
  if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise _FileError(f"{path!r} holds a {type(obj).__name__}, not a state dict of tensors")
  storages, memo = {}, {}  # memo: id -> resolved, so a shared object is read once.

  def resolve(v, name):
    if id(v) in memo:
      return memo[id(v)]
    if isinstance(v, _TensorRecord):
      if not isinstance(v.storage, _StorageRecord):
        raise _FileError(f"{path!r}: tensor {name!r} has no torch storage "
                         f"({_short(v.storage)}); the file is corrupt or crafted")
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
    raise _FileError(f"{path!r} nests its containers too deeply for a state dict") from None


def _corrupt_zip(path: str, e: Exception) -> _FileError:
  return _FileError(f"{path!r} is a truncated or corrupt zip archive ({type(e).__name__}: {e}); "
                    "download it again")


def _load_torch_zip(path: str) -> dict[str, np.ndarray]:
  """torch.save's zip layout: <prefix>data.pkl, <prefix>data/<storage key>, <prefix>byteorder."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
    raise _corrupt_zip(path, e) from e
  with archive:
    try:
      names = archive.namelist()
      pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
      if len(pickles) != 1:
        raise _FileError(f"{path!r} is a zip archive with {len(pickles)} data.pkl entries, not "
                         "one: not a torch .pth")
      prefix = pickles[0][:-len("data.pkl")]
      big_endian = (f"{prefix}byteorder" in names
                    and archive.read(f"{prefix}byteorder").strip() == b"big")
      records = {}
      obj = _unpickle(io.BytesIO(archive.read(pickles[0])), path,
                      _storage_ids(records, legacy=False))

      def storage_of(record: _StorageRecord) -> np.ndarray:
        name = f"{prefix}data/{record.key}"
        if name not in names:
          raise _FileError(f"{path!r}: storage {record.key!r} has no entry {name!r}")
        size, itemsize = archive.getinfo(name).file_size, record.dtype.itemsize
        nbytes = record.numel * itemsize
        if size % itemsize or size != nbytes:
          raise _FileError(
              f"{path!r}: storage {record.key!r} holds {size} bytes, but the pickle declares "
              f"{record.numel} {record.dtype} elements ({nbytes} bytes); the file is corrupt or "
              "crafted, do not use it")
        data = archive.read(name)
        if len(data) != nbytes:
          raise _FileError(f"{path!r}: storage {record.key!r} is {len(data)} of {nbytes} bytes")
        return np.frombuffer(data, record.dtype.newbyteorder(">" if big_endian else "<"))

      return _state_dict(obj, path, storage_of)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
      raise _corrupt_zip(path, e) from e


def _load_torch_legacy(path: str) -> dict[str, np.ndarray]:
  """torch's legacy layout: pickles of the magic number, protocol, system info, the state dict
  and its storage keys, then per key an int64 element count and the elements."""
  with open(path, "rb") as f:
    if _unpickle(f, path) != _LEGACY_MAGIC:
      raise _FileError(f"{path!r} is neither a torch zip archive nor a legacy torch file "
                       "(no torch magic number)")
    version = _unpickle(f, path)
    if version != _LEGACY_PROTOCOL:
      raise _FileError(f"{path!r} has legacy torch protocol {_short(version)}, not "
                       f"{_LEGACY_PROTOCOL}")
    sys_info = _unpickle(f, path)
    order = ">" if isinstance(sys_info, dict) and sys_info.get("little_endian") is False else "<"
    records = {}
    obj = _unpickle(f, path, _storage_ids(records, legacy=True))
    keys = _unpickle(f, path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise _FileError(f"{path!r}: the storage key list is {_short(keys)}, not a list of names")
    file_size, storages = os.fstat(f.fileno()).st_size, {}
    for key in keys:
      record = records.get(key)
      if record is None or key in storages:
        raise _FileError(f"{path!r}: storage {key!r} of the key list is not declared by the "
                         "pickle or listed twice; the file is corrupt or crafted")
      head = f.read(8)
      numel = struct.unpack(f"{order}q", head)[0] if len(head) == 8 else None
      if numel != record.numel:
        raise _FileError(f"{path!r}: storage {key!r} has a record of {_short(numel)} elements, "
                         f"but the pickle declares {record.numel}; the file is truncated, "
                         "corrupt or crafted")
      nbytes = numel * record.dtype.itemsize
      if nbytes > file_size - f.tell():
        raise _FileError(f"{path!r}: storage {key!r} is shorter than its {nbytes} bytes (the "
                         "file ends early); download it again")
      data = f.read(nbytes)
      if len(data) != nbytes:
        raise _FileError(f"{path!r}: storage {key!r} is {len(data)} of {nbytes} bytes")
      storages[key] = np.frombuffer(data, record.dtype.newbyteorder(order))
    missing = sorted(set(records) - set(storages))
    if missing:
      raise _FileError(f"{path!r}: storages {missing[:5]} declared by the pickle have no data")
  return _state_dict(obj, path, lambda record: storages[record.key])


def _starts_like_zip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"PK"


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state dict (.pth, zip or legacy format) into numpy, without torch.

  Untrusted bytes: unpickled through `_WeightUnpickler`, every tensor checked against its
  storage; anything else raises WeightError naming the file.
  """
  return _load_torch_zip(path) if _starts_like_zip(path) else _load_torch_legacy(path)


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
  """Reads a .npz or a pickle of nested dicts of arrays (jax-fid's layout) into {"a/b/c": array}.

  The .npz is read without pickles; the pickle goes through `_WeightUnpickler`.
  """
  if _starts_like_zip(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
      raise _corrupt_zip(path, e) from e
    except Exception as e:  # Object arrays (pickles) refused by allow_pickle=False, bad headers.
      raise _FileError(f"{path!r} is not a readable .npz ({type(e).__name__}: {e})") from e
  with open(path, "rb") as f:
    tree = _unpickle(f, path)
  if not isinstance(tree, dict):
    raise _FileError(f"{path!r} holds a {type(tree).__name__}, not nested dicts of arrays")
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
