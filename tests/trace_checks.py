"""Test-side trace counts for the Embedder's jitted functions (not a test module itself).

The library guards what it traces once per object (`vljepa_jax.trace_guard`: the train step, the
text decoder). The Embedder's two functions are compiled once per input shape, and evaluators may
differ in batch size or data shapes, so the library cannot promise one trace; a test whose
evaluators all share shapes checks it here instead:

    trace_checks.guard_embedder(embedder)            before anything runs: a second trace raises
    ... evaluate ...
    trace_checks.assert_traced_once(embedder._text)  and the guard was live: exactly one trace so far
"""
from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest

from vljepa_jax import trace_guard


def guard_embedder(embedder) -> None:
  """Jits the Embedder's two Python functions again under `trace_guard.at_most(1)` (the library jits them bare)."""
  embedder._visual_query = jax.jit(trace_guard.at_most(1, embedder._visual_query.__wrapped__))
  embedder._text = jax.jit(trace_guard.at_most(1, embedder._text.__wrapped__))


def assert_traced_once(jitted) -> None:
  """One more trace, of inputs no real call has (int8 arrays of shape (1,)), trips the guard of `jitted`.

  Had `jitted` never been traced, this would be its first trace and fail inside the function instead.
  """
  arity = len(inspect.signature(jitted.__wrapped__).parameters)  # follows the guard to the library's function
  with pytest.raises(AssertionError, match="traced > 1 times"):
    jitted(*[np.zeros((1,), np.int8)] * arity)
