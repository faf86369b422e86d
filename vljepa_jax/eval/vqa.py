"""Discriminative VQA (paper §4.2): the candidate answer nearest to the predicted answer embedding.

VL-JEPA has no answer head and generates no text here: the predictor maps (visual input,
question) to Ŝ_Y, the Y-encoder maps every candidate answer to S_Y, and the prediction is the
candidate with the highest cosine (`Predictions.score_candidates`, with each record's own
candidates; another model may score them another way). A sample is correct when its answer's cosine is strictly
higher than every other candidate's: ties count against the model (`metrics.ranks`), so a
collapsed embedding that scores all candidates alike gets no credit.

Data goes through the input pipeline like every evaluator's (embedded shapes by default, JSONL
manifests, ArrayRecord, TFDS), with `text_mode` forced to "qa" so the query is each record's
question. The candidates of a record are its `answer_candidates` (the embedded dataset has
them); the option `candidates` gives one fixed list for records without their own (e.g. a
manifest for yes/no or counting questions, whose schema has no per-record candidates). A record
whose answer is not among its candidates, or that has no candidates at all, fails the run with
its id, before the model runs: a silently dropped sample would change the accuracy. Every
distinct candidate text is one candidate, however many records share it.

Metrics: `accuracy`, `accuracy/<question_type>` where records carry a `question_type`, each with
`chance_<metric>` (the mean over samples of 1 / number of candidates) and `num_samples[/<type>]`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics
from vljepa_jax.eval import predictions as predictions_lib


class DiscriminativeVQA(evaluator.Evaluator):
  OPTIONS = {"candidates": None}
  REQUIRES = ("score_candidates",)

  def __init__(self, name: str, config: Mapping[str, Any], predictions: Any, context: evaluator.EvalContext):
    super().__init__(name, config, predictions, context)
    # The query must be the record's question, whatever the training stage's text mode was;
    # a per-source `text_mode` would override the global one, so both are forced.
    sources = tuple({**spec, "text_mode": "qa"} for spec in self.data.sources)
    self.data = dataclasses.replace(self.data, text_mode="qa", sources=sources)
    fixed = self.options["candidates"]
    if fixed is not None and (isinstance(fixed, str) or not all(isinstance(c, str) and c.strip() for c in fixed)):
      raise ValueError(f"evals.{name}.candidates must be a list of non-empty strings, got {fixed!r}")

  def sample_candidates(self, record: Mapping[str, Any], index: int) -> tuple[list[str], int, str | None]:
    """A record's distinct candidate texts, the position of its answer, and its question type."""
    record_id = record.get("id", index)
    own = record.get("answer_candidates")
    texts = own if own is not None and len(own) else self.options["candidates"]
    if not texts:
      raise ValueError(f"evals.{self.name}: record {record_id!r} has no answer_candidates; give the "
                       "option `candidates` (a list of answers) for data without per-record candidates")
    candidates = list(dict.fromkeys(str(c).strip() for c in texts))  # a repeated candidate is one choice
    answer = str(record.get("answer") or "").strip()
    if answer not in candidates:
      raise ValueError(f"evals.{self.name}: record {record_id!r}: answer {answer!r} is not among its "
                       f"candidates {candidates}")
    question_type = record.get("question_type")
    return candidates, candidates.index(answer), (str(question_type) if question_type is not None else None)

  def run(self, params: Any) -> dict[str, float]:
    if len(self.data.sources) != 1:
      raise ValueError(f"evals.{self.name}: VQA reads one source, got {len(self.data.sources)}")
    source = self.source()
    per_record = [self.sample_candidates(source[i], i) for i in range(len(source))]
    texts: dict[str, int] = {}
    for candidates, _, _ in per_record:
      for text in candidates:
        texts.setdefault(text, len(texts))
    own = [[texts[t] for t in candidates] for candidates, _, _ in per_record]
    scored = self.predictions.score_candidates(
        params, self.batches(), predictions_lib.Candidates([[t] for t in texts], own.__getitem__),
        self.target_tokenizer)
    answers = np.array([texts[per_record[i][0][per_record[i][1]]] for i in scored.source_index.astype(int)])
    correct = metrics.ranks(scored.scores, scored.ids == answers[:, None]) == 1
    per_sample = [per_record[i] for i in scored.source_index.astype(int)]
    chance = np.array([1.0 / len(c) for c, _, _ in per_sample])
    result = _summary("", correct, chance)
    types = np.array([t if t is not None else "" for _, _, t in per_sample])
    for question_type in sorted(set(types.tolist()) - {""}):
      chosen = types == question_type
      result.update(_summary(f"/{question_type}", correct[chosen], chance[chosen]))
    return result


def _summary(suffix: str, correct: Sequence[bool], chance: Sequence[float]) -> dict[str, float]:
  return {f"accuracy{suffix}": float(np.mean(correct)), f"chance_accuracy{suffix}": float(np.mean(chance)),
          f"num_samples{suffix}": int(len(correct))}
