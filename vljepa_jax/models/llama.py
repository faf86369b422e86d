"""Llama 3 decoder stack (Llama-3.2-1B): the tower VL-JEPA's predictor is initialised from.

Pre-norm blocks `h = x + attn(input_norm(x)); out = h + mlp(post_attention_norm(h))` with
grouped-query attention, half-split RoPE (HF `rotate_half`, so converted q/k weights need
no permutation) over positions 0..L-1, a SwiGLU MLP and a final RMSNorm. RMSNorm uses the
Llama convention (plain `w`, multiplied after the cast back to the input dtype).

A converted model is causal like its source. VL-JEPA's predictor keeps layers 8..15,
embeds the query with `embed`, prepends projected visual tokens and runs the stack
bidirectionally:

    tokens = model.apply(v, query_ids, method="embed")
    hidden = model.apply(v, inputs_embeds=jnp.concatenate([visual, tokens], 1),
                         attention_mask=mask, causal=False)

That is the predictor-backbone interface: `PREDICTOR_BACKBONE` at the end registers this stack
as the predictor backbone "llama" (models/predictor_backbones.py).

A causal stack also decodes incrementally with a KV cache (the Y-decoder's generation):

    hidden, vars = model.apply(v, inputs_embeds=prompt, decode=True, cache_length=N, mutable=["cache"])
    hidden, vars = model.apply({**v, **vars}, inputs_embeds=next_embeds, decode=True, mutable=["cache"])

Each layer keeps its own write position (`cache_index`, as Linen's attention does) next to its
attention's `cached_key` / `cached_value`, and offsets its RoPE positions by it, so a chunk of
any length continues the sequence where the last one stopped.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vljepa_jax.models import flops
from vljepa_jax.models import layers
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models import rope
from vljepa_jax.models.config import ArchConfig

# Llama 3 tokenizer special ids. There is no PAD token; `<|finetune_right_pad_id|>` is the
# id commonly used as one (the paper does not say which id VL-JEPA pads with).
BOS_ID = 128000  # <|begin_of_text|>
EOS_ID = 128001  # <|end_of_text|>
FINETUNE_PAD_ID = 128004  # <|finetune_right_pad_id|>
EOT_ID = 128009  # <|eot_id|>


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ArchConfig):
  vocab_size: int = 128256
  hidden_size: int = 2048
  intermediate_size: int = 8192
  num_layers: int = 16
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 64
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  # llama3 frequency scaling, flat so the config stays JSON-friendly and hashable;
  # `rope_scaling_factor=None` means plain RoPE.
  rope_scaling_factor: float | None = 32.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  # The converted model attends like its source (causal); VL-JEPA's predictor passes False.
  causal: bool = True
  # Provenance of a slice: source layers [start, stop) of the checkpoint, renumbered from 0.
  source_layers: tuple[int, int] | None = None
  attention_impl: str = "xla"
  remat: bool | str = False  # see layers.REMAT_POLICIES

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"head_dim ({self.head_dim}) must be even for half-split RoPE")
    if self.source_layers is not None and self.source_layers[1] - self.source_layers[0] != self.num_layers:
      raise ValueError(f"source_layers {self.source_layers} do not span num_layers={self.num_layers}")

  @property
  def llama3_scaling(self) -> rope.Llama3Scaling | None:
    if self.rope_scaling_factor is None:
      return None
    return rope.Llama3Scaling(factor=self.rope_scaling_factor, low_freq_factor=self.rope_low_freq_factor,
                              high_freq_factor=self.rope_high_freq_factor,
                              original_max_position_embeddings=self.rope_original_max_position)

  def slice_layers(self, start: int, stop: int) -> "LlamaConfig":
    """The config of source layers [start, stop) of this model, with provenance recorded."""
    if not 0 <= start < stop <= self.num_layers:
      raise ValueError(f"layer slice {start}:{stop} is outside the model's {self.num_layers} layers")
    offset = self.source_layers[0] if self.source_layers else 0
    return self.replace(num_layers=stop - start, source_layers=(offset + start, offset + stop))


_LLAMA3_2_1B = LlamaConfig()

PRESETS = {
    "llama3_2_1b": _LLAMA3_2_1B,
    # VL-JEPA's predictor: "Layer 8-16", i.e. the last 8 of the 16 layers.
    "llama3_2_1b_last8": _LLAMA3_2_1B.slice_layers(8, 16),
    "tiny": LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, rope_theta=10000.0, rope_scaling_factor=8.0,
                        rope_original_max_position=256),
}


def _hf_rope(hf: dict) -> tuple[float, dict | None]:
  """(theta, llama3 parameters or None) from `rope_parameters` (transformers 5) or the
  older `rope_theta` + `rope_scaling` pair."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind == "default":
    return theta, None
  if kind != "llama3":
    raise ValueError(f"rope_type {kind!r} is not supported; expected 'llama3' or 'default'")
  return theta, params


def config_from_hf(hf: dict) -> LlamaConfig:
  """`LlamaConfig` from a HF `config.json` (use `slice_layers` for a slice of it)."""
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"Llama hidden_act {act!r} is not supported; expected 'silu'")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag, False):
      raise ValueError(f"Llama {flag}=True is not supported (Llama 3 has no biases)")
  theta, scaling = _hf_rope(hf)
  if (scaling or {}).get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError("partial_rotary_factor != 1 is not supported")
  heads = hf["num_attention_heads"]
  config = LlamaConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
      num_layers=hf["num_hidden_layers"], num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(theta), rope_scaling_factor=None)
  if scaling is not None:
    config = config.replace(
        rope_scaling_factor=float(scaling["factor"]), rope_low_freq_factor=float(scaling["low_freq_factor"]),
        rope_high_freq_factor=float(scaling["high_freq_factor"]),
        rope_original_max_position=int(scaling.get("original_max_position_embeddings")
                                       or hf["max_position_embeddings"]))
  return config


