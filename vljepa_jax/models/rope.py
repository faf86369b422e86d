"""Rotary position embeddings: the 1D half-split form (Llama, Gemma) and V-JEPA 2 / 2.1's 3D form.

Angles are always computed in float32, whatever the activation dtype, and the rotated
tensor is cast back to its input dtype.
"""
from __future__ import annotations

import dataclasses
import functools
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


def rope_tables(positions: np.ndarray | jax.Array, inv_freq: np.ndarray | jax.Array
                ) -> tuple[np.ndarray | jax.Array, np.ndarray | jax.Array]:
  """`(cos, sin)` of the half-split rotation, each `(B or 1, L, 1, D)` float32.

  Positions known at trace time (a NumPy array: every forward pass that does not decode) give
  NumPy tables, which enter the compiled program as constants. Computed inside the program
  instead, XLA fuses `cos`/`sin` into each consumer and re-evaluates them for every batch row and
  head, in the forward and again in the backward pass: on CPU that was a visible share of the
  step. Traced positions (KV-cache decoding) are computed in the program.
  """
  if isinstance(positions, np.ndarray) and not isinstance(inv_freq, jax.Array):
    positions = positions.astype(np.int64)
    return _host_rope_tables(positions.tobytes(), positions.shape, np.asarray(inv_freq, np.float32).tobytes())
  return _rope_tables(jnp, positions, inv_freq)


def _rope_tables(xp, positions, inv_freq):
  positions = xp.asarray(positions, xp.float32)
  if positions.ndim == 1:
    positions = positions[None]
  angles = positions[..., None] * xp.asarray(inv_freq, xp.float32)  # (B, L, D/2)
  angles = xp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, L, 1, D)
  return xp.cos(angles), xp.sin(angles)


@functools.lru_cache(maxsize=64)
def _host_rope_tables(positions: bytes, shape: tuple[int, ...], inv_freq: bytes) -> tuple[np.ndarray, np.ndarray]:
  # Cached on the values, so every layer (and q and k) gets the same arrays: JAX traces one
  # NumPy object used many times as one constant.
  tables = _rope_tables(np, np.frombuffer(positions, np.int64).reshape(shape), np.frombuffer(inv_freq, np.float32))
  for table in tables:
    table.flags.writeable = False
  return tables


def apply_rope(x: jax.Array, positions: np.ndarray | jax.Array, inv_freq: np.ndarray | jax.Array) -> jax.Array:
  """Half-split RoPE (HF `rotate_half`): dims i and i + D/2 form a rotated pair.

  x: `(B, L, H, D)`; positions: `(B, L)` or `(L,)` integer positions (NumPy when static, see
  `rope_tables`). Because the pairing matches Hugging Face's, converted q/k weights need no
  permutation.
  """
  cos, sin = rope_tables(positions, inv_freq)
  xf = x.astype(jnp.float32)
  x1, x2 = jnp.split(xf, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


def rotary_positions(positions: np.ndarray | jax.Array, inv_freq: np.ndarray | jax.Array):
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
#   "interleaved" [f0, f0, f1, f1, ...] - the textbook form used by V-JEPA 2.1
#                 (`repeat_interleave(2)` in `rotate_queries_or_keys`, app/vjepa_2_1/models/utils/modules.py).
ROPE_LAYOUTS = ("tiled", "interleaved")


def vjepa_axis_dim(head_dim: int) -> int:
  return 2 * ((head_dim // 3) // 2)


def grid_positions(grid: tuple[int, int, int], reference_grid: int = 0) -> np.ndarray:
  """Time, row and column position of every token of a time-major grid: `(3, T'H'W')` float32.

  Token n sits at (n // (H'W'), (n mod H'W') // W', n mod W'). With `reference_grid` G > 0
  (V-JEPA 2.1's `interpolate_rope`, `RoPEAttention.forward` in app/vjepa_2_1/models/utils/modules.py)
  rows and columns are stretched to span the grid the model was pretrained on, whatever the input
  size: position h becomes h * (G - 1) / (H' - 1), in float32 and in that order, as Meta computes it;
  frame positions are never rescaled. A single row or column (H' or W' = 1) stays at position 0:
  Meta divides 0 by 0 there and rotates by NaN.
  """
  t, h, w = grid
  ids = np.arange(t * h * w)
  positions = np.stack([ids // (h * w), (ids % (h * w)) // w, ids % w]).astype(np.float32)
  if reference_grid:
    for axis, size in ((1, h), (2, w)):
      if size > 1:
        positions[axis] = positions[axis] * np.float32(reference_grid - 1) / np.float32(size - 1)
  return positions


@functools.lru_cache(maxsize=32)
def rope_3d_tables(grid: tuple[int, int, int], head_dim: int, layout: str = "tiled",
                   reference_grid: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`(cos, sin)` of V-JEPA 2's 3D rotation over a time-major grid, each `(T'H'W', 1, 3d)` float32.

  Built on the host once per (grid, head_dim, layout, reference_grid): the grid is static, so the
  tables are constants of the compiled program (see `rope_tables` for why that matters), and the
  cache hands every layer the same array, which JAX traces as one constant. `reference_grid`: see
  `grid_positions` (0: the raw integer positions).
  """
  if layout not in ROPE_LAYOUTS:
    raise ValueError(f"unknown V-JEPA RoPE layout {layout!r}; expected one of {ROPE_LAYOUTS}")
  d = vjepa_axis_dim(head_dim)
  omega = 1.0 / (10000.0 ** (np.arange(d // 2, dtype=np.float32) / np.float32(d / 2.0)))
  freqs = []
  for pos in grid_positions(grid, reference_grid):  # time, row, column
    freq = pos[:, None] * omega  # (N, d/2)
    freqs.append(np.concatenate([freq, freq], -1) if layout == "tiled" else np.repeat(freq, 2, axis=-1))
  angles = np.concatenate(freqs, axis=-1)[:, None, :]  # (N, 1, 3d)
  cos, sin = np.cos(angles), np.sin(angles)
  cos.flags.writeable = sin.flags.writeable = False  # shared by every caller
  return cos, sin


def apply_rope_3d(x: jax.Array, grid: tuple[int, int, int], layout: str = "tiled",
                  reference_grid: int = 0) -> jax.Array:
  """V-JEPA 2 RoPE over a time-major token grid. x: `(B, T'*H'*W', H, D)`.

  Token positions: `grid_positions`. The three rotated chunks are one elementwise pass over the
  first 3d dims; the rest pass through.
  """
  t, h, w = grid
  if x.shape[1] != t * h * w:
    raise ValueError(f"{x.shape[1]} tokens do not match the grid {grid}")
  d3 = 3 * vjepa_axis_dim(x.shape[-1])
  cos, sin = rope_3d_tables(tuple(grid), x.shape[-1], layout, reference_grid)
  xf = x.astype(jnp.float32)
  rot = xf[..., :d3]
  pairs = rot.reshape(*rot.shape[:-1], d3 // 2, 2)
  # r(x)[2i] = -x[2i+1], r(x)[2i+1] = x[2i]
  partner = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(rot.shape)
  rotated = rot * cos + partner * sin
  if d3 == x.shape[-1]:
    return rotated.astype(x.dtype)
  return jnp.concatenate([rotated, xf[..., d3:]], axis=-1).astype(x.dtype)
