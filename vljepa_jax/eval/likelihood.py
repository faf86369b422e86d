"""The token-space baseline's prediction functions: a candidate text scores by its likelihood.

`LikelihoodPredictions` gives the evaluators (`eval/predictions.py`) what a token-space VLM can:
`score_candidates`, so classification, retrieval and discriminative VQA run unchanged on it. A
row's score for a candidate is the candidate text's mean log-probability per token given the
row's [visual ; query] prompt (the negated length-normalised negative log-likelihood; BOS given,
EOS scored), so the highest score is the lowest length-normalised NLL.

Cost and the phrasings. Each (row, text) pair is one decoder pass over the prompt and the text;
the clip is encoded once per row (`TokenVLM.prompt`) and its prompt reused for every text. A
candidate's phrasings (prompt templates, which VL-JEPA averages in embedding space) multiply that
cost, so only the first `max_phrasings` are scored (default 1: the candidate as its first
template writes it) and their scores averaged. Retrieval scores every caption against every clip:
quadratic in the pool (1,000 MSR-VTT clips with 20 captions each: 2 x 10^7 decoder passes). Cap the
pool with the source's `limit`, its first N records with their captions (e.g.
`evals.text_to_video.data.sources.main.limit=100`), and report the pool size with the figure: recall
over a smaller pool is higher, so it compares only with a model scored on the same pool.

Captions (`captioner`): greedy or beam search with the KV cache (`models/generate.py`), from the
prompt [visual ; query], writing the target tokenizer's ids from its BOS to its EOS.

Single-process: the scoring runs on this process's devices (a mesh of one process is fine).
"""
from __future__ import annotations

from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vljepa_jax.data import global_batch
from vljepa_jax.eval import predictions as predictions_lib
from vljepa_jax.eval import text_decoder
from vljepa_jax.models import generate


class LikelihoodPredictions:
  """Prediction functions of a `TokenVLM`: candidates scored by their likelihood (module docstring)."""

  def __init__(self, model: nn.Module, *, mesh: jax.sharding.Mesh | None = None, rules: Any = None,
               pair_batch_size: int = 256, max_phrasings: int = 1):
    if pair_batch_size < 1 or max_phrasings < 1:
      raise ValueError(f"pair_batch_size ({pair_batch_size}) and max_phrasings ({max_phrasings}) must be positive")
    self.model, self.mesh = model, mesh
    self.pair_batch_size, self.max_phrasings = pair_batch_size, max_phrasings

    def prompt(params, video, query_ids, query_mask):
      with nn.logical_axis_rules(rules or ()):
        return model.apply({"params": params}, global_batch.prepare_visual(video), query_ids, query_mask,
                           method="prompt")

    def score(params, prompts, prompt_mask, rows, ids, mask):
      with nn.logical_axis_rules(rules or ()):
        total, count = model.apply({"params": params}, prompts[rows], prompt_mask[rows], ids, mask,
                                   method="prompted_log_likelihood")
      return total / jnp.maximum(count, 1.0)

    self._prompt = jax.jit(prompt)
    self._score = jax.jit(score)

  def run(self, fn, *args):
    """`fn(*args)`, under this scorer's mesh if it has one."""
    if self.mesh is None:
      return fn(*args)
    with jax.set_mesh(self.mesh):
      return fn(*args)

  def score_candidates(self, params: Any, batches: Iterable[dict[str, np.ndarray]],
                       candidates: predictions_lib.Candidates, tokenizer) -> predictions_lib.CandidateScores:
    """Mean log-probability per token of each row's candidates (their first `max_phrasings` phrasings)."""
    if jax.process_count() > 1:
      raise NotImplementedError("likelihood scoring runs in one process; evaluate the token baseline on one host")
    phrasings = [list(texts)[:self.max_phrasings] for texts in candidates.texts]
    index: dict[str, int] = {}
    for texts in phrasings:
      for text in texts:
        index.setdefault(text, len(index))
    text_ids, text_mask = tokenizer(list(index))
    of_candidate = [[index[t] for t in texts] for texts in phrasings]
    dense, labels, sources = [], [], []
    for batch in batches:
      visual = batch[global_batch.visual_field(batch)]  # video, or cached X-encoder tokens
      prompts, prompt_mask = self.run(self._prompt, params, visual, batch["query_ids"], batch["query_mask"])
      valid = np.flatnonzero(np.asarray(batch["valid"]))
      own = [list(range(len(phrasings))) if candidates.of_source_index is None
             else list(candidates.of_source_index(int(batch["source_index"][r]))) for r in valid]
      pairs = [(r, t) for r, chosen in zip(valid, own) for c in chosen for t in of_candidate[c]]
      pair_scores = self._score_pairs(params, prompts, prompt_mask, pairs, text_ids, text_mask)
      lookup = dict(zip(pairs, pair_scores))
      for r, chosen in zip(valid, own):
        row = np.full(len(phrasings), -np.inf, np.float32)  # candidates not the row's own are never read
        row[chosen] = [np.mean([lookup[r, t] for t in of_candidate[c]]) for c in chosen]
        dense.append(row)
      labels.append(np.asarray(batch["label"])[valid])
      sources.append(np.asarray(batch["source_index"])[valid])
    info = {"label": np.concatenate(labels), "source_index": np.concatenate(sources)}
    dense = np.stack(dense) if dense else np.zeros((0, len(phrasings)), np.float32)
    return predictions_lib.CandidateScores.from_dense(dense, candidates, info)

  def captioner(self, tokenizer, *, max_new_tokens: int, beam_size: int = 1, length_penalty: float = 1.0,
                batch_size: int = 64, bos_id: int | None = None, eos_id: int | None = None) -> "TokenCaptioner":
    """`captioner(params, batches) -> (texts, info)`: each valid row's answer, generated."""
    del batch_size  # the batches' own size
    return TokenCaptioner(self, tokenizer, max_new_tokens=max_new_tokens, beam_size=beam_size,
                          length_penalty=length_penalty, bos_id=bos_id, eos_id=eos_id)

  def _score_pairs(self, params, prompts, prompt_mask, pairs, text_ids, text_mask) -> list[float]:
    """Scores of (row of `prompts`, text) pairs, `pair_batch_size` at a time (the last chunk padded)."""
    out = []
    size = self.pair_batch_size
    for begin in range(0, len(pairs), size):
      chunk = pairs[begin:begin + size]
      padded = chunk + [chunk[-1]] * (size - len(chunk))  # one shape: one compiled program
      rows = np.array([r for r, _ in padded], np.int32)
      texts = np.array([t for _, t in padded], np.int64)
      scores = self.run(self._score, params, prompts, prompt_mask, rows, text_ids[texts], text_mask[texts])
      out.extend(np.asarray(jax.device_get(scores))[:len(chunk)].tolist())
    return out


