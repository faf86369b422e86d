"""Gemma 3 text encoder (the EmbeddingGemma-300M architecture): VL-JEPA's Y-encoder backbone.

Matches Hugging Face `Gemma3TextModel` (`transformers/models/gemma3/modeling_gemma3.py`):

  * token embeddings times `sqrt(hidden_size)`, the scale rounded to the *weight* dtype
    (27.75 rather than 27.7128 for 768 in bf16), see `embedding_scale`;
  * sandwich-norm blocks: `h = x + post_attn_norm(attn(input_norm(x)))`,
    `out = h + post_ffn_norm(mlp(pre_ffn_norm(h)))`, all RMSNorms `(1 + w)` in float32;
  * q/k RMSNorm over `head_dim` before RoPE, attention scale `query_pre_attn_scalar ** -0.5`,
    MQA/GQA, `head_dim` independent of `hidden_size / num_heads`;
  * interleaved layer types: sliding layers see a window and use RoPE theta 1e4, full
    layers see every non-pad token and use theta 1e6;
  * a final RMSNorm.

Positions are `0..L-1` whatever the padding (as in HF), so inputs must be right-padded.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vljepa_jax.models import layers
from vljepa_jax.models import rope
from vljepa_jax.models.config import ArchConfig

SLIDING = "sliding_attention"
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)


def default_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
  """HF's default: every `pattern`-th layer (1-based) is full attention, the rest sliding."""
  return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(num_layers))


def bidirectional_window(raw_sliding_window: int) -> int:
  """The effective exclusive window of a bidirectional Gemma 3 config (HF `__post_init__`).

  HF rewrites `sliding_window` to `raw // 2 + 1` when `use_bidirectional_attention` is set
  ("due to fa we set exclusive bounds") and keys then need `|i - j| < window`: 512 -> 257,
  i.e. each token sees 256 neighbours on either side. `config.json` stores the raw value
  (`to_dict` undoes the rewrite), so the rewrite is applied exactly once, here.
  """
  return raw_sliding_window // 2 + 1


@dataclasses.dataclass(frozen=True)
class Gemma3Config(ArchConfig):
  vocab_size: int = 262144
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_layers: int = 24
  num_heads: int = 3
  num_kv_heads: int = 1
  head_dim: int = 256
  query_pre_attn_scalar: float = 256.0
  rms_norm_eps: float = 1e-6
  # Exclusive bound on key distance in sliding layers: `|i - j| < sliding_window` when
  # bidirectional (already the effective value, 257 for EmbeddingGemma; see
  # `bidirectional_window`), `0 <= i - j < sliding_window` when causal. None: no window.
  sliding_window: int | None = 257
  layer_types: tuple[str, ...] = default_layer_types(24)
  rope_theta_full: float = 1_000_000.0
  rope_theta_sliding: float = 10_000.0
  hidden_activation: str = "gelu_tanh"
  bidirectional: bool = True
  pad_token_id: int = 0
  attention_impl: str = "xla"
  remat: bool | str = False  # see layers.REMAT_POLICIES

  def __post_init__(self):
    if len(self.layer_types) != self.num_layers:
      raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers; "
                       f"pass layer_types too, e.g. default_layer_types({self.num_layers})")
    unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
    if unknown:
      raise ValueError(f"unknown layer type(s) {unknown}; expected {LAYER_TYPES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    layers.activation(self.hidden_activation)  # fails early on an unknown name

  def window(self, layer: int) -> int | None:
    return self.sliding_window if self.layer_types[layer] == SLIDING else None

  def rope_theta(self, layer: int) -> float:
    return self.rope_theta_sliding if self.layer_types[layer] == SLIDING else self.rope_theta_full


PRESETS = {
    "embeddinggemma_300m": Gemma3Config(),
    # Test-sized, but keeps what makes Gemma 3 different: both layer types, MQA,
    # head_dim * heads != hidden, a window shorter than typical test sequences.
    "tiny": Gemma3Config(vocab_size=256, hidden_size=48, intermediate_size=96, num_layers=4, num_heads=4,
                         num_kv_heads=1, head_dim=32, query_pre_attn_scalar=24.0, sliding_window=9,
                         layer_types=(SLIDING, FULL, SLIDING, FULL)),
}

_HF_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_tanh": "gelu_tanh",
                   "gelu": "gelu"}


def _rope_thetas(hf: Mapping[str, Any]) -> tuple[float, float]:
  """(full, sliding) RoPE thetas from either config.json format; only unscaled RoPE is supported.

  transformers >= 5 writes `rope_parameters: {full_attention: {...}, sliding_attention: {...}}`;
  older configs (e.g. EmbeddingGemma's own) write `rope_theta`, `rope_local_base_freq` and
  `rope_scaling`.
  """
  params = hf.get("rope_parameters")
  if params:
    if not all(t in params for t in LAYER_TYPES):
      raise ValueError(f"rope_parameters {params} lacks per-layer-type entries {LAYER_TYPES}")
    per_type = {t: dict(params[t]) for t in LAYER_TYPES}
  else:
    per_type = {FULL: {"rope_type": "default", "rope_theta": hf.get("rope_theta", 1_000_000.0),
                       **(hf.get("rope_scaling") or {})},
                SLIDING: {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10_000.0)}}
  for t, p in per_type.items():
    kind = p.get("rope_type", p.get("type", "default"))
    if kind != "default":
      raise ValueError(f"{t} RoPE type {kind!r} is not supported; only 'default' (unscaled) is")
  return float(per_type[FULL]["rope_theta"]), float(per_type[SLIDING]["rope_theta"])


