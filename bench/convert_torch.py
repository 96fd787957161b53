r"""The published network in torch vs its conversion here: outputs, and one guided DDIM step.

    PYTHONPATH=/path/to/torch python bench/convert_torch.py --sizes=64,128 --batch=2

For each size: the published `UNet_conditional` (bench/torch_reference.py; its base width is its
image_size, as in the published code) with random weights (every bias and norm scale perturbed
too, so that none of them is left at an initial value a wrong mapping could match), saved with
`torch.save(model.state_dict())`, converted with the package's torch-free converter
(solar_ddpm_jax.convert.convert_torch_checkpoint) into a workdir, read back as a sampling run
reads it (checkpointing.restore_params), and run as the faithful Flax paper UNet. Printed, as
markdown tables for docs/conversion.md:

* the largest absolute difference of the network outputs, conditional (labels 0 and 4) and
  unconditional (torch y=None, the null class here), at several t;
* one DDIM step (eta = 0) with classifier-free guidance from t to abar_0 (the step into the data
  of diffusion.faithful_timesteps), made here by samplers.sample_loop on the explicit grid (t,)
  and in torch by the published guidance (torch.lerp when cfg_scale > 0, the conditional
  prediction alone otherwise) and the DDIM formula, for both sampling.guidance_convention values.

Not a test: it needs torch (bench/requirements.txt) and minutes of CPU at 128 px.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

TIMESTEPS = (1, 250, 500, 999)
DDIM_T = 500
LABELS = (0, 4)  # Flare classes A and X.
# (sampling.guidance_convention, sampling.guidance_scale) of the guided steps.
GUIDANCE = (("project", 3.0), ("project", 0.0), ("published", 3.0), ("published", 0.0))


def _torch_model(size: int, seed: int):
  """The published network at `size` px (width = size) with random weights, in eval mode."""
  import torch
  import torch_reference
  torch.manual_seed(seed)
  # need_weights=False: the same attention through torch's fused kernel, whose memory does not
  # grow with the square of the 16,384 tokens of a 128 px image.
  model = torch_reference.UNetConditional(image_size=size, need_weights=False)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _config(size: int):
  """The paper preset configured as the converter requires for the published network at size."""
  from configs import aia171
  from solar_ddpm_jax import convert
  config = aia171.get_config("paper")
  settings = convert.PublishedSettings(width=size, in_channels=1, out_channels=1, num_classes=5,
                                       time_dim=256)
  with config.unlocked():
    for name, value in convert.required_settings(settings).items():
      group, key = name.split(".")
      config[group][key] = value
    config.model.attention_resolutions = (size, size // 2, size // 4, size // 8)
    config.model.attention_impl = "blockwise"  # Chunked: no [L, L] matrix at 128 px.
    config.diffusion.faithful_timesteps = True
  return config


def _published_guidance(cond, uncond, s: float):
  """The published sampler's guided noise: torch.lerp(uncond, cond, s) if s > 0, else cond."""
  import torch
  return torch.lerp(uncond, cond, s) if s > 0 else cond


def _project_guidance(cond, uncond, w: float):
  return uncond + w * (cond - uncond)


def compare(size: int, batch: int, out_dir: str, seed: int = 0) -> tuple[list, list]:
  """(network rows, DDIM rows) of one size; see the module docstring."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch_reference

  from solar_ddpm_jax import checkpointing, convert, samplers, unet

  model = _torch_model(size, seed)
  path = os.path.join(out_dir, f"unet_conditional_{size}px.pt")
  torch.save(model.state_dict(), path)
  config = _config(size)
  workdir = convert.convert_torch_checkpoint(config, path, os.path.join(out_dir, f"w{size}"))
  params = checkpointing.restore_params(config, workdir)
  flax_model = unet.create_model(config.model)
  apply = jax.jit(lambda p, x, t, y: flax_model.apply({"params": p}, x, t, y, train=False))
  null = int(config.model.num_classes)

  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
  labels = np.resize(np.asarray(LABELS, np.int64), batch)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  net_rows, ddim_rows, eps_torch = [], [], {}
  for t in TIMESTEPS:
    tt = torch.full((batch,), t, dtype=torch.long)
    with torch.no_grad():
      cond = model(torch.from_numpy(x), tt, torch.from_numpy(labels))
      uncond = model(torch.from_numpy(x), tt, None)
    eps_torch[t] = (cond, uncond)
    t_j = jnp.full((batch,), t, jnp.int32)
    for branch, ref, y in (("conditional", cond, labels), ("unconditional", uncond,
                                                          np.full(batch, null))):
      got = np.asarray(apply(params, x_nhwc, t_j, jnp.asarray(y, jnp.int32)))
      want = ref.numpy().transpose(0, 2, 3, 1)
      net_rows.append((size, t, branch, float(np.abs(got - want).max()),
                       float(np.abs(want).max())))

  # One guided DDIM step from t to abar_0, here through the sampler and in torch by hand.
  diffusion = torch_reference.ReferenceDiffusion(img_size=size)
  abar_t, abar_0 = diffusion.alpha_hat[DDIM_T], diffusion.alpha_hat[0]
  abar = np.asarray(diffusion.alpha_hat.double().numpy())
  model_fn = lambda xx, tt, yy: apply(params, xx, tt, yy)
  step = jax.jit(lambda x_t, w: samplers.sample_loop(
      model_fn, abar, x_t, jnp.asarray(labels, jnp.int32), jax.random.key(0), sampler="ddim",
      num_steps=0, guidance_scale=w, null_label=null, prediction="eps", faithful=True,
      timesteps=(DDIM_T,)))
  cond, uncond = eps_torch[DDIM_T]
  x_t = torch.from_numpy(x)
  for convention, scale in GUIDANCE:
    guide = _published_guidance if convention == "published" else _project_guidance
    eps = guide(cond, uncond, scale)
    x0 = (x_t - torch.sqrt(1 - abar_t) * eps) / torch.sqrt(abar_t)
    want = (torch.sqrt(abar_0) * x0 + torch.sqrt(1 - abar_0) * eps).numpy().transpose(0, 2, 3, 1)
    w = float(samplers.guidance_weight(scale, convention))
    got = np.asarray(step(x_nhwc, jnp.float32(w)))
    ddim_rows.append((size, convention, scale, w, float(np.abs(got - want).max()),
                      float(np.abs(want).max())))
  return net_rows, ddim_rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="64,128", help="Image sizes (= base widths), px.")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--out", default="", help="Folder for the .pt files and workdirs "
                                                "(default: a temporary one, removed).")
  args = parser.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
  with tempfile.TemporaryDirectory() as tmp:
    out_dir = args.out or tmp
    os.makedirs(out_dir, exist_ok=True)
    net, ddim = [], []
    for size in sizes:
      t0 = time.perf_counter()
      rows = compare(size, args.batch, out_dir)
      net += rows[0]
      ddim += rows[1]
      print(f"# {size} px done in {time.perf_counter() - t0:.0f} s", flush=True)
  print("\n| px | t | branch | max abs error | max abs output |\n|---|---|---|---|---|")
  for size, t, branch, err, scale in net:
    print(f"| {size} | {t} | {branch} | {err:.2e} | {scale:.2f} |")
  print(f"\n| px | convention | guidance_scale | w | max abs error, DDIM step t={DDIM_T} -> "
        "abar_0 | max abs x |\n|---|---|---|---|---|---|")
  for size, convention, scale, w, err, xmax in ddim:
    print(f"| {size} | {convention} | {scale:g} | {w:g} | {err:.2e} | {xmax:.2f} |")


if __name__ == "__main__":
  main()
