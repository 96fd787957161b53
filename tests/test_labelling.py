"""tfds_aia.labelling: frames + GOES (+ HEK) -> labels per split, with the reasons of frames left
out; numbers against the definitions (class thresholds, linear interpolation, split gaps)."""

import dataclasses
import datetime as dt
import os

import numpy as np
import pytest
import sunpy.data.test

from tfds_aia import goes, labelling

GO15 = os.path.join(os.path.dirname(sunpy.data.test.__file__), "go1520110607.fits")
T0 = dt.datetime(2012, 3, 1, tzinfo=dt.UTC).timestamp()
SETTINGS = dict(goes_scaling="science", goes_tolerance_s=60.0, goes_satellites="",
                forecast_window_hours=1.0, train_end="2012-03-01T02:00", val_end="2012-03-01T04:00",
                split_gap_hours=0.5, hek_window_minutes=30.0, hek_min_class="M",
                hek_scaling="science")


@dataclasses.dataclass
class Frame:
  path: str
  wavelength: int
  time_unix_s: float


def _series():
  """1-minute GOES samples over 6 h from T0 with a gap of 10 min at 01:00 and fluxes that step
  through the classes: each hour h has flux 3 x 10^(h - 8) W/m^2 (A3, B3, C3, M3, X3, X3)."""
  t = T0 + 60.0 * np.arange(360)
  flux = 3.0 * 10.0 ** (np.minimum(np.floor((t - T0) / 3600.0), 4) - 8)
  keep = ~((t >= T0 + 3600) & (t < T0 + 4200))
  return goes.GoesFlux(t[keep], flux[keep], np.full(int(keep.sum()), "GOES-15"), "science")


def test_group_channels_pairs_the_nearest_partner_and_lists_frames_without_one():
  frames = [Frame("a.fits", 171, T0), Frame("a_copy.fits", 171, T0), Frame("b.fits", 171, T0 + 600),
            Frame("c1.fits", 193, T0 + 30), Frame("c2.fits", 193, T0 + 50),
            Frame("c2_copy.fits", 193, T0 + 50), Frame("far.fits", 193, T0 + 600 + 61)]
  groups, skips = labelling.group_channels(frames, (171, 193), 60.0)
  assert [(t, [[f.path for f in copies] for copies in members]) for t, members in groups] == [
      (T0, [["a.fits", "a_copy.fits"], ["c1.fits"]])]  # 30 s nearer than 50 s.
  assert [([[f.path for f in c] for c in members], reason) for members, reason in skips] == [
      ([["b.fits"]], "no 193 A frame within 60 s")]
  groups, skips = labelling.group_channels(frames, (171,), 60.0)
  assert len(groups) == 2 and not skips


def test_labels_follow_the_class_definition_and_interpolate_the_flux():
  xrs = _series()
  times = T0 + np.array([90.0, 3 * 3600 + 30.0, 4 * 3600 + 15.0, 3600 + 300.0])
  groups = [(t, [[Frame(f"{i}.fits", 171, t)]]) for i, t in enumerate(times)]
  items, skips = labelling.label_groups(groups, xrs, None, SETTINGS)
  assert [t for t, _, _ in items] == list(times[:3])
  for t, _, label in items:
    hour = int((t - T0) // 3600)
    flux = 3.0 * 10.0 ** (min(hour, 4) - 8)  # Constant within the hour.
    assert label.flux_w_m2 == pytest.approx(flux)
    assert label.flare_class == min(hour, 4)  # A=0 ... X=4 by the thresholds 1e-8 ... 1e-4.
    assert label.subclass == pytest.approx(3.0)
    # Forecast: the class of the largest sample in the hour after the image.
    window = (xrs.time_unix_s >= t) & (xrs.time_unix_s <= t + 3600.0)
    peak = xrs.flux_w_m2[window].max()
    assert label.forecast_class == sum(peak >= b for b in (1e-7, 1e-6, 1e-5, 1e-4))
  assert [label.forecast_class for _, _, label in items] == [0, 4, 4]  # 00:01 sees the gap only.
  # Across an hour boundary the flux is linear between the samples around the time.
  t = T0 + 3 * 3600 - 30.0
  (_, _, label), = labelling.label_groups([(t, [[Frame("x", 171, t)]])], xrs, None, SETTINGS)[0]
  assert label.flux_w_m2 == pytest.approx(0.5 * (3e-6 + 3e-5))
  assert label.flare_class == 3  # 1.65e-5 >= 1e-5.
  # In the GOES gap (01:00-01:10), farther than 60 s from any sample: left out with the time.
  assert [r for _, r in skips] == [
      "no valid GOES 1-8 A flux within 60 s of the image time (2012-03-01T01:05:00.000)"]


def test_hek_selection_keeps_m_and_x_frames_near_a_listed_peak_only():
  xrs = _series()
  t_m, t_x = T0 + 3 * 3600 + 600.0, T0 + 4 * 3600 + 600.0
  events = [{"peak_unix_s": t_m + 20 * 60, "fl_goescls": "M3.0"}]
  groups = [(t, [[Frame(n, 171, t)]]) for n, t in (("c", T0 + 2 * 3600 + 600), ("m", t_m),
                                                   ("x", t_x))]
  items, skips = labelling.label_groups(groups, xrs, events, SETTINGS)
  assert [m[0][0].path for _, m, _ in items] == ["c", "m"]  # C is below hek_min_class.
  assert [(m[0][0].path, r) for m, r in skips] == [
      ("x", "X-class flux but no HEK flare peak within 30 min")]


def test_splits_leave_out_frames_near_a_boundary_with_the_time():
  hours = [0.5, 1.6, 2.4, 2.6, 3.6, 4.4, 5.0]
  items = [(T0 + h * 3600, [[Frame(f"{h}", 171, T0 + h * 3600)]], None) for h in hours]
  by_split, skips = labelling.split_items(items, SETTINGS)
  # Boundaries at 02:00 and 04:00 with a 0.5 h gap on either side.
  expected = {"train": [h for h in hours if h < 1.5],
              "validation": [h for h in hours if 2.5 <= h < 3.5],
              "test": [h for h in hours if h >= 4.5]}
  assert {k: [float(m[0][0].path) for _, m, _ in v] for k, v in by_split.items()} == expected
  left_out = [h for h in hours if not any(h in v for v in expected.values())]
  assert [(float(m[0][0].path), r) for m, r in skips] == [
      (h, "within 0.5 h of a split boundary (2012-03-01T"
          f"{int(h):02d}:{int(round(h % 1 * 60)):02d}:00.000)") for h in left_out]


def test_goes_series_lists_unreadable_files_and_stops_without_a_valid_sample(tmp_path):
  bad = tmp_path / "go1520110608.fits"
  bad.write_bytes(b"not a FITS file")
  xrs, skips = labelling.goes_series([GO15, str(bad)], {**SETTINGS, "goes_scaling": "noaa_0.7"})
  assert len(xrs) > 40000 and set(xrs.satellite) == {"GOES-15"}
  assert [p for p, _ in skips] == [str(bad)]
  assert skips[0][1].startswith("unreadable GOES XRS file (")
  with pytest.raises(ValueError, match="None of the 1 GOES XRS files under /archive"):
    labelling.goes_series([str(bad)], SETTINGS, where="/archive")
