"""BERT encoder (the all-MiniLM-L6-v2 architecture): a small Y-encoder that installs offline.

Post-LN blocks: `x = LN(x + attn(x)); x = LN(x + mlp(x))`, embeddings
`LN(word + position + token_type)`, bidirectional attention over non-pad tokens.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models.config import ArchConfig


@dataclasses.dataclass(frozen=True)
class BertConfig(ArchConfig):
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0
  attention_impl: str = "xla"
  remat: bool | str = False  # see layers.REMAT_POLICIES


PRESETS = {
    "minilm_l6": BertConfig(),
    "tiny": BertConfig(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                       max_position_embeddings=128),
}

_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def config_from_hf(hf: dict) -> BertConfig:
  act = hf.get("hidden_act", "gelu")
  if act not in _HF_ACTIVATIONS:
    raise ValueError(f"BERT hidden_act {act!r} is not supported; expected one of {sorted(_HF_ACTIVATIONS)}")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"BERT position_embedding_type {hf['position_embedding_type']!r}: only 'absolute' is supported")
  return BertConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_act=_HF_ACTIVATIONS[act],
      pad_token_id=hf.get("pad_token_id", 0) or 0)


def _embed(num: int, features: int, axes: tuple[str, str], cfg: BertConfig, name: str) -> nn.Embed:
  return nn.Embed(num, features, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                  embedding_init=nn.with_logical_partitioning(layers.default_kernel_init, axes), name=name)


class BertLayer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, kv_mask: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    attn = layers.SelfAttention(num_heads=cfg.num_heads, head_dim=cfg.hidden_size // cfg.num_heads,
                                attention_impl=cfg.attention_impl, name="attention", **kw)
    x = layers.layer_norm(cfg.layer_norm_eps, name="attention_norm", **kw)(x + attn(x, kv_mask=kv_mask))
    mlp = layers.Mlp(cfg.intermediate_size, activation=cfg.hidden_act, name="mlp", **kw)
    x = layers.layer_norm(cfg.layer_norm_eps, name="mlp_norm", **kw)(x + mlp(x))
    return layers.constrain_activations(x)


class Bert(nn.Module):
  """`apply(params, input_ids, attention_mask, token_type_ids=None) -> (B, L, D)` last hidden state."""

  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings {cfg.max_position_embeddings}")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (_embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg, "word_embeddings")(input_ids)
         + _embed(cfg.max_position_embeddings, cfg.hidden_size, ("position", "embed"), cfg,
                  "position_embeddings")(jnp.arange(length)[None])
         + _embed(cfg.type_vocab_size, cfg.hidden_size, ("token_type", "embed"), cfg,
                  "token_type_embeddings")(token_type_ids))
    x = layers.layer_norm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                          name="embeddings_norm")(x)
    block = layers.remat_block(BertLayer, cfg.remat)
    for i in range(cfg.num_layers):
      x = block(cfg, name=f"layers_{i}")(x, attention_mask)
    return x
