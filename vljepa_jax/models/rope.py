"""Rotary position embeddings: the 1D half-split form (Llama, Gemma) and V-JEPA 2's 3D form.

Angles are always computed in float32, whatever the activation dtype, and the rotated
tensor is cast back to its input dtype.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Llama3Scaling:
  """Llama 3.1+ frequency scaling (HF `_compute_llama3_parameters`)."""

  factor: float = 32.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


def inverse_frequencies(rotary_dim: int, theta: float, llama3: Llama3Scaling | None = None) -> np.ndarray:
  """`theta ** (-2i / rotary_dim)` for i < rotary_dim / 2, optionally llama3-scaled. float32."""
  inv_freq = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim))
  if llama3 is None:
    return inv_freq.astype(np.float32)
  low_wavelen = llama3.original_max_position_embeddings / llama3.low_freq_factor
  high_wavelen = llama3.original_max_position_embeddings / llama3.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  # Long wavelengths are slowed down by `factor`, short ones kept, the band between blended.
  scaled = np.where(wavelen > low_wavelen, inv_freq / llama3.factor, inv_freq)
  smooth = (llama3.original_max_position_embeddings / wavelen - llama3.low_freq_factor) / (
      llama3.high_freq_factor - llama3.low_freq_factor)
  blended = (1 - smooth) * scaled / llama3.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(is_medium, blended, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray | jax.Array) -> jax.Array:
  """Half-split RoPE (HF `rotate_half`): dims i and i + D/2 form a rotated pair.

  x: `(B, L, H, D)`; positions: `(B, L)` or `(L,)` integer positions.
  Because the pairing matches Hugging Face's, converted q/k weights need no permutation.
  """
  positions = jnp.asarray(positions, jnp.float32)
  if positions.ndim == 1:
    positions = positions[None]
  angles = positions[..., None] * jnp.asarray(inv_freq, jnp.float32)  # (B, L, D/2)
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, L, 1, D)
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def rotary_positions(positions: jax.Array, inv_freq: np.ndarray | jax.Array):
  """`(q, k) -> (q, k)` applying half-split RoPE to both: a `SelfAttention` position function."""
  return lambda q, k: (apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq))


# V-JEPA 2 3D RoPE ------------------------------------------------------------------------
#
# The head dim is split into three equal even chunks (time, row, column) of
# d = 2 * ((head_dim // 3) // 2) dims; the remainder is not rotated. Within a chunk the
# rotation acts on interleaved pairs (x[2i], x[2i+1]): out = x * COS + r(x) * SIN with
# r(x)[2i] = -x[2i+1], r(x)[2i+1] = x[2i].
#
# How the d/2 angles fill the d-vector COS/SIN is a per-checkpoint constant:
#   "tiled"       [f0..f_{d/2-1}, f0..f_{d/2-1}] - what V-JEPA 2 weights were trained with
#                 (Meta calls it a bug kept for compatibility; HF and bonsai keep it too);
#   "interleaved" [f0, f0, f1, f1, ...] - the textbook form used by V-JEPA 2.1.
ROPE_LAYOUTS = ("tiled", "interleaved")


def vjepa_axis_dim(head_dim: int) -> int:
  return 2 * ((head_dim // 3) // 2)


def _rotate_interleaved_pairs(x: jax.Array, positions: jax.Array, layout: str) -> jax.Array:
  """x: `(B, L, H, d)` float32; positions `(L,)` float32."""
  d = x.shape[-1]
  omega = 1.0 / (10000.0 ** (jnp.arange(d // 2, dtype=jnp.float32) / (d / 2.0)))
  freq = positions[:, None] * omega  # (L, d/2)
  if layout == "tiled":
    freq = jnp.concatenate([freq, freq], axis=-1)
  elif layout == "interleaved":
    freq = jnp.repeat(freq, 2, axis=-1)
  else:
    raise ValueError(f"unknown V-JEPA RoPE layout {layout!r}; expected one of {ROPE_LAYOUTS}")
  freq = freq[None, :, None, :]
  pairs = x.reshape(*x.shape[:-1], d // 2, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  return x * jnp.cos(freq) + rotated * jnp.sin(freq)


def apply_rope_3d(x: jax.Array, grid: tuple[int, int, int], layout: str = "tiled") -> jax.Array:
  """V-JEPA 2 RoPE over a time-major token grid. x: `(B, T'*H'*W', H, D)`.

  Token index n sits at (t, h, w) = (n // (H'W'), (n mod H'W') // W', n mod W').
  """
  t, h, w = grid
  if x.shape[1] != t * h * w:
    raise ValueError(f"{x.shape[1]} tokens do not match the grid {grid}")
  d = vjepa_axis_dim(x.shape[-1])
  ids = jnp.arange(t * h * w)
  axis_positions = (ids // (h * w), (ids % (h * w)) // w, ids % w)
  xf = x.astype(jnp.float32)
  chunks = [
      _rotate_interleaved_pairs(xf[..., i * d:(i + 1) * d], pos.astype(jnp.float32), layout)
      for i, pos in enumerate(axis_positions)
  ]
  chunks.append(xf[..., 3 * d:])
  return jnp.concatenate(chunks, axis=-1).astype(x.dtype)
