"""VL-JEPA's training objective: bidirectional InfoNCE between Ŝ_Y and S_Y.

Both sides are L2-normalised (the paper aligns *normalised* embeddings); row i of the
prediction and row i of the target are the positive pair and every other row in the batch is a
negative, in both directions:

  logits = normalise(pred) @ normalise(target).T / temperature
  loss   = (CE(logits, diag) + CE(logits.T, diag)) / 2

Computation is in fp32 whatever the inputs: a bf16 log-sum-exp over thousands of negatives loses
the small gradients that matter.

With a mesh (`mesh=`), the loss runs inside `jax.shard_map` over the batch axes and never builds
the global N x N logits (N = 24,000 in the paper's image stage): each device holds n = N / P rows
of both towers, all-gathers the targets, and scans over column chunks of C targets with an
online log-sum-exp for its rows and a per-chunk log-sum-exp over its rows for the columns, which
are then combined across devices. The scan body is rematerialised, so per-device memory is
O(n * C + N * D), not O(n * N) (jax-platform.md section 9, method D). Value and gradients equal
the single-device form.
"""
from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp

NORM_EPS = 1e-6
DEFAULT_BATCH_AXES = ("data", "fsdp")
DEFAULT_CHUNK_SIZE = 2048


def l2_normalize(x: jax.Array, eps: float = NORM_EPS) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def bidirectional_infonce(pred: jax.Array, target: jax.Array, temperature: float | jax.Array, *,
                          mesh: jax.sharding.Mesh | None = None,
                          batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
                          chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Mean over the batch of the symmetric InfoNCE loss; `pred`, `target` are `(N, D)`.

  `mesh`: run sharded over the mesh's `batch_axes` (rows of both inputs split across them) with
  column chunks of at most `chunk_size`; None computes the full logits on one device.
  """
  if pred.ndim != 2 or pred.shape != target.shape:
    raise ValueError(f"pred and target must both be (N, D); got {pred.shape} and {target.shape}")
  if mesh is not None:
    return _sharded_infonce(pred, target, temperature, mesh, batch_axes, chunk_size)
  logits = l2_normalize(pred) @ l2_normalize(target).T / temperature
  diagonal = jnp.diagonal(logits)
  pred_to_target = jax.nn.logsumexp(logits, axis=1) - diagonal
  target_to_pred = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (pred_to_target.mean() + target_to_pred.mean())


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _sharded_infonce(pred, target, temperature, mesh, batch_axes, chunk_size):
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"mesh axes {mesh.axis_names} contain none of the batch axes {tuple(batch_axes)}")
  num_shards = 1
  for a in axes:
    num_shards *= mesh.shape[a]
  n_global = pred.shape[0]
  if n_global % num_shards:
    raise ValueError(f"batch {n_global} does not split over the {num_shards} devices of mesh axes {axes}")
  chunk = _largest_divisor_at_most(n_global, chunk_size)
  temperature = jnp.asarray(temperature, jnp.float32)

  def local_loss(p, t, tau):
    p, t = l2_normalize(p), l2_normalize(t)
    t_all = jax.lax.all_gather(t, axes, tiled=True)  # (N, D): small next to N x N
    chunks = t_all.reshape(n_global // chunk, chunk, -1)

    @jax.checkpoint  # keep only the (n,) carries, recompute each n x C block in the backward
    def scan_chunk(carry, t_chunk):
      row_max, row_sum = carry
      logits = p @ t_chunk.T / tau  # (n, C)
      new_max = jnp.maximum(row_max, jax.lax.stop_gradient(logits.max(axis=1)))
      row_sum = row_sum * jnp.exp(row_max - new_max) + jnp.exp(logits - new_max[:, None]).sum(axis=1)
      # Column log-sum-exp over this device's rows, for this chunk's C columns.
      return (new_max, row_sum), jax.nn.logsumexp(logits, axis=0)

    n_local = p.shape[0]
    # The carries hold per-device values: mark them device-varying, as the scan body makes them.
    init = jax.lax.pcast((jnp.full((n_local,), -jnp.inf, jnp.float32), jnp.zeros((n_local,), jnp.float32)),
                         axes, to="varying")
    (row_max, row_sum), column_parts = jax.lax.scan(scan_chunk, init, chunks)
    row_lse = row_max + jnp.log(row_sum)  # (n,)
    column_parts = column_parts.reshape(n_global)  # this device's rows' share of each column
    # Combine the column parts across devices: a log-sum-exp of P numbers per column. The max is
    # a constant shift (pmax has no derivative), the sum carries the gradient.
    column_max = jax.lax.pmax(jax.lax.stop_gradient(column_parts), axes)
    column_lse = column_max + jnp.log(jax.lax.psum(jnp.exp(column_parts - column_max), axes))
    diagonal = jnp.sum(p * t, axis=1) / tau
    row_term = jax.lax.psum(jnp.sum(row_lse - diagonal), axes) / n_global
    column_term = jnp.mean(column_lse) - jax.lax.psum(jnp.sum(diagonal), axes) / n_global
    return 0.5 * (row_term + column_term)

  batch = P(axes)
  return jax.shard_map(local_loss, mesh=mesh, in_specs=(batch, batch, P()), out_specs=P())(
      pred, target, temperature)


# The ablation losses of the paper's table 7 regress the prediction onto the target embedding,
# row by row, with no negatives; like InfoNCE they compare L2-normalised embeddings.


def cosine_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean of 1 - cos(pred_i, target_i)."""
  return jnp.mean(1.0 - jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1))


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute difference of the normalised embeddings (summed over D, averaged over rows)."""
  return jnp.mean(jnp.sum(jnp.abs(l2_normalize(pred) - l2_normalize(target)), axis=-1))


def l2_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared distance of the normalised embeddings (summed over D, averaged over rows)."""
  return jnp.mean(jnp.sum(jnp.square(l2_normalize(pred) - l2_normalize(target)), axis=-1))


LOSSES = ("infonce", "cosine", "l1", "l2")


def make_loss(name: str, *, temperature: float = 0.07, mesh: jax.sharding.Mesh | None = None,
              batch_axes: Sequence[str] = DEFAULT_BATCH_AXES, chunk_size: int = DEFAULT_CHUNK_SIZE):
  """`loss(pred, target) -> scalar` by config name; only InfoNCE couples rows, so only it shards."""
  if name == "infonce":
    return lambda pred, target: bidirectional_infonce(pred, target, temperature, mesh=mesh,
                                                      batch_axes=batch_axes, chunk_size=chunk_size)
  per_row = {"cosine": cosine_loss, "l1": l1_loss, "l2": l2_loss}
  if name not in per_row:
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
  return per_row[name]
