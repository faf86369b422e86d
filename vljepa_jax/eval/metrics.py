"""Ranking metrics for zero-shot classification and text<->video retrieval (NumPy, host side).

The evaluators run the jitted embedding steps on device, gather a `(queries, candidates)` score
matrix on the host and hand it here. Everything reduces to one quantity, the 1-based rank of the
best-ranked correct candidate of each query:

  * zero-shot classification: queries are videos, candidates are class prompts, exactly one
    positive per row -> top-k accuracy (`top_k_accuracy`);
  * retrieval: text->video (one positive video per caption) and video->text (every caption of
    the video is a positive) -> recall@k (`recall_at_k`).

Ties are broken pessimistically. For a positive candidate c of a query,

    rank_c = 1 + #{negatives j : s_j >= s_c} + #{positives j : s_j > s_c},

and the query's rank is the minimum over its positives. A negative that ties a positive is
ranked ahead of it, so a model that outputs the same score for everything (a collapsed
embedding, an all-zero checkpoint, a broken normalisation) gets rank = number of negatives + 1
and no top-1 hits, instead of being credited with whatever `argmax` happens to return for a
tie (the first index, which a label-sorted test set can make look perfect). Positives never
push each other down: with several correct captions for a video, the best one counts. Because
rank_c grows as s_c falls, the minimum is reached at the highest-scoring positive s*, and the
rank is simply 1 + #{negatives j : s_j >= s*}, which is what the code computes.

Scores may be +-inf (e.g. masked candidates); NaN raises. Padding must be removed by the
caller. The score matrix is processed in row chunks so that the temporaries stay bounded for
retrieval over ~10^4 x 10^4 scores.
"""
from __future__ import annotations

import operator
from typing import Sequence

import numpy as np

# Rows per chunk: bounds the (chunk, candidates) temporaries, e.g. 1024 x 10^4 -> ~10 MB of bools.
_ROW_CHUNK = 1024
# How many offending indices an error message lists before summarising.
_MAX_LISTED = 10


def _describe_rows(rows: np.ndarray) -> str:
  listed = ", ".join(str(int(r)) for r in rows[:_MAX_LISTED])
  more = f", ... ({rows.size} rows in total)" if rows.size > _MAX_LISTED else ""
  return f"[{listed}{more}]"


