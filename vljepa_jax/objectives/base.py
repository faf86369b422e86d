"""What a training objective is: its loss on a batch, its own parameters, what it trains, its metrics.

An experiment config names one by `config.objective` (a key of `registry.OBJECTIVES`). The train
step asks it for the loss and gradients of each global batch; the stage asks it which parameters
the optimizer moves (`lr_rules`) and for the parameters it owns besides the model's.

The objective's own parameters (e.g. a learnable InfoNCE temperature) live in the one place
`params[OBJECTIVE_PARAMS]`, beside the model's top-level subtrees, so the optimizer, sharding and
checkpoints treat them like any weight. `model.apply` reads only the model's own subtrees, so
evaluation can hand the full parameter tree to the model.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

OBJECTIVE_PARAMS = "objective"
Inputs = Mapping[str, jax.Array]
LrRules = tuple[tuple[str, float], ...]


def with_objective_params(params: Mapping[str, Any], objective_params: Mapping[str, Any]) -> dict[str, Any]:
  """The model's parameter tree with the objective's added under `OBJECTIVE_PARAMS` (if it has any)."""
  if OBJECTIVE_PARAMS in params:
    raise ValueError(f"the model has a top-level {OBJECTIVE_PARAMS!r} subtree, the key of the objective's parameters")
  return {**params, OBJECTIVE_PARAMS: dict(objective_params)} if objective_params else dict(params)


def model_variables(params: Mapping[str, Any], frozen: Any = None) -> dict[str, Any]:
  """`model.apply`'s variables from the trained params; frozen ones enter through `stop_gradient`.

  `frozen`: a tree of bools shaped like `params` (True = never updated). Stopping their gradient
  lets XLA drop the backward pass of a tower that is frozen end to end.
  """
  if frozen is not None:
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
  return {"params": {k: v for k, v in params.items() if k != OBJECTIVE_PARAMS}}


def split_microbatches(inputs: Inputs, num_microbatches: int) -> dict[str, jax.Array]:
  """(N, ...) -> (M, N/M, ...), microbatch m taking every M-th row.

  Strided rather than contiguous rows, so each microbatch draws equally from every device's
  shard of a batch-sharded array instead of living on a few devices.
  """
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch {x.shape[0]} does not split into {num_microbatches} microbatches")
    return jnp.moveaxis(x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:]), 1, 0)
  return {k: split(v) for k, v in inputs.items()}


class Objective:
  """Base class. Subclasses implement `loss` and may override the rest.

  `MODEL` names the model it trains: "vljepa" (`models/vljepa.py`) or "token_vlm" (the token-space
  baseline, `models/token_vlm.py`); every stage of a run must train the same one
  (`train/model_setup.model_kind`).

  `from_config(config, mesh=...)` is how the registry builds one for a stage; it is also where the
  objective checks the config keys it reads, so a bad setting fails before anything compiles.
  """

  MODEL = "vljepa"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> "Objective":
    del config, mesh
    return cls()

  def init_params(self) -> dict[str, jax.Array]:
    """The objective's own trainable parameters (kept at `params[OBJECTIVE_PARAMS]`); {} for none."""
    return {}

  def lr_rules(self, configured: Sequence[tuple[str, float]], abstract_params: Mapping[str, Any]) -> LrRules:
    """The optimizer's `(regex, multiplier)` rules: `configured` (`config.optimizer.lr_rules`) by default.

    An objective that trains a different part of the model puts its own freezing here (multiplier 0).
    """
    del abstract_params
    return tuple(map(tuple, configured))

  def loss(self, model: nn.Module, params: Mapping[str, Any], inputs: Inputs, frozen: Any = None) -> jax.Array:
    """The scalar loss of one batch of model inputs (`train_step.model_inputs`); what gets differentiated."""
    raise NotImplementedError

  def loss_and_grads(self, model: nn.Module, params: Mapping[str, Any], inputs: Inputs, *, frozen: Any = None,
                     num_microbatches: int = 1) -> tuple[jax.Array, Any]:
    """`(loss, d loss / d params)` of one global batch, split into `num_microbatches` for memory.

    The default differentiates `loss` on the whole batch; objectives whose loss can be split
    without changing it override this to accumulate over microbatches.
    """
    if num_microbatches != 1:
      raise ValueError(f"the {type(self).__name__} objective does not split batches into microbatches; "
                       f"set config.num_microbatches=1 (got {num_microbatches})")
    return jax.value_and_grad(lambda p: self.loss(model, p, inputs, frozen))(params)

  def metrics(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Scalars to log after a step, from the updated params (e.g. a learnable temperature)."""
    del params
    return {}


class TokenCrossEntropy(Objective):
  """A mean next-token cross-entropy over every target token of the batch (the Y-decoder's, the baseline's).

  Subclasses give `token_loss_sum(model, params, inputs, frozen) -> (summed cross-entropy, token
  count)`. The mean is over tokens, so microbatches simply add their sums, gradients and counts.
  """

  def token_loss_sum(self, model: nn.Module, params: Mapping[str, Any], inputs: Inputs, frozen: Any
                     ) -> tuple[jax.Array, jax.Array]:
    raise NotImplementedError

  def loss(self, model: nn.Module, params: Mapping[str, Any], inputs: Inputs, frozen: Any = None) -> jax.Array:
    total, count = self.token_loss_sum(model, params, inputs, frozen)
    return total / jnp.maximum(count, 1.0)

  def loss_and_grads(self, model: nn.Module, params: Mapping[str, Any], inputs: Inputs, *, frozen: Any = None,
                     num_microbatches: int = 1) -> tuple[jax.Array, Any]:
    def accumulate(carry, mb):
      grads, total, count = carry
      (mb_total, mb_count), mb_grads = jax.value_and_grad(
          lambda p: self.token_loss_sum(model, p, mb, frozen), has_aux=True)(params)
      return (jax.tree.map(jnp.add, grads, mb_grads), total + mb_total, count + mb_count), None

    zero = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, total, count), _ = jax.lax.scan(accumulate, zero, split_microbatches(inputs, num_microbatches))
    count = jnp.maximum(count, 1.0)
    return total / count, jax.tree.map(lambda g: g / count, grads)
