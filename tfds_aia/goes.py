"""GOES XRS 1-8 A fluxes -> flare class labels, with an explicit flux scaling policy.

Scaling policy (config.data.goes_scaling), applied to every file by what its data are:
  | data                                          | native   | "science"  | "noaa_0.7" |
  | GOES <= 15 NOAA operational: go15YYYYMMDD.fits | noaa_0.7 | flux / 0.7 | flux       |
  |   and the old g15_xrs_*.nc netCDF             |          |            |            |
  | science L2 netCDF (sci_gxrs-l2-*, sci_xrsf-l2-*: | science  | flux       | flux * 0.7 |
  |   reprocessed GOES 1-15 and GOES-16+)         |          |            |            |
Classes: A, B, C, M, X start at 1e-8, 1e-7, 1e-6, 1e-5, 1e-4 W/m^2; sub-class = flux / class base
(M2.5 = 2.5e-5 W/m^2). Fluxes below 1e-8 are A with a sub-class below 1; X has no upper end (X20).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re

import numpy as np

from tfds_aia import FLARE_CLASSES

CLASS_BASES_W_M2 = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)  # Flux at which A, B, C, M, X start.
NOAA_SCALING = 0.7  # Old NOAA GOES <= 15 fluxes = 0.7 x the true (science) flux.
POLICIES = ("science", "noaa_0.7")
COVERAGE_BIN_S = 600.0  # Forecast-window coverage counts 10-minute intervals with GOES data.


class GoesGapError(ValueError):
  """No valid GOES flux within the tolerance of a time."""


def flux_to_class(flux_w_m2):
  """Flux (W/m^2) -> (class index 0..4 int32, sub-class float64): 2.5e-5 -> (3, 2.5)."""
  flux = np.asarray(flux_w_m2, np.float64)
  index = np.searchsorted(np.asarray(CLASS_BASES_W_M2[1:]), flux, side="right").astype(np.int32)
  subclass = flux / np.asarray(CLASS_BASES_W_M2)[index]
  return index, subclass


def class_name(flux_w_m2: float) -> str:
  """Flux -> the usual name, e.g. 2.5e-5 -> "M2.5"."""
  index, subclass = flux_to_class(flux_w_m2)
  return f"{FLARE_CLASSES[int(index)]}{float(subclass):.3g}"


def class_index(name: str) -> int:
  """"M2.5" or "M" -> 3."""
  return FLARE_CLASSES.index(name.strip()[0].upper())


def class_to_flux(name: str) -> float:
  """"M2.5" -> 2.5e-5 W/m^2 (the class base when no sub-class is given)."""
  name = name.strip()
  base = CLASS_BASES_W_M2[class_index(name)]
  return base * float(name[1:]) if len(name) > 1 else base


@dataclasses.dataclass
class GoesFlux:
  """Valid 1-8 A fluxes on the policy's scale, sorted by time."""
  time_unix_s: np.ndarray  # [N] float64
  flux_w_m2: np.ndarray  # [N] float64, already scaled by `policy`
  satellite: np.ndarray  # [N] str, e.g. "GOES-15"
  policy: str

  def __len__(self):
    return len(self.time_unix_s)

  @functools.cached_property
  def coverage_bins(self) -> np.ndarray:
    """Sorted indices of the COVERAGE_BIN_S intervals that hold a sample (window_coverage)."""
    return np.unique(np.floor(self.time_unix_s / COVERAGE_BIN_S))


def _trailing_number(text) -> int | None:
  """The number a satellite name ends with ("GOES-15" -> 15), or None."""
  m = re.search(r"(\d+)\s*$", str(text))
  return int(m.group(1)) if m else None


def native_scale(meta: dict, filename: str, satellite: str = "") -> str:
  """"science" for reprocessed L2 science data and GOES-16+, "noaa_0.7" for old operational data.

  GOES-16 and later never carried the 0.7 factor, operational files (OR_XRSF-L1b_G16_...)
  included, so the satellite number decides first where the file names one.
  """
  name = os.path.basename(filename).lower()
  number = _trailing_number(satellite or meta.get("platform", "") or "")
  if number is None:
    in_name = re.search(r"_g(\d{2})_", "_" + name.replace("-", "_"))
    number = int(in_name.group(1)) if in_name else None
  if number is not None and number >= 16:
    return "science"
  level = str(meta.get("processing_level", "") or "").lower()
  if name.startswith("sci_") or "level 2" in level or "l2" in name.split("_")[0]:
    return "science"
  return "noaa_0.7"


def policy_factor(native: str, policy: str) -> float:
  """Factor that takes fluxes from their native scale to the policy's scale."""
  for scale in (native, policy):
    if scale not in POLICIES:
      raise ValueError(f"Unknown GOES flux scale {scale!r} (data.goes_scaling, "
                       f"data.hek_scaling); choose one of {POLICIES}.")
  if native == policy:
    return 1.0
  return 1.0 / NOAA_SCALING if policy == "science" else NOAA_SCALING


