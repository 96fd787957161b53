"""The input files of a build: AIA FITS and GOES XRS files under manual_dir, a folder or an
fsspec URL ("s3://bucket/archive", "file:///data/archive"), told apart by their names."""

from __future__ import annotations

import fnmatch
import os

from tfds_aia import sdoml

AIA_PATTERNS = ("*.fits", "*.fits.gz", "*.fts", "*.fit", "*.fts.gz")
GOES_PATTERNS = ("go[01][0-9]*.fits", "go[01][0-9]*.fits.gz", "*xrs*.nc", "g1[0-9]_xrs*.nc")


def _walk_files(folder: str):
  """Every file under a folder, or under an fsspec URL ("s3://bucket/aia", "file:///data")."""
  if not sdoml.is_url(folder):
    for root, _, names in os.walk(folder):
      yield from (os.path.join(root, name) for name in names)
    return
  import fsspec
  fs, root = fsspec.core.url_to_fs(folder, **sdoml.storage_options(folder))
  protocol = folder.split("://", 1)[0]
  for path in fs.find(root):
    yield f"{protocol}://{path.lstrip('/')}" if protocol != "file" else f"file://{path}"


def find_files(manual_dir: str) -> tuple[list[str], list[str]]:
  """(AIA FITS paths, GOES XRS paths) under manual_dir (a folder or an fsspec URL), sorted."""
  aia, goes_files = [], []
  for path in _walk_files(manual_dir):
    lower = path.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1].lower()
    if any(fnmatch.fnmatch(lower, p) for p in GOES_PATTERNS):
      goes_files.append(path)
    elif any(fnmatch.fnmatch(lower, p) for p in AIA_PATTERNS):
      aia.append(path)
  return sorted(aia), sorted(goes_files)
