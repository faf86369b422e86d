"""Sentence encoder: a text backbone, masked mean pooling, optional dense stack, L2 norm.

This is the Sentence-Transformers pipeline (Transformer -> Pooling(mean) -> [Dense ...] ->
Normalize) as one Linen module. Both text families convert into it: all-MiniLM-L6-v2 (BERT,
no dense stack) and EmbeddingGemma-300M (Gemma 3, Dense 768->3072->768, no bias, identity
activation). VL-JEPA's Y-encoder is this module followed by a linear head into the shared
space (`vljepa_jax.models.vljepa`).

    hidden = model.apply(v, ids, mask)                 # (B, L, D) last hidden state
    emb    = model.apply(v, ids, mask, method="embed") # (B, D') sentence embedding
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax import registry
from vljepa_jax.models import layers
from vljepa_jax.models.config import ArchConfig

# Backbones by name: "module:Class", imported on first use.
BACKBONES = {
    "bert": "vljepa_jax.models.bert:Bert",
    "gemma3": "vljepa_jax.models.gemma:Gemma3Encoder",
}


def backbone_class(name: str) -> type[nn.Module]:
  return registry.lookup(BACKBONES, name, "text encoder backbone")


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig(ArchConfig):
  backbone: str = "bert"
  backbone_config: ArchConfig | None = None
  dense_dims: tuple[int, ...] = ()  # Sentence-Transformers Dense layers (no bias, identity)
  normalize: bool = True

  def __post_init__(self):
    if self.backbone_config is None:
      raise ValueError("TextEncoderConfig needs a backbone_config")


class TextEncoder(nn.Module):
  config: TextEncoderConfig

  def setup(self):
    cfg = self.config
    self.backbone = backbone_class(cfg.backbone)(cfg.backbone_config)
    self.dense = [
        layers.dense(d, ("embed", "mlp") if i == 0 else ("mlp", "embed"), use_bias=False,
                     dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, name=f"dense_{i}")
        for i, d in enumerate(cfg.dense_dims)
    ]

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    hidden = self.backbone(input_ids, attention_mask)
    if self.is_initializing():  # create the dense params too, so init sees the whole tree
      self._head(hidden, attention_mask)
    return hidden

  def embed(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """Sentence embeddings `(B, D')` in float32."""
    return self._head(self.backbone(input_ids, attention_mask), attention_mask)

  def _head(self, hidden: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    x = layers.masked_mean(hidden, attention_mask)
    for d in self.dense:
      x = d(x.astype(self.config.compute_dtype)).astype(jnp.float32)
    if self.config.normalize:
      x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x
