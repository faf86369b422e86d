"""Embeddings -> text: the model's Y-decoder, jitted once per setting (captioning, selective decoding).

VL-JEPA never generates tokens during training. At inference the Y-decoder
(`models/y_decoder.py`) reads an embedding (Ŝ_Y or S_Y) as a prefix and writes text by greedy or
beam search (`models/generate.py`). `TextDecoder` batches that over host rows with a fixed batch
shape, so it compiles once whatever the number of embeddings.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from vljepa_jax import trace_guard
from vljepa_jax.models import generate
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder

DECODER_PARAMS = "y_decoder"
# `map_rows(fn, params, rows, batch_size)`: `fn` over fixed-size batches of host rows (`Embedder.map_rows`).
MapRows = Callable[[Callable[..., Any], Any, dict[str, np.ndarray], int], np.ndarray]


def special_ids(tokenizer) -> tuple[int, int]:
  """(BOS, EOS) of a tokenizer that wraps every text in exactly one start and one end token.

  Read off the encoding of the empty text, e.g. [CLS] [SEP] for BERT's WordPiece; the Y-decoder is
  trained on the target tokenizer's ids, so these are the tokens it starts from and stops at.
  """
  ids, mask = tokenizer.with_max_length(max(tokenizer.num_special_tokens, 2))([""])
  row = ids[0][mask[0] > 0]
  if len(row) != 2:
    raise ValueError(f"the target tokenizer ({tokenizer.source}) encodes the empty text as {row.tolist()}, not as "
                     "[start, end]; give the decoder's bos_id and eos_id in the evaluator's options")
  return int(row[0]), int(row[1])


def resolve_special_ids(tokenizer, bos_id: int | None, eos_id: int | None) -> tuple[int, int]:
  """(BOS, EOS) as given, or both from the tokenizer (`special_ids`) when neither is."""
  if (bos_id is None) != (eos_id is None):
    raise ValueError("give both bos_id and eos_id, or neither (then they come from the tokenizer)")
  return special_ids(tokenizer) if bos_id is None else (bos_id, eos_id)


class TextDecoder:
  """`decoder(params, embeddings (N, E)) -> N strings`: the model's Y-decoder, jitted once per setting."""

  def __init__(self, model: vljepa.VLJEPA, tokenizer, map_rows: MapRows, *, max_new_tokens: int,
               beam_size: int = 1, length_penalty: float = 1.0, batch_size: int = 64, bos_id: int | None = None,
               eos_id: int | None = None, rules: Any = None):
    config = model.config.y_decoder
    if config is None:
      raise ValueError("decoding text needs a Y-decoder: set config.model.y_decoder and train it "
                       "(config.objective='y_decoder', e.g. the demo's ydecoder stage)")
    bos_id, eos_id = resolve_special_ids(tokenizer, bos_id, eos_id)
    self.tokenizer, self.map_rows, self.batch_size = tokenizer, map_rows, batch_size
    _decoder_module(config).cache_length(None, max_new_tokens)  # a too-long max_new_tokens fails here, not in eval
    search = generate.generator(_decoder_module(config), bos_id=bos_id, eos_id=eos_id, pad_id=tokenizer.pad_id,
                                max_new_tokens=max_new_tokens, beam_size=beam_size)

    def decode(params, condition):
      with nn.logical_axis_rules(rules or ()):
        tokens, _ = search(params, vljepa.decoder_condition(condition), np.float32(length_penalty))
      return tokens

    self._decode = jax.jit(trace_guard.at_most(1, decode))  # fixed batch and shapes: one trace per decoder

  def __call__(self, params: Any, embeddings: np.ndarray) -> list[str]:
    if DECODER_PARAMS not in params:
      raise ValueError(f"the parameters have no {DECODER_PARAMS!r} subtree; was the checkpoint trained with a "
                       "Y-decoder?")
    if len(embeddings) == 0:
      return []
    tokens = self.map_rows(self._decode, params[DECODER_PARAMS],
                           {"condition": np.asarray(embeddings, np.float32)}, self.batch_size)
    # A decoder table wider than the tokenizer (padded vocabularies) can emit ids no text has; the
    # training targets never contain them, so only an untrained decoder does. They are dropped.
    return [self.tokenizer.decode(row[row < self.tokenizer.vocab_size]) for row in np.asarray(tokens)]


@functools.lru_cache(maxsize=8)
def _decoder_module(config: y_decoder.YDecoderConfig) -> y_decoder.YDecoder:
  # One module object per config, so `generate.generator`'s memo (keyed on it) is hit across evaluators.
  return y_decoder.YDecoder(config)
