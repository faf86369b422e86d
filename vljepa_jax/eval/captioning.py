"""Captioning: the Y-decoder writes text from the predicted embedding; scored with CIDEr-D.

VL-JEPA never generates tokens during training. For captioning the predictor's Ŝ_Y for (video,
captioning query) is handed to the Y-decoder (`models/y_decoder.py`), which writes the text by
greedy or beam search (`models/generate.py`), and the text is scored against every reference
caption of the clip with CIDEr-D (`eval/cider.py`; idf comes from the evaluated references, so
report it on hundreds of clips or more).

Chance level: CIDEr-D of the same decoded captions paired with *other* clips (a fixed
derangement of the decodes), i.e. what the decoder scores when its text ignores the video. A
second reference point, `condition: "target"`, decodes S_Y of each clip's first reference
caption instead of Ŝ_Y: how well the decoder reads the Y-encoder's own embeddings, the ceiling
for decoding predictions.

`TextDecoder` (embeddings -> strings) is shared with selective decoding.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

from vljepa_jax import trace_guard
from vljepa_jax.eval import cider
from vljepa_jax.eval import evaluator
from vljepa_jax.models import generate
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder

DECODER_PARAMS = "y_decoder"


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


class TextDecoder:
  """`decoder(params, embeddings (N, E)) -> N strings`: the model's Y-decoder, jitted once per setting."""

  def __init__(self, model: vljepa.VLJEPA, tokenizer, embedder, *, max_new_tokens: int, beam_size: int = 1,
               length_penalty: float = 1.0, batch_size: int = 64, bos_id: int | None = None,
               eos_id: int | None = None, rules: Any = None):
    if model is None:
      raise ValueError("decoding text needs the model (make_evaluators(..., model=...))")
    config = model.config.y_decoder
    if config is None:
      raise ValueError("decoding text needs a Y-decoder: set config.model.y_decoder and train it "
                       "(config.objective='y_decoder', e.g. the demo's ydecoder stage)")
    if (bos_id is None) != (eos_id is None):
      raise ValueError("give both bos_id and eos_id, or neither (then they come from the tokenizer)")
    if bos_id is None:
      bos_id, eos_id = special_ids(tokenizer)
    self.tokenizer, self.embedder, self.batch_size = tokenizer, embedder, batch_size
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
    tokens = self.embedder.map_rows(self._decode, params[DECODER_PARAMS],
                                    {"condition": np.asarray(embeddings, np.float32)}, self.batch_size)
    # A decoder table wider than the tokenizer (padded vocabularies) can emit ids no text has; the
    # training targets never contain them, so only an untrained decoder does. They are dropped.
    return [self.tokenizer.decode(row[row < self.tokenizer.vocab_size]) for row in np.asarray(tokens)]


@functools.lru_cache(maxsize=8)
def _decoder_module(config: y_decoder.YDecoderConfig) -> y_decoder.YDecoder:
  # One module object per config, so `generate.generator`'s memo (keyed on it) is hit across evaluators.
  return y_decoder.YDecoder(config)


def derangement(n: int, seed: int = 0) -> np.ndarray:
  """A permutation of range(n) that moves every index (n >= 2): the chance-level pairing."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(n)
  return np.roll(order, 1)[np.argsort(order)]


class Captioning(evaluator.Evaluator):
  """CIDEr-D of the captions the Y-decoder writes from Ŝ_Y (or from S_Y, with `condition: "target"`)."""

  OPTIONS = {"max_new_tokens": None, "beam_size": 1, "length_penalty": 1.0, "condition": "predictor",
             "bos_id": None, "eos_id": None, "num_examples": 3}

  def __init__(self, name, config, **kwargs):
    super().__init__(name, config, **kwargs)
    if self.options["condition"] not in ("predictor", "target"):
      raise ValueError(f"evals.{name}.condition={self.options['condition']!r}; expected 'predictor' or 'target'")
    max_new = self.options["max_new_tokens"] or self.data.target_length
    self.decoder = TextDecoder(self.model, self.target_tokenizer, self.embedder, max_new_tokens=int(max_new),
                               beam_size=int(self.options["beam_size"]),
                               length_penalty=float(self.options["length_penalty"]), batch_size=self.batch_size,
                               bos_id=self.options["bos_id"], eos_id=self.options["eos_id"], rules=self.rules)

  def references(self, indices: Sequence[int]) -> list[list[str]]:
    source = self.source()
    refs = []
    for i in indices:
      record = source[int(i)]
      captions = [c for c in (record.get("captions") or ()) if c and c.strip()] or [record.get("caption") or ""]
      if not any(c.strip() for c in captions):
        raise ValueError(f"evals.{self.name}: record {record.get('id', i)!r} has no reference caption")
      refs.append(captions)
    return refs

  def run(self, params: Any) -> dict[str, Any]:
    if self.options["condition"] == "target":
      refs = self.references(range(len(self.source())))
      embeddings = self.embedder.texts(params, [r[0] for r in refs], self.target_tokenizer)
    else:
      embeddings, info = self.embedder.visual_query(params, self.batches())
      refs = self.references(info["source_index"])
    texts = self.decoder(params, embeddings)
    return caption_scores(texts, refs, num_examples=int(self.options["num_examples"]))


def caption_scores(texts: Sequence[str], refs: Sequence[Sequence[str]], *, num_examples: int = 0) -> dict[str, Any]:
  """CIDEr-D of `texts` against `refs`, its chance level (a derangement of the texts) and a few examples."""
  gts = {i: list(r) for i, r in enumerate(refs)}
  result = {"cider_d": cider.cider_d(gts, {i: [t] for i, t in enumerate(texts)})[0], "num_samples": len(texts)}
  if len(texts) >= 2:
    shuffled = derangement(len(texts))
    result["chance_cider_d"] = cider.cider_d(gts, {i: [texts[j]] for i, j in enumerate(shuffled)})[0]
  result["mean_words"] = float(np.mean([len(cider.tokenize(t)) for t in texts])) if texts else 0.0
  for k in range(min(num_examples, len(texts))):
    result[f"example_{k}"] = f"{texts[k]!r} (reference: {refs[k][0]!r})"
  return result
