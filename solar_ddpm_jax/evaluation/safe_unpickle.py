"""The allow-list unpickler of weight files: a pickle in a weight file is untrusted data.

`WeightUnpickler` builds only containers, numeric numpy arrays and torch tensor records
(`TensorRecord`, read later by `torch_pth` after its view is checked against its storage) and
refuses any other global, so a file cannot run code. `unpickle` names the file in every refusal.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import pickle

import numpy as np

from solar_ddpm_jax.evaluation.weight_files import FileError

_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what a weight can hold.


def is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def short(x, limit: int = 120) -> str:
  text = repr(x)
  return text if len(text) <= limit else text[:limit] + "..."


class Refused(Exception):
  """A pickle asks for something a weight file never needs; `unpickle` names the file."""


class Marker:
  """A class a pickle may name only as an argument (numpy.ndarray, torch.FloatStorage, ...).

  Not callable, so a pickle cannot use the real class's constructor on its own arguments.
  """

  __slots__ = ("name",)

  def __init__(self, name: str):
    self.name = name

  def __repr__(self):
    return self.name


_NDARRAY = Marker("numpy.ndarray")


def _numeric_dtype(dtype) -> np.dtype:
  if (not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS
      or dtype.fields is not None or dtype.subdtype is not None):
    raise Refused(f"array dtype {short(dtype)} is not a plain numeric type")
  return dtype


def _np_dtype(spec, align=False, copy=True):
  """numpy.dtype as numpy's pickles call it ("f4", False, True): numeric types, always a copy
  (a BUILD on the copy must never change numpy's shared float32 dtype)."""
  del align, copy
  if not isinstance(spec, str):
    raise Refused(f"dtype {short(spec)} is not given by its type code")
  try:
    dtype = np.dtype(spec, False, True)
  except TypeError as e:
    raise Refused(f"dtype {short(spec)} is not a numpy type code") from e
  return _numeric_dtype(dtype)


def _set_dtype_state(dtype, state) -> None:
  """BUILD of a dtype: only the byte order may differ from the type code's defaults."""
  if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
          and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
          and state[5:7] in ((-1, -1), (dtype.itemsize, dtype.alignment))
          and state[7] == dtype.flags):
    raise Refused(f"dtype state {short(state)} is not that of a plain numeric type")
  dtype.__setstate__(state)
  _numeric_dtype(dtype)


def _np_reconstruct(subtype, shape, dtype):
  """numpy.core.multiarray._reconstruct: an empty ndarray that the following BUILD fills."""
  del shape, dtype  # numpy passes (0,) and b"b"; the BUILD state sets both.
  if subtype is not _NDARRAY:
    raise Refused(f"array subtype {short(subtype)} is not numpy.ndarray")
  return np.empty((0,), np.int8)


def _set_array_state(array: np.ndarray, state) -> None:
  """BUILD of an ndarray: (1, shape, dtype, is_fortran, raw bytes) of exactly that many bytes."""
  if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1
          and isinstance(state[1], tuple) and all(is_int(s) and s >= 0 for s in state[1])
          and isinstance(state[2], np.dtype) and state[3] in (0, 1)
          and isinstance(state[4], (bytes, bytearray))):
    raise Refused(f"array state {short(state)} is not (1, shape, dtype, fortran, bytes)")
  _, shape, dtype, _, data = state
  nbytes = _numeric_dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
  if len(data) != nbytes:
    raise Refused(f"array of shape {shape} and dtype {dtype} holds {len(data)} bytes, "
                  f"not {nbytes}")
  array.__setstate__(state)


def _np_frombuffer(buf, dtype, shape, order):
  """numpy.core.numeric._frombuffer (protocol 5 arrays), with its sizes checked."""
  if not (isinstance(buf, (bytes, bytearray)) and isinstance(shape, tuple)
          and all(is_int(s) and s >= 0 for s in shape) and order in ("C", "F")):
    raise Refused("protocol-5 array arguments are not (bytes, dtype, shape, order)")
  nbytes = _numeric_dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
  if len(buf) != nbytes:
    raise Refused(f"array of shape {shape} and dtype {dtype} holds {len(buf)} bytes, "
                  f"not {nbytes}")
  return np.frombuffer(buf, dtype).reshape(shape, order=order)


