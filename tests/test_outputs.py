"""PNG grids in the AIA colormap and FITS files that sunpy reads with the right header."""

import matplotlib
import numpy as np
import pytest

from configs import aia171
from solar_ddpm_jax import outputs


def test_class_grid_puts_each_class_on_its_own_row():
  labels = np.array([3, 0, 3, 0, 0], np.int32)
  images = np.where(labels == 0, -1.0, 1.0)[:, None, None, None] * np.ones((5, 4, 4, 1))
  grid, names = outputs.class_grid(images, labels, gap_px=1)
  assert names == ["A", "M"]
  assert grid.shape == (2 * 4 + 1, 3 * 4 + 2, 3) and grid.dtype == np.uint8
  cmap = matplotlib.colormaps["sdoaia171"]
  dark = np.round(np.asarray(cmap(0.0)[:3]) * 255).astype(np.uint8)
  bright = np.round(np.asarray(cmap(1.0)[:3]) * 255).astype(np.uint8)
  for col in (0, 5, 10):  # Row A: three dark images.
    assert np.all(grid[0:4, col:col + 4] == dark)
  assert np.all(grid[5:9, 0:4] == bright) and np.all(grid[5:9, 5:9] == bright)  # Row M: two.
  assert np.all(grid[5:9, 10:14] == 0)  # Empty cell stays black.


def test_save_class_grid_writes_png(tmp_path):
  path = tmp_path / "g" / "grid.png"
  labels = np.repeat(np.arange(5), 2)
  rgb = outputs.save_class_grid(np.zeros((10, 8, 8, 1)), labels, str(path))
  assert rgb.shape == (5 * 9 - 1, 2 * 9 - 1, 3)
  png = matplotlib.image.imread(str(path))
  assert png.ndim == 3 and png.shape[0] > 5 * 8


def test_fits_header_opens_in_sunpy_with_scaled_wcs(tmp_path):
  import astropy.units as u
  import sunpy.map
  res = 32
  image = np.random.default_rng(0).uniform(0, 500, (res, res)).astype(np.float32)
  header = outputs.fits_header(resolution=res, wavelength_a=171, flare_class="X",
                               guidance_scale=3.0, sampler="ddim", num_steps=50, seed=7,
                               checkpoint_step=1234, index=5, preset="demo")
  path = tmp_path / "x.fits"
  outputs.write_fits(str(path), image, header)
  m = sunpy.map.Map(str(path))
  assert m.unit == u.DN / u.s
  assert m.wavelength == 171 * u.angstrom
  expected = 0.6 * 4096 / res
  assert m.scale.axis1.to_value(u.arcsec / u.pix) == pytest.approx(expected)
  assert m.scale.axis2.to_value(u.arcsec / u.pix) == pytest.approx(expected)
  center = m.pixel_to_world((res - 1) / 2 * u.pix, (res - 1) / 2 * u.pix)
  assert abs(center.Tx.to_value(u.arcsec)) < 1e-6 and abs(center.Ty.to_value(u.arcsec)) < 1e-6
  meta = m.meta
  assert meta["flarecls"] == "X" and meta["guidance"] == 3.0 and meta["sampler"] == "ddim"
  assert meta["nsteps"] == 50 and meta["seed"] == 7 and meta["ckptstep"] == 1234
  assert meta["synthetc"] is True and meta["bunit"] == "DN/s"
  assert "placeholder" in header.comments["DATE-OBS"].lower()
  assert any("SYNTHETIC" in str(c) for c in header["COMMENT"])
  np.testing.assert_array_equal(m.data, image)


def test_to_dn_per_s_inverts_the_data_preprocessing():
  from tfds_aia import preprocess
  rng = np.random.default_rng(0)
  for stretch, downsample in (("log", "sum"), ("asinh", "sum"), ("log", "resize")):
    config = aia171.get_config("test")  # Synthetic source: 64 px frames -> 16 px, 4 x 4 blocks.
    config.data.stretch, config.data.downsample = stretch, downsample
    frame = rng.uniform(0, 2 * config.data.dn_ceiling[0], (64, 64))
    x = preprocess.preprocess_channel(frame, 1.0, resolution=16,
                                      dn_ceiling=config.data.dn_ceiling[0],
                                      downsample_method=downsample, stretch=stretch,
                                      asinh_a=config.data.asinh_a)
    back = outputs.to_dn_per_s(x[None, ..., None], config.data)[0, ..., 0]
    area = 16.0 if downsample == "sum" else 1.0
    expected = np.minimum(preprocess.downsample(frame, 16, downsample),
                          config.data.dn_ceiling[0] * area)
    np.testing.assert_allclose(back, expected, rtol=1e-4)


def test_to_dn_per_s_follows_the_frame_size_of_a_manual_dataset():
  from tfds_aia import preprocess
  config = aia171.get_config("paper")  # Manual source, 64 px.
  frame = np.full((1024, 1024), 100.0)  # 100 DN/s per pixel of a 1024 px frame.
  config.data.frame_px = 1024
  x = preprocess.preprocess_channel(frame, 1.0, resolution=64, dn_ceiling=config.data.dn_ceiling[0])
  back = outputs.to_dn_per_s(x[None, ..., None], config.data)
  np.testing.assert_allclose(back, 100.0 * 16 * 16, rtol=1e-4)  # The sum of a 16 x 16 block.
  config.data.frame_px = 4096  # The default is AIA's full frame: 64 x 64 blocks.
  x = preprocess.preprocess_channel(np.full((4096, 4096), 0.5), 1.0, resolution=64,
                                    dn_ceiling=config.data.dn_ceiling[0])
  np.testing.assert_allclose(outputs.to_dn_per_s(x[None, ..., None], config.data),
                             0.5 * 64 * 64, rtol=1e-4)
