"""The units of work of the build, the same in one process, the process pool and Apache Beam:
one file's header (`read_header`) and one dataset frame from its FITS files (`preprocess_frame`),
both through the build cache (tfds_aia.cache) when a cache folder is given.

Kept free of TensorFlow so that worker processes start quickly. Errors are returned as
(path, reason), not raised, so that they cross process boundaries unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from tfds_aia import cache, fits_io, preprocess


@functools.lru_cache(maxsize=4)
def degradation_table(path: str):
  """preprocess.load_degradation_table(path), read once per process; None for no path."""
  return preprocess.load_degradation_table(path) if path else None


def read_header(path: str, cache_dir: str = ""
                ) -> tuple[fits_io.AiaHeader | None, tuple[str, str] | None]:
  """(header, None) or (None, (path, reason)); from the cache when the file is unchanged."""
  entry = cache.load_file_entry(cache_dir, path)
  if entry.get("header_version") != cache.HEADER_VERSION:  # Read by another header reader.
    entry = {k: v for k, v in entry.items() if k not in ("header", "error")}
  if "header" not in entry and "error" not in entry:
    try:
      fields = dataclasses.asdict(fits_io.read_header(path))
      del fields["path"]
      entry = {**entry, "header": fields}
    except fits_io.BadFileError as e:
      entry = {**entry, "error": e.reason}
    entry["header_version"] = cache.HEADER_VERSION
    cache.store_file_entry(cache_dir, path, entry)
  if "error" in entry:
    return None, (str(path), entry["error"])
  fields = entry["header"]
  return fits_io.AiaHeader(path=str(path), **{**fields, "shape": tuple(fields["shape"])}), None


def _decode_plane(header, raw: bytes | None, ceiling: float, settings: dict, resolution: int,
                  cache_dir: str, key: str | None) -> np.ndarray:
  """One channel [R, R] in [-1, 1] from its FITS bytes; raises BadFileError. Content errors
  (unreadable data, NaNs, shape) are cached with the key; registration errors are not (they
  depend on the installed aiapy, not on the file)."""
  try:
    if raw is None:
      raw = fits_io.read_bytes(header.path)
    data = fits_io.read_data(header.path, settings["max_nan_fraction"], raw=raw)
    if data.shape != header.shape:
      raise fits_io.BadFileError(header.path, f"data shape {data.shape} != header {header.shape}")
  except fits_io.BadFileError as e:
    if key:
      cache.store_plane(cache_dir, key, reason=e.reason)
    raise
  if settings["register"]:
    data = fits_io.register_level15(header.path, data)
  table = degradation_table(settings["degradation_table"])
  try:
    factor = preprocess.degradation_factor(table, header.wavelength, header.time_unix_s)
  except ValueError as e:  # No entry for this channel or time: this frame cannot be corrected.
    raise fits_io.BadFileError(
        header.path, f"degradation table {settings['degradation_table']}: {e}") from e
  plane = preprocess.preprocess_channel(
      data, header.exptime_s, resolution=resolution, dn_ceiling=ceiling,
      downsample_method=settings["downsample"], stretch=settings["stretch"],
      asinh_a=settings["asinh_a"], degradation=factor)
  if key:
    cache.store_plane(cache_dir, key, plane)
  return plane


def preprocess_frame(members, settings: dict, resolution: int, cache_dir: str = ""):
  """(image [R, R, C] float32 in [-1, 1] or None, (path, reason) or None, names of the files
  decoded) from one header per channel. With a cache folder, a channel whose file bytes and
  settings were preprocessed before is loaded, not decoded (and the file is not opened when
  unchanged since it was hashed)."""
  ceilings = np.broadcast_to(np.asarray(settings["dn_ceiling"], np.float64), (len(members),))
  planes, decoded = [], []
  for header, ceiling in zip(members, ceilings, strict=True):
    raw, key = None, None
    try:
      if cache_dir:
        entry = cache.load_file_entry(cache_dir, header.path)
        if "sha256" not in entry:
          raw = fits_io.read_bytes(header.path)
          entry = {**entry, "sha256": cache.sha256_bytes(raw)}
          cache.store_file_entry(cache_dir, header.path, entry)
        key = cache.plane_key(entry["sha256"],
                              cache.plane_fingerprint(settings, resolution, ceiling))
        cached = cache.load_plane(cache_dir, key)
        if cached is not None:
          if cached[1] is not None:
            raise fits_io.BadFileError(header.path, cached[1])
          planes.append(cached[0])
          continue
      decoded.append(os.path.basename(header.path))
      planes.append(_decode_plane(header, raw, ceiling, settings, resolution, cache_dir, key))
    except fits_io.BadFileError as e:
      return None, (e.path, e.reason), tuple(decoded)
  return np.stack(planes, axis=-1), None, tuple(decoded)
