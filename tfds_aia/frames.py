"""One dataset frame from its FITS files: the unit of work of the build (runs in worker processes).

Kept free of TensorFlow so that worker processes start quickly.
"""

from __future__ import annotations

import functools

import numpy as np

from tfds_aia import fits_io, preprocess


@functools.lru_cache(maxsize=4)
def _degradation_table(path: str):
  return preprocess.load_degradation_table(path) if path else None


def preprocess_frame(members, settings: dict, resolution: int):
  """[R, R, C] float32 in [-1, 1] from one header per channel, or (path, reason) when unusable.

  Errors are returned, not raised, so that they cross process boundaries unchanged.
  """
  table = _degradation_table(settings["degradation_table"])
  ceilings = np.broadcast_to(np.asarray(settings["dn_ceiling"], np.float64), (len(members),))
  planes = []
  try:
    for header, ceiling in zip(members, ceilings, strict=True):
      data = fits_io.read_data(header.path, settings["max_nan_fraction"])
      if data.shape != header.shape:
        raise fits_io.BadFileError(header.path,
                                   f"data shape {data.shape} != header {header.shape}")
      if settings["register"]:
        data = fits_io.register_level15(header.path, data)
      factor = preprocess.degradation_factor(table, header.wavelength, header.time_unix_s)
      planes.append(preprocess.preprocess_channel(
          data, header.exptime_s, resolution=resolution, dn_ceiling=ceiling,
          downsample_method=settings["downsample"], stretch=settings["stretch"],
          asinh_a=settings["asinh_a"], degradation=factor))
  except fits_io.BadFileError as e:
    return None, (e.path, e.reason)
  return np.stack(planes, axis=-1), None
