"""The UNet: shapes of every preset (no compile), the paper's parameter count, building blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from configs import aia171
from solar_ddpm_jax import attention, unet

PUBLISHED_NUM_PARAMS = 23_332_737  # dome272 UNet_conditional, 64 px, 1 channel, 5 classes.


@pytest.mark.parametrize("preset", aia171.PRESETS)
def test_output_shapes_of_every_preset(preset):
  config = aia171.get_config(preset)
  model = unet.create_model(config.model)
  x, t, labels = unet.dummy_inputs(config.model, batch=2)
  params = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))
  out = jax.eval_shape(lambda p: model.apply({"params": p}, x, t, labels), params)
  size, channels = config.model.image_size, config.model.out_channels
  assert out.shape == (2, size, size, channels) and out.dtype == jnp.float32
  assert config.model.in_channels == len(config.data.channels)
  assert config.model.image_size == config.data.resolution
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.dtype(config.model.param_dtype)


def test_paper_preset_has_the_published_parameter_count():
  config = aia171.get_config("paper")
  params = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))
  count = unet.count_params(params)
  null_row = config.model.time_embed_dim  # The learned null class of CFG: one embedding row.
  print(f"paper UNet: {count:,} parameters ({count - null_row:,} without the null-class row; "
        f"published {PUBLISHED_NUM_PARAMS:,})")
  assert count - null_row == PUBLISHED_NUM_PARAMS
  assert abs(count - PUBLISHED_NUM_PARAMS) <= 0.01 * PUBLISHED_NUM_PARAMS
  assert params["label_emb"]["embedding"].shape == (6, 256)
  widths = [params[f"down{i}_conv"]["conv2"]["kernel"].shape[-1] for i in (1, 2, 3)]
  assert [params["inc"]["conv2"]["kernel"].shape[-1], *widths] == [64, 128, 256, 256]
  assert params["bot2"]["conv2"]["kernel"].shape[-1] == 512
  assert sorted(k for k in params if k.startswith("sa")) == [f"sa{i}" for i in range(1, 7)]


def test_faithful_paper_unet_has_the_published_count_and_a_zero_null_embedding():
  """model.faithful: the original's unconditional pass (y=None) adds no class embedding at all."""
  config = aia171.get_config("paper")
  config.model.faithful = True
  params = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))
  assert unet.count_params(params) == PUBLISHED_NUM_PARAMS
  config = aia171.get_config("test")
  config.model.block_style, config.model.faithful = "paper", True
  model = unet.create_model(config.model)
  x, t, _ = unet.dummy_inputs(config.model, batch=2)
  params = unet.init_params(config.model, jax.random.key(1))
  run = lambda p, label: model.apply({"params": p}, x, t, jnp.full((2,), label, jnp.int32))
  null = run(params, 5)
  assert not np.allclose(run(params, 0), null, atol=1e-4)
  zeroed = dict(params, label_emb={"embedding": jnp.zeros_like(params["label_emb"]["embedding"])})
  for label in (0, 4):  # With a zero class table every class is the null class.
    np.testing.assert_allclose(run(zeroed, label), null, atol=1e-6)


def test_width_and_resolution_are_independent():
  config = aia171.get_config("paper")
  config.model.image_size = 32
  config.model.attention_resolutions = (32, 16, 8, 4)  # Every level attends, as at 64 px.
  small = unet.count_params(jax.eval_shape(lambda k: unet.init_params(config.model, k),
                                           jax.random.key(0)))
  assert small == 23_332_737 + 256  # Same network at 32 px: the count does not depend on size.
  config.model.base_channels = 32
  assert unet.count_params(jax.eval_shape(lambda k: unet.init_params(config.model, k),
                                          jax.random.key(0))) < small / 3


def test_attention_only_at_configured_resolutions():
  config = aia171.get_config("paper")
  config.model.attention_resolutions = (16, 8)
  params = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))
  # 64 px: levels 64/32/16/8; encoder sa1..3 at 32/16/8, decoder sa4..6 at 16/32/64.
  assert sorted(k for k in params if k.startswith("sa")) == ["sa2", "sa3", "sa4"]


def test_bad_image_size_is_an_error():
  config = aia171.get_config("paper")
  config.model.image_size = 60
  with pytest.raises(ValueError, match="not divisible"):
    unet.create_model(config.model)


