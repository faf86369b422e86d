"""Mamba-3 state-space core: the exponential-trapezoidal SSM, chunked for training, stepped for streaming.

Per head, with `a_t = exp(Δ_t A_t)` and the input term `u_t = B_t x_tᵀ` (state × head_dim):

    h_t = a_t h_{t−1} + (1 − λ_t) Δ_t a_t u_{t−1} + λ_t Δ_t u_t          (Mamba-3 §3.1, Prop. 1)
    y_t = h_tᵀ C_t + D x_t

λ = 1 is Mamba-2's exponential-Euler update. B and C arrive already normalised, biased and rotated
(the complex state as data-dependent RoPE is the caller's business), and Δ, A, λ already
parameterised; this module is only the linear recurrence. Head h reads group h // (heads / groups)
of B and C. MIMO of rank R (§3.3) sums R input terms, `u_t = Σ_r B⁽ʳ⁾_t x⁽ʳ⁾_tᵀ`, and reads R
outputs `y⁽ʳ⁾_t = h_tᵀ C⁽ʳ⁾_t + D x⁽ʳ⁾_t`; SISO is rank 1.

Why the chunked form is a plain SSD. The trapezoid's look-back term is the previous token's input,
so shift it onto that token: with `w_t = (1 − λ_t) Δ_t`, the quantity `g_t = h_t + w_{t+1} u_t`
obeys the Mamba-2 recurrence

    g_t = a_t g_{t−1} + (λ_t Δ_t + w_{t+1}) u_t,       h_t = g_t − w_{t+1} u_t.

Inside a chunk the output therefore uses the banded weight `λ_s Δ_s + w_{s+1}` for every earlier
token s < t and `λ_t Δ_t` alone on the diagonal (the current token's look-ahead has not happened
yet), times the usual decay `exp(Σ_{r=s+1..t} Δ_r A_r)`. Chunk states carry g, so a chunk's last
token picks up `w` of the next chunk's first; past the last token `w := 0`, which makes the final
g equal h. Because each output only reads tokens up to its own, the chunked form is exactly
causal (no cancelling diagonal correction as in the official reference's fwd formula).

State passed between calls: `(h, bx)`, each `(batch, heads, state, head_dim)` in float32, where h
is the SSM state after the last token and bx is that token's unscaled input term `B xᵀ`
(`Σ_r B⁽ʳ⁾ x⁽ʳ⁾ᵀ` for MIMO, B of the head's group). It is unscaled because its weight in the next
step, `(1 − λ) Δ a`, belongs to the next token. Zeros (the default) mean an empty history.

Numerics: decays, segment sums, states and the contractions run in float32 whatever the input
dtype; y comes back in x's dtype. The segment-sum exponent is built as a masked cumulative sum
(no difference of large cumsums) and masked to −inf *before* `exp`, so the upper triangle never
overflows and its gradient is exactly zero. Matmul precision follows `jax_default_matmul_precision`.
A length that is not a multiple of the chunk is padded inside with identity steps (no decay, no
input) and sliced off.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

State = tuple[jax.Array, jax.Array]


def ssd(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, lam: jax.Array, *,
        D: jax.Array | None = None, chunk_size: int = 64, initial_state: State | None = None
        ) -> tuple[jax.Array, State]:
  """SISO Mamba-3 over a sequence, chunked.

  Args:
    x: `(batch, length, heads, head_dim)` inputs.
    dt, A, lam: `(batch, length, heads)`: step Δ > 0, decay rate A < 0, trapezoid weight λ ∈ [0, 1].
    B, C: `(batch, length, groups, state)`, heads divisible by groups.
    D: optional `(heads,)` skip.
    chunk_size: tokens per chunk (static); any length works.
    initial_state: `(h, bx)` from a previous call, or None for zeros.

  Returns:
    y `(batch, length, heads, head_dim)` in x's dtype, and the state `(h, bx)` after the last token.
  """
  _check(x, dt, A, B, C, lam, D, initial_state, rank_axis=False, length_axis=True)
  y, state = _chunked(x[:, :, None], dt, A, B[:, :, None], C[:, :, None], lam, D, chunk_size, initial_state)
  return y[:, :, 0], state


def mimo_ssd(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, lam: jax.Array, *,
             D: jax.Array | None = None, chunk_size: int = 64, initial_state: State | None = None
             ) -> tuple[jax.Array, State]:
  """MIMO Mamba-3 of rank R, chunked: `ssd` with a rank axis after the length axis.

  x `(batch, length, rank, heads, head_dim)`, B and C `(batch, length, rank, groups, state)`, the
  rest as in `ssd`; y `(batch, length, rank, heads, head_dim)`. The official README advises a chunk
  of 64 / R (the intra-chunk products are (chunk·R)² per group).
  """
  _check(x, dt, A, B, C, lam, D, initial_state, rank_axis=True, length_axis=True)
  return _chunked(x, dt, A, B, C, lam, D, chunk_size, initial_state)


def ssd_step(state: State, x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, lam: jax.Array,
             *, D: jax.Array | None = None) -> tuple[jax.Array, State]:
  """One SISO token: `ssd`'s arguments without the length axis; returns `(y_t, new state)`."""
  _check(x, dt, A, B, C, lam, D, state, rank_axis=False, length_axis=False)
  y, state = _step(state, x[:, None], dt, A, B[:, None], C[:, None], lam, D)
  return y[:, 0], state