# The 1-8 A flag variables of XRS netCDF files, in the order sunpy's XRSTimeSeries reads them.
_XRSB_FLAG_VARIABLES = ("b_flags", "xrsb_flags", "xrsb_flag")


def good_data_mask(path: str) -> int | None:
  """The bits of a netCDF file's 1-8 A quality flag that mark bad data, from the flag variable's
  own CF attributes (the flag_masks entry of its "good_data" meaning): 7 in GOES-13..15 1-minute
  science averages, 3 in GOES-16+ ones, all bits in the 1 s and 2 s files. The other bits of the
  averages say how the electron correction went (e.g. 16, "electron_correction_invalid" on
  GOES-15, is not bad data by the file's own definition). None: no flag variable, or no
  good_data meaning (then any non-zero flag is bad).
  """
  import h5netcdf
  with h5netcdf.File(str(path), "r") as f:
    for name in _XRSB_FLAG_VARIABLES:
      if name in f.variables:
        attrs = f.variables[name].attrs
        break
    else:
      return None
    meanings = attrs.get("flag_meanings", "")
    meanings = (meanings.decode() if isinstance(meanings, bytes) else str(meanings)).split()
    masks = np.atleast_1d(np.asarray(attrs.get("flag_masks", []))).tolist()
    if "good_data" not in meanings or len(masks) != len(meanings):
      return None
    return int(masks[meanings.index("good_data")])


def read_goes_file(path: str, policy: str = "science") -> GoesFlux:
  """One GOES XRS file (GOES-13/14/15 FITS or netCDF, GOES-16+ netCDF) via sunpy's TimeSeries.

  Keeps the 1-8 A channel (xrsb) where it is finite, positive and (when the file has flags) good
  by the file's own definition of good data (good_data_mask); scales it to `policy`. A file given
  as an fsspec URL ("s3://...", "memory://...") is read from a temporary local copy of the same
  name (sunpy reads local files; the name tells the file's flux scale).
  """
  if "://" in str(path):
    import tempfile

    import fsspec
    with tempfile.TemporaryDirectory(prefix="goes_xrs_") as folder:
      local = os.path.join(folder, str(path).rsplit("/", 1)[-1])
      with fsspec.open(str(path), "rb") as src, open(local, "wb") as dst:
        dst.write(src.read())
      return read_goes_file(local, policy)
  import sunpy.timeseries

  series = sunpy.timeseries.TimeSeries(str(path))
  frame = series.to_dataframe()
  flux = frame["xrsb"].to_numpy(np.float64)
  good = np.isfinite(flux) & (flux > 0)
  if "xrsb_quality" in frame:
    quality = frame["xrsb_quality"].to_numpy().astype(np.float64)
    mask = good_data_mask(path) if str(path).endswith(".nc") else None
    flags = np.where(np.isfinite(quality), quality, -1).astype(np.int64)  # NaN: bad.
    good &= (flags >= 0) & ((flags & (mask if mask is not None else -1)) == 0)
  times = frame.index.to_numpy().astype("datetime64[ns]").astype(np.int64) / 1e9
  meta = dict(series.meta.metas[0]) if series.meta.metas else {}
  satellite = series.observatory or "GOES"
  factor = policy_factor(native_scale(meta, path, satellite), policy)
  order = np.argsort(times[good], kind="stable")
  return GoesFlux(time_unix_s=times[good][order], flux_w_m2=flux[good][order] * factor,
                  satellite=np.full(int(good.sum()), satellite), policy=policy)


def _satellite_number(name: str) -> str:
  number = _trailing_number(name)
  return str(number) if number is not None else str(name).strip().upper()


def merge(parts: list[GoesFlux], prefer=(), fill_gap_s: float = 60.0) -> GoesFlux:
  """Several files as one series that takes each time from one satellite.

  The files are pooled per satellite and cadence (1-minute averages apart from the 1 s / 2 s
  fluxes; the first file wins on identical times). These sources are ranked: the satellites of
  `prefer` first, in its order (names such as "GOES-15" or numbers, "15"), then the one with
  data in the most minutes, then the finer cadence, then the name. The first source is taken
  whole; a sample of a later one is kept only where no sample already taken is within
  `fill_gap_s`, so that the gaps of the primary are filled and the series never alternates
  between satellites, whose fluxes differ by several per cent.
  """
  if not parts:
    raise ValueError("No GOES XRS data.")
  policy = parts[0].policy
  sources: dict = {}
  for p in parts:
    if not len(p):
      continue
    step = float(np.median(np.diff(p.time_unix_s))) if len(p) > 1 else 60.0
    for sat in dict.fromkeys(p.satellite.tolist()):
      rows = p.satellite == sat
      sources.setdefault((sat, "1min" if step >= 30.0 else "fine"), []).append(
          (p.time_unix_s[rows], p.flux_w_m2[rows]))
  if not sources:
    return GoesFlux(np.zeros(0), np.zeros(0), np.zeros(0, str), policy)
  pooled = {}
  for key, chunks in sources.items():
    t = np.concatenate([c[0] for c in chunks])
    f = np.concatenate([c[1] for c in chunks])
    order = np.argsort(t, kind="stable")
    t, f = t[order], f[order]
    keep = np.concatenate([[True], np.diff(t) > 0])
    pooled[key] = (t[keep], f[keep])
  wanted = [_satellite_number(x) for x in prefer]

  def rank(key):
    sat, cadence = key
    number = _satellite_number(sat)
    first = wanted.index(number) if number in wanted else len(wanted)
    minutes = np.unique(np.floor(pooled[key][0] / 60.0)).size
    return (first, -minutes, cadence != "fine", sat)

  taken_t, taken_f, taken_s = [], [], []
  for key in sorted(pooled, key=rank):
    t, f = pooled[key]
    if taken_t:
      have = np.sort(np.concatenate(taken_t))
      i = np.searchsorted(have, t)
      left = np.abs(t - have[np.clip(i - 1, 0, len(have) - 1)])
      right = np.abs(have[np.clip(i, 0, len(have) - 1)] - t)
      free = np.minimum(left, right) > fill_gap_s
      t, f = t[free], f[free]
    taken_t.append(t)
    taken_f.append(f)
    taken_s.append(np.full(len(t), key[0]))
  t = np.concatenate(taken_t)
  order = np.argsort(t, kind="stable")
  return GoesFlux(time_unix_s=t[order], flux_w_m2=np.concatenate(taken_f)[order],
                  satellite=np.concatenate(taken_s)[order], policy=policy)


