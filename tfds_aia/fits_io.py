"""Reading and validating AIA level-1 FITS files (Rice-compressed as AIA ships them, or plain).

Each check that fails raises `BadFileError` whose message names the file and the reason; the builder
records it in the skip manifest and goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gzip
import io
import os
import re
import warnings

import numpy as np

AIA_WAVELENGTHS = (94, 131, 171, 193, 211, 304, 335, 1600, 1700, 4500)


class BadFileError(ValueError):
  """A file that cannot go into the dataset; `reason` says why."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{os.path.basename(str(path))}: {reason}")
    self.path = str(path)
    self.reason = reason


def describe(error: BaseException, path) -> str:
  """"Class: message" of an exception, with the file's path cut to its name: messages of astropy
  and the OS often carry the absolute path, which must not reach the skip manifest."""
  text, name = str(error), os.path.basename(str(path))
  for full in sorted({str(path), os.path.abspath(str(path)), os.path.realpath(str(path))},
                     key=len, reverse=True):
    text = text.replace(full, name)
  return f"{error.__class__.__name__}: {text}"


@dataclasses.dataclass
class AiaHeader:
  """What the builder needs from an AIA header."""
  path: str
  wavelength: int  # Angstrom
  time_unix_s: float  # T_OBS (mid-exposure), else DATE-OBS
  exptime_s: float
  quality: int
  shape: tuple[int, int]


def _image_hdu(hdul):
  """The image HDU: HDU 1 of compressed AIA files (CompImageHDU), else the first with data."""
  from astropy.io import fits
  for hdu in hdul:
    if isinstance(hdu, fits.CompImageHDU):
      return hdu
  for hdu in hdul:
    if hdu.header.get("NAXIS", 0) == 2:
      return hdu
  return None


_TIME = re.compile(r"(\d{4})[-.](\d{2})[-.](\d{2})[T_ ](\d{2}):(\d{2}):(\d{2}(?:\.\d*)?)"
                   r"(Z|_UTC|_TAI)?")


def parse_time(value) -> float:
  """FITS time string -> Unix seconds: DATE-OBS / T_OBS in UTC (optional trailing Z), JSOC's
  "2011.06.07_06:41:25.34_TAI" (TAI, converted to UTC) or any ISO 8601 time with an offset.

  A leap second (23:59:60.x UTC) is POSIX time's repeated second: the same Unix time as 00:00:00.x.
  """
  text = str(value).strip()
  m = _TIME.fullmatch(text)
  if m is None:
    t = dt.datetime.fromisoformat(text)
    return t.replace(tzinfo=dt.UTC).timestamp() if t.tzinfo is None else t.timestamp()
  year, month, day, hour, minute = (int(g) for g in m.groups()[:5])
  seconds = float(m.group(6))
  tai = m.group(7) == "_TAI"
  if not (seconds < 60 or (seconds < 61 and (hour, minute) == (23, 59) and not tai)):
    raise ValueError(f"seconds {m.group(6)} out of range in {text!r}")
  unix = dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp() + seconds
  if tai:  # TAI - UTC of the UTC date (first guessed with the offset of the TAI date); a TAI
    import erfa  # time within a leap second gets POSIX's repeated second, as above.
    d = dt.datetime.fromtimestamp(unix - erfa.dat(year, month, day, 0.0), dt.UTC)
    return unix - erfa.dat(d.year, d.month, d.day, 0.0)
  return unix


def _header_fields(path: str, header, shape) -> AiaHeader:
  """Validated header fields (wavelength, time, exposure, quality, shape)."""
  if "WAVELNTH" not in header:
    raise BadFileError(path, "no WAVELNTH keyword")
  try:
    wavelength = int(round(float(header["WAVELNTH"])))
  except (TypeError, ValueError):
    raise BadFileError(path, f"unreadable WAVELNTH {header['WAVELNTH']!r}") from None
  exptime = header.get("EXPTIME")
  if exptime is None:
    raise BadFileError(path, "no EXPTIME keyword (exposure time needed for DN/s)")
  try:
    exptime = float(exptime)
  except (TypeError, ValueError):
    raise BadFileError(path, f"unreadable EXPTIME {exptime!r}") from None
  if not np.isfinite(exptime) or exptime <= 0:
    raise BadFileError(path, f"EXPTIME {exptime} s is not positive")
  stamp = header.get("T_OBS") or header.get("DATE-OBS")
  if not stamp:
    raise BadFileError(path, "no T_OBS or DATE-OBS keyword")
  try:
    time_unix_s = parse_time(stamp)
  except ValueError:
    raise BadFileError(path, f"unreadable observation time {stamp!r}") from None
  return AiaHeader(path=str(path), wavelength=wavelength, time_unix_s=time_unix_s,
                   exptime_s=exptime, quality=int(header.get("QUALITY", 0) or 0),
                   shape=tuple(int(s) for s in shape))


