"""Captioning: the Y-decoder writes text from the predicted embedding; scored with CIDEr-D.

VL-JEPA never generates tokens during training. For captioning the predictor's Ŝ_Y for (video,
captioning query) is handed to the Y-decoder (`eval/text_decoder.py`), which writes the text by
greedy or beam search (`models/generate.py`); another model captions its own way
(`Predictions.captioner`). The text is scored against every reference
caption of the clip with CIDEr-D (`eval/cider.py`; idf comes from the evaluated references, so
report it on hundreds of clips or more).

Chance level: CIDEr-D of the same decoded captions paired with *other* clips (a fixed
derangement of the decodes), i.e. what the decoder scores when its text ignores the video. A
second reference point, `condition: "target"`, decodes S_Y of each clip's first reference
caption instead of Ŝ_Y: how well the decoder reads the Y-encoder's own embeddings, the ceiling
for decoding predictions.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vljepa_jax.eval import cider
from vljepa_jax.eval import evaluator


def derangement(n: int, seed: int = 0) -> np.ndarray:
  """A permutation of range(n) that moves every index (n >= 2): the chance-level pairing."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(n)
  return np.roll(order, 1)[np.argsort(order)]


class Captioning(evaluator.Evaluator):
  """CIDEr-D of the captions the Y-decoder writes from Ŝ_Y (or from S_Y, with `condition: "target"`)."""

  OPTIONS = {"max_new_tokens": None, "beam_size": 1, "length_penalty": 1.0, "condition": "predictor",
             "bos_id": None, "eos_id": None, "num_examples": 3}

  def __init__(self, name, config, predictions, context):
    if dict(config).get("condition", "predictor") not in ("predictor", "target"):
      raise ValueError(f"evals.{name}.condition={config['condition']!r}; expected 'predictor' or 'target'")
    super().__init__(name, config, predictions, context)
    options = self.options
    decoding = {"max_new_tokens": int(options["max_new_tokens"] or self.data.target_length),
                "beam_size": int(options["beam_size"]), "length_penalty": float(options["length_penalty"]),
                "batch_size": self.batch_size, "bos_id": options["bos_id"], "eos_id": options["eos_id"]}
    if options["condition"] == "target":
      self.decoder = predictions.text_decoder(self.target_tokenizer, **decoding)
    else:
      self.captioner = predictions.captioner(self.target_tokenizer, **decoding)

  def requires(self) -> tuple[str, ...]:
    # Decoding S_Y of the references needs the embedding-space functions; captioning a video only a captioner.
    return ("embed_texts", "text_decoder") if self.options["condition"] == "target" else ("captioner",)

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
      texts = self.decoder(params, self.predictions.embed_texts(params, [r[0] for r in refs], self.target_tokenizer))
    else:
      texts, info = self.captioner(params, self.batches())
      refs = self.references(info["source_index"])
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