def read_goes(paths, policy: str = "science", prefer=()) -> GoesFlux:
  """All GOES XRS files of an archive, merged into one sorted series (see merge)."""
  return merge([read_goes_file(p, policy) for p in sorted(paths)], prefer)


def flux_at(goes: GoesFlux, time_unix_s: float, tolerance_s: float = 60.0) -> tuple[float, str]:
  """Flux at a time: linear between the valid samples around it when both are within
  `tolerance_s`, else the nearest one within `tolerance_s`; a GoesGapError otherwise."""
  t = goes.time_unix_s
  i = int(np.searchsorted(t, time_unix_s))
  before = i - 1 if i > 0 else None
  after = i if i < len(t) else None
  if after is not None and t[after] == time_unix_s:
    return float(goes.flux_w_m2[after]), str(goes.satellite[after])
  near = [j for j in (before, after) if j is not None and abs(t[j] - time_unix_s) <= tolerance_s]
  if not near:
    raise GoesGapError(f"no valid GOES 1-8 A flux within {tolerance_s:g} s of the image time")
  if len(near) == 2:
    w = (time_unix_s - t[before]) / (t[after] - t[before])
    flux = (1 - w) * goes.flux_w_m2[before] + w * goes.flux_w_m2[after]
    return float(flux), str(goes.satellite[before])
  return float(goes.flux_w_m2[near[0]]), str(goes.satellite[near[0]])


def peak_flux(goes: GoesFlux, start_unix_s: float, window_s: float) -> float:
  """Largest valid flux in [start, start + window] (the forecast label's flux); NaN when none."""
  lo = np.searchsorted(goes.time_unix_s, start_unix_s, side="left")
  hi = np.searchsorted(goes.time_unix_s, start_unix_s + window_s, side="right")
  return float(goes.flux_w_m2[lo:hi].max()) if hi > lo else float("nan")


def window_coverage(goes: GoesFlux, start_unix_s: float, window_s: float) -> float:
  """Fraction of the COVERAGE_BIN_S intervals of [start, start + window) that hold a valid GOES
  sample (0..1). Ten-minute intervals: a gap that loses no interval is shorter than the rise of a
  typical M or X flare, so it cannot hide one."""
  count = max(int(round(window_s / COVERAGE_BIN_S)), 1)
  first = np.floor(start_unix_s / COVERAGE_BIN_S)
  lo, hi = np.searchsorted(goes.coverage_bins, [first, first + count], side="left")
  return float(hi - lo) / count


@dataclasses.dataclass
class Label:
  """The GOES labels of one image."""
  flux_w_m2: float
  flare_class: int
  subclass: float
  forecast_class: int
  satellite: str
  policy: str
  forecast_coverage: float = 1.0  # Fraction of the forecast window's 10-min intervals with data.


def label_image(goes: GoesFlux, time_unix_s: float, *, tolerance_s: float,
                forecast_window_s: float) -> Label:
  """Class of the flux at the image time (the paper's label) and the peak class in the window
  after it (forecast label; the image-time flux counts, so the window is never empty), with the
  fraction of the window that GOES data cover: a window past the end of the data or across a
  gap gives a peak that can miss a flare (the input pipeline leaves such rows out of forecast
  training, data.forecast_min_coverage)."""
  flux, satellite = flux_at(goes, time_unix_s, tolerance_s)
  index, subclass = flux_to_class(flux)
  peak = np.nanmax([flux, peak_flux(goes, time_unix_s, forecast_window_s)])
  return Label(flux_w_m2=flux, flare_class=int(index), subclass=float(subclass),
               forecast_class=int(flux_to_class(peak)[0]), satellite=satellite,
               policy=goes.policy,
               forecast_coverage=window_coverage(goes, time_unix_s, forecast_window_s))
