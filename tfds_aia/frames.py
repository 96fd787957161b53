"""The units of work of the build, the same in one process, the process pool and Apache Beam:
one file's header (`read_header`) and one dataset frame from its FITS files (`preprocess_frame`),
both through the build cache (tfds_aia.cache) when a cache folder is given.

Kept free of TensorFlow so that worker processes start quickly. Errors are returned as
(path, reason), not raised, so that they cross process boundaries unchanged; paths are the files'
own (the builder writes them relative to manual_dir).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
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


def pixel_checks(settings: dict, channel: int) -> dict:
  """The keyword arguments of preprocess.pixel_problem for one channel (its index in the frame)
  from the build settings (missing ones take preprocess.PIXEL_CHECK_DEFAULTS)."""
  s = {**preprocess.PIXEL_CHECK_DEFAULTS, **settings}
  per_channel = np.asarray(s["max_disc_median_dn_s"], np.float64).reshape(-1)
  return dict(pixel_floor_dn_s=float(s["pixel_floor_dn_s"]),
              saturation_dn=float(s["saturation_dn"]),
              max_disc_median_dn_s=float(per_channel[min(channel, len(per_channel) - 1)]),
              min_finite_disc_fraction=float(s["min_finite_disc_fraction"]))


def plane_fingerprint(settings: dict, resolution: int, ceiling: float, checks: dict) -> str:
  """cache.plane_fingerprint with the pixel checks: a plane cached by a build without them (or
  with other thresholds) is decoded and checked again, not reused."""
  return cache.settings_fingerprint({
      "plane": cache.plane_fingerprint(settings, resolution, ceiling), "pixel_checks": checks})


def _decode_plane(header, raw: bytes | None, ceiling: float, checks: dict, settings: dict,
                  resolution: int, cache_dir: str, key: str | None) -> np.ndarray:
  """One channel [R, R] in [-1, 1] from its FITS bytes; raises BadFileError. Content errors
  (unreadable data, NaNs, shape, pixel checks) are cached with the key; registration errors are
  not (they depend on the installed aiapy, not on the file)."""
  try:
    if raw is None:
      raw = fits_io.read_bytes(header.path)
    data = fits_io.read_data(header.path, settings["max_nan_fraction"], raw=raw,
                             fill_nonfinite=False)
    if data.shape != header.shape:
      raise fits_io.BadFileError(header.path, f"data shape {data.shape} != header {header.shape}")
    # After exposure normalisation, before anything that clips or averages: in DN/s per pixel.
    problem = preprocess.pixel_problem(data / np.float32(header.exptime_s),
                                       exptime_s=header.exptime_s, wavelength=header.wavelength,
                                       **checks)
    if problem:
      raise fits_io.BadFileError(header.path, problem)
  except fits_io.BadFileError as e:
    if key:
      cache.store_plane(cache_dir, key, reason=e.reason)
    raise
  data[~np.isfinite(data)] = 0.0  # Below data.max_nan_fraction: set to 0 (read_data's rule).
  if settings["register"]:
    data = fits_io.register_level15(header.path, data)
  table = degradation_table(settings["degradation_table"])
  try:
    factor = preprocess.degradation_factor(table, header.wavelength, header.time_unix_s)
  except ValueError as e:  # No entry for this channel or time: this frame cannot be corrected.
    raise fits_io.BadFileError(
        header.path, f"data.degradation_table {os.path.basename(settings['degradation_table'])}: "
        f"{fits_io.describe(e, settings['degradation_table'])}") from e
  plane = preprocess.preprocess_channel(
      data, header.exptime_s, resolution=resolution, dn_ceiling=ceiling,
      downsample_method=settings["downsample"], stretch=settings["stretch"],
      asinh_a=settings["asinh_a"], degradation=factor)
  if key:
    cache.store_plane(cache_dir, key, plane)
  return plane


def _channel_plane(header, ceiling: float, checks: dict, settings: dict, resolution: int,
                   cache_dir: str, decoded: list) -> np.ndarray:
  """One channel of one file: from the cache when there, else decoded (its name appended to
  `decoded`); raises BadFileError."""
  raw, key = None, None
  if cache_dir:
    entry = cache.load_file_entry(cache_dir, header.path)
    if "sha256" not in entry:
      raw = fits_io.read_bytes(header.path)
      entry = {**entry, "sha256": cache.sha256_bytes(raw)}
      cache.store_file_entry(cache_dir, header.path, entry)
    key = cache.plane_key(entry["sha256"],
                          plane_fingerprint(settings, resolution, ceiling, checks))
    cached = cache.load_plane(cache_dir, key)
    if cached is not None:
      if cached[1] is not None:
        raise fits_io.BadFileError(header.path, cached[1])
      return cached[0]
  decoded.append(os.path.basename(header.path))
  return _decode_plane(header, raw, ceiling, checks, settings, resolution, cache_dir, key)


def _iso(t: float) -> str:
  return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def preprocess_frame(candidates, settings: dict, resolution: int, cache_dir: str = ""):
  """One dataset frame from its files: (image [R, R, C] float32 in [-1, 1] or None, skip records
  [(path, reason)], names of the files decoded, the header kept per channel or None).

  `candidates` holds, per channel, the headers of the copies of that channel's frame (files with
  the same observation time), in order of preference. The first copy that decodes and passes
  every check is kept; the copies tried before it and failed, and those after it, are recorded as
  duplicates of it, so a damaged copy that sorts first does not lose the frame. When no copy of a
  channel is usable, each copy is recorded with its own reason and the frame is left out.

  With a cache folder, a channel whose file bytes and settings were preprocessed before is loaded,
  not decoded (and the file is not opened when unchanged since it was hashed).
  """
  n = len(candidates)
  ceilings = np.broadcast_to(np.asarray(settings["dn_ceiling"], np.float64), (n,))
  planes, skips, decoded, kept = [], [], [], []
  for channel, (copies, ceiling) in enumerate(zip(candidates, ceilings, strict=True)):
    checks = pixel_checks(settings, channel)
    failed = []
    for i, header in enumerate(copies):
      try:
        plane = _channel_plane(header, float(ceiling), checks, settings, resolution, cache_dir,
                               decoded)
      except fits_io.BadFileError as e:
        failed.append((e.path, e.reason))
        continue
      planes.append(plane)
      kept.append(header)
      what = f"the same {header.wavelength} A frame of {_iso(header.time_unix_s)}"
      skips += [(path, f"duplicate of {header.path} ({what}); this copy is unusable: {reason}")
                for path, reason in failed]
      skips += [(other.path, f"duplicate of {header.path} ({what})") for other in copies[i + 1:]]
      break
    else:
      return None, skips + failed, tuple(decoded), None
  return np.stack(planes, axis=-1), skips, tuple(decoded), kept
