"""EmbeddingGemma / Gemma 3 text (HF `Gemma3TextModel`) -> `TextEncoder` with a Gemma 3 backbone.

Input: an HF folder (`config.json` with `model_type: gemma3_text` plus weights), or a
Sentence-Transformers folder (the same at its root plus `modules.json`, `1_Pooling/`,
`2_Dense/`, `3_Dense/`), which is how `google/embeddinggemma-300m` ships.

Key names are those of a bare `Gemma3TextModel` (`embed_tokens.weight`, `layers.{i}.…`,
`norm.weight`); Google AI Edge's EmbeddingGemma loader reads exactly these from the
published `model.safetensors`. Copies saved from a wrapper carry a prefix (`model.` from
`Gemma3ForCausalLM`, `language_model.model.` / `model.language_model.` from the
multimodal classes), which is stripped.

The sentence head comes from `modules.json` when there is one (mean pooling, Dense
768->3072->768 without bias, Normalize). A folder without it is a plain HF model: it gets no
dense stack and no normalisation, since nothing in it says how its author pooled; the
last hidden state, which VL-JEPA's Y-encoder builds on, does not depend on that choice.
"""
from __future__ import annotations

import re

import jax.numpy as jnp

from vljepa_jax.convert import sentence_transformers as st
from vljepa_jax.convert.mapping import ConversionError, Rule, hf_decoder_layer_rules
from vljepa_jax.convert.source import resolve_config, select_state_dict, strip_prefixes
from vljepa_jax.models import gemma
from vljepa_jax.models import text_encoder

CONFIG = text_encoder.TextEncoderConfig
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# A causal-LM export may carry the output head; it is tied to the embedding and unused here.
IGNORE = (r"lm_head\.weight",)
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_SIGNATURE = re.compile(r"layers\.\d+\.self_attn\.q_norm\.weight")


def prepare(state, options, path):
  del options
  state = strip_prefixes(select_state_dict(state, None, path), _PREFIXES)
  if "embed_tokens.weight" not in state or not any(_SIGNATURE.fullmatch(k) for k in state):
    raise ConversionError(f"{path} is not a Gemma 3 text checkpoint: expected 'embed_tokens.weight' and "
                          f"'layers.*.self_attn.q_norm.weight' tensors (first keys: {sorted(state)[:5]})")
  return st.add_dense_weights(state, path)


def config_from_source(hf_config, state, options, path):
  del state
  backbone = resolve_config(hf_config, options.variant, family="Gemma 3", presets=gemma.PRESETS,
                            model_types=("gemma3_text",), from_hf=gemma.config_from_hf)
  return st.text_encoder_config("gemma3", backbone, path)


def rules(config):
  del config
  layer = r"layers\.(?P<i>\d+)\."
  dst = "backbone/layers_{i}/"
  rs = [
      Rule(r"embed_tokens\.weight", "backbone/embed_tokens/embedding"),
      Rule(r"norm\.weight", "backbone/norm/scale"),
      Rule(layer + r"self_attn\.q_norm\.weight", dst + "attention/query_norm/scale"),
      Rule(layer + r"self_attn\.k_norm\.weight", dst + "attention/key_norm/scale"),
      *hf_decoder_layer_rules(layer, dst),
  ]
  for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm"):
    rs.append(Rule(layer + rf"{norm}\.weight", dst + f"{norm}/scale"))
  return rs + list(st.RULES)


def make_model(config):
  return text_encoder.TextEncoder(config)


def example_inputs(config):
  del config
  return (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
