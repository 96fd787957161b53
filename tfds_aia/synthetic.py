"""An AIA-like synthetic archive: 171 A FITS files plus a consistent GOES XRS file.

The archive is one evolving Sun (tfds_aia.synthetic_sun) seen in observing runs (frames hours
apart) spread over three years. Its pieces, calibrated against a real AIA 171 level-1 frame
(docs/synthetic.md):
  * the disc: quiet-Sun brightness with 171 A limb brightening, a network texture fixed on the
    rotating surface, and an off-limb corona falling off in two scale heights;
  * active regions (core, fan loops and diffuse halo) that emerge at a rate following a slowly
    varying activity level, live days to weeks and rotate with the Sun's differential rotation
    (`differential_rotation_deg`, the Howard et al. 1990 formula sunpy uses);
  * coronal holes: long-lived low-latitude holes and polar holes that shrink with activity;
  * GOES fluxes correlated within a run and with the activity level (a rank transform keeps the
    class fractions at the configured weights); each frame's brightening sits in its most
    productive visible active region: a kernel and brightened loops whose peak and area grow
    with the flux, saturation at 16383 DN with blooming along CCD columns, and faint
    diffraction spikes for M and X flares.
Headers carry the real AIA keywords (sunpy.map.Map makes an AIAMap of them); the GOES file is a
GOES-16-style L2 netCDF (science scale) that sunpy's TimeSeries reads, with a 1-minute profile
around every frame (the frame's flux exactly at its time) and a 10-minute background between.

    python -m tfds_aia.synthetic --out /tmp/archive --num_images 600 --image_size 256
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

import numpy as np

from tfds_aia import goes
from tfds_aia.synthetic_sun import (
  DAY_S,
  EXPTIME_S,
  RSUN_OBS_ARCSEC,
  RUN_CADENCE_H,
  RUN_MEAN_FRAMES,
  SATURATION_DN,
  SPAN_S,
  Scene,
  _ensure_host,
  _surface_map,
  make_scene,
  render_scene,
)

EPOCH_2000 = dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC)  # GOES-R netCDF time origin.


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




# ------------------------------------------------------------------------ times and fluxes
def sample_fluxes(rng, n: int, class_weights) -> np.ndarray:
  """Fluxes (W/m^2) whose classes follow `class_weights` (A..X), log-uniform within a class."""
  weights = np.asarray(class_weights, np.float64)
  classes = rng.choice(len(weights), size=n, p=weights / weights.sum())
  base = np.asarray(goes.CLASS_BASES_W_M2)[classes]
  return base * 10 ** rng.uniform(0.0, np.log10(9.9), size=n)


def _quantile_to_flux(u, class_weights) -> np.ndarray:
  """u in (0, 1) -> flux: class k covers [cum_{k-1}, cum_k), log-uniform within the class."""
  w = np.asarray(class_weights, np.float64)
  cum = np.concatenate([[0.0], np.cumsum(w / w.sum())])
  k = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(w) - 1)
  pos = np.clip((u - cum[k]) / (cum[k + 1] - cum[k]), 0.0, 1.0)
  return np.asarray(goes.CLASS_BASES_W_M2)[k] * 10 ** (pos * np.log10(9.9))


def observing_times(rng, n: int, t0: float, span_s: float = SPAN_S):
  """Frame times (whole seconds, sorted, unique) in observing runs of RUN_MEAN_FRAMES frames on
  average, RUN_CADENCE_H hours apart; and each frame's run. The runs' starts are stratified over
  the span (one per equal slice, at a random time in it), with at least min(n, 24) runs, so that
  every half year of the span holds frames even in small archives."""
  n_runs = min(n, max(n // RUN_MEAN_FRAMES, 24))
  lengths = 1 + rng.multinomial(n - n_runs, np.full(n_runs, 1.0 / n_runs))
  slice_s = (span_s - 3 * DAY_S) / n_runs
  starts = (np.arange(n_runs) + rng.uniform(size=n_runs)) * slice_s
  times, runs = [], []
  for i, (s, m) in enumerate(zip(starts, lengths, strict=True)):
    steps = rng.uniform(*RUN_CADENCE_H, size=m - 1) * 3600.0
    times.append(t0 + s + np.concatenate([[0.0], np.cumsum(steps)]))
    runs.append(np.full(m, i))
  times, runs = np.concatenate(times), np.concatenate(runs)
  order = np.argsort(times, kind="stable")
  times, runs = np.round(times[order]), runs[order]
  for i in range(1, n):  # Unique whole seconds.
    times[i] = max(times[i], times[i - 1] + 60.0)
  return times, runs


def _half_year_blocks(times: np.ndarray) -> np.ndarray:
  """Calendar half-year (Jan-Jun, Jul-Dec) of each time, as an integer."""
  out = []
  for t in times:
    d = dt.datetime.fromtimestamp(float(t), dt.UTC)
    out.append(2 * d.year + (d.month > 6))
  return np.asarray(out)


def _classes_in_every_half_year(u, times, class_weights, min_frames: int = 20):
  """Swaps quantiles between frames so that each calendar half-year with >= min_frames frames
  holds every class (the class counts are unchanged); frames more than a day from the
  half-year's edges are preferred, so that split gaps keep them."""
  u = u.copy()
  w = np.asarray(class_weights, np.float64)
  cum = np.concatenate([[0.0], np.cumsum(w / w.sum())])
  blocks = _half_year_blocks(times)
  ublocks = [b for b in np.unique(blocks) if (blocks == b).sum() >= min_frames]

  def cls(i):
    return int(np.clip(np.searchsorted(cum, u[i], side="right") - 1, 0, len(w) - 1))

  for b in ublocks:
    in_b = np.flatnonzero(blocks == b)
    t_lo, t_hi = times[in_b].min(), times[in_b].max()
    inner = in_b[(times[in_b] - t_lo > 2 * DAY_S) & (t_hi - times[in_b] > 2 * DAY_S)]
    for k in range(len(w)):
      classes_b = np.array([cls(i) for i in in_b])
      if (classes_b == k).any():
        continue
      counts = np.bincount(classes_b, minlength=len(w))
      recipients = [i for i in (inner if len(inner) else in_b) if counts[cls(i)] > 1]
      donors = [i for i in range(len(u)) if cls(i) == k and blocks[i] != b
                and sum(cls(j) == k for j in np.flatnonzero(blocks == blocks[i])) > 1]
      if not recipients or not donors:
        continue
      ri = min(recipients, key=lambda i: abs(cls(i) - k))
      u[ri], u[donors[0]] = u[donors[0]], u[ri]
  return u


