"""BERT (Hugging Face `BertModel`, e.g. all-MiniLM-L6-v2) -> `vljepa_jax.models.bert.Bert`."""
from __future__ import annotations

import re

import jax.numpy as jnp

from vljepa_jax.convert import sentence_transformers as st
from vljepa_jax.convert.mapping import ConversionError, Rule, layer_norm_rules, linear_rules
from vljepa_jax.convert.source import resolve_config, select_state_dict, strip_prefixes
from vljepa_jax.models import bert
from vljepa_jax.models import text_encoder

CONFIG = text_encoder.TextEncoderConfig
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# `position_ids` is a buffer; the pooler is unused by mean pooling.
IGNORE = (r"embeddings\.position_ids", r"pooler\..*")
_PREFIXES = ("bert.", "model.", "0.auto_model.")


def prepare(state, options, path):
  del options
  state = strip_prefixes(select_state_dict(state, None, path), _PREFIXES)
  # Older checkpoints name LayerNorm parameters gamma/beta.
  out = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)): value
         for name, value in state.items()}
  if not any(k.startswith("encoder.layer.") for k in out):
    raise ConversionError(f"{path} is not a BERT checkpoint: no 'encoder.layer.*' tensors "
                          f"(first keys: {sorted(out)[:5]})")
  return st.add_dense_weights(out, path)


def config_from_source(hf_config, state, options, path):
  del state
  backbone = resolve_config(hf_config, options.variant, family="BERT", presets=bert.PRESETS,
                            model_types=("bert",), from_hf=bert.config_from_hf)
  return st.text_encoder_config("bert", backbone, path)


def rules(config):
  del config
  layer = r"encoder\.layer\.(?P<i>\d+)\."
  dst = "backbone/layers_{i}/"
  rs = [
      Rule(r"embeddings\.word_embeddings\.weight", "backbone/word_embeddings/embedding"),
      Rule(r"embeddings\.position_embeddings\.weight", "backbone/position_embeddings/embedding"),
      Rule(r"embeddings\.token_type_embeddings\.weight", "backbone/token_type_embeddings/embedding"),
      *layer_norm_rules(r"embeddings\.LayerNorm\.", "backbone/embeddings_norm"),
      *linear_rules(layer + r"attention\.output\.dense\.", dst + "attention/out", in_dims=2),
      *layer_norm_rules(layer + r"attention\.output\.LayerNorm\.", dst + "attention_norm"),
      *linear_rules(layer + r"intermediate\.dense\.", dst + "mlp/wi"),
      *linear_rules(layer + r"output\.dense\.", dst + "mlp/wo"),
      *layer_norm_rules(layer + r"output\.LayerNorm\.", dst + "mlp_norm"),
  ]
  for proj in ("query", "key", "value"):
    rs += linear_rules(layer + rf"attention\.self\.{proj}\.", dst + f"attention/{proj}", head_shaped_bias=True)
  return rs + list(st.RULES)


def make_model(config):
  return text_encoder.TextEncoder(config)


def example_inputs(config):
  del config
  return (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
