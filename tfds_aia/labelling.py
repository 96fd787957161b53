"""Frames + GOES XRS (+ HEK events) -> labelled frames per split, with the reason for each frame
left out. The same functions label the frames of FITS archives and of SDOML stores.

    xrs, goes_skips = labelling.goes_series(goes_paths, settings)       # GOES files -> one series
    groups, skips = labelling.group_channels(headers, channels, channel_match_s)
    items, skips = labelling.label_groups(groups, xrs, events, settings)
    by_split, skips = labelling.split_items(items, settings)

A frame is any object with `path`, `wavelength` and `time_unix_s` (fits_io.AiaHeader). A group is
(time, members): per channel, the copies of that channel's frame (files of one observation time).
Skip records are (members, reason) for groups and (path, reason) for GOES files; the builder writes
them to the skip manifest. `settings` is the builder's settings dict (builder.DEFAULT_SETTINGS).
"""

from __future__ import annotations

import collections
import datetime as dt

from tfds_aia import FLARE_CLASSES, fits_io, goes, hek, splits


def iso_time(time_unix_s: float) -> str:
  """Unix seconds -> "2011-06-07T06:41:25.340" (UTC, milliseconds), as skip reasons give times."""
  return dt.datetime.fromtimestamp(time_unix_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def goes_series(goes_paths, settings: dict, where: str = "") -> tuple[goes.GoesFlux, list]:
  """All GOES XRS files as one series on the data.goes_scaling scale, merged with the
  data.goes_satellites preference (goes.merge), and [(path, reason)] for unusable files.

  Raises ValueError when no file has a valid 1-8 A sample: then no frame can be labelled.
  `where` names the archive in that error.
  """
  parts, skips = [], []
  for path in goes_paths:
    try:
      part = goes.read_goes_file(path, settings["goes_scaling"])
    except Exception as e:  # sunpy, h5netcdf and astropy raise many kinds on damaged files.
      skips.append((path, f"unreadable GOES XRS file ({fits_io.describe(e, path)})"))
      continue
    if not len(part):
      skips.append((path, "GOES XRS file without a valid 1-8 A sample (all flagged bad, missing "
                    "or not positive)"))
    parts.append(part)
  if not sum(len(p) for p in parts):
    raise ValueError(
        f"None of the {len(goes_paths)} GOES XRS files under {where} has a valid 1-8 A "
        "sample, so no image can be labelled (unreadable, or every sample flagged bad); add "
        "GOES XRS files that cover the AIA times (python -m tfds_aia.fetch).")
  prefer = [x.strip() for x in str(settings["goes_satellites"]).split(",") if x.strip()]
  return goes.merge(parts, prefer=prefer), skips


def group_channels(headers, channels, channel_match_s: float) -> tuple[list, list]:
  """([(time, [[copies] per channel])], [(members, reason)]): each frame of the first channel (all
  its copies: frames of the same observation time) with the copies of the nearest frame of every
  other channel within `channel_match_s`; a first-channel frame without one is left out. Which
  copy is used is decided when the pixels are read (a damaged copy does not lose the frame)."""
  channels = tuple(int(c) for c in channels)
  by_channel = {w: sorted((h for h in headers if h.wavelength == w), key=lambda h: h.time_unix_s)
                for w in channels}
  copies = collections.defaultdict(list)  # Copies of the first channel's frames, in path order.
  for h in by_channel[channels[0]]:
    copies[h.time_unix_s].append(h)
  groups, skips = [], []
  for time_unix_s, anchors in copies.items():
    members = [anchors]
    for w in channels[1:]:
      near = [h for h in by_channel[w] if abs(h.time_unix_s - time_unix_s) <= channel_match_s]
      if not near:
        skips.append(([anchors], f"no {w} A frame within {channel_match_s:g} s"))
        break
      nearest = min(near, key=lambda h: abs(h.time_unix_s - time_unix_s)).time_unix_s
      members.append([h for h in near if h.time_unix_s == nearest])
    else:
      groups.append((time_unix_s, members))
  return groups, skips


def label_groups(groups, xrs: goes.GoesFlux, events, settings: dict) -> tuple[list, list]:
  """([(time, members, goes.Label)], [(members, reason)]): the GOES labels of each group
  (goes.label_image with data.goes_tolerance_s and data.forecast_window_hours). Left out: groups
  without a valid GOES flux within the tolerance, and, with HEK `events` (hek.load_events; None:
  no HEK selection), groups labelled data.hek_min_class or above that lie farther than
  data.hek_window_minutes from a listed flare peak of that class (compared on the labels' flux
  scale: goes.policy_factor(data.hek_scaling, data.goes_scaling))."""
  s = settings
  hek_factor = goes.policy_factor(s["hek_scaling"], s["goes_scaling"])
  min_index = goes.class_index(s["hek_min_class"])
  items, skips = [], []
  for time_unix_s, members in groups:
    try:
      label = goes.label_image(xrs, time_unix_s, tolerance_s=s["goes_tolerance_s"],
                               forecast_window_s=s["forecast_window_hours"] * 3600.0)
    except goes.GoesGapError as e:
      skips.append((members, f"{e} ({iso_time(time_unix_s)})"))
      continue
    if events is not None and label.flare_class >= min_index:
      if not hek.near_flare_peak(time_unix_s, events, s["hek_window_minutes"],
                                 s["hek_min_class"], hek_factor)[0]:
        skips.append((members, f"{FLARE_CLASSES[label.flare_class]}-class flux but no HEK "
                      f"flare peak within {s['hek_window_minutes']:g} min"))
        continue
    items.append((time_unix_s, members, label))
  return items, skips


def split_items(items, settings: dict) -> tuple[dict, list]:
  """({split: [item]} for every split in splits.SPLITS, possibly empty; [(members, reason)] for
  items within data.split_gap_hours of a split boundary), by data.train_end and data.val_end."""
  s = settings
  names = splits.assign_splits([t for t, _, _ in items], s["train_end"], s["val_end"],
                               s["split_gap_hours"])
  skips = [(members, f"within {s['split_gap_hours']:g} h of a split boundary ({iso_time(t)})")
           for (t, members, _), name in zip(items, names, strict=True) if not name]
  by_split = {split: [it for it, n in zip(items, names, strict=True) if n == split]
              for split in splits.SPLITS}
  return by_split, skips
