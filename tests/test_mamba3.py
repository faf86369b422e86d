"""Mamba-3 core (`models/mamba3.py`): the chunked and stepped forms against a naive recurrence.

The specification is `naive`, a per-token loop in NumPy float64 written straight from the
exponential-trapezoidal update of the Mamba-3 paper (§3.1): h_t = a_t h_{t−1} + (1 − λ_t) Δ_t a_t
B_{t−1} x_{t−1}ᵀ + λ_t Δ_t B_t x_tᵀ, y_t = h_tᵀ C_t + D x_t. Gradients are checked against a
`lax.scan` of the same recurrence, differentiated by JAX.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax.models import mamba3

jax.config.update("jax_default_matmul_precision", "highest")


def naive(x, dt, A, B, C, lam, D=None, state=None):
  """MIMO-shaped float64 loop: x `(b, T, R, H, P)`, B/C `(b, T, R, G, N)`, dt/A/lam `(b, T, H)`."""
  x, dt, A, B, C, lam = (np.asarray(v, np.float64) for v in (x, dt, A, B, C, lam))
  batch, length, rank, heads, head_dim = x.shape
  groups, n = B.shape[-2:]
  group_of = np.arange(heads) // (heads // groups)
  B, C = B[:, :, :, group_of], C[:, :, :, group_of]  # (b, T, R, H, N)
  if state is None:
    h = np.zeros((batch, heads, n, head_dim))
    u_prev = np.zeros_like(h)
  else:
    h, u_prev = (np.asarray(s, np.float64) for s in state)
  y = np.zeros_like(x)
  for t in range(length):
    a = np.exp(dt[:, t] * A[:, t])[..., None, None]
    u = np.einsum("brhn,brhp->bhnp", B[:, t], x[:, t])
    h = a * h + ((1 - lam[:, t]) * dt[:, t])[..., None, None] * a * u_prev + (lam[:, t] * dt[:, t])[..., None, None] * u
    y[:, t] = np.einsum("bhnp,brhn->brhp", h, C[:, t])
    if D is not None:
      y[:, t] += np.asarray(D, np.float64)[:, None] * x[:, t]
    u_prev = u
  return y, (h, u_prev)


def inputs(seed, *, batch=2, length=37, heads=4, groups=2, n=8, head_dim=4, rank=None, strong_heads=0):
  """Random well-scaled inputs; SISO shapes unless `rank` is given. `strong_heads` heads decay by e^-20 a step."""
  r = np.random.default_rng(seed)
  lead = (batch, length) if rank is None else (batch, length, rank)
  x = r.normal(size=lead + (heads, head_dim)).astype(np.float32)
  dt = r.uniform(0.05, 0.8, (batch, length, heads)).astype(np.float32)
  A = -r.uniform(0.2, 2.0, (batch, length, heads)).astype(np.float32)
  if strong_heads:
    dt[..., :strong_heads] = 1.0
    A[..., :strong_heads] = -20.0
  lam = r.uniform(0.0, 1.0, (batch, length, heads)).astype(np.float32)
  B = (r.normal(size=lead + (groups, n)) / np.sqrt(n)).astype(np.float32)
  C = (r.normal(size=lead + (groups, n)) / np.sqrt(n)).astype(np.float32)
  D = r.normal(size=(heads,)).astype(np.float32)
  state = tuple(r.normal(size=(batch, heads, n, head_dim)).astype(np.float32) for _ in range(2))
  return dict(x=x, dt=dt, A=A, B=B, C=C, lam=lam), D, state


def siso_naive(a, D=None, state=None):
  y, st = naive(a["x"][:, :, None], a["dt"], a["A"], a["B"][:, :, None], a["C"][:, :, None], a["lam"], D, state)
  return y[:, :, 0], st


def scan_steps(step, state, a, D):
  """Iterates a `*_step` function over the length axis with `lax.scan`."""
  def body(carry, tok):
    y, carry = step(carry, tok["x"], tok["dt"], tok["A"], tok["B"], tok["C"], tok["lam"], D=D)
    return carry, y
  state, ys = jax.lax.scan(body, state, jax.tree.map(lambda v: jnp.moveaxis(v, 1, 0), a))
  return jnp.moveaxis(ys, 0, 1), state


def assert_close(actual, expected, tol=1e-5):
  """Absolute tolerance relative to the reference's scale (outputs here are O(1))."""
  expected = np.asarray(expected, np.float64)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0,
                             atol=tol * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("chunk,length,with_d,with_state", [
    (1, 37, True, True), (4, 37, False, False), (16, 100, True, False), (64, 100, False, True),
])
def test_ssd_and_step_match_naive(chunk, length, with_d, with_state):
  a, D, state = inputs(chunk + length, length=length)
  D = D if with_d else None
  state = state if with_state else None
  y_ref, (h_ref, bx_ref) = siso_naive(a, D, state)

  y, (h, bx) = jax.jit(functools.partial(mamba3.ssd, chunk_size=chunk))(**a, D=D, initial_state=state)
  assert y.dtype == jnp.float32 and y.shape == a["x"].shape
  assert_close(y, y_ref)
  assert_close(h, h_ref)
  assert_close(bx, bx_ref)

  start = state if with_state else mamba3.zero_state(2, 4, 8, 4)
  y_step, (h_step, bx_step) = jax.jit(functools.partial(scan_steps, mamba3.ssd_step))(start, a, D)
  assert_close(y_step, y_ref)
  assert_close(h_step, h_ref)
  assert_close(bx_step, bx_ref)


