"""What a model offers the evaluators: its prediction functions, by capability.

Evaluators never call a model directly. They ask a `Predictions` object for what they need and
declare it (`Evaluator.REQUIRES`), so a model that predicts another way, e.g. a token-space VLM
that scores a candidate answer by its likelihood, reuses every evaluator whose needs it meets,
and an evaluator it cannot serve fails by name before anything compiles.

Capabilities (methods; a model implements those it can):

  score_candidates(params, batches, candidates, tokenizer) -> CandidateScores
      how well each valid row of `batches` (visual input + query) matches each candidate text;
      higher is better. Classification, retrieval and discriminative VQA need only this.
  captioner(tokenizer, **decoding) -> fn(params, batches) -> (texts, info)
      a caption for each valid row (captioning).
  embed_visual_query(params, batches) -> (embeddings (N, D), info)
  embed_texts(params, texts, tokenizer) -> embeddings (len(texts), D)
  text_decoder(tokenizer, **decoding) -> fn(params, embeddings) -> texts
      the embedding-space functions (inverse dynamics compares two predictions, hard negatives
      probe the text encoder, selective decoding decodes a stream of predictions).
  embed_stream(params, frames, query_ids, query_mask, reset_every=None) -> embeddings (steps, B, D)
      Ŝ_Y after every step of B streams fed `stream_frames_per_step()` frames at a time, from a
      carried state (a streaming predictor: selective decoding's `stream_mode="recurrent"`),
      emptied every `reset_every` steps if given.

`info` holds each valid row's `label` and `source_index` (the pipeline's bookkeeping). VL-JEPA's
implementation is `EmbeddingPredictions`: scores are cosines between Ŝ_Y and S_Y.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import numpy as np

from vljepa_jax.eval import embedding
from vljepa_jax.eval import text_decoder as text_decoder_lib
from vljepa_jax.models import predictor as predictor_lib

CAPABILITIES = ("score_candidates", "captioner", "embed_visual_query", "embed_texts", "text_decoder", "embed_stream")
Batches = Iterable[dict[str, np.ndarray]]


def normalize(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (cosine similarity is then a dot product)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def provides(predictions: Any) -> tuple[str, ...]:
  """The capabilities `predictions` implements."""
  return tuple(c for c in CAPABILITIES if callable(getattr(predictions, c, None)))


@dataclasses.dataclass(frozen=True)
class Candidates:
  """The texts each row is scored against.

  `texts[c]` are the phrasings of candidate c (prompt templates: "a photo of a dog", "a dog"); a
  model combines them into one score (VL-JEPA averages their embeddings, CLIP's prompt
  ensembling). With `of_source_index` None every row is scored against every candidate; otherwise
  it maps a row's `source_index` to the indices of that row's own candidates (VQA's per-question
  answers), and a model need only score those.
  """
  texts: Sequence[Sequence[str]]
  of_source_index: Callable[[int], Sequence[int]] | None = None

  def __post_init__(self):
    if not self.texts or any(not phrasings for phrasings in self.texts):
      raise ValueError("every candidate needs at least one text")


@dataclasses.dataclass(frozen=True)
class CandidateScores:
  """Scores of each valid row against its candidates, as a padded matrix.

  `scores[n, j]` scores row n against candidate `ids[n, j]`; rows with fewer candidates than the
  widest are padded with `ids = -1` and `scores = -inf`, so padding ranks behind every real
  candidate.
  """
  scores: np.ndarray  # (N, W) float32
  ids: np.ndarray  # (N, W) int64
  label: np.ndarray  # (N,)
  source_index: np.ndarray  # (N,)

  @classmethod
  def from_dense(cls, dense: np.ndarray, candidates: Candidates, info: dict[str, np.ndarray]) -> CandidateScores:
    """From scores of every row against every candidate (N, C), keeping each row's own candidates."""
    n, num_candidates = dense.shape
    if candidates.of_source_index is None:
      ids = np.broadcast_to(np.arange(num_candidates), (n, num_candidates))
      return cls(np.asarray(dense, np.float32), np.array(ids), info["label"], info["source_index"])
    own = [list(candidates.of_source_index(int(i))) for i in info["source_index"]]
    width = max((len(c) for c in own), default=0)
    scores = np.full((n, width), -np.inf, np.float32)
    ids = np.full((n, width), -1, np.int64)
    for row, chosen in enumerate(own):
      scores[row, :len(chosen)] = dense[row, chosen]
      ids[row, :len(chosen)] = chosen
    return cls(scores, ids, info["label"], info["source_index"])


