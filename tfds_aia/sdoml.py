"""AIA frames from an SDOML v2 zarr store (data.source = "sdoml"), local or on cloud storage.

    python -m tfds_aia.sdoml --config=configs/aia171.py --config.data.frame_px=512 \
        --config.data.sdoml_store=/data/sdomlv2.zarr --config.data.sdoml_start=2011-01-01 \
        --config.data.sdoml_end=2012-01-01 --config.data.manual_dir=/data/goes_xrs

Layout read here (docs/data.md, "SDOML v2 stores", gives the sources): a root group with one group
per year ("2011") holding one float32 array per AIA channel ("171A"), shape [frames, 512, 512],
chunked along the frames; the array's attributes hold one list per FITS header keyword with one
entry per frame (T_OBS, EXPTIME, QUALITY, DEG_COR, ...). Pixels are in DN/s (exposure-normalised)
and already corrected for degradation, so the build neither divides by EXPTIME nor applies
data.degradation_table; block sums to data.resolution, the clip and the stretch are those of FITS
frames (preprocess), with the store's frame size as data.frame_px.

A frame is named "<year>/<channel>A/<index>" (its array and its index there), in the skip
manifest too. Pixels are read a batch of frames per call, one zarr read per array, so only the
chunks that hold the selected frames are fetched; never a whole year. Free of TensorFlow: this runs
in the build's worker processes.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from tfds_aia import fits_io, preprocess
from tfds_aia.splits import to_unix_s

BATCH_FRAMES = 16  # Frames of one channel read per worker call (the public store's chunks: 15).
# Anonymous access to public buckets (the s3fs / gcsfs option that skips credentials).
ANONYMOUS = {"s3": {"anon": True}, "gs": {"token": "anon"}, "gcs": {"token": "anon"}}
_YEAR = re.compile(r"\d{4}")
FRAME_NAME = re.compile(r"\d{4}/\d+A(/\d+)?")  # A frame ("2011/171A/37") or an array ("2011/171A").


def is_url(path: str) -> bool:
  """Whether a path is an fsspec URL ("s3://...", "gs://...", "memory://...", "file://...")."""
  return "://" in str(path)


def storage_options(url: str) -> dict:
  """fsspec options for a store URL: anonymous access for s3:// and gs://, none otherwise."""
  return dict(ANONYMOUS.get(str(url).split("://", 1)[0], {})) if is_url(url) else {}


@functools.lru_cache(maxsize=4)
def open_store(store: str):
  """The root group of an SDOML store, read-only (one open per process and store)."""
  import zarr
  try:
    if is_url(store):
      return zarr.open_group(store, mode="r", storage_options=storage_options(store))
    return zarr.open_group(store, mode="r")
  except ImportError as e:  # s3fs / gcsfs missing for that URL scheme.
    raise ImportError(f"data.sdoml_store={store}: {e}; install the optional extra "
                      "`pip install .[cloud]` (s3fs, gcsfs) for s3:// and gs:// stores.") from e
  except Exception as e:
    raise FileNotFoundError(f"data.sdoml_store={store} is not a readable zarr group "
                            f"({type(e).__name__}: {e}); give the root of an SDOML v2 store "
                            "(the folder or URL that holds the year groups).") from e


def array_name(wavelength: int) -> str:
  return f"{int(wavelength)}A"


def frame_path(year: str, wavelength: int, index: int) -> str:
  return f"{year}/{array_name(wavelength)}/{int(index)}"


def split_frame_path(path: str) -> tuple[str, int]:
  """"2011/171A/37" -> ("2011/171A", 37)."""
  array, index = str(path).rsplit("/", 1)
  return array, int(index)


def _attribute(attrs, key: str, count: int, array: str) -> list:
  values = attrs.get(key)
  if values is None:
    return [None] * count
  if not isinstance(values, list | tuple) or len(values) != count:
    raise ValueError(f"SDOML array {array}: attribute {key} has "
                     f"{len(values) if isinstance(values, list | tuple) else 'no'} entries for "
                     f"{count} frames (one per frame expected).")
  return list(values)


def read_index(store: str, channels, start: str = "", end: str = ""
               ) -> tuple[list[fits_io.AiaHeader], list[tuple[str, str]], dict]:
  """The frames of `channels` in [start, end) from the arrays' attributes, without pixels:
  ([AiaHeader named by frame_path], [(frame or array, reason)], {array: frames per chunk}).

  Frames whose T_OBS or EXPTIME cannot be read are listed with the reason; a year without one
  of the channels is listed once per missing array (its frames of the other channels then find
  no partner, as in a FITS archive)."""
  root = open_store(store)
  lo = to_unix_s(start) if start else -np.inf
  hi = to_unix_s(end) if end else np.inf
  years = sorted(k for k in root.group_keys() if _YEAR.fullmatch(k))
  first = int(start[:4]) if start else -1
  last = int(end[:4]) if end else 10**4
  years = [y for y in years if first <= int(y) <= last]
  if not years:
    raise FileNotFoundError(f"data.sdoml_store={store} has no year groups for "
                            f"{start or 'the start'} to {end or 'the end'} (found "
                            f"{sorted(root.group_keys())}).")
  headers, skips, chunks = [], [], {}
  for year in years:
    group = root[year]
    names = set(group.array_keys())
    for w in channels:
      name = array_name(w)
      if name not in names:
        skips.append((f"{year}/{name}", f"no {name} array in the year group {year}"))
        continue
      array = group[name]
      count = int(array.shape[0])
      chunks[f"{year}/{name}"] = int(array.chunks[0])
      attrs = dict(array.attrs)
      t_obs = _attribute(attrs, "T_OBS", count, f"{year}/{name}")
      date_obs = _attribute(attrs, "DATE-OBS", count, f"{year}/{name}")
      exptime = _attribute(attrs, "EXPTIME", count, f"{year}/{name}")
      quality = _attribute(attrs, "QUALITY", count, f"{year}/{name}")
      shape = tuple(int(s) for s in array.shape[1:])
      for i in range(count):
        path = frame_path(year, w, i)
        stamp = t_obs[i] or date_obs[i]
        try:
          time_unix_s = fits_io.parse_time(stamp)
        except (TypeError, ValueError):
          skips.append((path, f"unreadable observation time T_OBS={stamp!r}"))
          continue
        if not lo <= time_unix_s < hi:
          continue
        try:
          exptime_s = float(exptime[i])
        except (TypeError, ValueError):
          skips.append((path, f"unreadable EXPTIME {exptime[i]!r}"))
          continue
        headers.append(fits_io.AiaHeader(
            path=path, wavelength=int(w), time_unix_s=time_unix_s, exptime_s=exptime_s,
            quality=int(quality[i] or 0), shape=shape))
  return headers, skips, chunks


