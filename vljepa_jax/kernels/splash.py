"""JAX's TPU splash attention behind this library's attention signature.

Splash (`jax.experimental.pallas.ops.tpu.splash_attention`) is the block-sparse TPU kernel MaxText
uses. It works per example on `(heads, length, head_dim)`, has no scale argument and needs lengths
that are whole blocks, so this adapter
- scales q before the call, transposes to heads-major and `vmap`s over the batch;
- pads both lengths to whole blocks; padded keys get segment id 0, which no query has;
- turns `kv_mask` into segment ids (queries 1, keys 1 where real and 0 where padded), so a query
  attends to the real keys, as the reference attention does;
- expresses `causal` and `window` as splash's static `CausalMask` / `LocalMask`, whose block
  sparsity skips hidden blocks.
Kernels are built once per static configuration (building the mask metadata runs NumPy).
"""
from __future__ import annotations

import functools

import jax
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
import jax.numpy as jnp

from vljepa_jax.kernels import flash

_MAX_BLOCK = 512  # splash's usual tile on v4/v5; shorter sequences use one 128-multiple tile
_LANES = 128


def _block(length: int) -> int:
  return min(_MAX_BLOCK, flash.round_up(length, _LANES))


@functools.lru_cache(maxsize=64)
def _kernel(q_len: int, kv_len: int, heads: int, causal: bool, window: int | None, block_q: int, block_kv: int,
            interpret: bool):
  shape = (q_len, kv_len)
  if window is not None:
    mask = masks.LocalMask(shape, window_size=(window - 1, 0 if causal else window - 1), offset=0)
  elif causal:
    mask = masks.CausalMask(shape)
  else:
    mask = masks.FullMask(shape)
  sizes = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
                            block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                            block_kv_dq=block_kv)
  # The kernel holds its mask metadata as arrays; build them as constants, not as tracers of
  # whichever trace first asked, so the cached kernel is safe to reuse in later traces.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(masks.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, kv_mask: jax.Array | None = None,
                     causal: bool = False, window: int | None = None, scale: float, interpret: bool = False
                     ) -> jax.Array:
  """q `(B, Lq, Hq, D)`, k/v `(B, Lk, Hkv, D)` -> `(B, Lq, Hq, D)`; see the module docstring."""
  batch, q_len, heads, _ = q.shape
  kv_len = k.shape[1]
  block_q, block_kv = _block(q_len), _block(kv_len)
  q_padded, kv_padded = flash.round_up(q_len, block_q), flash.round_up(kv_len, block_kv)
  kernel = _kernel(q_padded, kv_padded, heads, causal, window, block_q, block_kv, interpret)
  real = jnp.ones((batch, kv_len), jnp.int32) if kv_mask is None else kv_mask.astype(jnp.int32)
  segments = splash.SegmentIds(q=jnp.ones((batch, q_padded), jnp.int32), kv=flash.pad_to(real, {1: kv_padded}))
  heads_major = lambda x, length: jnp.swapaxes(flash.pad_to(x, {1: length}), 1, 2)
  qh = heads_major(q * jnp.asarray(scale, q.dtype), q_padded)
  out = jax.vmap(kernel)(qh, heads_major(k, kv_padded), heads_major(v, kv_padded), segment_ids=segments)
  return jnp.swapaxes(out, 1, 2)[:, :q_len].astype(q.dtype)
