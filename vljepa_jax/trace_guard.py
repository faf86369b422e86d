"""Retrace guards: a function that should be traced once fails loudly when it is traced again.

    jitted = jax.jit(trace_guard.at_most(1, fn))

A retrace means a recompile (minutes for a large train step) that nothing else reports. The guard
is `chex.assert_max_traces`: it counts the calls that receive tracers, i.e. the traces, and raises
an AssertionError on trace `n + 1` (`chex.disable_asserts()` turns it off). chex keys its count on
where the function was defined and its name, so every object built by the same code (one train
step per stage, one text decoder per evaluator, several runs in one process) would share a single
count and the second object's first trace would fail. `at_most` gives each call a count of its own
by naming the function it hands to chex apart; JAX still sees the original name and signature.

Use it only where the contract is a fixed number of traces per object, whatever the inputs: a
function that legitimately meets several input shapes (e.g. one compiled per batch size) needs a
check in its tests instead.
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import chex

_instances = itertools.count()


def at_most(n: int, fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` (not yet jitted) under `chex.assert_max_traces(n)` with a trace count of its own."""

  def traced(*args, **kwargs):
    return fn(*args, **kwargs)

  name = getattr(fn, "__name__", type(fn).__name__)
  # chex's count key includes the name: a name per call is a count per call (and names it in the error).
  traced.__name__ = traced.__qualname__ = f"{name}#{next(_instances)}"
  guarded = chex.assert_max_traces(traced, n=n)
  # What jax.jit reads (the program's name, the signature behind donate_argnums) stays `fn`'s.
  return functools.update_wrapper(guarded, fn)
