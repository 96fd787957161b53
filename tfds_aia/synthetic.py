"""An AIA-like synthetic archive: 171 A FITS files plus a consistent GOES XRS file.

Each frame is a limb-brightened disc with quiet-Sun texture, active regions with loops, and (for
each frame's GOES class) a flare whose peak brightness and size grow with the flux, so the class is
visible. Headers carry the real AIA keywords (sunpy.map.Map makes an AIAMap of them); the GOES file
is a GOES-16-style L2 netCDF (science scale) that sunpy's TimeSeries reads, with a 1-minute profile
around every frame (the frame's flux exactly at its time) and an hourly background between.

    python -m tfds_aia.synthetic --out /tmp/archive --num_images 600 --image_size 256
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

import numpy as np

from tfds_aia import goes

EPOCH_2000 = dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC)  # GOES-R netCDF time origin.
SPAN_S = 3 * 365.25 * 86400.0  # Frames spread over three years.
RSUN_OBS_ARCSEC = 975.0
EXPTIME_S = 2.0
SATURATION_DN = 16383


def _iso(t_unix: float) -> str:
  return dt.datetime.fromtimestamp(t_unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def aia_header(time_unix_s: float, size: int, wavelength: int = 171, exptime_s: float = EXPTIME_S,
               quality: int = 0) -> dict:
  """Real AIA level-1 keywords for a full-disc frame of `size` px (0.6 arcsec/px at 4096)."""
  cdelt = 0.6 * 4096 / size
  iso = _iso(time_unix_s)
  return {
      "TELESCOP": "SDO/AIA", "INSTRUME": "AIA_3", "DETECTOR": "AIA", "ORIGIN": "SDO/JSOC-SDP",
      "WAVELNTH": int(wavelength), "WAVEUNIT": "angstrom", "WAVE_STR": f"{wavelength}_THIN",
      "EXPTIME": float(exptime_s), "DATE-OBS": _iso(time_unix_s - exptime_s / 2),
      "T_OBS": iso + "Z", "DATE": iso, "LVL_NUM": 1.0, "QUALITY": int(quality), "BUNIT": "DN",
      "CTYPE1": "HPLN-TAN", "CTYPE2": "HPLT-TAN", "CUNIT1": "arcsec", "CUNIT2": "arcsec",
      "CDELT1": cdelt, "CDELT2": cdelt, "CRPIX1": (size + 1) / 2, "CRPIX2": (size + 1) / 2,
      "CRVAL1": 0.0, "CRVAL2": 0.0, "CROTA2": 0.0, "RSUN_OBS": RSUN_OBS_ARCSEC,
      "R_SUN": RSUN_OBS_ARCSEC / cdelt, "RSUN_REF": 696000000.0, "DSUN_OBS": 1.4959787e11,
      "HGLN_OBS": 0.0, "HGLT_OBS": 0.0, "CRLN_OBS": 0.0, "CRLT_OBS": 0.0,
      "PIXLUNIT": "DN", "IMG_TYPE": "LIGHT", "SYNTHETC": (True, "synthetic frame (tfds_aia)"),
  }


def _disc(size: int, radius_px: float):
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  c = (size - 1) / 2
  r = np.hypot(yy - c, xx - c) / radius_px
  return yy, xx, r


def _smooth_noise(rng, size: int, scale_px: float) -> np.ndarray:
  """Gaussian-filtered white noise (FFT), unit variance."""
  noise = rng.standard_normal((size, size)).astype(np.float32)
  f = np.fft.fftfreq(size)
  kernel = np.exp(-2 * (np.pi * scale_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
  out = np.fft.ifft2(np.fft.fft2(noise) * kernel).real
  return (out / (out.std() + 1e-9)).astype(np.float32)


def render_frame(rng, size: int, flux_w_m2: float) -> np.ndarray:
  """One 171 A frame [size, size] in DN/s per pixel; the flare grows with log10(flux)."""
  radius = RSUN_OBS_ARCSEC / (0.6 * 4096 / size)
  yy, xx, r = _disc(size, radius)
  on = r < 1.0
  mu = np.sqrt(np.clip(1 - r**2, 0, 1))
  image = np.where(on, 180.0 * (1.0 + 0.6 * (1 - mu)), 0.0)  # Limb brightening in 171 A.
  image += np.where(~on, 120.0 * np.exp(-(r - 1.0) / 0.08), 0.0)  # Corona beyond the limb.
  texture = np.exp(0.25 * _smooth_noise(rng, size, size / 128))  # Quiet-Sun network.
  image *= texture
  level = float(np.log10(flux_w_m2)) + 8.0  # 0 (A1) .. 4 (X1) .. 5 (X10).
  n_regions = 1 + int(rng.integers(0, 2)) + int(max(level, 0) // 1.5)
  for k in range(n_regions):
    rr, phi = 0.75 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    cy, cx = (size - 1) / 2 + radius * rr * np.sin(phi), (size - 1) / 2 + radius * rr * np.cos(phi)
    sigma = size * (0.02 + 0.01 * rng.uniform())
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    image += on * 900.0 * np.exp(-d2 / (2 * sigma**2))
    angle = rng.uniform(0, np.pi)  # Loops: arcs of an ellipse over the region.
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    loop_r = np.hypot(along / (2.5 * sigma), across / (1.2 * sigma))
    image += 600.0 * np.exp(-((loop_r - 1.0) ** 2) / 0.01) * (across > 0)
    if k == 0:  # The flare sits in the first region.
      flare_sigma = size * 0.006 * (1.0 + 0.8 * max(level, 0.0))
      peak = 400.0 * 3.0 ** max(level, 0.0)  # ~400 DN/s (A) to ~32000 DN/s (X1).
      image += peak * np.exp(-d2 / (2 * flare_sigma**2))
  return image.astype(np.float32)


def sample_fluxes(rng, n: int, class_weights) -> np.ndarray:
  """Fluxes (W/m^2) whose classes follow `class_weights` (A..X), log-uniform within a class."""
  weights = np.asarray(class_weights, np.float64)
  classes = rng.choice(len(weights), size=n, p=weights / weights.sum())
  base = np.asarray(goes.CLASS_BASES_W_M2)[classes]
  return base * 10 ** rng.uniform(0.0, np.log10(9.9), size=n)


def write_goes_netcdf(path: str, time_unix_s: np.ndarray, flux_w_m2: np.ndarray,
                      satellite_number: int = 16) -> None:
  """A GOES-R style L2 XRS netCDF (1-8 A in xrsb_flux, flags 0) that sunpy's TimeSeries reads."""
  import h5netcdf
  order = np.argsort(time_unix_s)
  t = np.asarray(time_unix_s, np.float64)[order] - EPOCH_2000.timestamp()
  b = np.asarray(flux_w_m2, np.float32)[order]
  day = dt.datetime.fromtimestamp(float(time_unix_s.min()), dt.UTC).strftime("%Y%m%d")
  with h5netcdf.File(path, "w") as f:
    f.dimensions = {"time": len(t)}
    f.attrs["id"] = f"sci_xrsf-l2-avg1m_g{satellite_number:02d}_d{day}_synthetic.nc"
    f.attrs["platform"] = f"g{satellite_number:02d}"
    f.attrs["title"] = "L2 XRS 1 minute average (synthetic)"
    f.attrs["summary"] = "Synthetic XRS fluxes consistent with a synthetic AIA archive."
    f.attrs["instrument"] = "GOES R Series X-ray Irradiance Sensors (EXIS) (synthetic)"
    f.attrs["processing_level"] = "Level 2"
    f.attrs["source"] = "tfds_aia.synthetic"
    tv = f.create_variable("time", ("time",), np.float64, data=t)
    tv.attrs["units"] = "seconds since 2000-01-01 12:00:00"
    for name, data in (("xrsa_flux", 0.1 * b), ("xrsb_flux", b)):
      f.create_variable(name, ("time",), np.float32, data=data).attrs["units"] = "W m-2"
    for name in ("xrsa_flags", "xrsb_flags"):
      f.create_variable(name, ("time",), np.int16, data=np.zeros(len(t), np.int16))