def test_mimo_matches_naive():
  a, D, state = inputs(7, length=45, rank=3)
  y_ref, (h_ref, bx_ref) = naive(**a, D=D, state=state)
  y, (h, bx) = jax.jit(functools.partial(mamba3.mimo_ssd, chunk_size=8))(**a, D=D, initial_state=state)
  assert y.shape == a["x"].shape
  assert_close(y, y_ref)
  assert_close(h, h_ref)
  assert_close(bx, bx_ref)
  y_step, (h_step, _) = jax.jit(functools.partial(scan_steps, mamba3.mimo_ssd_step))(state, a, D)
  assert_close(y_step, y_ref)
  assert_close(h_step, h_ref)


def test_carried_state_continues_the_sequence():
  a, D, state0 = inputs(3, length=50)
  run = jax.jit(functools.partial(mamba3.ssd, chunk_size=16))
  y_whole, (h_whole, bx_whole) = run(**a, D=D, initial_state=state0)
  split = 25  # not a chunk boundary; both halves have one shape, so one compilation
  y1, state = run(**{k: v[:, :split] for k, v in a.items()}, D=D, initial_state=state0)
  y2, (h2, bx2) = run(**{k: v[:, split:] for k, v in a.items()}, D=D, initial_state=state)
  assert_close(np.concatenate([y1, y2], 1), y_whole, 1e-6)
  assert_close(h2, h_whole, 1e-6)
  np.testing.assert_array_equal(bx2, bx_whole)


def test_causal():
  a, D, state = inputs(5, length=37)
  run = jax.jit(functools.partial(mamba3.ssd, chunk_size=16))
  y, _ = run(**a, D=D, initial_state=state)
  r = np.random.default_rng(0)
  for t in (0, 13, 16, 36):  # chunk start, mid-chunk, chunk start, last token
    changed = {k: v.copy() for k, v in a.items()}
    for k in changed:
      changed[k][:, t] = changed[k][:, t] * r.uniform(0.5, 1.5)  # every input of token t; dt stays > 0
    y_changed, _ = run(**changed, D=D, initial_state=state)
    np.testing.assert_array_equal(y_changed[:, :t], y[:, :t])  # exactly: each output reads tokens <= its own
    assert np.abs(y_changed[:, t] - y[:, t]).max() > 1e-3


def test_bfloat16_inputs_give_bfloat16_close_to_float32():
  a, D, state = inputs(11, length=40)
  a16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in a.items()}
  y16, (h16, _) = jax.jit(functools.partial(mamba3.ssd, chunk_size=16))(**a16, D=D, initial_state=state)
  assert y16.dtype == jnp.bfloat16 and h16.dtype == jnp.float32
  # Reference: the same bf16-rounded inputs, in float64; only the output's rounding and fp32 sums differ.
  y_ref, _ = siso_naive({k: np.asarray(v.astype(jnp.float32)) for k, v in a16.items()}, D, state)
  assert_close(y16.astype(jnp.float32), y_ref, 1e-2)
  y_step, _ = jax.jit(functools.partial(scan_steps, mamba3.ssd_step))(state, a16, D)
  assert y_step.dtype == jnp.bfloat16
  assert_close(y_step.astype(jnp.float32), y_ref, 1e-2)