def archive_fluxes(rng, scene: Scene, times: np.ndarray, runs: np.ndarray, class_weights):
  """GOES fluxes of the frames: a latent level mixing the activity (slow), the run (days) and
  the frame (hours), rank-transformed so that the class fractions follow class_weights."""
  n = len(times)
  run_level = rng.standard_normal(runs.max() + 1)[runs]
  frame = np.zeros(n)
  e = rng.standard_normal(n)
  for i in range(n):  # AR(1) within a run, decorrelating over ~8 hours.
    same = i > 0 and runs[i] == runs[i - 1]
    rho = np.exp(-(times[i] - times[i - 1]) / (8 * 3600.0)) if same else 0.0
    frame[i] = rho * frame[i - 1] + np.sqrt(1 - rho**2) * e[i]
  z = 0.55 * scene.activity(times) + 0.55 * run_level + 0.63 * frame
  u = (np.argsort(np.argsort(z, kind="stable"), kind="stable") + 0.5) / n
  u = _classes_in_every_half_year(u, times, class_weights)
  return _quantile_to_flux(u, class_weights)


# ------------------------------------------------------------------------------------- GOES
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


# ---------------------------------------------------------------------------------- archive
def simulate(num_images: int, class_weights=(0.3, 0.3, 0.25, 0.1, 0.05),
             start: str = "2012-01-01", seed: int = 1):
  """The archive's plan without pixels: (scene, times, runs, fluxes, hosts)."""
  rng = np.random.default_rng(int(seed))
  t0 = dt.datetime.fromisoformat(start).replace(tzinfo=dt.UTC).timestamp()
  times, runs = observing_times(rng, int(num_images), t0)
  scene = make_scene(rng, t0, times.max())
  fluxes = archive_fluxes(rng, scene, times, runs, class_weights)
  hosts = np.array([_ensure_host(scene, t, rng) for t in times])
  return scene, times, runs, fluxes, hosts


def render_archive_frame(scene: Scene, times, runs, fluxes, hosts, i: int, size: int,
                         seed: int = 1) -> np.ndarray:
  """Frame i of a `simulate` plan in DN/s; the network texture is shared within the run."""
  run_rng = np.random.default_rng([int(seed), 7, int(runs[i])])
  surface = _surface_map(run_rng)
  first = times[np.flatnonzero(runs == runs[i])[0]]
  return render_scene(scene, float(times[i]), size, float(fluxes[i]),
                      rng=np.random.default_rng([int(seed), int(i)]), surface=surface,
                      surface_t0=float(first), host=int(hosts[i]))


def write_archive(out_dir: str, *, num_images: int = 600, image_size: int = 256,
                  class_weights=(0.3, 0.3, 0.25, 0.1, 0.05), start: str = "2012-01-01",
                  seed: int = 1, wavelengths=(171,), compress: bool = False) -> dict:
  """Writes <out>/aia/<wavelength>/aia_lev1_*.fits and <out>/goes/*.nc; returns a summary.

  Frame times come in observing runs (frames 2-6 h apart) spread over three years (whole
  seconds); see `simulate`.
  """
  from astropy.io import fits
  scene, times, runs, fluxes, hosts = simulate(num_images, class_weights, start, seed)
  for wavelength in wavelengths:
    os.makedirs(os.path.join(out_dir, "aia", str(wavelength)), exist_ok=True)
  surfaces = {}
  for i, (t, flux) in enumerate(zip(times, fluxes, strict=True)):
    run = int(runs[i])
    if run not in surfaces:
      surfaces = {run: (_surface_map(np.random.default_rng([int(seed), 7, run])), t)}
    surface, surface_t0 = surfaces[run]
    image = render_scene(scene, float(t), image_size, float(flux),
                         rng=np.random.default_rng([int(seed), i]), surface=surface,
                         surface_t0=float(surface_t0), host=int(hosts[i]))
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
  goes_t, goes_f = goes_profile(times, fluxes, np.random.default_rng([int(seed), 3]))
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
                       compress=bool(s.compress))


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