def goes_profile(frame_times: np.ndarray, frame_fluxes: np.ndarray, rng):
  """GOES samples: 1-minute profiles (+-20 min) peaking at each frame, a 10-minute background
  between (so that every forecast window is covered, goes.window_coverage)."""
  background = 10 ** rng.uniform(-7.5, -6.5)
  start, end = frame_times.min() - 3600.0, frame_times.max() + 2 * 86400.0
  times = [np.arange(start, end, goes.COVERAGE_BIN_S)]
  fluxes = [np.full(len(times[0]), background)]
  offsets = np.arange(-20, 21) * 60.0
  for t, f in zip(frame_times, frame_fluxes, strict=True):
    times.append(t + offsets)
    fluxes.append(np.maximum(background, f * np.exp(-np.abs(offsets) / 900.0)))
  times, fluxes = np.concatenate(times), np.concatenate(fluxes)
  order = np.argsort(times, kind="stable")
  times, fluxes = times[order], fluxes[order]
  keep = np.concatenate([[True], np.diff(times) > 30.0])
  keep |= np.isin(times, frame_times)  # Frame times carry the frame's flux exactly.
  times, fluxes = times[keep], fluxes[keep]
  exact = np.isin(times, frame_times)
  lookup = dict(zip(frame_times.tolist(), frame_fluxes.tolist(), strict=True))
  fluxes[exact] = [lookup[t] for t in times[exact]]
  _, first = np.unique(times, return_index=True)
  return times[first], fluxes[first]