def real_matrix(x: np.ndarray, name: str, axes: str) -> np.ndarray:
  """`x` as a 2-D array of real numbers, or a ValueError naming `name` and its `axes` ("rows, cols")."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D ({axes}) array, got shape {x.shape}")
  if x.dtype.kind not in "fiu":
    raise ValueError(f"{name} must be real numbers (float or int), got dtype {x.dtype}")
  return x


def _check_scores(scores: np.ndarray) -> np.ndarray:
  return real_matrix(scores, "scores", "queries, candidates")


def _check_ks(ks: Sequence[int], num_candidates: int, what: str) -> list[int]:
  if isinstance(ks, (int, np.integer)):
    raise ValueError(f"ks must be a sequence of ints, got the single value {ks!r}")
  out = []
  for k in ks:
    if isinstance(k, (bool, np.bool_)):
      raise ValueError(f"each k must be an int, got {k!r}")
    try:
      k = operator.index(k)
    except TypeError:
      raise ValueError(f"each k must be an int, got {k!r}") from None
    if k < 1:
      raise ValueError(f"each k must be >= 1, got {k}")
    if k > num_candidates:
      raise ValueError(f"k={k} is larger than the number of {what} ({num_candidates}); "
                       f"pass ks with every k <= {num_candidates}")
    out.append(k)
  if not out:
    raise ValueError("ks must not be empty")
  return out


def _chunk_ranks(s: np.ndarray, p: np.ndarray) -> np.ndarray:
  """Pessimistic ranks of one row chunk; rows without a positive come out as garbage."""
  # The lowest value of the dtype (not a float -inf) keeps large int64 scores exact.
  lowest = -np.inf if s.dtype.kind == "f" else np.iinfo(s.dtype).min
  best_positive = np.where(p, s, np.asarray(lowest, s.dtype)).max(axis=1, initial=lowest)
  ahead = ~p & (s >= best_positive[:, None])
  return 1 + ahead.sum(axis=1)


def _checked_ranks(scores: np.ndarray, num_rows: int, positives_of_chunk) -> np.ndarray:
  """Ranks all rows; `positives_of_chunk(start, stop)` gives the (stop - start, C) bool rows."""
  out = np.empty(num_rows, dtype=np.int64)
  nan_rows, empty_rows = [], []
  for start in range(0, num_rows, _ROW_CHUNK):
    stop = min(start + _ROW_CHUNK, num_rows)
    s, p = scores[start:stop], positives_of_chunk(start, stop)
    if s.dtype.kind == "f":
      nan_rows.append(start + np.flatnonzero(np.isnan(s).any(axis=1)))
    empty_rows.append(start + np.flatnonzero(~p.any(axis=1)))
    out[start:stop] = _chunk_ranks(s, p)
  nan_rows = np.concatenate(nan_rows) if nan_rows else np.zeros(0, np.int64)
  if nan_rows.size:
    raise ValueError(f"scores contain NaN in rows {_describe_rows(nan_rows)}")
  empty_rows = np.concatenate(empty_rows) if empty_rows else np.zeros(0, np.int64)
  if empty_rows.size:
    raise ValueError(f"positives has no positive in rows {_describe_rows(empty_rows)}; "
                     "every query needs at least one correct candidate")
  return out


def ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """1-based rank of the best-ranked positive of each query, ties broken pessimistically.

  Args:
    scores: (Q, C) real scores, higher is better.
    positives: (Q, C) bool, which candidates count as correct for each query.

  Returns:
    (Q,) int64: 1 + the number of negatives scoring >= the best positive of the row.

  Raises:
    ValueError: bad shapes or dtypes, NaN scores, or rows without any positive (the message
      names the rows).
  """
  scores = _check_scores(scores)
  positives = np.asarray(positives)
  if positives.shape != scores.shape:
    raise ValueError(f"positives must have the same shape as scores {scores.shape}, "
                     f"got {positives.shape}")
  if positives.dtype != np.bool_:
    raise ValueError(f"positives must be a bool array, got dtype {positives.dtype}")
  return _checked_ranks(scores, scores.shape[0], lambda a, b: positives[a:b])


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray,
                   ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """Fraction of samples whose label is within the top k classes, for each k.

  Args:
    scores: (N, num_classes) real scores, higher is better.
    labels: (N,) int, the correct class of each sample.
    ks: the k values; each in [1, num_classes].

  Returns:
    {f"top{k}": accuracy} with accuracies as Python floats in [0, 1].
  """
  scores = _check_scores(scores)
  n, num_classes = scores.shape
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape (N,) = ({n},) to match scores {scores.shape}, "
                     f"got {labels.shape}")
  if labels.dtype.kind not in "iu":
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  ks = _check_ks(ks, num_classes, "classes")
  if n == 0:
    raise ValueError("scores has no rows; accuracy over zero samples is undefined")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"labels must be in [0, {num_classes}); labels[{i}] = {labels[i]} "
                     f"({bad.size} out-of-range labels in total)")
  classes = np.arange(num_classes)
  r = _checked_ranks(scores, n, lambda a, b: labels[a:b, None] == classes[None, :])
  return {f"top{k}": float(np.mean(r <= k)) for k in ks}


def recall_at_k(scores: np.ndarray, positives: np.ndarray,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Fraction of queries whose best positive is within the top k candidates, for each k.

  Args:
    scores: (Q, C) real scores, higher is better.
    positives: (Q, C) bool, e.g. from `text_to_video_positives` / `video_to_text_positives`.
    ks: the k values; each in [1, C].

  Returns:
    {f"R@{k}": recall} with recalls as Python floats in [0, 1].
  """
  ks = _check_ks(ks, _check_scores(scores).shape[1], "candidates")
  r = ranks(scores, positives)
  if r.size == 0:
    raise ValueError("scores has no rows; recall over zero queries is undefined")
  return {f"R@{k}": float(np.mean(r <= k)) for k in ks}


def _check_owner(caption_owner: np.ndarray, num_videos: int) -> np.ndarray:
  caption_owner = np.asarray(caption_owner)
  if caption_owner.ndim != 1:
    raise ValueError(f"caption_owner must be 1-D (num_captions,), got shape {caption_owner.shape}")
  if caption_owner.dtype.kind not in "iu":
    raise ValueError(f"caption_owner must be integers, got dtype {caption_owner.dtype}")
  if isinstance(num_videos, (bool, np.bool_)) or not isinstance(num_videos, (int, np.integer)):
    raise ValueError(f"num_videos must be an int, got {num_videos!r}")
  if num_videos < 1:
    raise ValueError(f"num_videos must be >= 1, got {num_videos}")
  bad = np.flatnonzero((caption_owner < 0) | (caption_owner >= num_videos))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"caption_owner must be in [0, {num_videos}); caption_owner[{i}] = "
                     f"{caption_owner[i]} ({bad.size} out-of-range entries in total)")
  return caption_owner


def text_to_video_positives(caption_owner: np.ndarray, num_videos: int) -> np.ndarray:
  """(num_captions, num_videos) bool: caption i's only positive is video caption_owner[i]."""
  caption_owner = _check_owner(caption_owner, num_videos)
  return caption_owner[:, None] == np.arange(num_videos)[None, :]


def video_to_text_positives(caption_owner: np.ndarray, num_videos: int) -> np.ndarray:
  """(num_videos, num_captions) bool: video v's positives are all captions it owns.

  A video without captions gives an all-False row, which `ranks` / `recall_at_k` reject.
  """
  caption_owner = _check_owner(caption_owner, num_videos)
  return np.arange(num_videos)[:, None] == caption_owner[None, :]
