"""AIA level-1 images -> model inputs in [-1, 1], and the exact inverse back to DN/s.

The forward map of one channel, in this order:
  1. dn_per_s = data_dn / exptime_s                      (level-1 DN -> DN/s)
  2. dn_per_s /= degradation factor                      (optional, from a correction table)
  3. downsample to R x R:
       "sum":    sum of f x f blocks, f = size / R (SDOML style): DN/s per output pixel = the sum
                 of the DN/s of the f*f input pixels it covers;
       "resize": area-averaging resize (the mean of the covered input area; any size ratio).
  4. clip to [0, c_eff] where c_eff = dn_ceiling * f*f for "sum" (the ceiling is given per input
     pixel, so the summed block has f*f times its range) and c_eff = dn_ceiling for "resize";
  5. stretch to [-1, 1]:
       "log":   x = 2 * log1p(v) / log1p(c_eff) - 1
       "asinh": x = 2 * asinh(v / (a * c_eff)) / asinh(1 / a) - 1     (a = asinh_a)
Between steps 1 and 2 the build checks the full-resolution frame in DN/s (`pixel_problem`: dark,
saturated, implausibly bright or mostly non-finite frames are skipped).
`to_dn_per_s` inverts steps 5 (exactly, for v in [0, c_eff]); `block_area` and
`effective_ceiling` give c_eff so that samples can be returned in DN/s per output pixel.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools

import numpy as np

STRETCHES = ("log", "asinh")
DOWNSAMPLE_METHODS = ("sum", "resize")
AIA_FULL_FRAME_PX = 4096  # Pixels across an AIA level-1 full-disc frame.
# The pixels that `pixel_problem` takes as on the disc: a centred circle of this radius in frame
# widths. The solar disc of an AIA full-disc frame has a radius of 0.385-0.40 frame widths over
# the year (945-975 arcsec at 0.6 arcsec/px, 4096 px), so this circle lies on the disc with a
# margin of ~150 px at 4096 for pointing offsets.
DISC_RADIUS_FRACTION = 0.35
# Default pixel checks (data.pixel_floor_dn_s, data.saturation_dn, data.max_disc_median_dn_s,
# data.min_finite_disc_fraction; see `pixel_problem`).
PIXEL_CHECK_DEFAULTS = dict(pixel_floor_dn_s=0.0, saturation_dn=15000.0,
                            max_disc_median_dn_s=(1e6,), min_finite_disc_fraction=0.95)


def frame_px(data_config) -> int:
  """Pixels across the input frames of a config.data group: the written size for a synthetic
  archive, else data.frame_px (4096 by default). The builder skips frames of another size, so
  the clip ceiling of step 4, and with it the inverse to DN/s, is the same for every image."""
  get = data_config.get if hasattr(data_config, "get") else (lambda k, d=None: d)
  if get("source", "manual") == "synthetic":
    return int(get("synthetic")["image_size"])  # A ConfigDict or a dict.
  size = get("frame_px", AIA_FULL_FRAME_PX)
  if not isinstance(size, int | np.integer) or size < 1:
    raise ValueError(f"data.frame_px={size}: give the pixels across the input frames (4096 for "
                     "AIA level-1 full-disc images).")
  return size


def _per_channel(value, x) -> np.ndarray:
  """`value` (scalar or one per channel) broadcast against the last axis of `x`."""
  value = np.asarray(value, np.float64)
  if value.ndim == 0 or np.ndim(x) == 0:
    return value
  return value.reshape((1,) * (np.ndim(x) - 1) + (-1,))


def to_model_range(dn_per_s, ceiling, stretch: str = "log", asinh_a: float = 0.01) -> np.ndarray:
  """DN/s [..., C] -> [-1, 1]: clip to [0, ceiling] per channel, then the log or asinh stretch."""
  x = np.asarray(dn_per_s, np.float64)
  c = _per_channel(ceiling, x)
  v = np.clip(x, 0.0, c)
  if stretch == "log":
    y = 2.0 * np.log1p(v) / np.log1p(c) - 1.0
  elif stretch == "asinh":
    y = 2.0 * np.arcsinh(v / (asinh_a * c)) / np.arcsinh(1.0 / asinh_a) - 1.0
  else:
    raise ValueError(f"Unknown stretch {stretch!r}; choose one of {STRETCHES}.")
  return y.astype(np.float32)


def to_dn_per_s(x, ceiling, stretch: str = "log", asinh_a: float = 0.01) -> np.ndarray:
  """[-1, 1] [..., C] -> DN/s: the exact inverse of `to_model_range` on [0, ceiling]."""
  y = np.clip(np.asarray(x, np.float64), -1.0, 1.0)
  c = _per_channel(ceiling, y)
  if stretch == "log":
    v = np.expm1((y + 1.0) / 2.0 * np.log1p(c))
  elif stretch == "asinh":
    v = asinh_a * c * np.sinh((y + 1.0) / 2.0 * np.arcsinh(1.0 / asinh_a))
  else:
    raise ValueError(f"Unknown stretch {stretch!r}; choose one of {STRETCHES}.")
  return v.astype(np.float32)


def block_area(input_size: int, resolution: int, method: str = "sum") -> float:
  """Input pixels summed into one output pixel: (size / R)^2 for "sum", 1 for "resize" (a mean)."""
  if method == "sum":
    return float((input_size // resolution) ** 2)
  if method == "resize":
    return 1.0
  raise ValueError(f"Unknown downsample {method!r}; choose one of {DOWNSAMPLE_METHODS}.")


def effective_ceiling(dn_ceiling, input_size: int, resolution: int, method: str = "sum"):
  """The clip ceiling of a downsampled pixel: per-input-pixel ceiling x block area."""
  return np.asarray(dn_ceiling, np.float64) * block_area(input_size, resolution, method)


def block_sum(image: np.ndarray, resolution: int) -> np.ndarray:
  """Sum of f x f blocks of an [H, W] image, f = H / resolution (must divide exactly)."""
  h, w = image.shape
  if h % resolution or w % resolution:
    raise ValueError(f"Image {h}x{w} is not divisible into {resolution}x{resolution} blocks.")
  fh, fw = h // resolution, w // resolution
  return image.reshape(resolution, fh, resolution, fw).sum(axis=(1, 3), dtype=np.float64)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of an area-averaging resize (rows sum to 1)."""
  edges_in = np.arange(n_in + 1, dtype=np.float64)
  edges_out = np.linspace(0.0, n_in, n_out + 1)
  lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
  hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
  overlap = np.clip(hi - lo, 0.0, None)
  return overlap / overlap.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, resolution: int) -> np.ndarray:
  """Area-averaging resize of an [H, W] image to [R, R] (exact mean of the covered area)."""
  h, w = image.shape
  if h % resolution == 0 and w % resolution == 0:  # Whole blocks: the block mean.
    return block_sum(image, resolution) / float((h // resolution) * (w // resolution))
  rows = np.empty((resolution, w), np.float64)
  a_h = _area_matrix(h, resolution)
  for c in range(0, w, 512):  # The tall axis first, in float64, 512 columns at a time.
    rows[:, c:c + 512] = a_h @ np.asarray(image[:, c:c + 512], np.float64)
  return rows @ _area_matrix(w, resolution).T


def downsample(image: np.ndarray, resolution: int, method: str = "sum") -> np.ndarray:
  """[H, W] -> [R, R] by block sums ("sum") or area-averaging resize ("resize")."""
  if method == "sum":
    return block_sum(image, resolution)
  if method == "resize":
    return area_resize(image, resolution)
  raise ValueError(f"Unknown downsample {method!r}; choose one of {DOWNSAMPLE_METHODS}.")


AIAPY_TABLE_COLUMNS = ("DATE", "VER_NUM", "WAVE_STR", "WAVELNTH", "T_START", "T_STOP", "EFFA_P1",
                       "EFFA_P2", "EFFA_P3", "EFF_AREA", "EFF_WVLN")


class AiapyCorrectionTable:
  """aiapy's degradation correction table (the aia.response series: a JSOC export or SSW's
  aia_V*_response_table.txt), read from a local file; factors from aiapy.calibrate.degradation."""

  def __init__(self, path: str):
    from aiapy.calibrate.util import get_correction_table
    self.path = path
    self.table = get_correction_table(path)

  def factor(self, wavelength: int, time_unix_s: float) -> float:
    import astropy.units as u
    from aiapy.calibrate import degradation
    from astropy.time import Time
    t = Time(time_unix_s, format="unix", scale="utc")
    return float(np.asarray(degradation(int(wavelength) * u.angstrom, t,
                                        correction_table=self.table)).reshape(-1)[0])


def load_degradation_table(path: str):
  """A degradation table, in either of two forms:

  * CSV/ECSV columns `wavelength`, `time` (ISO UTC), `factor`: the relative effective area (1 at
    launch), linear in time between rows; returns {wavelength: (time_unix_s sorted, factor)};
  * aiapy's correction table (columns WAVE_STR, T_START, T_STOP, EFF_AREA, EFFA_P1..3, ...): the
    factor of aiapy.calibrate.degradation; returns an AiapyCorrectionTable.
  Images are divided by the factor. A file of neither form is an error naming its columns.
  """
  with open(path) as f:
    lines = [line for line in f if not line.startswith("#") and line.strip()]
  if not lines:
    raise ValueError(f"Degradation table {path} is empty.")
  delimiter = "," if "," in lines[0] else None
  columns = [c.strip() for c in (lines[0].split(",") if delimiter else lines[0].split())]
  if set(AIAPY_TABLE_COLUMNS) <= set(columns):
    return AiapyCorrectionTable(path)
  if not {"wavelength", "time", "factor"} <= set(columns):
    raise ValueError(
        f"Degradation table {path} has columns {columns}: give wavelength,time,factor rows or "
        f"aiapy's correction table (columns {', '.join(AIAPY_TABLE_COLUMNS)}; a JSOC aia.response "
        "export or SSW's aia_V*_response_table.txt).")
  rows = list(csv.DictReader(lines, delimiter=delimiter or " ", skipinitialspace=True))
  table: dict[int, list] = {}
  for row in rows:
    t = dt.datetime.fromisoformat(row["time"].replace("Z", "")).replace(tzinfo=dt.UTC)
    pair = (t.timestamp(), float(row["factor"]))
    table.setdefault(int(float(row["wavelength"])), []).append(pair)
  out = {}
  for wavelength, pairs in table.items():
    pairs.sort()
    out[wavelength] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
  return out


def degradation_has_channel(table, wavelength: int) -> bool:
  """Whether a degradation table (load_degradation_table) has entries for a channel."""
  if isinstance(table, AiapyCorrectionTable):
    names = {str(w).split("_")[0] for w in table.table["WAVE_STR"]}
    return str(int(wavelength)) in names
  return int(wavelength) in table


def degradation_factor(table, wavelength: int, time_unix_s: float) -> float:
  """The table's factor for a channel at a time (a wavelength,time,factor table: linear in time,
  constant beyond the ends; an aiapy table: aiapy's epoch and polynomial). ValueError when the
  table has no entry for the channel or (aiapy) no calibration epoch for the time."""
  if not table:
    return 1.0
  if isinstance(table, AiapyCorrectionTable):
    return table.factor(wavelength, time_unix_s)
  if wavelength not in table:
    raise ValueError(f"Degradation table has no {wavelength} A entries.")
  times, factors = table[wavelength]
  return float(np.interp(time_unix_s, times, factors))


def preprocess_channel(data_dn: np.ndarray, exptime_s: float, *, resolution: int, dn_ceiling: float,
                       downsample_method: str = "sum", stretch: str = "log",
                       asinh_a: float = 0.01, degradation: float = 1.0) -> np.ndarray:
  """One AIA level-1 image [H, W] in DN -> [R, R] float32 in [-1, 1] (steps 1-5 above)."""
  # Steps 1-3 in the order downsample, then divide (both are linear): the full-size image is never
  # copied to float64, which saves 256 MB per 4096 x 4096 channel.
  small = downsample(data_dn, resolution, downsample_method) / float(exptime_s) / float(degradation)
  ceiling = effective_ceiling(dn_ceiling, data_dn.shape[0], resolution, downsample_method)
  return to_model_range(small, ceiling, stretch, asinh_a)


@functools.lru_cache(maxsize=4)
def disc_mask(shape: tuple[int, int]) -> np.ndarray:
  """[H, W] bool, read-only: the pixels within DISC_RADIUS_FRACTION frame widths of the centre."""
  h, w = shape
  yy = (np.arange(h, dtype=np.float64) - (h - 1) / 2)[:, None]
  xx = (np.arange(w, dtype=np.float64) - (w - 1) / 2)[None, :]
  mask = yy**2 + xx**2 <= (DISC_RADIUS_FRACTION * w) ** 2
  mask.flags.writeable = False
  return mask


def pixel_problem(dn_per_s: np.ndarray, *, exptime_s: float, wavelength: int,
                  pixel_floor_dn_s: float = 0.0, saturation_dn: float = 15000.0,
                  max_disc_median_dn_s: float = 1e6, min_finite_disc_fraction: float = 0.95
                  ) -> str | None:
  """Why a full-disc frame's pixels cannot be a training image, or None when they can.

  Runs on the frame in DN/s (level-1 DN / EXPTIME), before the degradation correction,
  downsampling and the stretch: a frame that is dark, saturated or wrongly scaled would otherwise
  become a labelled image that looks like a quiet Sun (clipped to 0) or a flare (clipped to the
  ceiling). Non-finite pixels are left out of the statistics. The checks, in this order:
    1. fewer than `min_finite_disc_fraction` of the on-disc pixels (`disc_mask`) are finite (only
       possible when data.max_nan_fraction lets non-finite pixels through);
    2. every finite pixel is at or below `pixel_floor_dn_s` (an empty or dark frame);
    3. the median of the finite on-disc pixels is above `max_disc_median_dn_s` (no AIA channel
       comes near it: wrong units or scaling, not saturation: a 14-bit detector cannot record
       it). The median is taken on a grid of about 512 x 512 pixels of the disc;
    4. every finite pixel is at or above `saturation_dn` / `exptime_s` (saturated; the level is
       given in DN, as the detector saturates).
  The reason names the setting (data.*) that decides it.
  """
  x = np.asarray(dn_per_s)
  if x.ndim != 2:
    raise ValueError(f"pixel_problem takes one [H, W] frame, not shape {x.shape}.")
  finite = np.isfinite(x)
  all_finite = bool(finite.all())
  disc = disc_mask(x.shape)
  if not all_finite:
    fraction = np.count_nonzero(finite & disc) / max(np.count_nonzero(disc), 1)
    if fraction < min_finite_disc_fraction:
      return (f"only {fraction:.1%} of the on-disc pixels are finite (fewer than "
              f"data.min_finite_disc_fraction={min_finite_disc_fraction:g})")
  values = x if all_finite else x[finite]
  if not values.size:
    return "no finite pixel"
  if float(values.max()) <= pixel_floor_dn_s:
    return (f"every pixel is at or below data.pixel_floor_dn_s={pixel_floor_dn_s:g} DN/s (an "
            "empty or dark frame)")
  step = max(1, x.shape[0] // 512)
  grid = (x[::step, ::step])[disc[::step, ::step] & finite[::step, ::step]]
  if grid.size:
    median = float(np.median(grid))
    if median > max_disc_median_dn_s:
      return (f"median on-disc brightness {median:.3g} DN/s is above "
              f"data.max_disc_median_dn_s={max_disc_median_dn_s:g} for {int(wavelength)} A "
              "(implausible: wrong units or scaling)")
  saturated_dn_s = saturation_dn / float(exptime_s)
  if float(values.min()) >= saturated_dn_s:
    return (f"every pixel is saturated (at or above data.saturation_dn={saturation_dn:g} DN, "
            f"{saturated_dn_s:g} DN/s at EXPTIME {float(exptime_s):g} s)")
  return None
