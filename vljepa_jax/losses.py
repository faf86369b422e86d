"""VL-JEPA's training objective: bidirectional InfoNCE between Ŝ_Y and S_Y (and the ablation losses).

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

import math
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
  if mesh is not None and _num_batch_shards(mesh, batch_axes) > 1:
    return _sharded_infonce(pred, target, temperature, mesh, batch_axes, chunk_size)
  # One batch shard (a single device, as on a laptop): the dense form is the same loss without the
  # shard_map, the column scan and its rematerialisation.
  logits = l2_normalize(pred) @ l2_normalize(target).T / temperature
  diagonal = jnp.diagonal(logits)
  pred_to_target = jax.nn.logsumexp(logits, axis=1) - diagonal
  target_to_pred = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (pred_to_target.mean() + target_to_pred.mean())


def _mesh_batch_axes(mesh: jax.sharding.Mesh, batch_axes: Sequence[str]) -> tuple[str, ...]:
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"mesh axes {mesh.axis_names} contain none of the batch axes {tuple(batch_axes)}")
  return axes


def _num_batch_shards(mesh: jax.sharding.Mesh, batch_axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in _mesh_batch_axes(mesh, batch_axes))


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _row_sharding(pred, mesh, batch_axes, chunk_size) -> tuple[tuple[str, ...], int, int]:
  """(the mesh's batch axes, global rows, column chunk) for a loss over rows split across devices."""
  axes = _mesh_batch_axes(mesh, batch_axes)
  num_shards = _num_batch_shards(mesh, axes)
  n_global = pred.shape[0]
  if n_global % num_shards:
    raise ValueError(f"batch {n_global} does not split over the {num_shards} devices of mesh axes {axes}")
  return axes, n_global, _largest_divisor_at_most(n_global, chunk_size)


def _sharded_infonce(pred, target, temperature, mesh, batch_axes, chunk_size):
  axes, n_global, chunk = _row_sharding(pred, mesh, batch_axes, chunk_size)
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


# SigLIP's pairwise sigmoid loss (Zhai et al., arXiv 2303.15343), the extra row of the loss ablation:
# every (prediction, target) pair of the batch is its own binary problem, positive on the diagonal,
#   logits = normalise(pred) @ normalise(target).T / temperature + bias
#   loss   = -sum_ij log sigmoid(z_ij * logits_ij) / N,   z_ij = +1 if i == j else -1
# so, unlike InfoNCE, no row's loss is normalised over the others. SigLIP initialises the bias at
# -10 (its section 3.2: the loss then starts near the few positives' prior, not at log 2 per pair).
SIGLIP_BIAS = -10.0


def sigmoid_pairwise(pred: jax.Array, target: jax.Array, temperature: float | jax.Array, bias: float | jax.Array,
                     *, mesh: jax.sharding.Mesh | None = None, batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """SigLIP's loss of `(N, D)` predictions and targets (sum over the N x N pairs, divided by N), in fp32.

  `mesh`: rows split over its `batch_axes`; each device sums its rows against the gathered targets
  in column chunks of at most `chunk_size` (rematerialised, so O(n * C) memory, never n x N).
  """
  if pred.ndim != 2 or pred.shape != target.shape:
    raise ValueError(f"pred and target must both be (N, D); got {pred.shape} and {target.shape}")
  temperature = jnp.asarray(temperature, jnp.float32)
  bias = jnp.asarray(bias, jnp.float32)
  if mesh is None or _num_batch_shards(mesh, batch_axes) == 1:
    logits = l2_normalize(pred) @ l2_normalize(target).T / temperature + bias
    signs = 2.0 * jnp.eye(pred.shape[0], dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / pred.shape[0]
  axes, n_global, chunk = _row_sharding(pred, mesh, batch_axes, chunk_size)

  def local_loss(p, t, tau, b):
    p, t = l2_normalize(p), l2_normalize(t)
    n_local = p.shape[0]
    chunks = jax.lax.all_gather(t, axes, tiled=True).reshape(n_global // chunk, chunk, -1)
    rows = jax.lax.axis_index(axes) * n_local + jnp.arange(n_local)  # global index of each local row

    @jax.checkpoint
    def scan_chunk(total, xs):
      t_chunk, first_column = xs
      logits = p @ t_chunk.T / tau + b  # (n, C)
      positive = rows[:, None] == first_column + jnp.arange(chunk)[None, :]
      return total + jnp.sum(jax.nn.log_sigmoid(jnp.where(positive, logits, -logits))), None

    init = jax.lax.pcast(jnp.zeros((), jnp.float32), axes, to="varying")
    total, _ = jax.lax.scan(scan_chunk, init, (chunks, jnp.arange(0, n_global, chunk)))
    return -jax.lax.psum(total, axes) / n_global

  batch = P(axes)
  return jax.shard_map(local_loss, mesh=mesh, in_specs=(batch, batch, P(), P()), out_specs=P())(
      pred, target, temperature, bias)


LOSSES = ("infonce", "cosine", "l1", "l2", "siglip")
# The losses with a temperature (and, for SigLIP, a bias), which `learnable_temperature` makes trainable.
SCALED_LOSSES = ("infonce", "siglip")
# A learnable temperature is kept as log(tau) and clipped at MIN_TEMPERATURE (CLIP's cap on the
# logit scale, 100), so that it cannot collapse to 0 and blow up the logits.
MIN_TEMPERATURE = 0.01
LOG_TEMPERATURE = "log_temperature"
BIAS = "bias"


class Loss:
  """`loss(pred, target, loss_params) -> scalar` chosen by config name.

  `init_params()` is the loss's own trainable parameters, with `learnable_temperature=True`:
  `{"log_temperature": log(tau)}` for InfoNCE, and also `{"bias": b}` for SigLIP (which learns both,
  as in its paper); else `{}`. The contrastive objective keeps them beside the model's parameters
  (at `params["objective"]`) so the optimizer updates them like any weight. `bias` is SigLIP's
  (initial) bias, `SIGLIP_BIAS` when None; no other loss takes one. Only InfoNCE and SigLIP couple
  rows, so only they take a mesh.
  """

  def __init__(self, name: str, *, temperature: float = 0.07, learnable_temperature: bool = False,
               bias: float | None = None, mesh: jax.sharding.Mesh | None = None,
               batch_axes: Sequence[str] = DEFAULT_BATCH_AXES, chunk_size: int = DEFAULT_CHUNK_SIZE):
    if name not in LOSSES:
      raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
    if not temperature > 0:
      raise ValueError(f"loss temperature must be > 0, got {temperature}")
    if learnable_temperature and name not in SCALED_LOSSES:
      raise ValueError(f"learnable_temperature applies to the {' and '.join(map(repr, SCALED_LOSSES))} losses only, "
                       f"not {name!r}")
    if bias is not None and name != "siglip":
      raise ValueError(f"a loss bias ({bias}) applies to the 'siglip' loss only, not {name!r}")
    self.name, self.temperature, self.learnable_temperature = name, temperature, learnable_temperature
    self.bias = SIGLIP_BIAS if bias is None and name == "siglip" else bias
    self._mesh, self._batch_axes, self._chunk_size = mesh, tuple(batch_axes), chunk_size

  def init_params(self) -> dict[str, jax.Array]:
    if not self.learnable_temperature:
      return {}
    params = {LOG_TEMPERATURE: jnp.log(jnp.asarray(self.temperature, jnp.float32))}
    if self.name == "siglip":
      params[BIAS] = jnp.asarray(self.bias, jnp.float32)
    return params

  def current_temperature(self, loss_params: dict[str, jax.Array] | None) -> jax.Array | float:
    if self.learnable_temperature:
      return jnp.maximum(jnp.exp(loss_params[LOG_TEMPERATURE]), MIN_TEMPERATURE)
    return self.temperature

  def current_bias(self, loss_params: dict[str, jax.Array] | None) -> jax.Array | float:
    return loss_params[BIAS] if self.learnable_temperature else self.bias

  def __call__(self, pred: jax.Array, target: jax.Array, loss_params: dict[str, jax.Array] | None = None
               ) -> jax.Array:
    sharding = {"mesh": self._mesh, "batch_axes": self._batch_axes, "chunk_size": self._chunk_size}
    if self.name == "infonce":
      return bidirectional_infonce(pred, target, self.current_temperature(loss_params), **sharding)
    if self.name == "siglip":
      return sigmoid_pairwise(pred, target, self.current_temperature(loss_params), self.current_bias(loss_params),
                              **sharding)
    return {"cosine": cosine_loss, "l1": l1_loss, "l2": l2_loss}[self.name](pred, target)


def make_loss(name: str, **kwargs) -> Loss:
  """See `Loss`: `make_loss("infonce", temperature=0.07, mesh=mesh)(pred, target)`."""
  return Loss(name, **kwargs)
