"""The synthetic Sun of the AIA-like archive (tfds_aia.synthetic): one evolving corona in 171 A,
rendered in DN/s per pixel, calibrated against a real AIA 171 level-1 frame (docs/synthetic.md).
  * the disc: quiet-Sun brightness with 171 A limb brightening, a network texture fixed on the
    rotating surface, and an off-limb corona falling off in two scale heights;
  * active regions (core, fan loops and diffuse halo) that emerge at a rate following a slowly
    varying activity level, live days to weeks and rotate with the Sun's differential rotation
    (`differential_rotation_deg`, the Howard et al. 1990 formula sunpy uses);
  * coronal holes: long-lived low-latitude holes and polar holes that shrink with activity;
  * flares in the most productive visible active region: a kernel and brightened loops whose peak
    and area grow with the GOES flux, saturation at 16383 DN with blooming along CCD columns, and
    faint diffraction spikes for M and X flares.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

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
