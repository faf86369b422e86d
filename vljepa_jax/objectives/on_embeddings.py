"""Objectives on the two embeddings of a batch: a loss of (Ŝ_Y, S_Y) over every row at once.

  pred, target = VLJEPA(video, query, target text)      (N, D) each, for the whole global batch
  loss         = embedding_loss(pred, target, objective params)

Gradient accumulation cannot simply average microbatch gradients here: a contrastive loss over
microbatches would see only the negatives inside each one. With `num_microbatches > 1` the loss
follows GradCache (Gao et al., arXiv 2101.06983) instead: embed every microbatch without keeping
activations, take the loss and its gradient with respect to the embeddings of the *whole* batch,
then re-run each microbatch and pull that embedding gradient back through the towers. The result
equals the full-batch gradient; peak activation memory is one microbatch's.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.objectives import base


class EmbeddingObjective(base.Objective):
  """Subclasses implement `embedding_loss`; the batch's loss, and GradCache accumulation, come from here.

  The loss must not depend on the order of the rows (pred and target permuted together): GradCache
  concatenates microbatches in microbatch-major order.
  """

  def embedding_loss(self, pred: jax.Array, target: jax.Array, objective_params: Mapping[str, jax.Array]
                     ) -> jax.Array:
    """Scalar loss of the batch's predictions `pred` and targets `target`, both `(N, D)`."""
    raise NotImplementedError

  def loss(self, model: nn.Module, params: Mapping[str, Any], inputs: base.Inputs, frozen: Any = None) -> jax.Array:
    pred, target = model.apply(base.model_variables(params, frozen), **inputs)
    return self.embedding_loss(pred, target, params.get(base.OBJECTIVE_PARAMS, {}))

  def loss_and_grads(self, model: nn.Module, params: Mapping[str, Any], inputs: base.Inputs, *, frozen: Any = None,
                     num_microbatches: int = 1) -> tuple[jax.Array, Any]:
    if num_microbatches == 1:
      return super().loss_and_grads(model, params, inputs, frozen=frozen)

    def embed(p, mb):
      return model.apply(base.model_variables(p, frozen), **mb)

    micro = base.split_microbatches(inputs, num_microbatches)
    preds, targets = jax.lax.map(lambda mb: embed(params, mb), micro)  # (M, N/M, D) each
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    loss, (d_preds, d_targets, d_objective) = jax.value_and_grad(self.embedding_loss, argnums=(0, 1, 2))(
        flat(preds), flat(targets), params.get(base.OBJECTIVE_PARAMS, {}))

    def pull_back(grads, xs):
      mb, d_pred, d_target = xs
      _, vjp = jax.vjp(lambda p: embed(p, mb), params)
      (mb_grads,) = vjp((d_pred, d_target))
      return jax.tree.map(jnp.add, grads, mb_grads), None

    grads, _ = jax.lax.scan(pull_back, jax.tree.map(jnp.zeros_like, params),
                            (micro, d_preds.reshape(preds.shape), d_targets.reshape(targets.shape)))
    if base.OBJECTIVE_PARAMS in params:  # the embeddings' vjp gives them zeros; the loss's gradient is theirs
      grads = {**grads, base.OBJECTIVE_PARAMS: d_objective}
    return loss, grads
