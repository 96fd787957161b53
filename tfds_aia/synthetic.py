"""An AIA-like synthetic archive: 171 A FITS files plus a consistent GOES XRS file.

The archive is one evolving Sun seen in observing runs (frames hours apart) spread over three
years. Its pieces, calibrated against a real AIA 171 level-1 frame (docs/synthetic.md):
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
import dataclasses
import datetime as dt
import functools
import os

import numpy as np

from tfds_aia import goes

EPOCH_2000 = dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC)  # GOES-R netCDF time origin.
DAY_S = 86400.0
SPAN_S = 3 * 365.25 * DAY_S  # Frames spread over three years.
# Version of the generator: part of the archive's fingerprint (dataset.dataset_dirs), so that an
# archive written by an earlier generator is never reused for the same settings.
GENERATOR_VERSION = 2
RSUN_OBS_ARCSEC = 975.0
EXPTIME_S = 2.0
SATURATION_DN = 16383
BLOOM_FRACTION = 0.15  # Part of the charge above the full well that bleeds along the column.

# Background brightness model in DN/s per pixel (resolution independent), fitted to the radial
# profile of sunpy's aia_171_level1.fits (bench/synthetic_archive.py): quiet disc QS_DN_S, limb
# brightening QS * (1 + LIMB_C * (1 / sqrt(1 - r^2 + LIMB_EPS^2) - 1)), and beyond the limb the
# limb value times w exp(-(r-1)/H1) + (1-w) exp(-(r-1)/H2) (r in solar radii).
QS_DN_S = 119.0
LIMB_C = 0.387
LIMB_EPS = 0.10
CORONA_W, CORONA_H1, CORONA_H2 = 0.975, 0.0393, 0.38
CORONA_GAIN = 1.17  # Off-limb brightness times this (polar holes dim part of it).
TEXTURE_SIGMA = 0.42  # Log-normal spread of the quiet-Sun network.
MAP_DEG = 0.5  # Resolution of the surface maps (network texture), degrees.

# Observing runs: frames this many hours apart, this many frames per run on average.
RUN_CADENCE_H = (2.0, 6.0)
RUN_MEAN_FRAMES = 6
# Active regions: emergence rate per day at mean activity; lifetime (days, log-normal median).
AR_RATE_PER_DAY = 0.75
AR_LIFETIME_DAYS = 12.0
CH_RATE_PER_DAY = 1.0 / 25.0  # Low-latitude coronal holes.


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


# ------------------------------------------------------------------------------ solar geometry
def differential_rotation_deg(duration_s, latitude_deg, frame_time: str = "synodic"):
  """Change of heliographic longitude (deg, not wrapped) over `duration_s` at `latitude_deg`:
  Howard et al. (1990), (2.894 - 0.428 sin^2 - 0.370 sin^4) microrad/s, minus Earth's mean
  orbital motion 0.9856 deg/day for the synodic (Earth-seen) rate, as
  sunpy.sun.models.differential_rotation(..., model="howard")."""
  s2 = np.sin(np.deg2rad(latitude_deg)) ** 2
  rate_deg_s = np.rad2deg((2.894 - 0.428 * s2 - 0.370 * s2**2) * 1e-6)
  if frame_time == "synodic":
    rate_deg_s = rate_deg_s - 0.9856 / DAY_S
  elif frame_time != "sidereal":
    raise ValueError(f"frame_time={frame_time!r}: choose 'synodic' or 'sidereal'.")
  return rate_deg_s * np.asarray(duration_s, np.float64)


def radius_px(size: int) -> float:
  """The solar radius in pixels of a `size` px full-disc frame."""
  return RSUN_OBS_ARCSEC / (0.6 * 4096 / size)


@functools.lru_cache(maxsize=8)
def _geometry(size: int):
  """Per pixel: r (solar radii), on-disc mask, and the heliographic latitude/longitude (deg) of
  the surface point (on the disc) or of the limb point at the same position angle (off it).
  Rows run south to north, columns east to west (FITS order, solar north up)."""
  c = (size - 1) / 2
  yy, xx = np.mgrid[:size, :size]
  x, y = (xx - c) / radius_px(size), (yy - c) / radius_px(size)
  r = np.hypot(x, y)
  on = r < 1.0
  rs = np.maximum(r, 1e-9)
  xs, ys = np.where(on, x, x / rs), np.where(on, y, y / rs)
  zs = np.sqrt(np.clip(1.0 - xs**2 - ys**2, 0.0, 1.0))
  lat = np.rad2deg(np.arcsin(np.clip(ys, -1, 1)))
  lon = np.rad2deg(np.arctan2(xs, zs))
  return r.astype(np.float32), on, lat.astype(np.float32), lon.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _trig(size: int):
  _, _, lat, lon = _geometry(size)
  return np.sin(np.deg2rad(lat)), np.cos(np.deg2rad(lat)), np.deg2rad(lon)


@functools.lru_cache(maxsize=8)
def _background(size: int) -> np.ndarray:
  return background_profile(_geometry(size)[0]).astype(np.float32)


def background_profile(r) -> np.ndarray:
  """The quiet-Sun brightness (DN/s per pixel) at radius r (solar radii)."""
  r = np.asarray(r, np.float64)
  mu2 = np.clip(1.0 - r**2, 0.0, 1.0)
  disc = QS_DN_S * (1.0 + LIMB_C * (1.0 / np.sqrt(mu2 + LIMB_EPS**2) - 1.0))
  limb = QS_DN_S * (1.0 + LIMB_C * (1.0 / LIMB_EPS - 1.0))
  h = np.maximum(r - 1.0, 0.0)
  corona = limb * (CORONA_W * np.exp(-h / CORONA_H1) + (1 - CORONA_W) * np.exp(-h / CORONA_H2))
  return np.where(r < 1.0, disc, CORONA_GAIN * corona)


def _smooth_noise(rng, shape, scale_px: float) -> np.ndarray:
  """Gaussian-filtered white noise (FFT, periodic), unit variance."""
  noise = rng.standard_normal(shape).astype(np.float32)
  f0, f1 = np.fft.fftfreq(shape[0]), np.fft.rfftfreq(shape[1])
  kernel = np.exp(-2 * (np.pi * scale_px) ** 2 * (f0[:, None] ** 2 + f1[None, :] ** 2))
  out = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
  return (out / (out.std() + 1e-9)).astype(np.float32)


def _surface_map(rng) -> np.ndarray:
  """Network texture on a latitude x longitude grid (MAP_DEG), unit variance: cells of a few
  degrees (supergranules, ~30 Mm) on a larger-scale modulation. Drawn in Fourier space (white
  noise filtered by the sum of two Gaussian kernels, one inverse FFT)."""
  shape = (int(180 / MAP_DEG), int(360 / MAP_DEG))
  f2 = np.fft.fftfreq(shape[0])[:, None] ** 2 + np.fft.rfftfreq(shape[1])[None, :] ** 2
  kernel = np.zeros(f2.shape)
  for weight, scale_deg in ((0.8, 1.2), (0.6, 6.0)):
    k = np.exp(-2 * (np.pi * scale_deg / MAP_DEG) ** 2 * f2)
    kernel += weight * k / np.sqrt(np.sum(k**2))
  spectrum = (rng.standard_normal(f2.shape) + 1j * rng.standard_normal(f2.shape)) * kernel
  out = np.fft.irfft2(spectrum, s=shape)
  return (out / (out.std() + 1e-9)).astype(np.float32)


def _sample_map(surface: np.ndarray, lat, lon) -> np.ndarray:
  i = np.clip(((lat + 90.0) / MAP_DEG).astype(np.int32), 0, surface.shape[0] - 1)
  j = (np.floor(lon / MAP_DEG).astype(np.int64)) % surface.shape[1]
  return surface[i, j]


# ---------------------------------------------------------------------------------- the scene
@dataclasses.dataclass
class Regions:
  """Active regions (or coronal holes): one row each; longitudes are Stonyhurst (Earth-facing
  central meridian = 0) at the birth time and rotate with `differential_rotation_deg`."""
  t_birth: np.ndarray
  t_death: np.ndarray
  lat: np.ndarray
  lon_birth: np.ndarray
  size_deg: np.ndarray
  bright: np.ndarray
  angle: np.ndarray

  def lon_at(self, t) -> np.ndarray:
    lon = self.lon_birth + differential_rotation_deg(t - self.t_birth, self.lat)
    return (lon + 180.0) % 360.0 - 180.0

  def alive(self, t) -> np.ndarray:
    return (self.t_birth <= t) & (t < self.t_death)

  def envelope(self, t) -> np.ndarray:
    """Brightness over the life: emergence over the first 15 %, then a slow decay."""
    life = self.t_death - self.t_birth
    age = np.clip((t - self.t_birth) / life, 0.0, 1.0)
    return np.minimum(1.0, age / 0.15) * np.sqrt(1.0 - age)

  def append(self, **row) -> None:
    for f in dataclasses.fields(self):
      setattr(self, f.name, np.append(getattr(self, f.name), row[f.name]))

  @classmethod
  def empty(cls) -> Regions:
    return cls(*[np.zeros(0) for _ in dataclasses.fields(cls)])


@dataclasses.dataclass
class Scene:
  """The evolving Sun of an archive: activity level, active regions, coronal holes."""
  t0: float
  periods_s: np.ndarray
  phases: np.ndarray
  amps: np.ndarray
  regions: Regions
  holes: Regions
  polar_offset: np.ndarray  # Per pole (north, south): extra polar-hole size, degrees.

  def activity(self, t) -> np.ndarray:
    """Slowly varying activity level (unit variance over the cycle, months timescale)."""
    t = np.asarray(t, np.float64)[..., None]
    wave = self.amps * np.cos(2 * np.pi * (t - self.t0) / self.periods_s + self.phases)
    return wave.sum(-1) / np.sqrt(0.5 * np.sum(self.amps**2))


def _draw_regions(rng, n, t_birth, lifetime_days, kind: str) -> Regions:
  if kind == "ar":
    lat = np.clip(np.abs(rng.normal(15.0, 7.0, n)), 3.0, 40.0) * rng.choice([-1.0, 1.0], n)
    size = np.clip(rng.lognormal(np.log(4.5), 0.35, n), 2.0, 11.0)
    bright = rng.lognormal(0.0, 0.25, n)
  else:
    lat = np.clip(rng.normal(0.0, 20.0, n), -45.0, 45.0)
    size = rng.uniform(6.0, 15.0, n)
    bright = rng.uniform(0.55, 0.8, n)  # Depth of the hole (fractional dimming).
  return Regions(t_birth=t_birth, t_death=t_birth + lifetime_days * DAY_S, lat=lat,
                 lon_birth=rng.uniform(-180.0, 180.0, n), size_deg=size, bright=bright,
                 angle=rng.uniform(0.0, np.pi, n))


def make_scene(rng, t_start: float, t_end: float) -> Scene:
  """Activity, active regions and coronal holes covering [t_start, t_end]."""
  periods = np.array([160.0, 330.0, 700.0]) * DAY_S
  scene = Scene(t0=t_start, periods_s=periods, phases=rng.uniform(0, 2 * np.pi, 3),
                amps=np.array([0.5, 0.7, 1.0]), regions=Regions.empty(), holes=Regions.empty(),
                polar_offset=rng.uniform(-4.0, 4.0, 2))
  lo, hi = t_start - 90 * DAY_S, t_end + DAY_S
  max_gain = np.exp(0.5 * np.sum(scene.amps) / np.sqrt(0.5 * np.sum(scene.amps**2)))
  n = rng.poisson(AR_RATE_PER_DAY * max_gain * (hi - lo) / DAY_S)
  t = rng.uniform(lo, hi, n)
  keep = rng.uniform(size=n) < np.exp(0.5 * scene.activity(t)) / max_gain  # Thinning.
  t = np.sort(t[keep])
  life = np.clip(rng.lognormal(np.log(AR_LIFETIME_DAYS), 0.6, len(t)), 3.0, 80.0)
  scene.regions = _draw_regions(rng, len(t), t, life, "ar")
  n = rng.poisson(CH_RATE_PER_DAY * (hi - lo) / DAY_S)
  t = np.sort(rng.uniform(lo, hi, n))
  life = np.clip(rng.lognormal(np.log(60.0), 0.4, n), 20.0, 200.0)
  scene.holes = _draw_regions(rng, n, t, life, "ch")
  return scene


def _visible(regions: Regions, t: float, max_lon: float = 90.0) -> np.ndarray:
  return np.flatnonzero(regions.alive(t) & (np.abs(regions.lon_at(t)) < max_lon))


def flare_host(scene: Scene, t: float) -> int:
  """Index of the active region that produces the frame's X-ray flux: the visible one (within
  80 deg of the central meridian) with the largest brightness x area; -1 when none."""
  idx = _visible(scene.regions, t, 80.0)
  if not len(idx):
    return -1
  reg = scene.regions
  score = reg.bright[idx] * reg.size_deg[idx] ** 2 * reg.envelope(t)[idx]
  return int(idx[np.argmax(score)])


def _ensure_host(scene: Scene, t: float, rng) -> int:
  """The flux-producing region at t; when no region is visible, one emerges 0.5-3 days before t
  (it then stays in the scene for later frames): the X-ray flux always has a visible source."""
  host = flare_host(scene, t)
  if host >= 0:
    return host
  age = rng.uniform(0.5, 3.0) * DAY_S
  row = _draw_regions(rng, 1, np.array([t - age]),
                      np.clip(rng.lognormal(np.log(AR_LIFETIME_DAYS), 0.6, 1), 4.0, 80.0), "ar")
  lat = float(row.lat[0])
  row.lon_birth = np.array([rng.uniform(-60, 60) - differential_rotation_deg(age, lat)])
  scene.regions.append(**{f.name: getattr(row, f.name) for f in dataclasses.fields(row)})
  return len(scene.regions.lat) - 1


# -------------------------------------------------------------------------------- rendering
def _hole_mask(holes: Regions, scene: Scene, t: float, size: int) -> np.ndarray:
  """Fractional dimming in [0, 1) of each pixel by coronal holes (on the disc and above the
  limb): irregular low-latitude holes plus polar holes whose size falls with activity."""
  _, _, lat, lon = _geometry(size)
  slat, clat, lon_rad = _trig(size)
  dim = np.zeros(lat.shape, np.float32)
  for k in _visible(holes, t, 120.0):
    latc, lonc = np.deg2rad(holes.lat[k]), np.deg2rad(holes.lon_at(t)[k])
    reach = np.deg2rad(1.5 * holes.size_deg[k])
    cosd = slat * np.sin(latc) + clat * np.cos(latc) * np.cos(lon_rad - lonc)
    near = cosd > np.cos(reach)
    if not near.any():
      continue
    dlon, sl, cl = lon_rad[near] - lonc, slat[near], clat[near]
    d = np.rad2deg(np.arccos(np.clip(cosd[near], -1, 1)))
    bearing = np.arctan2(np.sin(dlon) * cl, np.cos(latc) * sl - np.sin(latc) * cl * np.cos(dlon))
    ph = holes.angle[k]
    edge = holes.size_deg[k] * (1 + 0.22 * np.cos(2 * bearing + ph)
                                + 0.12 * np.cos(3 * bearing + 2 * ph))
    grow = min(1.0, (t - holes.t_birth[k]) / (10 * DAY_S), (holes.t_death[k] - t) / (10 * DAY_S))
    m = np.clip((edge - d) / 2.5, 0.0, 1.0) * holes.bright[k] * max(grow, 0.0)
    dim[near] = np.maximum(dim[near], m.astype(np.float32))
  a = float(scene.activity(t))
  for pole, sign in enumerate((1.0, -1.0)):
    size_deg = np.clip(16.0 - 9.0 * a + scene.polar_offset[pole], 0.0, 32.0)
    if size_deg > 0:
      m = np.clip((size_deg - (90.0 - sign * lat)) / 3.0, 0.0, 1.0) * 0.7
      np.maximum(dim, m.astype(np.float32), out=dim)
  return dim


def _region_patch(size: int, cy: float, cx: float, half: int):
  """Pixel index slices and local offsets (dy, dx) of a square cut-out around (cy, cx)."""
  y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, size)
  x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, size)
  if y0 >= y1 or x0 >= x1:
    return None
  dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
  dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
  return (slice(y0, y1), slice(x0, x1)), dy, dx


def _add_region(image, size, lat, lon, size_deg, bright, angle, gain, flare_peak=0.0,
                flare_sigma_px=0.0):
  """Adds one active region (core, fan loops, halo), and its flare when flare_peak > 0."""
  rad = radius_px(size)
  c = (size - 1) / 2
  la, lo = np.deg2rad(lat), np.deg2rad(lon)
  x, y = np.cos(la) * np.sin(lo), np.sin(la)
  mu = float(max(np.cos(la) * np.cos(lo), 0.0))
  cy, cx = c + y * rad, c + x * rad
  sigma = float(np.deg2rad(size_deg) * rad)  # Angular size -> pixels at disc centre.
  half = int(np.ceil(3.0 * 1.4 * 1.6 * sigma + 3 * 1.8 * flare_sigma_px)) + 2
  patch = _region_patch(size, cy, cx, half)
  if patch is None:
    return
  where, dy, dx = patch
  rr = max(np.hypot(x, y), 1e-6)
  ux, uy = float(x / rr), float(y / rr)  # Python floats keep the patch in float32.
  d_rad = (dx * ux + dy * uy) / max(mu, 0.25)  # Undo the foreshortening towards the limb.
  d_tan = -dx * uy + dy * ux
  ca, sa = float(np.cos(angle)), float(np.sin(angle))
  a = d_rad * ca + d_tan * sa
  b = -d_rad * sa + d_tan * ca
  q = (a / (1.6 * sigma)) ** 2 + (b / sigma) ** 2
  core = 1400.0 * np.exp(-0.5 * q / 0.5**2)
  halo = 150.0 * np.exp(-0.5 * q / 1.4**2)
  rq = np.sqrt(q)
  loops = np.zeros_like(q)
  for k, scale in enumerate((0.7, 1.0, 1.35)):  # Fan loops: arcs on one side of the axis.
    loops += (650.0 / (1 + k)) * np.exp(-((rq / scale - 1.0) ** 2) / 0.012)
  loops *= b > 0
  patch_dn = float(bright * gain) * (core + halo + loops)
  if flare_peak > 0:
    fa = (dx * ca + dy * sa) / (1.5 * flare_sigma_px)  # Tall loops: not foreshortened.
    fb = (-dx * sa + dy * ca) / flare_sigma_px
    patch_dn += flare_peak * np.exp(-0.5 * (fa**2 + fb**2))  # Kernel / ribbons.
    patch_dn += loops * (flare_peak / 3000.0)  # The region's loops light up.
  image[where] += patch_dn.astype(np.float32)


def _diffraction(image, size, cy, cx, peak):
  """Faint diffraction spikes of the entrance-filter mesh: four arms at 45 deg, beaded into
  diffraction orders, intensity ~1 % of the (unsaturated) peak falling off with distance."""
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  dy, dx = yy - cy, xx - cx
  d = np.hypot(dx, dy) + 1e-6
  spacing = max(size / 64.0, 2.0)
  for ang in (np.pi / 4, 3 * np.pi / 4):
    along = dx * np.cos(ang) + dy * np.sin(ang)
    perp = -dx * np.sin(ang) + dy * np.cos(ang)
    beads = 0.5 + 0.5 * np.cos(2 * np.pi * along / spacing)
    image += (0.01 * peak * np.exp(-0.5 * (perp / 0.6) ** 2) * beads ** 2
              / (1.0 + d / spacing)).astype(np.float32)


def _bloom(image, saturation_dn_s: float) -> None:
  """Charge above the full well bleeds along CCD columns (axis 0) into the neighbours: a
  BLOOM_FRACTION of the excess fills the pixels above and below the saturated run."""
  excess = np.clip(image - saturation_dn_s, 0.0, None)
  cols = np.flatnonzero(excess.sum(0) > 0)
  np.minimum(image, saturation_dn_s, out=image)
  for j in cols:
    rows = np.flatnonzero(excess[:, j] > 0)
    extra = int(np.ceil(BLOOM_FRACTION * excess[:, j].sum() / saturation_dn_s / 2))
    lo, hi = max(rows[0] - extra, 0), min(rows[-1] + extra + 1, image.shape[0])
    image[lo:hi, j] = saturation_dn_s


def flare_peak_dn_s(flux_w_m2: float) -> float:
  """Peak 171 A brightening (DN/s per pixel) of a frame's flux: the flux-producing kernel of the
  host region, 1500 at A1, x 10^0.3 per decade to C1 and x 10^0.6 per decade above (the CCD
  saturates, 8191 DN/s at 2 s, from ~C5), at most 16 x the saturation level."""
  level = max(float(np.log10(flux_w_m2)) + 8.0, 0.0)
  return min(1500.0 * 10 ** (0.3 * level + 0.3 * max(level - 2.0, 0.0)),
             16.0 * SATURATION_DN / EXPTIME_S)


def flare_sigma_px(flux_w_m2: float, size: int) -> float:
  """Width (px, sigma) of the brightening at a 256 px frame's scale: x 2 per decade of flux from
  1.2 px at A1 (~3 Mm), at most 12 px (~30 Mm)."""
  return min(1.2 * 10 ** (0.3 * max(float(np.log10(flux_w_m2)) + 8.0, 0.0)), 12.0) * size / 256.0


def render_scene(scene: Scene, t: float, size: int, flux_w_m2: float, *, rng,
                 surface: np.ndarray | None = None, surface_t0: float | None = None,
                 host: int | None = None) -> np.ndarray:
  """One 171 A frame [size, size] in DN/s per pixel of `scene` at time t (unix s)."""
  r, on, lat, lon = _geometry(size)
  if surface is None:
    surface, surface_t0 = _surface_map(rng), t
  lon_rot = lon - differential_rotation_deg(t - surface_t0, lat)  # Texture rotates too.
  texture = np.exp(TEXTURE_SIGMA * _sample_map(surface, lat, lon_rot))  # Median 1.
  off_texture = np.where(on, texture, np.sqrt(texture))  # Radial streaks above the limb.
  image = _background(size) * off_texture
  image *= 1.0 - _hole_mask(scene.holes, scene, t, size)
  level = max(float(np.log10(flux_w_m2)) + 8.0, 0.0)
  # Regions are brighter when the X-ray background is high (x 2.5 per decade, 0.25 to 2.5).
  gain = float(np.clip(10 ** (0.4 * (level - 2.0)), 0.25, 2.5))
  if host is None:
    host = flare_host(scene, t)
  reg = scene.regions
  lons, env = reg.lon_at(t), reg.envelope(t)
  for k in _visible(reg, t, 95.0):
    peak = flare_peak_dn_s(flux_w_m2) if k == host else 0.0
    _add_region(image, size, reg.lat[k], lons[k], reg.size_deg[k], reg.bright[k] * env[k],
                reg.angle[k], gain, peak, flare_sigma_px(flux_w_m2, size))
  if host >= 0 and level >= 3.0:  # M and X: diffraction spikes around the kernel.
    la, lo = np.deg2rad(reg.lat[host]), np.deg2rad(lons[host])
    c, rad = (size - 1) / 2, radius_px(size)
    _diffraction(image, size, c + np.sin(la) * rad, c + np.cos(la) * np.sin(lo) * rad,
                 flare_peak_dn_s(flux_w_m2))
  image += rng.standard_normal(image.shape).astype(np.float32) * np.sqrt(
      np.maximum(image, 0.0) / EXPTIME_S) * 0.5  # Photon noise (~1 DN per photon at 171 A).
  _bloom(image, SATURATION_DN / EXPTIME_S)
  return np.maximum(image, 0.0).astype(np.float32)


def render_frame(rng, size: int, flux_w_m2: float) -> np.ndarray:
  """One stand-alone 171 A frame [size, size] in DN/s per pixel: a fresh Sun with an activity
  level matching the flux, its brightening growing with log10(flux)."""
  t = 0.0
  scene = make_scene(rng, t - 30 * DAY_S, t + DAY_S)
  host = _ensure_host(scene, t, rng)
  return render_scene(scene, t, size, flux_w_m2, rng=rng, host=host)


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
