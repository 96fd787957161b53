"""CLIP ViT image tower: safetensors loading with the Hugging Face names, and its numerics."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from solar_ddpm_jax.evaluation import clip, weights

TINY = clip.ClipVisionConfig(image_size=32, patch_size=8, width=16, layers=2, heads=2, mlp_dim=32,
                             projection_dim=8)


def _random_tensors(cfg, seed=0):
  rng = np.random.default_rng(seed)
  out = {k: (0.2 * rng.standard_normal(s)).astype(np.float32)
         for k, s in clip.expected_hf_shapes(cfg).items()}
  out["vision_model.embeddings.position_ids"] = np.arange(17)[None]  # Extra buffers are ignored.
  out["text_model.final_layer_norm.weight"] = np.ones(16, np.float32)
  return out


def test_vit_b32_has_the_published_names_and_shapes():
  shapes = clip.expected_hf_shapes()
  assert shapes["vision_model.embeddings.patch_embedding.weight"] == (768, 3, 32, 32)
  assert shapes["vision_model.embeddings.class_embedding"] == (768,)
  assert shapes["vision_model.embeddings.position_embedding.weight"] == (50, 768)
  assert shapes["vision_model.pre_layrnorm.weight"] == (768,)
  assert shapes["vision_model.encoder.layers.11.self_attn.q_proj.weight"] == (768, 768)
  assert shapes["vision_model.encoder.layers.11.self_attn.out_proj.bias"] == (768,)
  assert shapes["vision_model.encoder.layers.0.mlp.fc1.weight"] == (3072, 768)
  assert shapes["vision_model.encoder.layers.0.mlp.fc2.weight"] == (768, 3072)
  assert shapes["vision_model.encoder.layers.5.layer_norm2.bias"] == (768,)
  assert shapes["vision_model.post_layernorm.weight"] == (768,)
  assert shapes["visual_projection.weight"] == (512, 768)
  assert len(shapes) == 5 + 12 * 16 + 3
  assert sum(int(np.prod(s)) for s in shapes.values()) == 87_849_216


def _numpy_clip(t, x, cfg):
  """Independent forward pass over the Hugging Face tensors (NCHW, torch layouts)."""
  g = lambda k: t["vision_model." + k]  # noqa: E731
  p = cfg.patch_size
  b, h, w, _ = x.shape
  patches = x.reshape(b, h // p, p, w // p, p, 3).transpose(0, 1, 3, 5, 2, 4)
  patches = patches.reshape(b, -1, 3 * p * p)
  tokens = patches @ g("embeddings.patch_embedding.weight").reshape(cfg.width, -1).T
  cls = np.broadcast_to(g("embeddings.class_embedding"), (b, 1, cfg.width))
  z = np.concatenate([cls, tokens], 1) + g("embeddings.position_embedding.weight")

  def ln(v, name):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5) * g(name + ".weight") + g(name + ".bias")

  def lin(v, name):
    return v @ g(name + ".weight").T + g(name + ".bias")
  z = ln(z, "pre_layrnorm")
  hd = cfg.width // cfg.heads
  for i in range(cfg.layers):
    pre = f"encoder.layers.{i}."
    a = ln(z, pre + "layer_norm1")
    q, k, v = (lin(a, pre + f"self_attn.{n}_proj").reshape(b, -1, cfg.heads, hd) for n in "qkv")
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    z = z + lin(np.einsum("bhqk,bkhd->bqhd", s, v).reshape(b, -1, cfg.width),
                pre + "self_attn.out_proj")
    m = lin(ln(z, pre + "layer_norm2"), pre + "mlp.fc1")
    z = z + lin(m / (1 + np.exp(-1.702 * m)), pre + "mlp.fc2")
  return ln(z[:, 0], "post_layernorm") @ t["visual_projection.weight"].T


def test_safetensors_load_and_forward_match_numpy(tmp_path):
  tensors = _random_tensors(TINY)
  path = str(tmp_path / "model.safetensors")
  save_file(tensors, path)
  params = clip.load_clip_params(path, TINY)
  flat = weights.flatten(params)
  np.testing.assert_array_equal(flat["layers_1/q_proj/kernel"],
                                tensors["vision_model.encoder.layers.1.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(flat["patch_embedding/kernel"], tensors[
      "vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0))
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  ours = clip.ClipVision(TINY).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(ours), _numpy_clip(tensors, x.astype(np.float64), TINY),
                             rtol=1e-4, atol=1e-4)


def test_missing_and_misshapen_tensors_are_named():
  tensors = _random_tensors(TINY)
  del tensors["vision_model.encoder.layers.1.mlp.fc2.bias"]
  with pytest.raises(weights.WeightError, match=r"missing.*layers\.1\.mlp\.fc2\.bias"):
    clip.params_from_hf(tensors, TINY)
  tensors = _random_tensors(TINY)
  tensors["visual_projection.weight"] = np.zeros((16, 8), np.float32)
  with pytest.raises(weights.WeightError, match=r"misshapen.*visual_projection\.weight"):
    clip.params_from_hf(tensors, TINY)


def test_a_pytorch_bin_in_place_of_the_safetensors_says_what_was_expected(tmp_path):
  import pickle
  import zipfile
  path = tmp_path / "pytorch_model.bin"  # torch.save's zip layout, not safetensors.
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({}))
  with pytest.raises(weights.WeightError) as e:
    clip.load_clip_params(str(path))
  msg = str(e.value)
  assert str(path) in msg and "could not be read as model.safetensors of openai/clip" in msg
  assert "--config.evaluation.clip_weights=" in msg and "huggingface.co" in msg


def test_missing_file_names_file_source_and_key(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    clip.load_clip_params(str(tmp_path / "model.safetensors"))
  msg = str(e.value)
  assert "model.safetensors" in msg and "huggingface.co/openai/clip-vit-base-patch32" in msg
  assert "config.evaluation.clip_weights" in msg


def test_preprocess_uses_clip_constants():
  white = np.ones((1, 16, 16, 1), np.float32)
  out = np.asarray(clip.preprocess(white))
  assert out.shape == (1, 224, 224, 3)
  np.testing.assert_allclose(out[0, 100, 100], (1 - np.array(clip.CLIP_MEAN)) / clip.CLIP_STD,
                             rtol=1e-5)


def test_preprocess_keeps_the_resized_limb_in_range():
  # A sharp disc edge rings under bicubic resizing; CLIP's own processors clip it to [0, 1].
  yy, xx = np.mgrid[:64, :64]
  disc = np.where(np.hypot(yy - 31.5, xx - 31.5) < 24, 1.0, -1.0).astype(np.float32)
  out = np.asarray(clip.preprocess(np.stack([disc, disc[::-1]])[..., None]))
  lo = (0 - np.array(clip.CLIP_MEAN)) / clip.CLIP_STD
  hi = (1 - np.array(clip.CLIP_MEAN)) / clip.CLIP_STD
  assert np.all(out >= lo - 1e-5) and np.all(out <= hi + 1e-5)
  np.testing.assert_allclose(out.min(axis=(0, 1, 2)), lo, atol=1e-5)  # Both ends are reached.
  np.testing.assert_allclose(out.max(axis=(0, 1, 2)), hi, atol=1e-5)


def test_multichannel_images_use_their_first_channel():
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(clip.preprocess(x)),
                             np.asarray(clip.preprocess(x[..., :1])), atol=1e-6)
