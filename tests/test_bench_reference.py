"""The PyTorch reference of bench/: published parameter count, same outputs as the Flax paper UNet.

Skipped where torch is not installed (it is a benchmark requirement: bench/requirements.txt).
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import torch_reference  # noqa: E402

SIZE = 16  # Every level attends at 16 px as at 64 px (16/8/4/2 instead of 64/32/16/8): seconds.


def test_reference_has_the_published_parameter_count():
  model = torch_reference.UNetConditional(c_in=1, c_out=1, num_classes=5, image_size=64)
  count = torch_reference.num_params(model)
  assert abs(count - torch_reference.PUBLISHED_NUM_PARAMS) <= 0.01 * 23_332_737
  assert count == 23_332_737
  x = torch.zeros(2, 1, 64, 64)
  with torch.no_grad():
    assert model(x, torch.tensor([1, 999]), torch.tensor([0, 4])).shape == (2, 1, 64, 64)


def test_reference_sampler_runs_the_published_loop():
  torch.manual_seed(0)
  model = torch_reference.UNetConditional(image_size=SIZE)
  diffusion = torch_reference.ReferenceDiffusion(noise_steps=4, img_size=SIZE)
  calls = []
  model.register_forward_hook(lambda m, args, out: calls.append(args[2] is None))
  images = diffusion.sample(model, torch.tensor([0, 3]), cfg_scale=3.0)
  assert images.shape == (2, 1, SIZE, SIZE) and float(images.abs().max()) <= 1.0
  assert calls == [False, True] * 3  # t = 3, 2, 1: conditional then unconditional pass.


def _flax_paper_config():
  from configs import aia171
  config = aia171.get_config("paper")
  config.model.image_size = SIZE
  config.model.attention_resolutions = (16, 8, 4, 2)
  config.model.attention_impl = "xla"
  config.model.faithful = True  # align_corners=True upsampling, as the published network.
  return config


def test_flax_paper_unet_matches_the_reference_with_copied_weights():
  import jax
  unet = pytest.importorskip("solar_ddpm_jax.unet")
  config = _flax_paper_config()
  torch.manual_seed(0)
  reference = torch_reference.UNetConditional(image_size=SIZE, width=64).eval()  # The paper UNet.
  params = torch_reference.to_flax_params(reference, null_row=False)  # Faithful: y=None adds 0.
  expected = jax.eval_shape(lambda k: unet.init_params(config.model, k), jax.random.key(0))
  got_paths = {jax.tree_util.keystr(p): np.shape(v)
               for p, v in jax.tree_util.tree_leaves_with_path(params)}
  want_paths = {jax.tree_util.keystr(p): tuple(v.shape)
                for p, v in jax.tree_util.tree_leaves_with_path(expected)}
  assert got_paths == want_paths, (sorted(set(got_paths.items()) ^ set(want_paths.items())))[:10]

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 1, SIZE, SIZE)).astype(np.float32)
  t, labels = np.array([5, 700]), np.array([1, 4])
  with torch.no_grad():
    cond = reference(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(labels))
    uncond = reference(torch.from_numpy(x), torch.from_numpy(t), None)
  model = unet.create_model(config.model)
  x_nhwc = x.transpose(0, 2, 3, 1)
  null = np.full_like(labels, config.model.num_classes)
  out = model.apply({"params": params}, x_nhwc, t.astype(np.int32), labels.astype(np.int32))
  out_null = model.apply({"params": params}, x_nhwc, t.astype(np.int32), null.astype(np.int32))
  np.testing.assert_allclose(np.asarray(out), cond.numpy().transpose(0, 2, 3, 1), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out_null), uncond.numpy().transpose(0, 2, 3, 1),
                             atol=1e-4)


def test_model_flops_of_the_jax_step_match_torchs_count_of_the_reference():
  # Two independent counts of one training step of the published network at 64 px: XLA's cost
  # analysis of the lowered JAX step and torch's FlopCounterMode over the reference's step. XLA
  # also counts elementwise work (norms, GELU, AdamW) and leaves out the multiplications with the
  # zero padding of 3x3 convolutions, which torch counts: within 3% at 64 px.
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
  import common
  import jax
  from torch.utils.flop_counter import FlopCounterMode

  from configs import aia171
  from solar_ddpm_jax import sharding
  config = aia171.get_config("paper")
  config.model.attention_impl = "blockwise"  # The count must not depend on the kernel...
  config.model.remat = True  # ...nor on recomputation.
  jax_flops = common.jax_model_flops(config, sharding.create_mesh(None, jax.devices()[:1]), 1)
  torch.manual_seed(0)
  trainer = torch_reference.ReferenceTrainer(torch_reference.UNetConditional(),
                                             torch_reference.ReferenceDiffusion())
  with FlopCounterMode(display=False) as counter:
    trainer.step(torch.rand(1, 1, 64, 64) * 2 - 1, torch.tensor([3]))
  torch_flops = counter.get_total_flops()
  assert 0.97 * torch_flops <= jax_flops <= 1.03 * torch_flops, (jax_flops, torch_flops)
