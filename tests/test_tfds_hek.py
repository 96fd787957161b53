"""HEK event lists offline: frames near flare peaks."""

import json

import numpy as np

from tfds_aia import hek
from tfds_aia.splits import to_unix_s


def test_saved_events_select_near_peaks(tmp_path):
  rows = [{"event_starttime": "2011-06-07T06:16:00", "event_peaktime": "2011-06-07T06:41:00",
           "event_endtime": "2011-06-07T06:59:00", "fl_goescls": "M2.5"},
          {"event_starttime": "2011-06-07T10:00:00", "event_peaktime": "2011-06-07T10:10:00",
           "event_endtime": "2011-06-07T10:20:00", "fl_goescls": "C1.2"}]
  path = tmp_path / "events.json"
  path.write_text(json.dumps(rows))
  events = hek.load_events(str(path))
  assert [e["fl_goescls"] for e in events] == ["M2.5", "C1.2"]
  csv_path = tmp_path / "events.csv"
  csv_path.write_text(",".join(hek.FIELDS) + "\n" + "\n".join(
      ",".join(r[k] for k in hek.FIELDS) for r in rows))
  assert hek.load_events(str(csv_path)) == events
  peak = to_unix_s("2011-06-07T06:41:00")
  t = np.array([peak - 31 * 60, peak - 29 * 60, peak + 10, to_unix_s("2011-06-07T10:10:00")])
  np.testing.assert_array_equal(hek.near_flare_peak(t, events, 30, "M"), [0, 1, 1, 0])
  np.testing.assert_array_equal(hek.near_flare_peak(t, events, 30, "C"), [0, 1, 1, 1])


def test_event_classes_are_compared_on_the_labels_flux_scale():
  from tfds_aia import goes
  peaks = ["2011-06-07T06:00:00", "2011-06-07T08:00:00", "2011-06-07T10:00:00"]
  events = [{"fl_goescls": c, "peak_unix_s": to_unix_s(p)}
            for c, p in zip(("C6.9", "C7.1", "C8.5"), peaks, strict=True)]
  t = np.array([to_unix_s(p) for p in peaks])
  np.testing.assert_array_equal(hek.near_flare_peak(t, events, 30, "M"), [0, 0, 0])
  factor = goes.policy_factor("noaa_0.7", "science")  # HEK's NOAA classes, science labels.
  np.testing.assert_array_equal(hek.near_flare_peak(t, events, 30, "M", factor), [0, 1, 1])
  same = goes.policy_factor("noaa_0.7", "noaa_0.7")  # Both on NOAA's scale: as listed.
  np.testing.assert_array_equal(hek.near_flare_peak(t, events, 30, "M", same), [0, 0, 0])
