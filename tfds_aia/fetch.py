r"""Download AIA level-1 FITS and GOES XRS files for a date range with sunpy's Fido (online).

    python -m tfds_aia.fetch --start 2011-06-07 --end 2011-06-08 --out /data/aia_manual \
        --wavelengths 171 --cadence_minutes 60

Lays files out for the builder's manual_dir: <out>/aia/<wavelength>/ and <out>/goes/. Resumable:
files already there are kept and not downloaded again (Fido skips existing files).
"""

from __future__ import annotations

import argparse
import os
import socket


class OfflineError(ConnectionError):
  """No network: say what to do instead."""


OFFLINE_HELP = ("Fido needs the network (VSO/JSOC for AIA, NOAA/NCEI for GOES XRS). Offline, put "
                "AIA FITS and GOES XRS files in a folder and give it as config.data.manual_dir, "
                "or use the synthetic archive (config.data.source='synthetic').")


def check_online(host: str = "sdac.virtualsolar.org", port: int = 443, timeout_s: float = 3.0):
  """Raises OfflineError when the data servers cannot be reached."""
  try:
    with socket.create_connection((host, port), timeout=timeout_s):
      return
  except OSError as e:
    raise OfflineError(f"Cannot reach {host}:{port} ({e}). {OFFLINE_HELP}") from None


def fetch(start: str, end: str, out_dir: str, *, wavelengths=(171,), cadence_minutes: float = 60.0,
          goes: bool = True, host: str = "sdac.virtualsolar.org") -> dict:
  """Downloads AIA (per wavelength, at the cadence) and GOES XRS for [start, end); counts."""
  check_online(host)
  import astropy.units as u
  from sunpy.net import Fido
  from sunpy.net import attrs as a
  counts = {}
  for wavelength in wavelengths:
    folder = os.path.join(out_dir, "aia", str(int(wavelength)))
    os.makedirs(folder, exist_ok=True)
    result = Fido.search(a.Time(start, end), a.Instrument.aia,
                         a.Wavelength(int(wavelength) * u.angstrom),
                         a.Sample(float(cadence_minutes) * u.minute))
    files = Fido.fetch(result, path=os.path.join(folder, "{file}"), overwrite=False)
    counts[f"aia_{wavelength}"] = len(files)
    if files.errors:
      counts[f"aia_{wavelength}_errors"] = len(files.errors)
  if goes:
    folder = os.path.join(out_dir, "goes")
    os.makedirs(folder, exist_ok=True)
    result = Fido.search(a.Time(start, end), a.Instrument.xrs)
    files = Fido.fetch(result, path=os.path.join(folder, "{file}"), overwrite=False)
    counts["goes"] = len(files)
  return counts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--start", required=True, help="ISO date/time (UTC), e.g. 2011-06-07")
  parser.add_argument("--end", required=True, help="ISO date/time (UTC), exclusive")
  parser.add_argument("--out", required=True, help="manual_dir to fill")
  parser.add_argument("--wavelengths", default="171", help="Comma-separated, e.g. 171,193")
  parser.add_argument("--cadence_minutes", type=float, default=60.0)
  parser.add_argument("--no_goes", action="store_true")
  args = parser.parse_args(argv)
  try:
    counts = fetch(args.start, args.end, args.out,
                   wavelengths=[int(w) for w in args.wavelengths.split(",")],
                   cadence_minutes=args.cadence_minutes, goes=not args.no_goes)
  except OfflineError as e:
    raise SystemExit(f"error: {e}") from None
  print(counts)


if __name__ == "__main__":
  main()
