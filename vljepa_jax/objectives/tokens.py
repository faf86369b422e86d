"""The token-space baseline's objective: next-token cross-entropy of the target text (paper §4.5).

`config.objective = "tokens"` trains the token-space VLM (`models/token_vlm.py`) instead of
VL-JEPA, from the same config: the run's model is built from `config.model` by
`TokenVLMConfig.from_vljepa` (the same X-encoder and visual projection, the predictor's Llama
twice as deep and causal, an LM head), and the same data, batch, optimizer and schedule train it
by teacher forcing (padding masked, BOS given).

The configured LR rules are VL-JEPA's; they are carried over to the parts the baseline shares
and dropped for the towers it does not have:
  x_encoder/...                   kept (the same X-encoder)
  predictor/vision_proj/...   ->  vision_proj/...
  predictor/<backbone>/...    ->  decoder/...       (e.g. the paper's frozen token embedding)
  predictor/.*                ->  (vision_proj|decoder)/.*
  predictor/head/..., y_encoder/..., y_head/..., y_decoder/...   dropped (no such towers)
Any other rule is kept as written, and fails by name if it matches nothing.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections

from vljepa_jax.objectives import base

# VL-JEPA-only towers: rules on them have nothing to act on in the baseline.
VLJEPA_ONLY = ("predictor/head/", "y_encoder/", "y_head/", "y_decoder/")


def baseline_rule(pattern: str, predictor_backbone: str) -> str | None:
  """A VL-JEPA LR-rule regex carried over to the baseline's parameter tree (None: dropped)."""
  if pattern.startswith(VLJEPA_ONLY):
    return None
  if pattern == "predictor/.*":
    return "(vision_proj|decoder)/.*"
  for prefix, replacement in (("predictor/vision_proj", "vision_proj"),
                              (f"predictor/{re.escape(predictor_backbone)}", "decoder")):
    if pattern.startswith(prefix):
      return replacement + pattern[len(prefix):]
  return pattern


class Tokens(base.TokenCrossEntropy):
  """Mean next-token cross-entropy of the target text given [visual ; query], for the token-space VLM."""

  MODEL = "token_vlm"

  def __init__(self, predictor_backbone: str = "llama"):
    self.predictor_backbone = predictor_backbone

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> "Tokens":
    del mesh
    return cls(config.model.predictor.backbone)

  def lr_rules(self, configured: Sequence[tuple[str, float]], abstract_params: Mapping[str, Any]) -> base.LrRules:
    del abstract_params
    rules = ((baseline_rule(pattern, self.predictor_backbone), multiplier) for pattern, multiplier in configured)
    return tuple((pattern, multiplier) for pattern, multiplier in rules if pattern is not None)

  def token_loss_sum(self, model: nn.Module, params: Mapping[str, Any], inputs: base.Inputs, frozen: Any):
    return model.apply(base.model_variables(params, frozen), **inputs, method="loss_terms")
