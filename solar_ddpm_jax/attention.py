"""Self-attention kernels for the UNet: fused on GPU, chunked with a recomputing backward on CPU.

All functions take q, k, v as [batch, tokens, heads, head_dim] and return the same shape.

  xla        jax.nn.dot_product_attention(implementation="xla"): the [T, T] logits in memory.
  cudnn      jax.nn.dot_product_attention(implementation="cudnn"): the fused flash kernel (GPU,
             bf16/fp16).
  blockwise  exact attention over query chunks with a custom VJP that recomputes each chunk's
             logits from the saved log-sum-exp (the FlashAttention-2 backward). Memory O(chunk*T);
             on XLA:CPU it runs from cache, several times faster than `xla` at 4096 tokens. It
             computes in float32 whatever the input dtype (bf16 on a CPU buys no speed, and
             bf16 logits and scaling cost accuracy); the output has the input dtype.
  auto       cudnn on GPU for half-precision inputs, jax's default choice elsewhere on GPU/TPU,
             blockwise on CPU when the tokens exceed the chunk, xla otherwise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "blockwise")


def resolve(implementation: str, tokens: int, dtype, chunk: int) -> str:
  """The concrete implementation that "auto" (or an explicit name) means here."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; choose one of "
                     f"{', '.join(IMPLEMENTATIONS)}.")
  if implementation != "auto":
    return implementation
  backend = jax.default_backend()
  if backend == "gpu":
    return "cudnn" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "default"
  if backend == "cpu" and tokens > chunk:
    return "blockwise"
  return "default"


def dot_product_attention(q, k, v, *, implementation: str = "auto", chunk: int = 512):
  """softmax(q k^T / sqrt(head_dim)) v per head; q, k, v [B, T, N, D] -> [B, T, N, D]."""
  impl = resolve(implementation, q.shape[1], q.dtype, chunk)
  if impl == "default":
    return jax.nn.dot_product_attention(q, k, v)
  if impl in ("xla", "cudnn"):
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
  return blockwise_attention(q, k, v, chunk)


def divisor_at_most(n: int, cap: int) -> int:
  """The largest divisor of n that is <= cap (at least 1)."""
  for size in range(min(n, max(1, cap)), 0, -1):
    if n % size == 0:
      return size
  return 1


def blockwise_attention(q, k, v, chunk: int = 512):
  """Exact attention by query chunks with a recomputing backward; [B, T, N, D] -> [B, T, N, D].

  The chunk is the largest divisor of T up to `chunk` (2304 tokens, 48 px: 384 rows); a T with
  no divisor of at least chunk / 8 runs as one chunk (still the memory-lean backward).
  """
  b, t, n, d = q.shape
  if chunk < 1:
    raise ValueError(f"model.attention_chunk={chunk}: give a positive number of query rows.")
  dtype = q.dtype
  rows = divisor_at_most(t, chunk)
  if t <= chunk or rows < max(2, chunk // 8):
    rows = t
  merge = lambda x: jnp.asarray(x, jnp.float32).transpose(0, 2, 1, 3).reshape(b * n, t, d)
  out = _flash(merge(q) * (d ** -0.5), merge(k), merge(v), rows)
  return out.reshape(b, n, t, d).transpose(0, 2, 1, 3).astype(dtype)


def _flash_forward(q, k, v, chunk):
  """q (pre-scaled), k, v [G, T, D] -> (out [G, T, D], log-sum-exp of the logits [G, T])."""
  g, t, d = q.shape
  per_group = t // chunk
  q_chunks = q.reshape(g * per_group, chunk, d)

  def one(i):
    kg = jax.lax.dynamic_index_in_dim(k, i // per_group, keepdims=False)
    vg = jax.lax.dynamic_index_in_dim(v, i // per_group, keepdims=False)
    logits = (q_chunks[i] @ kg.T).astype(jnp.float32)
    peak = logits.max(-1, keepdims=True)
    p = jnp.exp(logits - peak)
    total = p.sum(-1, keepdims=True)
    out = (p.astype(v.dtype) @ vg).astype(jnp.float32) / total
    return out.astype(q.dtype), (peak + jnp.log(total))[:, 0]

  out, lse = jax.lax.map(one, jnp.arange(g * per_group))
  return out.reshape(g, t, d), lse.reshape(g, t)


def backward_chunk(tokens: int, chunk: int) -> int:
  """Query rows per step of the backward: [tokens, rows] tiles of about 2**18 values (1 MiB in f32).

  The backward holds four [tokens, rows] arrays per step, so it wants smaller tiles than the forward
  (measured on XLA:CPU, bench/bench_attention.py: 128 rows at 4096 tokens, 256 at 1024).
  """
  return divisor_at_most(tokens, min(chunk, max(128, 2 ** 18 // tokens)))


def _flash_backward(chunk, residuals, d_out):
  """The FlashAttention-2 backward, by query chunks, in the keys-major layout.

  Each step recomputes P^T = exp(K q_i^T - lse_i) as [tokens, rows], so every product is a plain
  matmul (no transposed [rows, tokens] operand for XLA:CPU to copy): dV += P^T dO_i,
  dS^T = P^T * (V dO_i^T - delta_i), dK += dS^T q_i, dq_i^T = K^T dS^T. K^T is materialised once
  per group (an optimization barrier keeps XLA from folding the transpose back into the product,
  which XLA:CPU then runs on its slow generic dot), and the dq_i^T tiles are transposed after the
  loop: 1.4x faster backward at 4096 tokens (bench/bench_attention.py).
  """
  q, k, v, out, lse = residuals
  g, t, d = q.shape
  rows = backward_chunk(t, chunk)
  n = t // rows
  f32 = lambda x: x.astype(jnp.float32)
  delta = (f32(d_out) * f32(out)).sum(-1)  # rowsum(dO * O).

  def per_group(args):
    qg, kg, vg, dog, lseg, deltag = args
    kg, vg = f32(kg), f32(vg)
    k_t = jax.lax.optimization_barrier(kg.T)  # [D, T] in memory.

    def body(carry, xs):
      dk, dv = carry
      qi, doi, lsei, di = f32(xs[0]), f32(xs[1]), xs[2], xs[3]
      p_t = jnp.exp(kg @ qi.T - lsei[None, :])  # [T, rows]
      dv = dv + p_t @ doi
      ds_t = p_t * (vg @ doi.T - di[None, :])
      dk = dk + ds_t @ qi
      return (dk, dv), k_t @ ds_t  # dq_i^T [D, rows]

    xs = (qg.reshape(n, rows, d), dog.reshape(n, rows, d), lseg.reshape(n, rows),
          deltag.reshape(n, rows))
    zeros = jnp.zeros(kg.shape, jnp.float32)
    (dk, dv), dq_t = jax.lax.scan(body, (zeros, zeros), xs)
    return dq_t.transpose(0, 2, 1).reshape(t, d), dk, dv

  dq, dk, dv = jax.lax.map(per_group, (q, k, v, d_out, lse, delta))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, chunk):
  return _flash_forward(q, k, v, chunk)[0]


def _flash_fwd(q, k, v, chunk):
  out, lse = _flash_forward(q, k, v, chunk)
  return out, (q, k, v, out, lse)


_flash.defvjp(_flash_fwd, _flash_backward)
