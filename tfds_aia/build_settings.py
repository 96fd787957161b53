"""The settings of a dataset build: which change its bytes (fingerprinted) and which only how it
is built, with their defaults (configs/aia171.py's paper preset; tests/test_config.py checks that
they agree), read from a config.data group.

The builder also runs without a config (`tfds build`), so these defaults are its own; a config.data
group given to `settings_from_config` may be a partial mapping (missing fields take them).
"""

from __future__ import annotations

import numpy as np

from tfds_aia import cache, preprocess

# Frames from an SDOML v2 store (data.source="sdoml", tfds_aia.sdoml): frame_source is "sdoml"
# there, "fits" otherwise; the frames of [sdoml_start, sdoml_end) (ISO UTC, "": the store's
# ends), one per sdoml_cadence_minutes of the first channel (0: every frame).
SDOML_SETTINGS = dict(frame_source="fits", sdoml_start="", sdoml_end="",
                      sdoml_cadence_minutes=0.0)
# Settings taken from config.data (defaults = configs/aia171.py); they change the output bytes.
DEFAULT_SETTINGS = dict(
    downsample="sum", dn_ceiling=(3000.0,), stretch="log", asinh_a=0.01, register=False,
    degradation_table="", goes_scaling="science", goes_tolerance_s=60.0, goes_satellites="",
    forecast_window_hours=24.0, train_end="2014-01-01", val_end="2015-01-01",
    split_gap_hours=12.0, hek_events="", hek_window_minutes=30.0, hek_min_class="M",
    hek_scaling="noaa_0.7",
    max_nan_fraction=0.0, allowed_quality=0, channel_match_s=60.0, file_format="tfrecord",
    frame_px=preprocess.AIA_FULL_FRAME_PX, **preprocess.PIXEL_CHECK_DEFAULTS)
# Settings added after datasets of this version were first built: fingerprinted only when set
# away from their defaults, so that a dataset built before them keeps its fingerprint (the records
# of its frames that pass the checks are the same bytes); its build_settings.json lacks them.
LATER_SETTINGS = tuple(preprocess.PIXEL_CHECK_DEFAULTS)
# The same for the SDOML settings, which builds from FITS files do not have (settings_from_config
# adds them for data.source="sdoml" only): a dataset built from FITS files keeps its fingerprint.
_AT_DEFAULT_LEFT_OUT = LATER_SETTINGS + tuple(SDOML_SETTINGS)
ALL_DEFAULTS = {**DEFAULT_SETTINGS, **SDOML_SETTINGS}
# Settings that change how, not what, is built (left out of the fingerprint). The SDOML store is
# where the frames are read from, as manual_dir is for FITS files: a local copy of the public
# store builds the same dataset.
RUNTIME_SETTINGS = dict(num_workers=0, max_in_flight=4, cache_dir="", beam_pipeline_options="",
                        sdoml_store="")


def settings_fingerprint(settings: dict) -> str:
  """Short hash of the build settings (cache.settings_fingerprint), without LATER_SETTINGS and
  SDOML_SETTINGS that keep their defaults."""
  return cache.settings_fingerprint({
      k: v for k, v in settings.items()
      if not (k in _AT_DEFAULT_LEFT_OUT and _same_setting(v, ALL_DEFAULTS[k]))})


def _same_setting(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(float(v) for v in np.ravel(value)) == tuple(float(v) for v in default)
  if isinstance(default, str):
    return str(value) == default
  return float(value) == float(default)


def settings_from_config(data_config) -> dict:
  """The builder settings of a config.data group (missing fields take the defaults; the
  SDOML_SETTINGS with data.source="sdoml" only)."""
  out = {}
  for key, default in DEFAULT_SETTINGS.items():
    value = data_config.get(key, default) if hasattr(data_config, "get") else default
    if key == "frame_px":  # Checked there, and a synthetic archive's own size.
      value = preprocess.frame_px(data_config)
    if key == "max_disc_median_dn_s":  # One float per channel, or one for all.
      value = tuple(float(v) for v in np.ravel(value))
    out[key] = tuple(value) if isinstance(default, tuple) else type(default)(value)
  if hasattr(data_config, "get") and data_config.get("source", "manual") == "sdoml":
    for key, default in SDOML_SETTINGS.items():
      out[key] = "sdoml" if key == "frame_source" else type(default)(data_config.get(key, default))
  return out
