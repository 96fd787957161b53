r"""Download AIA level-1 FITS and GOES XRS files for a date range with sunpy's Fido (online).

    python -m tfds_aia.fetch --start 2011-06-07 --end 2011-06-08 --out /data/aia_manual \
        --wavelengths 171 --cadence_minutes 60

Lays files out for the builder's manual_dir: <out>/aia/<wavelength>/ and <out>/goes/. Resumable:
files already there are kept and not downloaded again (Fido skips existing files), except FITS
files that a killed run left truncated, which are deleted first and fetched again. Exits non-zero
when any download failed; running it again fetches what is missing.
"""

from __future__ import annotations

import argparse
import glob
import os
import socket
import warnings

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class OfflineError(ConnectionError):
  """No network: say what to do instead."""


OFFLINE_HELP = ("Fido needs the network (VSO/JSOC for AIA, NOAA/NCEI for GOES XRS). Offline, put "
                "AIA FITS and GOES XRS files in a folder and give it as config.data.manual_dir, "
                "or use the synthetic archive (config.data.source='synthetic').")


def check_online(host: str = "sdac.virtualsolar.org", port: int = 443, timeout_s: float = 3.0):
  """Raises OfflineError when the data servers cannot be reached (not checked behind an HTTPS
  proxy, where a direct connection fails but Fido's requests go through)."""
  if any(os.environ.get(name) for name in PROXY_VARIABLES):
    return
  try:
    with socket.create_connection((host, port), timeout=timeout_s):
      return
  except OSError as e:
    raise OfflineError(f"Cannot reach {host}:{port} ({e}). {OFFLINE_HELP}") from None


def is_truncated_fits(path: str) -> bool:
  """True when the file is shorter than its FITS headers say (a download cut off); headers only."""
  from astropy.io import fits
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      with fits.open(path, lazy_load_hdus=False, memmap=False):
        pass
    except (OSError, ValueError, TypeError, IndexError):
      return True  # Not even its headers are whole.
  return any("truncated" in str(w.message).lower() for w in caught)


def remove_truncated(folder: str) -> list[str]:
  """Deletes the truncated FITS files of a folder (so that Fido fetches them again)."""
  removed = []
  for path in sorted(glob.glob(os.path.join(folder, "*.fits*"))):
    if is_truncated_fits(path):
      os.remove(path)
      removed.append(os.path.basename(path))
  return removed


def fetch(start: str, end: str, out_dir: str, *, wavelengths=(171,), cadence_minutes: float = 60.0,
          goes: bool = True, goes_satellite: int = 0, goes_resolution: str = "",
          host: str = "sdac.virtualsolar.org") -> dict:
  """Downloads AIA (per wavelength, at the cadence) and GOES XRS for [start, end); counts, with
  `<name>_errors` for failed downloads and `<name>_truncated_removed` for cut-off files.

  GOES XRS: every satellite and cadence the archive has for the time range, or only
  `goes_satellite` (e.g. 15) and `goes_resolution` ("avg1m" 1-minute averages, "flx1s" 1 s / 2 s
  fluxes) where given; the builder takes each time from one satellite (data.goes_satellites).
  """
  check_online(host)
  import astropy.units as u
  from sunpy.net import Fido
  from sunpy.net import attrs as a
  counts = {}
  queries = {f"aia_{int(w)}": (os.path.join(out_dir, "aia", str(int(w))), (
      a.Time(start, end), a.Instrument.aia, a.Wavelength(int(w) * u.angstrom),
      a.Sample(float(cadence_minutes) * u.minute))) for w in wavelengths}
  if goes:
    goes_attrs = [a.Time(start, end), a.Instrument.xrs]
    if goes_satellite:
      goes_attrs.append(a.goes.SatelliteNumber(int(goes_satellite)))
    if goes_resolution:
      goes_attrs.append(a.Resolution(goes_resolution))
    queries["goes"] = (os.path.join(out_dir, "goes"), tuple(goes_attrs))
  for name, (folder, attrs) in queries.items():
    os.makedirs(folder, exist_ok=True)
    removed = remove_truncated(folder)
    if removed:
      counts[f"{name}_truncated_removed"] = len(removed)
    files = Fido.fetch(Fido.search(*attrs), path=os.path.join(folder, "{file}"), overwrite=False)
    counts[name] = len(files)
    if files.errors:
      counts[f"{name}_errors"] = len(files.errors)
  return counts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--start", required=True, help="ISO date/time (UTC), e.g. 2011-06-07")
  parser.add_argument("--end", required=True, help="ISO date/time (UTC), exclusive")
  parser.add_argument("--out", required=True, help="manual_dir to fill")
  parser.add_argument("--wavelengths", default="171", help="Comma-separated, e.g. 171,193")
  parser.add_argument("--cadence_minutes", type=float, default=60.0)
  parser.add_argument("--no_goes", action="store_true")
  parser.add_argument("--goes_satellite", type=int, default=0,
                      help="Only this GOES satellite's XRS files, e.g. 15 (default: all)")
  parser.add_argument("--goes_resolution", default="", choices=("", "avg1m", "flx1s"),
                      help="Only 1-minute averages (avg1m) or 1 s / 2 s fluxes (flx1s)")
  args = parser.parse_args(argv)
  try:
    counts = fetch(args.start, args.end, args.out,
                   wavelengths=[int(w) for w in args.wavelengths.split(",")],
                   cadence_minutes=args.cadence_minutes, goes=not args.no_goes,
                   goes_satellite=args.goes_satellite, goes_resolution=args.goes_resolution)
  except OfflineError as e:
    raise SystemExit(f"error: {e}") from None
  print(counts)
  failed = {k: v for k, v in counts.items() if k.endswith("_errors")}
  if failed:
    raise SystemExit(f"error: downloads failed {failed}; run the same command again to fetch "
                     "what is missing.")


if __name__ == "__main__":
  main()