class EmbeddingPredictions:
  """VL-JEPA's prediction functions: Ŝ_Y and S_Y from the jitted `Embedder`, text from the Y-decoder."""

  def __init__(self, model: nn.Module, *, mesh: jax.sharding.Mesh | None = None, rules: Any = None,
               text_batch_size: int = 256):
    self.model, self.rules = model, rules
    self.embedder = embedding.Embedder(model, mesh=mesh, rules=rules, text_batch_size=text_batch_size)

  def embed_visual_query(self, params: Any, batches: Batches) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return self.embedder.visual_query(params, batches)

  def embed_texts(self, params: Any, texts: Sequence[str], tokenizer) -> np.ndarray:
    return self.embedder.texts(params, texts, tokenizer)

  def embed_stream(self, params: Any, frames: Iterable[np.ndarray], query_ids: np.ndarray,
                   query_mask: np.ndarray, reset_every: int | None = None) -> np.ndarray:
    return self.embedder.stream(params, frames, query_ids, query_mask, reset_every)

  def stream_frames_per_step(self) -> int:
    """Frames each `embed_stream` step reads; raises, naming the config keys, if the model cannot stream."""
    config = self.model.config
    predictor_lib.check_streaming(config.predictor)
    return config.x_encoder_chunk_frames or config.x_encoder.tubelet_size

  def candidate_embeddings(self, params: Any, candidates: Candidates, tokenizer) -> np.ndarray:
    """Unit-norm S_Y per candidate (C, D): the mean of its phrasings' unit-norm embeddings, renormalised."""
    index: dict[str, int] = {}
    for phrasings in candidates.texts:
      for text in phrasings:
        index.setdefault(text, len(index))  # every distinct text is embedded once
    embedded = normalize(self.embed_texts(params, list(index), tokenizer))
    return normalize(np.stack([embedded[[index[t] for t in phrasings]].mean(axis=0)
                               for phrasings in candidates.texts]))

  def score_candidates(self, params: Any, batches: Batches, candidates: Candidates, tokenizer) -> CandidateScores:
    """Cosine of each row's Ŝ_Y with each candidate's S_Y."""
    predictions, info = self.embed_visual_query(params, batches)
    table = self.candidate_embeddings(params, candidates, tokenizer)
    return CandidateScores.from_dense(normalize(predictions) @ table.T, candidates, info)

  def text_decoder(self, tokenizer, **decoding: Any) -> text_decoder_lib.TextDecoder:
    return text_decoder_lib.TextDecoder(self.model, tokenizer, self.embedder.map_rows, rules=self.rules, **decoding)

  def captioner(self, tokenizer, **decoding: Any) -> Captioner:
    """Ŝ_Y of each row, written out by the Y-decoder."""
    return Captioner(self, self.text_decoder(tokenizer, **decoding))


class Captioner:
  """`captioner(params, batches) -> (texts, info)`: each valid row's Ŝ_Y decoded to text."""

  def __init__(self, predictions: EmbeddingPredictions, decoder: text_decoder_lib.TextDecoder):
    self.predictions, self.decoder = predictions, decoder

  def __call__(self, params: Any, batches: Batches) -> tuple[list[str], dict[str, np.ndarray]]:
    embeddings, info = self.predictions.embed_visual_query(params, batches)
    return self.decoder(params, embeddings), info
