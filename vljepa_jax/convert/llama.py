"""Llama (Hugging Face `LlamaForCausalLM` / `LlamaModel`, e.g. Llama-3.2-1B) -> `models.llama.Llama`.

`--layers START:STOP` keeps source layers START..STOP-1 renumbered from 0 (VL-JEPA's
predictor is `--layers 8:16`) and records them as `source_layers`; the other layers are
dropped on purpose here, before mapping, so they are not reported as unexpected. The token
embedding and final norm are kept with any slice.

q/k are copied as they are: HF stores them already permuted for its half-split
(`rotate_half`) RoPE, and `models.rope.apply_rope` pairs dims (i, i + D/2) the same way, so
no RoPE permutation is needed (an interleaved-RoPE port would need one).
"""
from __future__ import annotations

import re

import jax.numpy as jnp

from vljepa_jax.convert.mapping import ConversionError, Rule, hf_decoder_layer_rules
from vljepa_jax.convert.source import resolve_config, select_state_dict, strip_prefixes
from vljepa_jax.models import llama

CONFIG = llama.LlamaConfig
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The LM head is tied to the embedding (and unused by a hidden-state model); old
# checkpoints also carry RoPE buffers, which are recomputed.
IGNORE = (r"lm_head\.weight", r"(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")
_PREFIXES = ("model.",)  # LlamaForCausalLM; a bare LlamaModel has none
_LAYER = re.compile(r"layers\.(\d+)\.(.*)")


def _depth(state) -> int:
  indices = [int(m.group(1)) for m in map(_LAYER.fullmatch, state) if m]
  return max(indices) + 1 if indices else 0


def _slice(state, start: int, stop: int, path: str):
  """Keeps layers [start, stop) renumbered from 0; every non-layer tensor is kept."""
  depth = _depth(state)
  if stop > depth:
    raise ConversionError(f"--layers {start}:{stop} is beyond {path}, which has {depth} layers (0..{depth - 1})")
  out = {}
  for name, value in state.items():
    m = _LAYER.fullmatch(name)
    if m is None:
      out[name] = value
    elif start <= int(m.group(1)) < stop:
      out[f"layers.{int(m.group(1)) - start}.{m.group(2)}"] = value
  return out


def prepare(state, options, path):
  state = strip_prefixes(select_state_dict(state, None, path), _PREFIXES)
  if not any(re.fullmatch(r"layers\.\d+\.self_attn\.q_proj\.weight", k) for k in state):
    raise ConversionError(f"{path} is not a Llama checkpoint: no '[model.]layers.N.self_attn.q_proj.weight' "
                          f"tensors (first keys: {sorted(state)[:5]})")
  if options.layers is not None:
    state = _slice(state, *options.layers, path)
  return state


def config_from_source(hf_config, state, options, path):
  del state, path
  config = resolve_config(hf_config, options.variant, family="Llama", presets=llama.PRESETS,
                          model_types=("llama",), from_hf=llama.config_from_hf)
  if options.layers is not None:
    try:
      config = config.slice_layers(*options.layers)
    except ValueError as e:
      raise ConversionError(f"--layers: {e}") from None
  return config


def rules(config):
  del config
  layer = r"layers\.(?P<i>\d+)\."
  dst = "layers_{i}/"
  return [
      Rule(r"embed_tokens\.weight", "embed_tokens/embedding"),
      Rule(r"norm\.weight", "final_norm/scale"),
      Rule(layer + r"input_layernorm\.weight", dst + "input_norm/scale"),
      Rule(layer + r"post_attention_layernorm\.weight", dst + "post_attention_norm/scale"),
      *hf_decoder_layer_rules(layer, dst),
  ]


def make_model(config):
  return llama.Llama(config)


def example_inputs(config):
  del config
  return (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
