"""VL-JEPA predictor: ⟨visual tokens, query⟩ -> predicted target embedding Ŝ_Y.

Wiring (paper §3.1, §4.8(d)):
  visual tokens (B, Nv, Dv) --vision_proj--> (B, Nv, D)
  query ids     (B, Lq)     --backbone embed--> (B, Lq, D)
  [visual ; query] -> backbone (Llama layers 8-15 in the paper; bidirectional by default,
  `causal` for the ablation) -> average over non-pad tokens (visual + query, or query only)
  -> linear head into the shared space (1536-d in the paper).

The visual tokens come first so that, under the causal ablation, they cannot see the query
(which is why the paper finds causal attention hurts VQA). Right-padded query tokens sit at the
end and are masked as keys (the Llama backbone's RoPE positions run 0..L-1 over the concatenation).

The backbone is chosen by name from `models/predictor_backbones.py` ("llama" today); its
parameters live under `predictor/<name>/`. The config layout follows the Y-encoder's
(`TextEncoderConfig`): `backbone` names it and `backbone_config` holds its own config, so

    --config.model.predictor.backbone_config.num_layers=4

overrides a field of whichever backbone is chosen, and one layout serves every backbone (a
sub-config keyed by the backbone's name would need a field per backbone here). `to_dict` writes
`backbone_config` without a class key: the registered backbone's config class builds it back,
which also lets a backbone defined outside `vljepa_jax` (a test's) round-trip through an
experiment config. A `backbone_config` that is not the named backbone's config fails by name,
as does a misspelt field in it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models.config import ArchConfig

POOLING = ("all", "query")


@dataclasses.dataclass(frozen=True)
class PredictorConfig(ArchConfig):
  backbone: str = "llama"  # a name in predictor_backbones.BACKBONES
  backbone_config: ArchConfig | None = None  # that backbone's config (a dict of its fields is converted)
  vision_dim: int = 1024  # width of the X-encoder's tokens
  embed_dim: int = 1536  # shared embedding space
  causal: bool = False
  pool: str = "all"  # "all": visual + non-pad query tokens; "query": non-pad query tokens only

  def __post_init__(self):
    spec = predictor_backbones.get(self.backbone)
    if self.backbone_config is None:
      raise ValueError(f"PredictorConfig needs a backbone_config (a {spec.config.__name__} for backbone "
                       f"{self.backbone!r})")
    if isinstance(self.backbone_config, Mapping):
      try:
        config = spec.config.from_dict(self.backbone_config)
      except (TypeError, ValueError) as e:
        raise ValueError(f"predictor.backbone_config for backbone {self.backbone!r}: {e}") from e
      object.__setattr__(self, "backbone_config", config)  # frozen: converted once, at construction
    if not isinstance(self.backbone_config, spec.config):
      raise ValueError(f"predictor.backbone_config is a {type(self.backbone_config).__name__}, but backbone "
                       f"{self.backbone!r} takes a {spec.config.__name__}")
    if self.pool not in POOLING:
      raise ValueError(f"predictor pool {self.pool!r}: expected one of {POOLING}")

  @property
  def hidden_size(self) -> int:
    """The backbone's width: what vision_proj maps to and the head reads."""
    return self.backbone_config.hidden_size

  def to_dict(self) -> dict[str, Any]:
    return {**super().to_dict(), "backbone_config": self.backbone_config.to_dict()}


class Predictor(nn.Module):
  config: PredictorConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.vision_proj = layers.dense(cfg.hidden_size, ("vision_embed", "embed"), name="vision_proj", **kw)
    self.backbone = predictor_backbones.get(cfg.backbone).module(cfg.backbone_config, name=cfg.backbone)
    self.head = layers.dense(cfg.embed_dim, ("embed", "shared_embed"), name="head", **kw)

  def __call__(self, visual_tokens: jax.Array, query_ids: jax.Array, query_mask: jax.Array) -> jax.Array:
    """visual_tokens `(B, Nv, Dv)`, query ids/mask `(B, Lq)` -> Ŝ_Y `(B, embed_dim)` float32."""
    cfg = self.config
    if visual_tokens.shape[-1] != cfg.vision_dim:
      raise ValueError(f"visual tokens have width {visual_tokens.shape[-1]}, predictor expects {cfg.vision_dim}")
    batch, num_visual = visual_tokens.shape[:2]
    x = jnp.concatenate([self.vision_proj(visual_tokens), self.backbone.embed(query_ids).astype(cfg.compute_dtype)],
                        axis=1)
    query_mask = query_mask.astype(jnp.int32)
    visual_mask = jnp.ones((batch, num_visual), jnp.int32)
    mask = jnp.concatenate([visual_mask, query_mask], axis=1)
    hidden = self.backbone(inputs_embeds=x, attention_mask=mask, causal=cfg.causal)
    pool_mask = mask if cfg.pool == "all" else jnp.concatenate([jnp.zeros_like(visual_mask), query_mask], axis=1)
    pooled = layers.masked_mean(hidden, pool_mask)
    return self.head(pooled.astype(cfg.compute_dtype)).astype(jnp.float32)

  # --- streaming: a causal predictor over an unbounded video, constant cost per step ---------------

  def stream_visual(self, visual_tokens: jax.Array, state: Any) -> Any:
    """The stream's state after `visual_tokens (B, n, Dv)` more: the newest frames' tokens, in order."""
    check_streaming(self.config)
    _, state = self.backbone(inputs_embeds=self.vision_proj(visual_tokens), causal=True, initial_state=state,
                             return_state=True)
    return state

  def stream_query(self, state: Any, query_ids: jax.Array, query_mask: jax.Array) -> jax.Array:
    """Ŝ_Y `(B, embed_dim)` of the stream so far: the query read from `state`, pooled over its tokens.

    The state is not advanced (the caller keeps it), so every step asks the query afresh. With a
    causal backbone and query-only pooling this is exactly `__call__` over [every visual token
    streamed so far ; query].
    """
    check_streaming(self.config)
    cfg = self.config
    hidden = self.backbone(inputs_embeds=self.backbone.embed(query_ids).astype(cfg.compute_dtype),
                           attention_mask=query_mask.astype(jnp.int32), causal=True, initial_state=state)
    pooled = layers.masked_mean(hidden, query_mask.astype(jnp.int32))
    return self.head(pooled.astype(cfg.compute_dtype)).astype(jnp.float32)


def check_streaming(config: PredictorConfig) -> None:
  """Raises, naming the config keys, unless the predictor can stream: Ŝ_Y(t) from a carried state."""
  problems = []
  if predictor_backbones.get(config.backbone).initial_state is None:
    problems.append(f"backbone {config.backbone!r} carries no constant-size state (use 'mamba3')")
  if not config.causal:
    problems.append("predictor.causal=False: a bidirectional predictor reads the future")
  if config.pool != "query":
    problems.append(f"predictor.pool={config.pool!r}: pooling over the visual tokens would average the whole "
                    "history (use 'query')")
  if problems:
    raise ValueError("the predictor cannot stream: " + "; ".join(problems))


def initial_stream_state(config: PredictorConfig, batch: int) -> Any:
  """The empty history of `batch` streams, for `Predictor.stream_visual`."""
  check_streaming(config)
  return predictor_backbones.get(config.backbone).initial_state(config.backbone_config, batch)
