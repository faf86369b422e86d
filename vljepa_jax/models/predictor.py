"""VL-JEPA predictor: ⟨visual tokens, query⟩ -> predicted target embedding Ŝ_Y.

Wiring (paper §3.1, §4.8(d)):
  visual tokens (B, Nv, Dv) --vision_proj--> (B, Nv, D)
  query ids     (B, Lq)     --Llama embed--> (B, Lq, D)
  [visual ; query] -> Llama layers (bidirectional by default; `causal` for the ablation)
  -> final norm -> average over non-pad tokens (visual + query, or query only)
  -> linear head into the shared space (1536-d in the paper).

The visual tokens come first so that, under the causal ablation, they cannot see the query
(which is why the paper finds causal attention hurts VQA). RoPE positions run 0..L-1 over
the concatenation; right-padded query tokens sit at the end and are masked as keys.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models.config import ArchConfig

POOLING = ("all", "query")


@dataclasses.dataclass(frozen=True)
class PredictorConfig(ArchConfig):
  llama: llama_lib.LlamaConfig | None = None
  vision_dim: int = 1024  # width of the X-encoder's tokens
  embed_dim: int = 1536  # shared embedding space
  causal: bool = False
  pool: str = "all"  # "all": visual + non-pad query tokens; "query": non-pad query tokens only

  def __post_init__(self):
    if self.llama is None:
      raise ValueError("PredictorConfig needs a llama config")
    if self.pool not in POOLING:
      raise ValueError(f"predictor pool {self.pool!r}: expected one of {POOLING}")


class Predictor(nn.Module):
  config: PredictorConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.vision_proj = layers.dense(cfg.llama.hidden_size, ("vision_embed", "embed"), name="vision_proj", **kw)
    self.llama = llama_lib.Llama(cfg.llama)
    self.head = layers.dense(cfg.embed_dim, ("embed", "shared_embed"), name="head", **kw)

  def __call__(self, visual_tokens: jax.Array, query_ids: jax.Array, query_mask: jax.Array) -> jax.Array:
    """visual_tokens `(B, Nv, Dv)`, query ids/mask `(B, Lq)` -> Ŝ_Y `(B, embed_dim)` float32."""
    cfg = self.config
    if visual_tokens.shape[-1] != cfg.vision_dim:
      raise ValueError(f"visual tokens have width {visual_tokens.shape[-1]}, predictor expects {cfg.vision_dim}")
    batch, num_visual = visual_tokens.shape[:2]
    x = jnp.concatenate([self.vision_proj(visual_tokens), self.llama.embed(query_ids).astype(cfg.compute_dtype)],
                        axis=1)
    query_mask = query_mask.astype(jnp.int32)
    visual_mask = jnp.ones((batch, num_visual), jnp.int32)
    mask = jnp.concatenate([visual_mask, query_mask], axis=1)
    hidden = self.llama(inputs_embeds=x, attention_mask=mask, causal=cfg.causal)
    pool_mask = mask if cfg.pool == "all" else jnp.concatenate([jnp.zeros_like(visual_mask), query_mask], axis=1)
    pooled = layers.masked_mean(hidden, pool_mask)
    return self.head(pooled.astype(cfg.compute_dtype)).astype(jnp.float32)