def _scan_reference(x, dt, A, B, C, lam):
  """The recurrence as a plain `lax.scan` over tokens (SISO, no D), for reference gradients."""
  group_of = np.arange(x.shape[2]) // (x.shape[2] // B.shape[2])

  def body(carry, tok):
    h, u_prev = carry
    x_t, dt_t, A_t, B_t, C_t, lam_t = tok
    a = jnp.exp(dt_t * A_t)[..., None, None]
    u = B_t[:, group_of, :, None] * x_t[:, :, None, :]
    h = a * h + ((1 - lam_t) * dt_t)[..., None, None] * a * u_prev + (lam_t * dt_t)[..., None, None] * u
    return (h, u), jnp.einsum("bhnp,bhn->bhp", h, C_t[:, group_of])

  zeros = jnp.zeros((x.shape[0], x.shape[2], B.shape[-1], x.shape[-1]), jnp.float32)
  _, ys = jax.lax.scan(body, (zeros, zeros), tuple(jnp.moveaxis(v, 1, 0) for v in (x, dt, A, B, C, lam)))
  return jnp.moveaxis(ys, 0, 1)


def test_gradients_finite_and_match_scan_with_strong_decay():
  a, _, _ = inputs(13, batch=1, length=2048, heads=4, groups=2, n=8, head_dim=4, strong_heads=2)
  weights = np.random.default_rng(0).normal(size=a["x"].shape).astype(np.float32)
  names = ("x", "dt", "A", "B", "C", "lam")

  def loss(fn, *args):
    return jnp.sum(fn(*args) * weights)

  chunked = lambda *args: mamba3.ssd(*args, chunk_size=64)[0]
  args = tuple(a[k] for k in names)
  grads = jax.jit(jax.grad(functools.partial(loss, chunked), argnums=tuple(range(6))))(*args)
  ref = jax.jit(jax.grad(functools.partial(loss, _scan_reference), argnums=tuple(range(6))))(*args)
  for name, g, g_ref in zip(names, grads, ref):
    assert np.isfinite(np.asarray(g)).all(), name
    scale = np.abs(np.asarray(g_ref)).max()
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-4 * scale, err_msg=name)


def test_bad_shapes_name_the_argument():
  a, D, state = inputs(1, length=10, heads=4, groups=2)
  with pytest.raises(ValueError, match=r"groups, which does not divide the 4 heads"):
    mamba3.ssd(**{**a, "B": a["B"][:, :, :1].repeat(3, 2), "C": a["C"][:, :, :1].repeat(3, 2)})
  with pytest.raises(ValueError, match=r"dt has shape \(2, 9, 4\); expected \(batch, length, heads\) = \(2, 10, 4\)"):
    mamba3.ssd(**{**a, "dt": a["dt"][:, :9]})
  with pytest.raises(ValueError, match=r"C has shape .*expected \(batch, length, groups, state\)"):
    mamba3.ssd(**{**a, "C": a["C"][:, :8]})
  with pytest.raises(ValueError, match=r"D has shape \(2,\); expected \(heads,\) = \(4,\)"):
    mamba3.ssd(**a, D=D[:2])
  with pytest.raises(ValueError, match=r"state bx has shape"):
    mamba3.ssd(**a, initial_state=(state[0], state[1][:, :2]))
  with pytest.raises(ValueError, match=r"x has shape \(2, 10, 4\); expected \(batch, length, heads, head_dim\)"):
    mamba3.ssd(**{**a, "x": a["x"][..., 0]})
  with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
    mamba3.ssd(**a, chunk_size=0)
  step_args = {k: v[:, 0] for k, v in a.items()}
  with pytest.raises(ValueError, match=r"lam has shape \(2, 3\); expected \(batch, heads\)"):
    mamba3.ssd_step(state, **{**step_args, "lam": step_args["lam"][:, :3]})
