"""The one attention function every model calls.

Layout is `(batch, length, heads, head_dim)` throughout. Grouped-query attention is
expressed by giving k and v fewer heads than q (a divisor); the query heads are grouped
instead of repeating k/v, so nothing the size of the repeated keys is materialised.

Masking semantics (identical to Hugging Face's eager attention, which the parity tests
rely on): `kv_mask` hides padded *keys* only; padded queries still attend to the real
keys and their outputs are simply ignored downstream. A row with every key masked gets a
uniform distribution (the mask value is finite), never NaN.

Decoding with a KV cache attends a chunk of new queries to every cached key; `q_offset`
gives the queries' absolute position so that the causal (and window) masks are measured from
there, and keys not yet written (beyond the queries' positions) are hidden by the causal mask.

`impl` selects the implementation. Only `"xla"` (plain softmax attention) exists today;
the Pallas / cuDNN / splash kernels plug in here, behind this signature.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite rather than -inf so fully masked rows stay finite (JAX kernels use the same value).
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

IMPLEMENTATIONS = ("xla",)


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    kv_mask: jax.Array | None = None,
    causal: bool = False,
    window: int | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array | None:
  """Boolean mask `(batch or 1, q_len, kv_len)`: True where a query may attend to a key.

  Args:
    kv_mask: `(batch, kv_len)`, True (or 1) for real tokens, False (0) for padding.
    causal: a query at position i sees keys at positions <= i.
    window: bidirectional sliding window with an exclusive bound: keys with
      `|i - j| >= window` are hidden (Gemma 3's bidirectional layers use 257 to see ±256).
    q_offset: position of query 0 among the keys (a Python int or a traced int32 scalar): query
      row r sits at position `r + q_offset`. Keys are always at positions 0..kv_len-1.
  Returns None when nothing is masked.
  """
  mask = None
  if causal or window is not None:
    i = jnp.arange(q_len)[:, None] + q_offset
    j = jnp.arange(kv_len)[None, :]
    allowed = jnp.ones((q_len, kv_len), dtype=bool)
    if causal:
      allowed &= j <= i
    if window is not None:
      allowed &= jnp.abs(i - j) < window
    mask = allowed[None]
  if kv_mask is not None:
    keys = kv_mask.astype(bool)[:, None, :]
    mask = keys if mask is None else (mask & keys)
  return mask


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_mask: jax.Array | None = None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    q_offset: int | jax.Array = 0,
    impl: str = "xla",
) -> jax.Array:
  """Softmax attention. q: `(B, Lq, Hq, D)`; k, v: `(B, Lk, Hkv, D)` with `Hq % Hkv == 0`.

  `q_offset` places the queries at positions `q_offset..q_offset+Lq-1` for the causal and
  window masks (see `attention_mask`); 0, the default, is ordinary self-attention.

  Returns `(B, Lq, Hq, D)` in q's dtype. Logits and softmax are computed in float32.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention impl {impl!r} is not available; expected one of {IMPLEMENTATIONS}")
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
  if q_heads % kv_heads:
    raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
  if scale is None:
    scale = head_dim ** -0.5
  groups = q_heads // kv_heads

  # Query head h uses key/value head h // groups (the Hugging Face `repeat_kv` order).
  qg = q.reshape(batch, q_len, kv_heads, groups, head_dim)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(scale)
  mask = attention_mask(q_len, kv_len, kv_mask=kv_mask, causal=causal, window=window, q_offset=q_offset)
  if mask is not None:
    logits = jnp.where(mask[:, None, None], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(batch, q_len, q_heads, head_dim).astype(q.dtype)
