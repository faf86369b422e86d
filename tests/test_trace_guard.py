"""`trace_guard.at_most`: a retrace raises, and each guarded function counts its own traces."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from vljepa_jax import trace_guard


def _make_step():
  """What the library does per train step or decoder: a fresh function from the same code, guarded and jitted."""

  def step(state, batch):
    return state + batch.sum()

  return jax.jit(trace_guard.at_most(1, step), donate_argnames="state")


def test_a_retrace_raises_and_functions_from_the_same_code_count_apart():
  first, second = _make_step(), _make_step()
  for _ in range(3):  # same shapes: traced once, then cached
    first(jnp.zeros(()), jnp.ones(3))
  # chex alone keys its count on the definition site: `second` would share `first`'s and fail here.
  assert float(second(jnp.zeros(()), jnp.ones(3))) == 3.0
  with pytest.raises(AssertionError, match=r"'step#\d+' is traced > 1 times"):
    first(jnp.zeros(()), jnp.ones(4))
  assert float(second(jnp.zeros(()), jnp.ones(3))) == 3.0  # untouched by `first`'s retrace


def test_jax_sees_the_original_name_and_signature():
  step = _make_step()
  assert "@jit_step" in step.lower(jnp.zeros(()), jnp.ones(3)).as_text()
  state = jnp.zeros(())
  step(state, jnp.ones(3))
  assert state.is_deleted()  # donated by argument name: the signature behind `donate_argnames` is `step`'s


def test_n_allows_that_many_traces():
  calls = jax.jit(trace_guard.at_most(2, lambda x: x * 2))
  calls(jnp.ones(1))
  calls(jnp.ones(2))
  with pytest.raises(AssertionError, match="traced > 2 times"):
    calls(jnp.ones(3))