def mimo_ssd_step(state: State, x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                  lam: jax.Array, *, D: jax.Array | None = None) -> tuple[jax.Array, State]:
  """One MIMO token: `mimo_ssd`'s arguments without the length axis."""
  _check(x, dt, A, B, C, lam, D, state, rank_axis=True, length_axis=False)
  return _step(state, x, dt, A, B, C, lam, D)


def zero_state(batch: int, heads: int, state_size: int, head_dim: int) -> State:
  """The empty history: `(h, bx)` of zeros."""
  zeros = jnp.zeros((batch, heads, state_size, head_dim), jnp.float32)
  return zeros, zeros


def _check(x, dt, A, B, C, lam, D, state, *, rank_axis: bool, length_axis: bool) -> None:
  """Raises a ValueError naming the first argument whose shape does not fit the others."""
  lead = "(batch, length" if length_axis else "(batch"
  rank = ", rank" if rank_axis else ""
  x_names = f"{lead}{rank}, heads, head_dim)"
  if x.ndim != len(x_names.split(",")):
    raise ValueError(f"x has shape {x.shape}; expected {x_names}")
  n_lead = 2 if length_axis else 1
  prefix = x.shape[:n_lead]
  heads, head_dim = x.shape[-2:]
  if B.ndim != x.ndim:
    raise ValueError(f"B has shape {B.shape}; expected {lead}{rank}, groups, state)")
  groups, state_size = B.shape[-2:]
  expected = {
      "dt": (prefix + (heads,), f"{lead}, heads)"),
      "A": (prefix + (heads,), f"{lead}, heads)"),
      "lam": (prefix + (heads,), f"{lead}, heads)"),
      "B": (x.shape[:-2] + (groups, state_size), f"{lead}{rank}, groups, state)"),
      "C": (x.shape[:-2] + (groups, state_size), f"{lead}{rank}, groups, state)"),
  }
  for name, value in (("dt", dt), ("A", A), ("lam", lam), ("B", B), ("C", C)):
    shape, names = expected[name]
    if tuple(value.shape) != shape:
      raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {names} = {shape} to match x {x.shape}")
  if heads % groups:
    raise ValueError(f"B and C have {groups} groups, which does not divide the {heads} heads of x")
  if D is not None and tuple(D.shape) != (heads,):
    raise ValueError(f"D has shape {tuple(D.shape)}; expected (heads,) = ({heads},)")
  if state is not None:
    want = (x.shape[0], heads, state_size, head_dim)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
      raise ValueError("the state must be a pair (h, bx)")
    for name, value in zip(("h", "bx"), state):
      if tuple(value.shape) != want:
        raise ValueError(f"state {name} has shape {tuple(value.shape)}; expected (batch, heads, state, head_dim) "
                         f"= {want}")


