"""Shared layers against independent references (PyTorch, float64 NumPy)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from vljepa_jax.models import layers


def _points() -> np.ndarray:
  # The whole range, dense near zero and into both tails (where erf saturates and GELU -> 0 or x).
  return np.concatenate([np.linspace(-10, 10, 20001), -np.logspace(-6, 1.5, 500),
                         np.logspace(-6, 1.5, 500)]).astype(np.float32)


def test_exact_gelu_matches_torch_and_float64():
  x = _points()
  erf = np.vectorize(math.erf)
  x64 = x.astype(np.float64)
  want = 0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))
  want_grad = 0.5 * (1.0 + erf(x64 / math.sqrt(2.0))) + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2.0 * math.pi)
  act = layers.activation("gelu")
  got = np.asarray(jax.jit(act)(x), np.float64)
  got_grad = np.asarray(jax.jit(jax.grad(lambda a: jnp.sum(act(a))))(x), np.float64)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=0, atol=1e-6)
  tx = torch.tensor(x, requires_grad=True)
  torch_out = torch.nn.functional.gelu(tx)  # "gelu" in Hugging Face configs: exact, erf
  torch_out.sum().backward()
  np.testing.assert_allclose(got, torch_out.detach().numpy(), rtol=0, atol=2e-6)
  np.testing.assert_allclose(got_grad, tx.grad.numpy(), rtol=0, atol=1e-6)
  # Not the tanh approximation, which is off by up to ~5e-4 here.
  assert np.max(np.abs(got - np.asarray(jax.nn.gelu(x, approximate=True)))) > 1e-4


def test_exact_gelu_keeps_bfloat16_and_its_negative_tail():
  """bf16 in, bf16 out, rounded once: no cancellation of `1 + erf` in bf16 where x < -2.5."""
  x = jnp.linspace(-6, 4, 1025, dtype=jnp.bfloat16)
  got = layers.activation("gelu")(x)
  assert got.dtype == jnp.bfloat16
  x64 = np.asarray(x, np.float64)
  want = 0.5 * x64 * (1.0 + np.vectorize(math.erf)(x64 / math.sqrt(2.0)))
  # One bf16 rounding (8 mantissa bits) of a value as exact as float32's: a bf16 `1 + erf` would be off by
  # up to ~4e-3 between -3 and -2.5; float32's cancels only below -5.4, where GELU is under 2e-7.
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2.0 ** -8, atol=2e-6)
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             torch.nn.functional.gelu(torch.tensor(np.asarray(x, np.float32))).bfloat16().float().numpy(),
                             rtol=2.0 ** -7, atol=2e-6)