@pytest.mark.parametrize("style", ["paper", "modern"])
def test_forward_depends_on_time_and_class_and_null_class(style):
  config = aia171.get_config("test")
  config.model.block_style = style
  model = unet.create_model(config.model)
  params = unet.init_params(config.model, jax.random.key(0))
  if style == "modern":  # Zero-initialised output: perturb so that the output is not zero.
    params = jax.tree.map(lambda p: p + 0.02, params)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  f = jax.jit(lambda t, y: model.apply({"params": params}, x, t, y))
  base = np.asarray(f(jnp.array([3, 3]), jnp.array([1, 1])))
  assert base.shape == (2, 16, 16, 1) and np.all(np.isfinite(base))
  assert not np.allclose(base, f(jnp.array([50, 50]), jnp.array([1, 1])))
  assert not np.allclose(base, f(jnp.array([3, 3]), jnp.array([4, 4])))
  assert not np.allclose(base, f(jnp.array([3, 3]), jnp.array([5, 5])))  # Null class.


@pytest.mark.parametrize("style", ["paper", "modern"])
def test_only_the_paper_network_is_blind_to_the_input_scale(style):
  """Bias-free conv + GroupNorm(1) first: the paper UNet's output is the same for x and x / 2."""
  config = aia171.get_config("test")
  config.model.block_style = style
  model = unet.create_model(config.model)
  params = jax.tree.map(lambda p: p + 0.02, unet.init_params(config.model, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  f = jax.jit(lambda x: model.apply({"params": params}, x, jnp.array([7, 60]), jnp.array([1, 3])))
  full, half = np.asarray(f(x)), np.asarray(f(0.5 * x))
  if style == "paper":
    np.testing.assert_allclose(half, full, rtol=1e-4, atol=1e-5)
  else:
    assert np.abs(half - full).max() > 1e-2


def test_modern_model_starts_at_zero_output():
  config = aia171.get_config("test")
  config.model.block_style = "modern"
  x, t, labels = unet.dummy_inputs(config.model, batch=2)
  params = unet.init_params(config.model, jax.random.key(0))
  out = unet.create_model(config.model).apply({"params": params}, x + 0.3, t + 5, labels)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_timestep_embedding_matches_the_published_formula():
  t = np.array([0, 1, 17, 999])
  dim = 8
  inv_freq = 1.0 / (10000 ** (np.arange(0, dim, 2) / dim))
  expected = np.concatenate([np.sin(t[:, None] * inv_freq), np.cos(t[:, None] * inv_freq)], 1)
  np.testing.assert_allclose(unet.timestep_embedding(jnp.asarray(t), dim), expected, atol=1e-4)


@pytest.mark.parametrize("align_corners", [True, False])
def test_bilinear_upsampling_matches_scipy(align_corners):
  x = np.random.default_rng(0).standard_normal((1, 5, 7, 2)).astype(np.float32)
  got = np.asarray(unet.upsample_bilinear(jnp.asarray(x), align_corners))
  # scipy's zoom: grid_mode=False maps corner pixel centres onto each other (align_corners).
  expected = scipy.ndimage.zoom(x, (1, 2, 2, 1), order=1, grid_mode=not align_corners,
                                mode="nearest" if not align_corners else "constant")
  np.testing.assert_allclose(got, expected, atol=1e-5)


def _numpy_attention(q, k, v):
  logits = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnd->btnd", w, v)


@pytest.mark.parametrize("impl", ["xla", "blockwise", "auto"])
def test_attention_implementations_match_numpy_values_and_gradients(impl):
  rng = np.random.default_rng(0)
  q, k, v, ct = (rng.standard_normal((2, 64, 2, 8)).astype(np.float32) for _ in range(4))
  out = attention.dot_product_attention(q, k, v, implementation=impl, chunk=16)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v), atol=1e-5)
  loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v) * ct))
  ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")),
                 argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(loss(lambda q, k, v: attention.dot_product_attention(
      q, k, v, implementation=impl, chunk=16)), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(got, ref, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_blockwise_backward_with_its_own_tiles_matches_xla():
  # 4096 tokens: the forward runs 8 chunks of 512 rows, the backward 32 steps of 128.
  assert attention.backward_chunk(4096, 512) == 128
  assert attention.backward_chunk(1024, 512) == 256
  assert attention.backward_chunk(2304, 256) == 128 and 2304 % 128 == 0
  rng = np.random.default_rng(1)
  q, k, v, ct = (rng.standard_normal((1, 4096, 1, 4)).astype(np.float32) for _ in range(4))
  loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v) * ct))
  ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")),
                 argnums=(0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(loss(lambda q, k, v: attention.blockwise_attention(q, k, v, 512)),
                         argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(got, ref, strict=True):
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_blockwise_attention_of_tokens_the_chunk_does_not_divide():
  """2304 tokens (48 px) run in chunks of 384 (not one 2304-row chunk) and match numpy."""
  assert attention.divisor_at_most(2304, 512) == 384
  assert attention.divisor_at_most(2500, 128) == 125
  assert attention.backward_chunk(2500, 512) == 125
  rng = np.random.default_rng(2)
  q, k, v = (rng.standard_normal((1, 2304, 1, 4)).astype(np.float32) for _ in range(3))
  out = jax.jit(lambda q, k, v: attention.blockwise_attention(q, k, v, 512))(q, k, v)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v), atol=1e-5)
  assert attention.resolve("auto", 2304, jnp.float32, 512) == "blockwise"


