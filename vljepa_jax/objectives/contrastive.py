"""The contrastive objective: VL-JEPA's InfoNCE between Ŝ_Y and S_Y, or a table-7 regression loss.

`config.loss.name` picks the loss (`losses.LOSSES`: infonce, cosine, l1, l2, siglip). A learnable
temperature (`config.loss.learnable_temperature`; InfoNCE's or SigLIP's, which then learns its bias
too) is this objective's parameter, at `params["objective"]["log_temperature"]` (and `["bias"]`),
and is logged as `temperature` (and `bias`).

The Y-decoder is not in this loss, so a contrastive stage keeps it frozen (weight decay alone
would otherwise shrink it); everything else trains as `config.optimizer.lr_rules` says.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import ml_collections

from vljepa_jax import losses
from vljepa_jax.objectives import base
from vljepa_jax.objectives import on_embeddings

DECODER_RULE = ("y_decoder/.*", 0.0)


class Contrastive(on_embeddings.EmbeddingObjective):
  """`loss_fn(pred, target, loss_params)` (a `losses.Loss`) on the batch's embeddings."""

  def __init__(self, loss_fn: losses.Loss):
    self.loss_fn = loss_fn

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> "Contrastive":
    loss = config.loss
    return cls(losses.make_loss(loss.name, temperature=loss.temperature,
                                learnable_temperature=loss.learnable_temperature, bias=loss.get("bias"), mesh=mesh,
                                chunk_size=loss.chunk_size))

  def init_params(self) -> dict[str, jax.Array]:
    return self.loss_fn.init_params()

  def lr_rules(self, configured: Sequence[tuple[str, float]], abstract_params: Mapping[str, Any]) -> base.LrRules:
    has_decoder = "y_decoder" in abstract_params
    return ((DECODER_RULE,) if has_decoder else ()) + super().lr_rules(configured, abstract_params)

  def embedding_loss(self, pred: jax.Array, target: jax.Array, objective_params: Mapping[str, jax.Array]
                     ) -> jax.Array:
    return self.loss_fn(pred, target, objective_params)

  def metrics(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
    if not self.loss_fn.learnable_temperature:
      return {}
    loss_params = params[base.OBJECTIVE_PARAMS]
    metrics = {"temperature": self.loss_fn.current_temperature(loss_params)}
    if losses.BIAS in loss_params:
      metrics["bias"] = self.loss_fn.current_bias(loss_params)
    return metrics
