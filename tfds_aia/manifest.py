"""The skip manifest of a built dataset (skipped.json, one row per file that could not be used,
named by its path relative to manual_dir, never by an absolute path) and the build settings next
to it (build_settings.json, with their fingerprint).
"""

from __future__ import annotations

import collections
import json
import os
import re

from tfds_aia import sdoml
from tfds_aia.build_settings import settings_fingerprint

SKIP_MANIFEST = "skipped.json"
SETTINGS_FILE = "build_settings.json"


# An absolute path of two or more parts (not "DN/s": a slash after a letter does not start one).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")


def manifest_file(path: str, manual_dir: str) -> str:
  """A file's name in the skip manifest: its path relative to manual_dir, in posix form (the
  name alone for a file outside it); for a manual_dir URL, the part of the file's URL after it."""
  path = os.fspath(path)
  if sdoml.is_url(path) or sdoml.is_url(manual_dir):
    root = manual_dir.rstrip("/") + "/"
    return path[len(root):] if path.startswith(root) else path.rsplit("/", 1)[-1]
  path = os.path.abspath(path)
  if not manual_dir:
    return os.path.basename(path)
  for root in dict.fromkeys((os.path.abspath(manual_dir), os.path.realpath(manual_dir))):
    rel = os.path.relpath(path, root)
    if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
      return rel.replace(os.sep, "/")
  return os.path.basename(path)


def manifest_reason(reason: str, manual_dir: str) -> str:
  """A skip reason without absolute paths: files under manual_dir by their relative path, any
  other absolute path by its last part."""
  if sdoml.is_url(manual_dir):
    roots = {manual_dir.rstrip("/")}
  else:
    roots = {os.path.abspath(manual_dir), os.path.realpath(manual_dir)} if manual_dir else set()
  for root in sorted(roots, key=len, reverse=True):
    reason = reason.replace(root + ("/" if sdoml.is_url(root) else os.sep), "")
  return _ABSOLUTE_PATH.sub(r"\1", reason)


def write_manifest(dataset_dir: str, skipped: list[dict], settings: dict) -> None:
  """skipped.json and build_settings.json in the dataset directory.

  skipped.json: [{"file": path relative to manual_dir (posix), "reason": why}], one row per file
  sorted by file (a file with several reasons has them joined by "; ", in sorted order).
  """
  reasons = collections.defaultdict(set)
  for row in skipped:
    reasons[row["file"]].add(row["reason"])
  rows = [{"file": file, "reason": "; ".join(sorted(reasons[file]))} for file in sorted(reasons)]
  with open(os.path.join(os.fspath(dataset_dir), SKIP_MANIFEST), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(os.fspath(dataset_dir), SETTINGS_FILE), "w") as f:
    json.dump({**settings, "fingerprint": settings_fingerprint(settings)}, f, indent=1, default=str)


def read_manifest(builder_or_dir) -> list[dict]:
  """The skip manifest of a built dataset: [{"file", "reason"}], file relative to manual_dir."""
  d = getattr(builder_or_dir, "data_dir", builder_or_dir)
  with open(os.path.join(os.fspath(d), SKIP_MANIFEST)) as f:
    return json.load(f)