def check(header: AiaHeader, *, channels, resolution: int, downsample: str = "sum",
          allowed_quality: int = 0, frame_px: int = 0) -> None:
  """Raises BadFileError when the frame is not usable for these settings."""
  if header.wavelength not in tuple(int(c) for c in channels):
    raise BadFileError(header.path, f"wavelength {header.wavelength} A is not one of the "
                       f"configured channels {tuple(channels)}")
  if header.quality & ~int(allowed_quality):
    raise BadFileError(header.path, f"QUALITY flag {header.quality:#x} is not 0")
  h, w = header.shape
  if h != w:
    raise BadFileError(header.path, f"image is {h}x{w}, not square")
  if frame_px and h != frame_px:
    raise BadFileError(header.path, f"image is {h}x{w} px, not data.frame_px={frame_px} (one "
                       "dataset holds one frame size; build frames of this size with "
                       f"--config.data.frame_px={h})")
  if h < resolution:
    raise BadFileError(header.path, f"image {h}x{w} is smaller than the resolution {resolution}")
  if downsample == "sum" and h % resolution:
    raise BadFileError(header.path, f"image size {h} is not a multiple of the resolution "
                       f"{resolution} (block sums need whole blocks; use downsample='resize')")


@contextlib.contextmanager
def _opened(path: str):
  """The path itself, or for an fsspec URL ("s3://...", "file://...") its file, open while the
  context lasts."""
  if "://" not in str(path):
    yield path
    return
  import fsspec
  with fsspec.open(str(path), "rb") as f:
    yield f


def read_header(path: str) -> AiaHeader:
  """Header fields of an AIA FITS file (a path or an fsspec URL) without reading its pixels."""
  from astropy.io import fits
  try:
    with _opened(path) as source, warnings.catch_warnings(), \
        fits.open(source, memmap=False) as hdul:
      warnings.simplefilter("ignore")
      hdu = _image_hdu(hdul)
      if hdu is None:
        raise BadFileError(path, "no 2-D image HDU")
      header = hdu.header
      shape = (header.get("NAXIS2", header.get("ZNAXIS2")), header.get("NAXIS1"))
      return _header_fields(path, header, shape)
  except BadFileError:
    raise
  except Exception as e:  # astropy raises many kinds on damaged files.
    raise BadFileError(path, f"unreadable FITS ({describe(e, path)})") from None


def read_bytes(path: str) -> bytes:
  """The bytes of a file, a path or an fsspec URL (read once, then hashed and decoded from
  memory)."""
  try:
    if "://" in str(path):
      import fsspec
      with fsspec.open(str(path), "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise BadFileError(path, f"unreadable file ({describe(e, path)})") from None


def read_data(path: str, max_nan_fraction: float = 0.0, raw: bytes | None = None,
              fill_nonfinite: bool = True) -> np.ndarray:
  """The image [H, W] float32 in DN (from `raw`, the file's bytes, when given); non-finite pixels
  are an error above `max_nan_fraction` (and are set to 0 below it, unless not `fill_nonfinite`:
  then they are kept, for checks that must tell them from zeros)."""
  from astropy.io import fits
  source = path if raw is None else io.BytesIO(raw)
  try:
    if raw is not None and raw[:2] == b"\x1f\x8b":  # *.fits.gz (astropy detects it in files only).
      source = io.BytesIO(gzip.decompress(raw))
    with warnings.catch_warnings(), fits.open(source, memmap=False) as hdul:
      warnings.simplefilter("ignore")
      hdu = _image_hdu(hdul)
      data = None if hdu is None else hdu.data
      if data is None:
        raise BadFileError(path, "no image data")
      data = np.array(data, dtype=np.float32)
  except BadFileError:
    raise
  except Exception as e:
    raise BadFileError(path, f"unreadable or truncated FITS data ({describe(e, path)})"
                       ) from None
  bad = ~np.isfinite(data)
  if bad.any():
    fraction = float(bad.mean())
    if fraction > max_nan_fraction:
      raise BadFileError(path, f"{bad.sum()} NaN/inf pixels ({fraction:.2%} of the image)")
    if fill_nonfinite:
      data[bad] = 0.0
  return data


def register_level15(path: str, data: np.ndarray) -> np.ndarray:
  """Level 1 -> 1.5 with aiapy (rotate, rescale to 0.6 arcsec/px, centre); needs aiapy."""
  try:
    import aiapy.calibrate
    import sunpy.map
  except ImportError as e:
    raise BadFileError(path, f"register=True needs aiapy ({e})") from None
  from astropy.io import fits
  with fits.open(path) as hdul:
    header = _image_hdu(hdul).header.copy()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      registered = aiapy.calibrate.register(sunpy.map.Map(data, header))
  except Exception as e:
    raise BadFileError(path, f"aiapy registration failed ({describe(e, path)})") from None
  out = np.asarray(registered.data, np.float32)
  n = min(out.shape[0], data.shape[0])
  return np.nan_to_num(out[:n, :n])
