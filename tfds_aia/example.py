"""One example of the dataset: its features (the dataset's FeaturesDict) and the key and
features of one labelled frame."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import tensorflow_datasets as tfds

from tfds_aia import FLARE_CLASSES


def features(resolution: int, num_channels: int) -> tfds.features.FeaturesDict:
  """The features of an example of `num_channels` images of resolution x resolution px."""
  r, c = resolution, num_channels
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(r, r, c), dtype=np.float32),
      "flare_class": tfds.features.ClassLabel(names=FLARE_CLASSES),
      "subclass": tfds.features.Scalar(dtype=np.float32),
      "goes_flux_w_m2": tfds.features.Scalar(dtype=np.float32),
      "forecast_class": tfds.features.ClassLabel(names=FLARE_CLASSES),
      # Fraction of the forecast window's 10-minute intervals with GOES data (1: all).
      "forecast_coverage": tfds.features.Scalar(dtype=np.float32),
      # Raw bytes: TFRecord float lists are float32, too coarse for Unix seconds.
      "time_unix_s": tfds.features.Tensor(shape=(), dtype=np.float64,
                                          encoding=tfds.features.Encoding.BYTES),
      "satellite": tfds.features.Text(),
      "scaling_policy": tfds.features.Text(),
      "source_file": tfds.features.Text(),
  })


def example_of(item, image: np.ndarray, frame_names: bool = False) -> tuple[str, dict]:
  """(key, features) of one frame: the key is its time and channels, never a path. source_file
  names the files (their names), or with `frame_names` the SDOML frames ("2011/171A/37")."""
  time_unix_s, members, label = item
  key = dt.datetime.fromtimestamp(time_unix_s, dt.UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
  key += "_" + "_".join(str(h.wavelength) for h in members)
  return key, {
      "image": image,
      "flare_class": label.flare_class,
      "subclass": np.float32(label.subclass),
      "goes_flux_w_m2": np.float32(label.flux_w_m2),
      "forecast_class": label.forecast_class,
      "forecast_coverage": np.float32(label.forecast_coverage),
      "time_unix_s": np.float64(time_unix_s),
      "satellite": label.satellite,
      "scaling_policy": label.policy,
      "source_file": ",".join(h.path if frame_names else os.path.basename(h.path)
                              for h in members),
  }
