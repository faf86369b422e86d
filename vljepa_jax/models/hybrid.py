"""The `hybrid` predictor backbone: Mamba-3 layers with a few attention layers interleaved.

A pure state-space stack compresses everything it has read into a fixed-size state; a few
attention layers give it exact retrieval over the sequence again at a fraction of the quadratic
cost (the recipe of hybrid models such as Jamba and Samba, and the source document's suggestion
for long video). Layer i is a Llama attention layer (`llama.LlamaLayer`: pre-norm self-attention
with RoPE, then SwiGLU) when (i + 1) is a multiple of `attention_every`, else a Mamba-3 layer
(`mamba3_block.Mamba3Layer`). Both kinds take the padding mask and the `causal` switch the
predictor passes, so the hybrid is a drop-in predictor backbone:

    --config.model.predictor.backbone=hybrid [--config.model.predictor.backbone_config.attention_every=4]
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from vljepa_jax.models import layers
from vljepa_jax.models import llama
from vljepa_jax.models import mamba3_block
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models.config import ArchConfig


@dataclasses.dataclass(frozen=True)
class HybridConfig(mamba3_block.Mamba3Config):
  attention_every: int = 4  # layers 3, 7, ... (0-based) attend; the rest are Mamba-3
  attention_heads: int = 16
  attention_kv_heads: int = 4
  attention_head_dim: int = 64
  rope_theta: float = 10000.0
  attention_impl: str = "xla"  # of the attention layers; the model-level `attention_impl` sets it (models/attention.py)

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.attention_every, int) or not 1 <= self.attention_every <= self.num_layers:
      raise ValueError(f"HybridConfig.attention_every={self.attention_every!r}: expected an int in [1, num_layers="
                       f"{self.num_layers}] (a larger one leaves the hybrid without attention)")
    if self.attention_heads % self.attention_kv_heads:
      raise ValueError(f"HybridConfig.attention_kv_heads ({self.attention_kv_heads}) must divide attention_heads "
                       f"({self.attention_heads})")
    if not self.intermediate_size:
      raise ValueError("HybridConfig.intermediate_size must be > 0: the attention layers have a SwiGLU MLP")

  def is_attention(self, layer: int) -> bool:
    return (layer + 1) % self.attention_every == 0

  def attention_config(self) -> llama.LlamaConfig:
    """The Llama config its attention layers are built from."""
    return llama.LlamaConfig(
        vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_layers=1, num_heads=self.attention_heads, num_kv_heads=self.attention_kv_heads,
        head_dim=self.attention_head_dim, rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
        rope_scaling_factor=None, attention_impl=self.attention_impl, dtype=self.dtype, param_dtype=self.param_dtype)


class Hybrid(mamba3_block.Mamba3Stack):
  """`apply(v, inputs_embeds=..., attention_mask=..., causal=...) -> (B, L, D)` final-normed hidden states.

  A `Mamba3Stack` (embedding, input checks, final norm) whose attention layers are Llama layers.
  """

  config: HybridConfig

  def make_layers(self) -> list[nn.Module]:
    cfg = self.config
    ssm = layers.remat_block(mamba3_block.Mamba3Layer, cfg.remat, static_argnums=(3,))
    attention = layers.remat_block(llama.LlamaLayer, cfg.remat, static_argnums=(3, 4, 5))
    return [attention(cfg.attention_config()) if cfg.is_attention(i) else ssm(cfg) for i in range(cfg.num_layers)]

  def call_layer(self, index: int, layer: nn.Module, x: jax.Array, mask: jax.Array | None, causal: bool,
                 state=None, return_state: bool = False) -> jax.Array:
    if state is not None or return_state:
      raise NotImplementedError("the hybrid's attention layers have no constant-size state: stream with `mamba3`")
    if self.config.is_attention(index):
      return layer(x, mask, causal, False, None)  # no KV cache
    return layer(x, mask, causal)

  def step(self, inputs_embeds: jax.Array, state):
    raise NotImplementedError("the hybrid's attention layers have no constant-size state: stream with `mamba3`")


def forward_flops(config: HybridConfig, tokens: int) -> float:
  """Mamba-3 layers counted as Mamba-3 does, attention layers as Llama does (models/flops.py)."""
  attention = sum(config.is_attention(i) for i in range(config.num_layers))
  ssm = config.num_layers - attention
  ssm_fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(mamba3_block.Mamba3Config)}
  per_ssm = mamba3_block.forward_flops(mamba3_block.Mamba3Config(**{**ssm_fields, "num_layers": 1}), tokens)
  per_attention = llama.forward_flops(config.attention_config(), tokens)  # num_layers=1
  return float(ssm * per_ssm + attention * per_attention)


def matched_config(other: ArchConfig) -> HybridConfig:
  """Mamba-3's matched config (`mamba3_block.matched_config`) with attention in every 4th layer (the last of a
  shallower stack) at 64-wide heads."""
  ssm = mamba3_block.matched_config(other)
  head_dim = 64 if ssm.hidden_size >= 256 else max(2, ssm.hidden_size // 4 // 2 * 2)
  heads = max(1, ssm.hidden_size // head_dim)
  fields = {f.name: getattr(ssm, f.name) for f in dataclasses.fields(ssm)}
  return HybridConfig(**fields, attention_every=min(4, ssm.num_layers), attention_heads=heads,
                      attention_kv_heads=heads, attention_head_dim=head_dim)


PREDICTOR_BACKBONE = predictor_backbones.Backbone(module=Hybrid, config=HybridConfig, token_embedding="embed_tokens",
                                                  forward_flops=forward_flops, matched_config=matched_config)