def select_cadence(headers, wavelength: int, cadence_minutes: float, start: str = ""):
  """The frames of one channel nearest to each step of a time grid of `cadence_minutes` (from
  `start`, else the first frame's day) that has one within half a step, each frame at most
  once; every frame when cadence <= 0.
  Frames of the other channels are kept (grouping picks each one's nearest frame)."""
  frames = sorted((h for h in headers if h.wavelength == wavelength), key=lambda h: h.time_unix_s)
  others = [h for h in headers if h.wavelength != wavelength]
  if cadence_minutes <= 0 or not frames:
    return frames + others
  step = float(cadence_minutes) * 60.0
  times = np.array([h.time_unix_s for h in frames])
  origin = to_unix_s(start) if start else np.floor(times[0] / 86400.0) * 86400.0
  grid = origin + step * np.arange(np.floor((times[0] - origin) / step),
                                   np.floor((times[-1] - origin) / step) + 2)
  i = np.clip(np.searchsorted(times, grid), 1, len(times) - 1)
  nearest = np.where(np.abs(times[i - 1] - grid) <= np.abs(times[i] - grid), i - 1, i)
  near = np.abs(times[nearest] - grid) <= step / 2
  return [frames[k] for k in sorted(set(nearest[near].tolist()))] + others


def plane(data: np.ndarray, header: fits_io.AiaHeader, ceiling: float, checks: dict,
          settings: dict, resolution: int) -> np.ndarray:
  """One stored frame [H, W] in DN/s -> [R, R] in [-1, 1]: the FITS path's checks (non-finite
  pixels above data.max_nan_fraction, preprocess.pixel_problem) and preprocess_channel with no
  exposure division and no degradation factor (both already applied in the store). Raises
  BadFileError naming the frame."""
  data = np.asarray(data, np.float32)
  bad = ~np.isfinite(data)
  if bad.any():
    fraction = float(bad.mean())
    if fraction > settings["max_nan_fraction"]:
      raise fits_io.BadFileError(header.path, f"{bad.sum()} NaN/inf pixels ({fraction:.2%} of "
                                 "the image)")
  problem = preprocess.pixel_problem(data, exptime_s=header.exptime_s,
                                     wavelength=header.wavelength, **checks)
  if problem:
    raise fits_io.BadFileError(header.path, problem)
  data = np.where(bad, np.float32(0.0), data)
  return preprocess.preprocess_channel(
      data, 1.0, resolution=resolution, dn_ceiling=ceiling,
      downsample_method=settings["downsample"], stretch=settings["stretch"],
      asinh_a=settings["asinh_a"], degradation=1.0)


def read_planes(store: str, paths) -> dict:
  """{frame path: [H, W] float32 or the reason it cannot be read}: one zarr read per array, of
  the frames asked for only (so only their chunks are fetched)."""
  root = open_store(store)
  by_array: dict[str, list[int]] = {}
  for path in paths:
    array, index = split_frame_path(path)
    by_array.setdefault(array, []).append(index)
  out = {}
  for array, indices in by_array.items():
    indices = sorted(set(indices))
    try:
      block = np.asarray(root[array].oindex[indices], np.float32)
    except Exception as e:  # Damaged or missing chunks: each frame of the read gets the reason.
      reason = f"unreadable SDOML chunk of {array} ({type(e).__name__}: {e})"
      out.update({f"{array}/{i}": reason for i in indices})
      continue
    out.update({f"{array}/{i}": block[k] for k, i in enumerate(indices)})
  return out


def preprocess_batch(batch, store: str, settings: dict, resolution: int):
  """[(image [R, R, C] or None, skip records [(frame, reason)], (), kept headers or None)] for a
  batch of groups (members: per channel a list with the frame's header), in batch order: the
  shape of frames.preprocess_frame's result (no files decoded: the build cache is not used)."""
  from tfds_aia import frames  # pixel_checks, shared with the FITS path.
  planes = read_planes(store, [copies[0].path for members in batch for copies in members])
  n = max(len(members) for members in batch) if batch else 0
  ceilings = np.broadcast_to(np.asarray(settings["dn_ceiling"], np.float64), (n,))
  results = []
  for members in batch:
    images, skips = [], []
    for channel, copies in enumerate(members):
      header = copies[0]
      data = planes[header.path]
      try:
        if isinstance(data, str):
          raise fits_io.BadFileError(header.path, data)
        images.append(plane(data, header, float(ceilings[channel]),
                            frames.pixel_checks(settings, channel), settings, resolution))
      except fits_io.BadFileError as e:
        skips.append((e.path, e.reason))
        break
    if skips:
      results.append((None, skips, (), None))
    else:
      results.append((np.stack(images, axis=-1), [], (), [c[0] for c in members]))
  return results
