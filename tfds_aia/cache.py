"""The build cache: what a rebuild needs to skip FITS files it has already read.

Two content-addressed stores under one folder (the builder's default: <data_dir>/aia_flares_cache):
  files/<ab>/<stat key>.json    one per FITS file, keyed by (absolute path, size, mtime): its header
                                fields (or why the header is unusable) and the sha256 of its bytes,
                                so an unchanged file is not opened again, not even for its header;
  planes/<ab>/<plane key>.npy   one preprocessed channel [R, R] float32 (.txt: why it is unusable),
                                keyed by the sha256 of the file bytes and the fingerprint of the
                                preprocessing settings of that channel (`plane_fingerprint`).
Adding files to an archive thus decodes only the new ones; a renamed or touched file costs one
read (its hash), not a decode. Like make or rsync, a file rewritten with the same size and mtime is
taken as unchanged: give another cache folder to start afresh. Entries are written atomically
(temporary file + rename), so processes on one machine or a cluster's shared file system may fill
the cache at the same time. Free of TensorFlow: this runs in the build's worker processes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile

import numpy as np

CACHE_VERSION = 1  # Part of every plane key: bump when preprocessing changes its output bytes.
# Of the header fields kept per file: bump when reading a header changes (2: leap seconds, TAI).
HEADER_VERSION = 2
DISABLED = "off"  # cache_dir value that turns the cache off.


def settings_fingerprint(settings: dict) -> str:
  """Short hash of settings (sorted JSON): the same settings, the same fingerprint."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def sha256_bytes(raw: bytes) -> str:
  return hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=8)
def sha256_file(path: str) -> str:
  """sha256 of a small file that several keys depend on (the degradation table); "" for none."""
  if not path:
    return ""
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def plane_fingerprint(settings: dict, resolution: int, dn_ceiling: float) -> str:
  """Fingerprint of everything besides the file bytes that one preprocessed channel depends on."""
  return settings_fingerprint({
      "cache_version": CACHE_VERSION, "resolution": int(resolution),
      "dn_ceiling": float(dn_ceiling), "downsample": settings["downsample"],
      "stretch": settings["stretch"], "asinh_a": float(settings["asinh_a"]),
      "register": bool(settings["register"]),
      "max_nan_fraction": float(settings["max_nan_fraction"]),
      "degradation_table": sha256_file(settings["degradation_table"])})


def _entry_path(cache_dir: str, kind: str, key: str, suffix: str) -> str:
  return os.path.join(cache_dir, kind, key[:2], key + suffix)


def _write_atomic(path: str, write) -> None:
  """write(file) into a temporary file beside `path`, then rename it to `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _stat_key(path: str) -> str | None:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return sha256_bytes(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())


def load_file_entry(cache_dir: str, path: str) -> dict:
  """What the cache knows of this file as it is now ({} when nothing, or the file changed)."""
  key = _stat_key(path)
  if not cache_dir or key is None:
    return {}
  try:
    with open(_entry_path(cache_dir, "files", key, ".json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def store_file_entry(cache_dir: str, path: str, entry: dict) -> None:
  key = _stat_key(path)
  if cache_dir and key is not None:
    text = json.dumps(entry, sort_keys=True).encode()
    _write_atomic(_entry_path(cache_dir, "files", key, ".json"), lambda f: f.write(text))


def plane_key(file_sha256: str, fingerprint: str) -> str:
  return sha256_bytes(f"{file_sha256}\0{fingerprint}".encode())


def load_plane(cache_dir: str, key: str) -> tuple[np.ndarray | None, str | None] | None:
  """(plane, None) or (None, reason unusable) when cached, else None."""
  base = _entry_path(cache_dir, "planes", key, "")
  try:
    return np.load(base + ".npy", allow_pickle=False), None
  except (OSError, ValueError):
    pass
  try:
    with open(base + ".txt") as f:
      return None, f.read()
  except OSError:
    return None


def store_plane(cache_dir: str, key: str, plane: np.ndarray | None = None,
                reason: str | None = None) -> None:
  """Stores a preprocessed plane, or the reason its file cannot be used."""
  if plane is not None:
    _write_atomic(_entry_path(cache_dir, "planes", key, ".npy"),
                  lambda f: np.save(f, plane, allow_pickle=False))
  else:
    _write_atomic(_entry_path(cache_dir, "planes", key, ".txt"), lambda f: f.write(reason.encode()))
