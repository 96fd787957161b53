"""Self-attention over the paper UNet's token counts: XLA formulations against torch, fwd and grad.

  python bench/bench_attention.py [--quick] [--batch 8] [--sizes 64,32] [--heads 4]

The paper UNet attends over every pixel of a 64 px (4096 tokens, 64 channels) and 32 px level
(1024 tokens, 128 and 64 channels) with 4 heads; on XLA:CPU that dominates the training step.
JAX rows, each jitted, inputs [batch, tokens, heads, head_dim]:
  dpa          jax.nn.dot_product_attention (implementation=None: XLA)
  einsum       heads moved next to batch ([B, N, T, D]), einsum - softmax - einsum
  bmm          heads merged into the batch ([B*N, T, D]), jnp.matmul - softmax - jnp.matmul
  blockwise    bmm over query chunks of --chunk under lax.map (memory O(chunk * T)), autodiff
  flash        the same chunks with a custom VJP that recomputes them (FlashAttention-2 backward):
               solar_ddpm_jax.attention.blockwise_attention, the UNet's "blockwise" (CPU "auto")
Torch rows: F.scaled_dot_product_attention (the fused kernel) and the explicit softmax(QK^T)V of
nn.MultiheadAttention with need_weights=True (what the published network runs).
"grad" is forward + backward of sum(out * cotangent) with respect to q, k, v. Prints; asserts
nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def attention_bmm(q, k, v):
  """softmax(q k^T / sqrt(d)) v with heads merged into the batch; q, k, v [B, T, N, D]."""
  import jax
  import jax.numpy as jnp
  b, t, n, d = q.shape
  merge = lambda x: x.transpose(0, 2, 1, 3).reshape(b * n, x.shape[1], d)
  qm, km, vm = merge(q * (d ** -0.5)), merge(k), merge(v)
  w = jax.nn.softmax(jnp.matmul(qm, km.transpose(0, 2, 1)), axis=-1)
  out = jnp.matmul(w, vm)
  return out.reshape(b, n, t, d).transpose(0, 2, 1, 3)


def attention_einsum(q, k, v):
  import jax
  import jax.numpy as jnp
  d = q.shape[-1]
  logits = jnp.einsum("btnd,bsnd->bnts", q * (d ** -0.5), k)
  return jnp.einsum("bnts,bsnd->btnd", jax.nn.softmax(logits, axis=-1), v)


def attention_blockwise(q, k, v, chunk: int):
  """bmm attention over query chunks (lax.map): the logits of one chunk at a time."""
  import jax
  b, t, n, d = q.shape
  if t <= chunk or t % chunk:
    return attention_bmm(q, k, v)
  qc = q.reshape(b, t // chunk, chunk, n, d).transpose(1, 0, 2, 3, 4)
  out = jax.lax.map(lambda qi: attention_bmm(qi, k, v), qc)
  return out.transpose(1, 0, 2, 3, 4).reshape(b, t, n, d)


def _jax_rows(args, size, channels):
  import jax
  import jax.numpy as jnp
  import numpy as np

  sys.path.insert(0, common.REPO)
  from solar_ddpm_jax import attention
  tokens, d = size * size, channels // args.heads
  rng = np.random.default_rng(0)
  q, k, v, ct = (jnp.asarray(rng.standard_normal((args.batch, tokens, args.heads, d)),
                             jnp.float32) for _ in range(4))
  impls = {
      "dpa": lambda q, k, v: jax.nn.dot_product_attention(q, k, v),
      "einsum": attention_einsum,
      "bmm": attention_bmm,
      "blockwise": lambda q, k, v: attention_blockwise(q, k, v, args.chunk),
      "flash": lambda q, k, v: attention.blockwise_attention(q, k, v, args.chunk),
  }
  rows, ref = [], None
  for name, fn in impls.items():
    fwd = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) * ct), argnums=(0, 1, 2)))
    out = jax.block_until_ready(fwd(q, k, v))
    ref = out if ref is None else ref
    err = float(jnp.max(jnp.abs(out - ref)))
    jax.block_until_ready(grad(q, k, v))
    f_s, _ = common.time_calls(lambda fwd=fwd: fwd(q, k, v), args.repeats, jax.block_until_ready)
    g_s, _ = common.time_calls(lambda grad=grad: grad(q, k, v), args.repeats,
                               jax.block_until_ready)
    rows.append((f"jax {name}", f_s, g_s, err))
  return rows


def _torch_rows(args, size, channels):
  import torch
  import torch.nn.functional as F  # noqa: N812
  common.torch_threads(args.threads)
  tokens, d = size * size, channels // args.heads
  g = torch.Generator().manual_seed(0)
  q, k, v, ct = (torch.randn(args.batch, args.heads, tokens, d, generator=g) for _ in range(4))

  def explicit(q, k, v):
    w = torch.softmax(torch.bmm(q.flatten(0, 1) * d ** -0.5, k.flatten(0, 1).transpose(1, 2)), -1)
    return torch.bmm(w, v.flatten(0, 1)).view_as(q)

  rows = []
  for name, fn in (("torch sdpa", F.scaled_dot_product_attention),
                   ("torch explicit (need_weights=True)", explicit)):
    def fwd(fn=fn):
      with torch.no_grad():
        return fn(q, k, v)

    def grad(fn=fn):
      qs, ks, vs = (x.clone().requires_grad_(True) for x in (q, k, v))
      (fn(qs, ks, vs) * ct).sum().backward()
      return qs.grad

    fwd()
    grad()
    f_s, _ = common.time_calls(fwd, args.repeats)
    g_s, _ = common.time_calls(grad, args.repeats)
    rows.append((name, f_s, g_s, None))
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--batch", type=int, default=None, help="batch (default 8; quick 2)")
  ap.add_argument("--sizes", default="64,32", help="level sizes (px); tokens = size^2")
  ap.add_argument("--channels", default="64,128", help="channels at each size (paper: 64, 128)")
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--chunk", type=int, default=512, help="query chunk of the blockwise rows")
  ap.add_argument("--repeats", type=int, default=None, help="timed calls (default 3; quick 1)")
  args = ap.parse_args()
  common.configure_threads(args.threads)
  args.batch = args.batch or (2 if args.quick else 8)
  args.repeats = args.repeats or (1 if args.quick else 3)
  common.header("Self-attention: XLA formulations vs torch", args)
  print(f"batch {args.batch}, {args.heads} heads, float32, blockwise chunk {args.chunk}",
        flush=True)
  table = []
  for size, channels in zip((int(s) for s in args.sizes.split(",")),
                            (int(c) for c in args.channels.split(",")), strict=True):
    t0 = time.perf_counter()
    rows = _torch_rows(args, size, channels) + _jax_rows(args, size, channels)
    sdpa = rows[0]
    for name, f_s, g_s, err in rows:
      table.append([f"{size} px ({size * size} tokens, {channels} ch)", name, f"{f_s:.3f}",
                    f"{g_s:.3f}", f"{sdpa[1] / f_s:.2f}x", f"{sdpa[2] / g_s:.2f}x",
                    common.fmt(err, ".1e")])
    print(f"  {size} px done in {time.perf_counter() - t0:.0f} s", flush=True)
  print()
  common.print_table(["level", "row", "fwd s", "grad s", "fwd vs torch sdpa",
                      "grad vs torch sdpa", "max |out - dpa|"], table)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