class TokenCaptioner:
  """Each valid row's text, generated by the token-space VLM from its prompt (greedy or beam search)."""

  def __init__(self, predictions: LikelihoodPredictions, tokenizer, *, max_new_tokens: int, beam_size: int,
               length_penalty: float, bos_id: int | None, eos_id: int | None):
    bos_id, eos_id = text_decoder.resolve_special_ids(tokenizer, bos_id, eos_id)
    self.predictions, self.tokenizer = predictions, tokenizer
    search = generate.generator(predictions.model, bos_id=bos_id, eos_id=eos_id, pad_id=tokenizer.pad_id,
                                max_new_tokens=max_new_tokens, beam_size=beam_size)

    def decode(params, video, query_ids, query_mask):
      tokens, _ = search(params, (global_batch.prepare_visual(video), query_ids, query_mask),
                         np.float32(length_penalty))
      return tokens

    self._decode = jax.jit(decode)

  def __call__(self, params: Any, batches: Iterable[dict[str, np.ndarray]]) -> tuple[list[str], dict[str, np.ndarray]]:
    if jax.process_count() > 1:
      raise NotImplementedError("the token baseline's captions are generated in one process")
    texts, labels, sources = [], [], []
    vocab = self.tokenizer.vocab_size
    for batch in batches:
      tokens = np.asarray(jax.device_get(self.predictions.run(
          self._decode, params, batch[global_batch.visual_field(batch)], batch["query_ids"], batch["query_mask"])))
      valid = np.flatnonzero(np.asarray(batch["valid"]))
      texts.extend(self.tokenizer.decode(row[row < vocab]) for row in tokens[valid])
      labels.append(np.asarray(batch["label"])[valid])
      sources.append(np.asarray(batch["source_index"])[valid])
    return texts, {"label": np.concatenate(labels), "source_index": np.concatenate(sources)}
