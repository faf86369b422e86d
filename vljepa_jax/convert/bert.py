"""BERT (Hugging Face `BertModel`, e.g. all-MiniLM-L6-v2) -> `vljepa_jax.models.bert.Bert`."""
from __future__ import annotations

import re

import jax.numpy as jnp

from vljepa_jax.convert import sentence_transformers as st
from vljepa_jax.convert.mapping import ConversionError, Rule, identity, linear, reshape
from vljepa_jax.convert.source import select_state_dict
from vljepa_jax.models import bert
from vljepa_jax.models import text_encoder

CONFIG = text_encoder.TextEncoderConfig
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# `position_ids` is a buffer; the pooler is unused by mean pooling.
IGNORE = (r"embeddings\.position_ids", r"pooler\..*")
_PREFIXES = ("bert.", "model.", "0.auto_model.")


def prepare(state, options, path):
  del options
  state = select_state_dict(state, None, path)
  out = {}
  for name, value in state.items():
    for p in _PREFIXES:
      if name.startswith(p):
        name = name[len(p):]
        break
    # Older checkpoints name LayerNorm parameters gamma/beta.
    out[re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))] = value
  if not any(k.startswith("encoder.layer.") for k in out):
    raise ConversionError(f"{path} is not a BERT checkpoint: no 'encoder.layer.*' tensors "
                          f"(first keys: {sorted(out)[:5]})")
  pipeline = st.read_pipeline(path)
  return {**out, **(pipeline.state if pipeline else {})}


def config_from_source(hf_config, state, options, path):
  del state
  if options.variant:
    if options.variant not in bert.PRESETS:
      raise ConversionError(f"unknown BERT variant {options.variant!r}; expected one of {sorted(bert.PRESETS)}")
    backbone = bert.PRESETS[options.variant]
  elif hf_config is None:
    raise ConversionError("BERT conversion needs the model's config.json (or --variant)")
  elif hf_config.get("model_type", "bert") != "bert":
    raise ConversionError(f"config.json has model_type {hf_config.get('model_type')!r}, expected 'bert'")
  else:
    try:
      backbone = bert.config_from_hf(hf_config)
    except (KeyError, ValueError) as e:
      raise ConversionError(f"unsupported BERT config.json: {e}") from None
  pipeline = st.read_pipeline(path) or st.Pipeline()
  return text_encoder.TextEncoderConfig(backbone="bert", backbone_config=backbone,
                                        dense_dims=pipeline.dense_dims, normalize=pipeline.normalize)


def rules(config):
  del config
  layer = r"encoder\.layer\.(?P<i>\d+)\."
  dst = "backbone/layers_{i}/"
  ln = lambda src, dst_: [Rule(src + r"\.weight", dst_ + "/scale"), Rule(src + r"\.bias", dst_ + "/bias")]
  rs = [
      Rule(r"embeddings\.word_embeddings\.weight", "backbone/word_embeddings/embedding"),
      Rule(r"embeddings\.position_embeddings\.weight", "backbone/position_embeddings/embedding"),
      Rule(r"embeddings\.token_type_embeddings\.weight", "backbone/token_type_embeddings/embedding"),
      *ln(r"embeddings\.LayerNorm", "backbone/embeddings_norm"),
      Rule(layer + r"attention\.output\.dense\.weight", dst + "attention/out/kernel", linear(2)),
      Rule(layer + r"attention\.output\.dense\.bias", dst + "attention/out/bias", identity),
      *ln(layer + r"attention\.output\.LayerNorm", dst + "attention_norm"),
      Rule(layer + r"intermediate\.dense\.weight", dst + "mlp/wi/kernel", linear()),
      Rule(layer + r"intermediate\.dense\.bias", dst + "mlp/wi/bias"),
      Rule(layer + r"output\.dense\.weight", dst + "mlp/wo/kernel", linear()),
      Rule(layer + r"output\.dense\.bias", dst + "mlp/wo/bias"),
      *ln(layer + r"output\.LayerNorm", dst + "mlp_norm"),
  ]
  for proj in ("query", "key", "value"):
    rs.append(Rule(layer + rf"attention\.self\.{proj}\.weight", dst + f"attention/{proj}/kernel", linear()))
    rs.append(Rule(layer + rf"attention\.self\.{proj}\.bias", dst + f"attention/{proj}/bias", reshape))
  return rs + list(st.RULES)


def make_model(config):
  return text_encoder.TextEncoder(config)


def example_inputs(config):
  del config
  return (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