class LlamaLayer(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array, kv_mask: jax.Array | None, causal: bool, decode: bool = False,
               cache_length: int | None = None) -> jax.Array:
    """`decode`: append `x` to this layer's KV cache (created with `cache_length` slots on the first call)."""
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.llama3_scaling)
    positions = np.arange(x.shape[1])  # static: RoPE tables become constants (rope.rope_tables)
    cache_index = None
    if decode:
      # The write position is the absolute position of x's first token: RoPE and the causal mask
      # both start there.
      index = self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
      cache_index = index.value
      positions = positions + cache_index
      index.value = cache_index + x.shape[1]
    rotate = rope.rotary_positions(positions, inv_freq)
    attn = layers.SelfAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, num_kv_heads=cfg.num_kv_heads,
                                use_bias=False, out_bias=False, attention_impl=cfg.attention_impl,
                                name="attention", **kw)
    h = x + attn(layers.RMSNorm(cfg.rms_norm_eps, name="input_norm", **kw)(x), kv_mask=kv_mask, causal=causal,
                 positions=rotate, cache_index=cache_index, cache_length=cache_length)
    mlp = layers.Mlp(cfg.intermediate_size, activation="silu", gated=True, use_bias=False, name="mlp", **kw)
    out = h + mlp(layers.RMSNorm(cfg.rms_norm_eps, name="post_attention_norm", **kw)(h))
    return layers.constrain_activations(out)


class Llama(nn.Module):
  """`apply(v, input_ids, attention_mask) -> (B, L, D)` final-normed last hidden state.

  Or `apply(v, inputs_embeds=..., attention_mask=..., causal=False)`; `method="embed"`
  gives token embeddings. `attention_mask` is 1 for tokens, 0 for (right) padding.

  `decode=True` (causal) appends the input to a KV cache in the mutable "cache" collection: the
  first call passes `cache_length`, the cache's capacity in positions, and must start from
  variables without a cache; later calls pass None. The caller keeps the total length within the
  capacity (a write past it is not detected). An `attention_mask` on the first call (a prompt
  with padding anywhere) stays in the cache: those positions are hidden from every later token.
  """

  config: LlamaConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        embedding_init=nn.with_logical_partitioning(layers.default_kernel_init, ("vocab", "embed")))
    # `causal`, `decode` and `cache_length` (arguments 3-5, counting self) are Python values that
    # select the mask and the cache.
    block = layers.remat_block(LlamaLayer, cfg.remat, static_argnums=(3, 4, 5))
    self.layers = [block(cfg) for _ in range(cfg.num_layers)]  # named layers_0, layers_1, ...
    self.final_norm = layers.RMSNorm(cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings `(B, L, D)` in the compute dtype (no scaling, unlike Gemma)."""
    return self.embed_tokens(input_ids)

  def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None, *,
               inputs_embeds: jax.Array | None = None, causal: bool | None = None, decode: bool = False,
               cache_length: int | None = None) -> jax.Array:
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    causal = self.config.causal if causal is None else causal
    if decode and not causal:
      raise ValueError("decode=True needs causal attention")
    if cache_length is not None and not decode:
      raise ValueError("cache_length sizes a KV cache; it needs decode=True")
    if inputs_embeds is None:
      x = self.embed(input_ids)
    else:
      x = inputs_embeds.astype(self.config.compute_dtype)
      if self.is_initializing():  # the table must exist in the init tree that conversion maps onto
        self.embed(jnp.zeros((1, 1), jnp.int32))
    x = layers.constrain_activations(x)
    for layer in self.layers:
      x = layer(x, attention_mask, causal, decode, cache_length)
    return self.final_norm(x)


def forward_flops(config: LlamaConfig, tokens: int) -> float:
  """Forward FLOPs of the stack over one sequence (embedding lookup and norms left out)."""
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  return config.num_layers * flops.transformer_layer(tokens, config.hidden_size, q, kv, config.intermediate_size,
                                                     gated=True)


def matched_config(other: ArchConfig) -> LlamaConfig:
  """A Llama stack at another backbone's width, depth, vocabulary and MLP size (multi-head attention with
  64-wide heads, narrower below width 256, and plain RoPE)."""
  fields = predictor_backbones.shared_fields(other)
  hidden = fields["hidden_size"]
  head_dim = 64 if hidden >= 256 else max(2, hidden // 4 // 2 * 2)  # even: half-split RoPE
  if not fields.get("intermediate_size"):
    fields["intermediate_size"] = 4 * hidden
  return LlamaConfig(**fields, num_heads=max(1, hidden // head_dim), num_kv_heads=max(1, hidden // head_dim),
                     head_dim=head_dim, rope_theta=10000.0, rope_scaling_factor=None)


# Converted Llama folders (`python -m vljepa_jax.convert --model llama --layers 8:16`) load into it.
PREDICTOR_BACKBONE = predictor_backbones.Backbone(module=Llama, config=LlamaConfig, token_embedding="embed_tokens",
                                                  forward_flops=forward_flops, checkpoint_family="llama",
                                                  matched_config=matched_config)
