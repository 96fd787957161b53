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