def _np_scalar(dtype, data=None):
  """numpy.core.multiarray.scalar: a numeric scalar from exactly itemsize bytes."""
  if not isinstance(data, bytes) or len(data) != _numeric_dtype(dtype).itemsize:
    raise Refused(f"scalar of dtype {short(dtype)} does not hold exactly its itemsize in bytes")
  return np.frombuffer(data, dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
  """_codecs.encode as protocol 0-2 pickles write bytes: latin-1 text only."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise Refused(f"_codecs.encode with {short(encoding)} (only latin-1 bytes are allowed)")
  return text.encode("latin-1")


def _bytes(*args):
  """builtins.bytes as protocol 0-2 pickles write b"": no arguments."""
  if args:
    raise Refused("builtins.bytes with arguments")
  return b""


def _bytearray(*args):
  """builtins.bytearray as pickles write it: (), (bytes,) or (latin-1 text, "latin-1")."""
  if not args:
    return bytearray()
  if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
    return bytearray(args[0])
  return bytearray(_codecs_encode(*args))


# torch storage types (the element types of its state dicts); None: no numpy equivalent here.
TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": None,
}


@dataclasses.dataclass(frozen=True)
class StorageRecord:
  """A storage a torch pickle refers to: its key, element type and element count."""
  key: str
  dtype: np.dtype
  numel: int


class TensorRecord:
  """A tensor of a torch pickle: read from its storage only after its view is checked."""

  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 (and _rebuild_tensor): recorded, checked when read."""
  del unused  # requires_grad, backward hooks, metadata.
  return TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter: an nn.Parameter is its tensor."""
  del unused
  if not isinstance(data, TensorRecord):
    raise Refused(f"torch parameter of {short(data)}, not of a tensor")
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
    **{("torch", name): Marker(f"torch.{name}") for name in TORCH_DTYPES},
}
# Classes a pickle may create with NEWOBJ (cls.__new__(cls, *args)).
_CONTAINERS = (collections.OrderedDict, dict, list, tuple, set, frozenset)


# The pure-Python unpickler: its opcode table can be narrowed (the C one cannot).
class WeightUnpickler(pickle._Unpickler):
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
      raise Refused(f"refused global {module}.{name} (a weight file may only hold containers, "
                    "numeric arrays and torch tensors: this is not a published weight file, do "
                    "not use it)")
    return found

  def persistent_load(self, pid):
    if self._persistent_load is None:
      raise Refused(f"refused persistent id {short(pid)}: this format has none")
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
      raise Refused(f"refused to set the state of a {type(inst).__name__}")

  def _new(self, cls, args, kwargs):
    if not any(cls is c for c in _CONTAINERS) or not isinstance(args, tuple) or kwargs:
      raise Refused(f"refused to create a {short(cls)} object")
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


def unpickle(file, path: str, persistent_load=None):
  """The next pickle of `file` through `WeightUnpickler`; any refusal or error names `path`."""
  try:
    return WeightUnpickler(file, persistent_load).load()
  except Refused as e:
    raise FileError(f"{path!r}: {e}; nothing in the file was run") from None
  except KeyError as e:  # The pure-Python unpickler's word for an unknown opcode.
    code = e.args[0] if e.args else None
    load_key = bytes([code]) if isinstance(code, int) and 0 <= code < 256 else code
    raise FileError(f"{path!r} is not a pickle (invalid load key {load_key!r})") from None
  except Exception as e:  # Truncated, corrupt or another format: unpickling errors alike.
    raise FileError(f"{path!r} is not a readable pickle ({type(e).__name__}: {e})") from e
