"""HEK flare events: the flaring times near which M and X images are taken (as in the paper).

Online, `query_hek` asks sunpy's HEK client month by month (with retries) and saves the events as
JSON; offline, `load_events` reads such a file (or a CSV with the same columns):
  event_starttime, event_peaktime, event_endtime (ISO UTC), fl_goescls (e.g. "M2.5").
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time

import numpy as np

from tfds_aia import goes
from tfds_aia.splits import to_unix_s

FIELDS = ("event_starttime", "event_peaktime", "event_endtime", "fl_goescls")


def load_events(path: str) -> list[dict]:
  """Flare events from a saved JSON list or CSV file; each with the FIELDS and `peak_unix_s`."""
  with open(path) as f:
    if str(path).lower().endswith(".csv"):
      rows = list(csv.DictReader(f))
    else:
      rows = json.load(f)
      rows = rows.get("events", rows) if isinstance(rows, dict) else rows
  events = []
  for row in rows:
    cls = str(row.get("fl_goescls", "") or "").strip()
    if not row.get("event_peaktime") or not cls:
      continue
    events.append({**{k: row.get(k, "") for k in FIELDS},
                   "peak_unix_s": to_unix_s(str(row["event_peaktime"]).replace(" ", "T"))})
  events.sort(key=lambda e: e["peak_unix_s"])
  return events


def near_flare_peak(time_unix_s, events: list[dict], window_minutes: float,
                    min_class: str = "M", flux_factor: float = 1.0) -> np.ndarray:
  """[N] bool: within `window_minutes` of the peak of an event of class >= `min_class`.

  `flux_factor` takes the events' peak fluxes to the scale of `min_class`:
  goes.policy_factor(data.hek_scaling, data.goes_scaling). The event lists of the GOES <= 15 years
  give classes on NOAA's 0.7-scaled fluxes, so on the "science" scale a listed C7.1 peak is an M
  flare (7.1e-6 / 0.7 >= 1e-5), as the labels computed from the same GOES data say.
  """
  t = np.atleast_1d(np.asarray(time_unix_s, np.float64))
  threshold = goes.CLASS_BASES_W_M2[goes.class_index(min_class)] * (1 - 1e-9)
  peaks = np.array(sorted(e["peak_unix_s"] for e in events
                          if goes.class_to_flux(e["fl_goescls"]) * flux_factor >= threshold))
  if not len(peaks):
    return np.zeros(t.shape, bool)
  i = np.clip(np.searchsorted(peaks, t), 1, len(peaks)) - 1
  j = np.clip(i + 1, 0, len(peaks) - 1)
  distance = np.minimum(np.abs(t - peaks[i]), np.abs(t - peaks[j]))
  return distance <= window_minutes * 60.0


def _months(start: dt.datetime, end: dt.datetime):
  while start < end:
    nxt = (start.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    yield start, min(nxt, end)
    start = nxt


def query_hek(start: str, end: str, out_path: str, *, retries: int = 3, wait_s: float = 10.0,
              min_class: str = "C") -> list[dict]:
  """HEK flare events (SSW Latest Events, GOES class >= min_class) month by month; saves JSON."""
  from sunpy.net import attrs as a
  from sunpy.net import hek
  client = hek.HEKClient()
  t0 = dt.datetime.fromisoformat(start)
  t1 = dt.datetime.fromisoformat(end)
  rows = []
  for lo, hi in _months(t0, t1):
    for attempt in range(retries + 1):
      try:
        result = client.search(a.Time(lo, hi), a.hek.EventType("FL"),
                               a.hek.FL.GOESCls >= min_class, a.hek.OBS.Observatory == "GOES")
        break
      except Exception as e:  # Network errors of several kinds.
        if attempt == retries:
          raise ConnectionError(f"HEK query {lo:%Y-%m} failed {retries + 1} times ({e}). "
                                "Offline, give a saved event list (config.data.hek_events).") from e
        time.sleep(wait_s * (attempt + 1))
    for row in result:
      rows.append({k: str(row[k]) for k in FIELDS})
  with open(out_path, "w") as f:
    json.dump(rows, f, indent=1)
  return load_events(out_path)