def config_from_hf(hf: Mapping[str, Any]) -> Gemma3Config:
  """`Gemma3Config` from a `gemma3_text` config.json (raw, as saved by HF `to_dict`)."""
  act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  if act not in _HF_ACTIVATIONS:
    raise ValueError(f"Gemma 3 hidden_activation {act!r} is not supported; expected one of {sorted(_HF_ACTIVATIONS)}")
  if hf.get("attn_logit_softcapping") is not None:
    raise ValueError(f"attn_logit_softcapping={hf['attn_logit_softcapping']} is not supported")
  if hf.get("attention_bias", False):
    raise ValueError("attention_bias=true is not supported (Gemma 3 projections have no bias)")
  bidirectional = bool(hf.get("use_bidirectional_attention", False))
  raw_window = hf.get("sliding_window")
  window = None if raw_window is None else (bidirectional_window(raw_window) if bidirectional else int(raw_window))
  num_layers = hf["num_hidden_layers"]
  layer_types = hf.get("layer_types") or default_layer_types(num_layers, hf.get("sliding_window_pattern", 6))
  theta_full, theta_sliding = _rope_thetas(hf)
  num_heads = hf["num_attention_heads"]
  return Gemma3Config(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
      num_layers=num_layers, num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads", num_heads),
      head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      sliding_window=window, layer_types=tuple(layer_types), rope_theta_full=theta_full,
      rope_theta_sliding=theta_sliding, hidden_activation=_HF_ACTIVATIONS[act], bidirectional=bidirectional,
      pad_token_id=hf.get("pad_token_id", 0) or 0)


def embedding_scale(hidden_size: int, dtype: Any) -> jax.Array:
  """`sqrt(hidden_size)` as a float32 scalar rounded to `dtype` (HF `embed_scale.to(weight.dtype)`)."""
  return jnp.asarray(math.sqrt(hidden_size), jnp.float32).astype(dtype)


class Gemma3Layer(nn.Module):
  config: Gemma3Config
  index: int  # selects the layer type: window and RoPE theta

  @nn.compact
  def __call__(self, x: jax.Array, kv_mask: jax.Array | None) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    norm = lambda name: layers.RMSNorm(cfg.rms_norm_eps, offset_scale=True, name=name, **kw)
    inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta(self.index))
    attn = layers.SelfAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, num_kv_heads=cfg.num_kv_heads, use_bias=False,
        out_bias=False, qk_norm_eps=cfg.rms_norm_eps, scale=cfg.query_pre_attn_scalar ** -0.5,
        attention_impl=cfg.attention_impl, name="attention", **kw)
    h = attn(norm("input_layernorm")(x), kv_mask=kv_mask, causal=not cfg.bidirectional,
             window=cfg.window(self.index),
             positions=rope.rotary_positions(np.arange(x.shape[1]), inv_freq))
    x = x + norm("post_attention_layernorm")(h)
    mlp = layers.Mlp(cfg.intermediate_size, activation=cfg.hidden_activation, gated=True, use_bias=False,
                     name="mlp", **kw)
    x = x + norm("post_feedforward_layernorm")(mlp(norm("pre_feedforward_layernorm")(x)))
    return layers.constrain_activations(x)


class Gemma3Encoder(nn.Module):
  """`apply(params, input_ids, attention_mask=None) -> (B, L, D)` last hidden state (after `norm`)."""

  config: Gemma3Config

  def setup(self):
    cfg = self.config
    # The table stays in the weight dtype for the lookup and the scale, as in HF; the
    # result is cast to the compute dtype afterwards.
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.weight_dtype, param_dtype=cfg.weight_dtype,
        embedding_init=nn.with_logical_partitioning(layers.default_kernel_init, ("vocab", "embed")))
    block = layers.remat_block(Gemma3Layer, cfg.remat)
    self.layers = [block(cfg, i, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = layers.RMSNorm(cfg.rms_norm_eps, offset_scale=True, dtype=cfg.compute_dtype,
                               param_dtype=cfg.weight_dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Scaled token embeddings `(B, L, D)` in the compute dtype."""
    cfg = self.config
    x = self.embed_tokens(input_ids) * embedding_scale(cfg.hidden_size, cfg.weight_dtype)
    return x.astype(cfg.compute_dtype)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    x = layers.constrain_activations(self.embed(input_ids))
    for layer in self.layers:
      x = layer(x, attention_mask)
    return self.norm(x)
