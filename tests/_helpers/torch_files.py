"""torch .pth files written without torch, in both of its layouts, exactly as the file says.

The pickles are written opcode by opcode from plain stand-ins (`Global`, `Call`, `Build`,
`PersistentId`), so a test can put any global, persistent id, offset, size or stride into a file:
legitimate ones to check loading, crafted ones to check that they are refused.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_TYPES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                 np.dtype(np.int64): "LongStorage", np.dtype(np.uint8): "ByteStorage"}


class Global:
  """module.name, written as a GLOBAL opcode (the module need not exist here)."""

  def __init__(self, module, name):
    self.module, self.name = module, name


class Call:
  """func(*args), written as REDUCE."""

  def __init__(self, func, *args):
    self.func, self.args = func, args


class PersistentId:
  """A persistent id (torch's storage reference), written as BINPERSID."""

  def __init__(self, *fields):
    self.fields = fields


class Build:
  """`obj` with its state set to `state`, written as BUILD."""

  def __init__(self, obj, state):
    self.obj, self.state = obj, state


class _Writer(pickle._Pickler):  # The pure-Python pickler: its type table can be extended.
  dispatch = dict(pickle._Pickler.dispatch)

  def persistent_id(self, obj):
    return obj.fields if isinstance(obj, PersistentId) else None

  def _save_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  def _save_call(self, obj):
    self.save(obj.func)
    self.save(tuple(obj.args))
    self.write(pickle.REDUCE)

  def _save_build(self, obj):
    self.save(obj.obj)
    self.save(obj.state)
    self.write(pickle.BUILD)

  dispatch[Global] = _save_global
  dispatch[Build] = _save_build
  dispatch[Call] = _save_call


def dumps(obj, protocol=2) -> bytes:
  buf = io.BytesIO()
  _Writer(buf, protocol=protocol).dump(obj)
  return buf.getvalue()


def tensor(key, numel, offset, size, stride, storage="FloatStorage", legacy=False):
  """torch._utils._rebuild_tensor_v2 of storage `key` as torch.save writes it."""
  pid = ("storage", Global("torch", storage), key, "cpu", numel) + ((None,) if legacy else ())
  return Call(Global("torch._utils", "_rebuild_tensor_v2"), PersistentId(*pid), offset,
              tuple(size), tuple(stride), False, collections.OrderedDict())


def contiguous(key, array, legacy=False):
  """A tensor of `array`'s shape over a storage holding exactly its elements."""
  shape = array.shape
  stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
  return tensor(key, array.size, 0, shape, stride, STORAGE_TYPES[array.dtype], legacy)


def write_zip(path, obj, storages, prefix="archive"):
  """torch.save's zip layout: data.pkl, data/<key> (raw bytes), version, byteorder."""
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr(f"{prefix}/data.pkl", dumps(obj))
    for key, data in storages.items():
      zf.writestr(f"{prefix}/data/{key}", bytes(data))
    zf.writestr(f"{prefix}/version", "3\n")
    zf.writestr(f"{prefix}/byteorder", "little")


def write_legacy(path, obj, storages, sys_info=None, keys=None):
  """torch's legacy layout: pickles of magic, protocol, system info, `obj` and the storage keys,
  then per key an int64 element count and the bytes. storages: {key: (numel, bytes)}."""
  sys_info = sys_info or {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 8}}
  keys = sorted(storages) if keys is None else keys
  with open(path, "wb") as f:
    for part in (LEGACY_MAGIC, LEGACY_PROTOCOL, sys_info, obj, keys):
      f.write(dumps(part))
    for key in sorted(storages):
      numel, data = storages[key]
      f.write(struct.pack("<q", numel) + bytes(data))


def write_state_dict(path, arrays, legacy=False):
  """A legitimate .pth of {name: array} (one contiguous storage per tensor)."""
  obj = collections.OrderedDict(
      (name, contiguous(str(i), a, legacy)) for i, (name, a) in enumerate(arrays.items()))
  if legacy:
    write_legacy(path, obj, {str(i): (a.size, a.tobytes()) for i, a in enumerate(arrays.values())})
  else:
    write_zip(path, obj, {str(i): a.tobytes() for i, a in enumerate(arrays.values())})