def write_archive(out_dir: str, *, num_images: int = 600, image_size: int = 256,
                  class_weights=(0.3, 0.3, 0.25, 0.1, 0.05), start: str = "2012-01-01",
                  seed: int = 1, wavelengths=(171,), compress: bool = False) -> dict:
  """Writes <out>/aia/<wavelength>/aia_lev1_*.fits and <out>/goes/*.nc; returns a summary.

  Frame times are spread over three years (irregular cadence, whole seconds).
  """
  from astropy.io import fits
  rng = np.random.default_rng(int(seed))
  t0 = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC).timestamp()
  times = np.sort(t0 + np.round(rng.uniform(0, SPAN_S, size=num_images)))
  times = times + np.arange(num_images) * 60.0 * (np.diff(times, prepend=-1) == 0)
  fluxes = sample_fluxes(rng, num_images, class_weights)
  for wavelength in wavelengths:
    os.makedirs(os.path.join(out_dir, "aia", str(wavelength)), exist_ok=True)
  for i, (t, flux) in enumerate(zip(times, fluxes, strict=True)):
    frame_rng = np.random.default_rng([int(seed), i])
    image = render_frame(frame_rng, image_size, flux)
    for j, wavelength in enumerate(wavelengths):
      scale = 1.0 if j == 0 else 0.5 + 0.5 * j  # Other channels: a differently scaled copy.
      dn = np.clip(np.round(image * scale * EXPTIME_S), 0, SATURATION_DN).astype(np.int16)
      header = fits.Header()
      for key, value in aia_header(t, image_size, wavelength).items():
        header[key] = value
      stamp = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y%m%d_%H%M%S")
      path = os.path.join(out_dir, "aia", str(wavelength), f"aia_lev1_{wavelength}a_{stamp}.fits")
      if compress:
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(dn, header, "RICE_1")])
      else:
        hdul = fits.HDUList([fits.PrimaryHDU(dn, header)])
      hdul.writeto(path, overwrite=True)
  os.makedirs(os.path.join(out_dir, "goes"), exist_ok=True)
  goes_t, goes_f = goes_profile(times, fluxes, rng)
  write_goes_netcdf(os.path.join(out_dir, "goes", "sci_xrsf-l2-avg1m_g16_synthetic.nc"),
                    goes_t, goes_f)
  classes = goes.flux_to_class(fluxes)[0]
  summary = {"num_images": int(num_images), "image_size": int(image_size),
             "class_counts": np.bincount(classes, minlength=5).tolist(),
             "first": _iso(times[0]), "last": _iso(times[-1])}
  with open(os.path.join(out_dir, "SYNTHETIC_ARCHIVE.txt"), "w") as f:
    f.write(f"{summary}\n")
  return summary


def write_from_config(data_config, out_dir: str) -> dict:
  """`write_archive` with the settings of config.data.synthetic and config.data.channels."""
  s = data_config.synthetic
  return write_archive(out_dir, num_images=int(s.num_images), image_size=int(s.image_size),
                       class_weights=tuple(s.class_weights), start=str(s.start), seed=int(s.seed),
                       wavelengths=tuple(int(c) for c in data_config.channels),
                       compress=bool(s.get("compress", False)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_images", type=int, default=600)
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--compress", action="store_true", help="Rice-compress (as AIA ships).")
  args = parser.parse_args(argv)
  print(write_archive(args.out, num_images=args.num_images, image_size=args.image_size,
                      seed=args.seed, compress=args.compress))


if __name__ == "__main__":
  main()
