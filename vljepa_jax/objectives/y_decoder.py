"""The Y-decoder objective: teacher forcing of the text decoder, everything else frozen.

The loss is the mean next-token cross-entropy of the target text given an embedding
(`config.y_decoder_condition`: "target" = S_Y of the text itself, "predictor" = Ŝ_Y of the visual
input and query; see `VLJEPA.y_decoder_loss`), as the paper's inference-only decoder is fitted
with the rest of the model fixed (`base.TokenCrossEntropy`: a mean over tokens).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import ml_collections

from vljepa_jax.objectives import base

CONDITIONS = ("target", "predictor")


class YDecoder(base.TokenCrossEntropy):
  """Trains `params["y_decoder"]` only, on the caption loss of the embedding named by `condition`."""

  def __init__(self, condition: str = "target"):
    if condition not in CONDITIONS:
      raise ValueError(f"config.y_decoder_condition={condition!r}; expected one of {CONDITIONS}")
    self.condition = condition

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> "YDecoder":
    del mesh
    if not config.model.get("y_decoder"):
      raise ValueError("config.objective='y_decoder' but config.model.y_decoder is not set; add a "
                       "YDecoderConfig (see configs/demo.py)")
    return cls(config.y_decoder_condition)

  def lr_rules(self, configured: Sequence[tuple[str, float]], abstract_params: Mapping[str, Any]) -> base.LrRules:
    del configured
    if "y_decoder" not in abstract_params:
      raise ValueError("the y_decoder objective needs a model with a Y-decoder (config.model.y_decoder)")
    return (("y_decoder/.*", 1.0), (".*", 0.0))

  def token_loss_sum(self, model, params, inputs, frozen):
    """(summed token cross-entropy, token count) of a batch."""
    return model.apply(base.model_variables(params, frozen), **inputs, condition=self.condition,
                       method="y_decoder_loss")