def _heads_of_groups(v: jax.Array, heads: int) -> jax.Array:
  """`(..., groups, n)` -> `(..., heads, n)`: head h reads group h // (heads / groups)."""
  return jnp.repeat(v, heads // v.shape[-2], axis=-2)


def _step(state, x, dt, A, B, C, lam, D):
  """x `(b, R, H, P)`, B/C `(b, R, G, N)`, dt/A/lam `(b, H)`."""
  f32 = lambda v: v.astype(jnp.float32)
  heads = x.shape[-2]
  h, bx_prev = state
  dt, lam = f32(dt), f32(lam)
  a = jnp.exp(dt * f32(A))[..., None, None]
  xf = f32(x)
  bx = jnp.einsum("brhn,brhp->bhnp", _heads_of_groups(f32(B), heads), xf)
  h = a * f32(h) + ((1.0 - lam) * dt)[..., None, None] * a * f32(bx_prev) + (lam * dt)[..., None, None] * bx
  y = jnp.einsum("bhnp,brhn->brhp", h, _heads_of_groups(f32(C), heads))
  if D is not None:
    y = y + f32(D)[:, None] * xf
  return y.astype(x.dtype), (h, bx)


def _segsum_exponent(adt: jax.Array) -> jax.Array:
  """`(..., Q)` -> `(..., Q, Q)`: `Σ_{r=j+1..i} adt_r` for i ≥ j, −inf above the diagonal.

  Summed directly (a masked cumsum down the rows), not as a difference of cumsums, which would
  lose precision when the decays are large; the −inf goes in before any `exp`.
  """
  q = adt.shape[-1]
  rows = jnp.broadcast_to(adt[..., :, None], adt.shape + (q,))  # rows[..., i, j] = adt_i
  seg = jnp.cumsum(jnp.where(np.tri(q, k=-1, dtype=bool), rows, 0.0), axis=-2)
  return jnp.where(np.tri(q, dtype=bool), seg, -jnp.inf)


def _chunked(x, dt, A, B, C, lam, D, chunk_size, initial_state):
  """x `(b, T, R, H, P)`, B/C `(b, T, R, G, N)`, dt/A/lam `(b, T, H)`; see the module docstring."""
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  batch, length, rank, heads, head_dim = x.shape
  groups, state_size = B.shape[-2:]
  per_group = heads // groups
  if length == 0:
    raise ValueError("x has length 0; expected at least one token")
  # A sequence shorter than a chunk is one chunk of its own length: padding it would only add work.
  chunk_size = min(chunk_size, length)
  f32 = lambda v: v.astype(jnp.float32)
  xf, B, C, dt, lam = f32(x), f32(B), f32(C), f32(dt), f32(lam)
  adt = dt * f32(A)
  gamma = lam * dt  # weight of the current token's input
  lookback = (1.0 - lam) * dt  # w_t: weight of the previous token's input (times a_t)
  ahead = jnp.pad(lookback[:, 1:], ((0, 0), (0, 1), (0, 0)))  # w_{t+1}, zero past the last token

  chunks = math.ceil(length / chunk_size)
  pad = chunks * chunk_size - length

  def chunked(v):  # pad with identity steps (zero decay exponent, zero input) and split the length axis
    v = jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
    return v.reshape((batch, chunks, chunk_size) + v.shape[2:])

  def head_major(v):  # (b, T, H) -> (b, chunks, G, H/G, Q)
    return jnp.moveaxis(chunked(v).reshape(batch, chunks, chunk_size, groups, per_group), 2, -1)

  xc = chunked(xf).reshape(batch, chunks, chunk_size, rank, groups, per_group, head_dim)
  Bc, Cc = chunked(B), chunked(C)
  adt_c, gamma_c, ahead_c = head_major(adt), head_major(gamma), head_major(ahead)
  decay = jnp.exp(_segsum_exponent(adt_c))  # (b, c, G, H/G, Q, Q), zero above the diagonal
  earlier = gamma_c + ahead_c  # weight of token s in every later output of its chunk
  band = jnp.where(np.eye(chunk_size, dtype=bool), gamma_c[..., None, :], earlier[..., None, :])

  # Within chunks: (C_i · B_j) · decay · band, applied to x_j.
  cb = jnp.einsum("bciRgn,bcjrgn->bcgiRjr", Cc, Bc)
  y = jnp.einsum("bcgiRjr,bcghij,bcjrghp->bciRghp", cb, decay * band, xc)

  # Each chunk's contribution to the carried g, at its last token.
  to_end = decay[..., -1, :] * earlier  # (b, c, G, H/G, Q)
  chunk_states = jnp.einsum("bcjrgn,bcghj,bcjrghp->bcghnp", Bc, to_end, xc)
  chunk_decay = jnp.exp(jnp.sum(adt_c, axis=-1))  # (b, c, G, H/G)

  if initial_state is None:
    g0 = jnp.zeros((batch, groups, per_group, state_size, head_dim), jnp.float32)
  else:
    h0, bx0 = (f32(s).reshape(batch, groups, per_group, state_size, head_dim) for s in initial_state)
    g0 = h0 + lookback[:, 0].reshape(batch, groups, per_group)[..., None, None] * bx0

  def across(g, inputs):
    decay_c, state_c = inputs
    return decay_c[..., None, None] * g + state_c, g

  g_last, g_in = jax.lax.scan(across, g0, (jnp.moveaxis(chunk_decay, 1, 0), jnp.moveaxis(chunk_states, 1, 0)))
  g_in = jnp.moveaxis(g_in, 0, 1)  # (b, c, G, H/G, N, P): g entering each chunk
  from_start = jnp.exp(jnp.cumsum(adt_c, axis=-1))  # (b, c, G, H/G, Q)
  y = y + jnp.einsum("bciRgn,bcghnp,bcghi->bciRghp", Cc, g_in, from_start)

  y = y.reshape(batch, chunks * chunk_size, rank, heads, head_dim)[:, :length]
  if D is not None:
    y = y + f32(D)[:, None] * xf
  h = g_last.reshape(batch, heads, state_size, head_dim)  # g = h after the last token (w past it is 0)
  bx = jnp.einsum("brhn,brhp->bhnp", _heads_of_groups(B[:, -1], heads), xf[:, -1])
  return y.astype(x.dtype), (h, bx)
