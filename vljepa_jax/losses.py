"""VL-JEPA's training objective: bidirectional InfoNCE between Ŝ_Y and S_Y.

Both sides are L2-normalised (the paper aligns *normalised* embeddings); row i of the
prediction and row i of the target are the positive pair and every other row in the batch is a
negative, in both directions:

  logits = normalise(pred) @ normalise(target).T / temperature
  loss   = (CE(logits, diag) + CE(logits.T, diag)) / 2

This is the single-device form; computation is in fp32 whatever the inputs, because bf16
log-sum-exp over thousands of negatives loses the small gradients that matter.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NORM_EPS = 1e-6


def l2_normalize(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def bidirectional_infonce(pred: jax.Array, target: jax.Array, temperature: float | jax.Array) -> jax.Array:
  """Mean over the batch of the symmetric InfoNCE loss; `pred`, `target` are `(N, D)`."""
  if pred.ndim != 2 or pred.shape != target.shape:
    raise ValueError(f"pred and target must both be (N, D); got {pred.shape} and {target.shape}")
  logits = l2_normalize(pred) @ l2_normalize(target).T / temperature
  diagonal = jnp.diagonal(logits)
  pred_to_target = jax.nn.logsumexp(logits, axis=1) - diagonal
  target_to_pred = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (pred_to_target.mean() + target_to_pred.mean())