def test_blockwise_attention_in_bfloat16_is_as_accurate_as_xla():
  """bf16 inputs: the scale and logits stay in float32, so the error is the output rounding."""
  rng = np.random.default_rng(3)
  q, k, v, ct = (jnp.asarray(rng.standard_normal((1, 1024, 1, 32)) * s, jnp.bfloat16)
                 for s in (2.3, 2.3, 1.0, 1.0))  # Logits with a std of about 9.
  f64 = lambda x: np.asarray(x, np.float64)
  ref = _numpy_attention(f64(q), f64(k), f64(v))
  err = lambda impl: np.abs(f64(attention.dot_product_attention(
      q, k, v, implementation=impl, chunk=256)) - ref)
  blockwise, xla = err("blockwise"), err("xla")
  assert blockwise.max() <= xla.max() and np.sqrt((blockwise ** 2).mean()) <= np.sqrt(
      (xla ** 2).mean())
  assert attention.blockwise_attention(q, k, v, 256).dtype == jnp.bfloat16
  grads = jax.grad(lambda q: jnp.sum(attention.blockwise_attention(q, k, v, 256).astype(
      jnp.float32) * ct.astype(jnp.float32)))(q)
  assert grads.dtype == jnp.bfloat16


def test_attention_chunk_must_be_positive():
  q = jnp.zeros((1, 8, 1, 4))
  with pytest.raises(ValueError, match="attention_chunk=0"):
    attention.blockwise_attention(q, q, q, 0)


def test_auto_attention_is_blockwise_on_cpu_for_long_sequences():
  assert attention.resolve("auto", 4096, jnp.float32, 512) == "blockwise"
  assert attention.resolve("auto", 256, jnp.float32, 512) == "default"
  with pytest.raises(ValueError, match="Unknown attention"):
    attention.resolve("flash3", 16, jnp.float32, 8)


@pytest.mark.parametrize("block_style", ["paper", "modern"])
def test_remat_recomputes_blocks_in_the_program_xla_receives(block_style):
  # The lowered gradient holds the forward convolutions of every rematerialised block twice.
  # (XLA:CPU merges them back when it compiles; GPU and TPU compilers keep them.)
  config = aia171.get_config("test")
  config.model.block_style = block_style
  x, t, labels = unet.dummy_inputs(config.model, batch=2)
  params = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))

  def convolutions(remat, grad=True):
    config.model.remat = remat
    model = unet.create_model(config.model)
    fn = lambda p: jnp.mean(model.apply({"params": p}, x, t, labels) ** 2)
    return jax.jit(jax.grad(fn) if grad else fn).lower(params).as_text().count(
        "stablehlo.convolution")

  forward, plain, remat = convolutions(False, grad=False), convolutions(False), convolutions(True)
  # Each block recomputes the convolutions whose outputs its backward needs (modern blocks: the
  # first of their two; paper blocks: both).
  assert remat >= plain + forward // 3, (forward, plain, remat)


def test_remat_and_bf16_keep_the_function():
  config = aia171.get_config("test")
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  t, labels = jnp.array([4, 80]), jnp.array([0, 3])
  params = unet.init_params(config.model, jax.random.key(0))

  def loss_and_grad(model_config):
    model = unet.create_model(model_config)
    return jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(model.apply({"params": p}, x, t, labels) ** 2)))(params)

  ref_loss, ref_grad = loss_and_grad(config.model)
  config.model.remat = True
  loss, grad = loss_and_grad(config.model)
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  config.model.remat = False
  config.model.dtype = "bfloat16"
  loss, grad = loss_and_grad(config.model)
  assert float(loss) == pytest.approx(float(ref_loss), rel=0.05)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grad))  # f32 master weights.
