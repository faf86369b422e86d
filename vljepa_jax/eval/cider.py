"""CIDEr-D caption scoring in NumPy, matching `pycocoevalcap.cider.cider.Cider` (the COCO caption scorer).

Why not depend on pycocoevalcap: its wheel is ~100 MB of bundled Java jars (GPL/AGPL) that the library
never needs for CIDEr, so it is a test-only dependency and this module is checked against it to 1e-6.

What is computed (pycocoevalcap's `Cider` class is CIDEr-D although it is named "CIDEr"), per item i
with candidate h and references r_1..r_m, for n-gram orders k = 1..n:

  * g_k(s): the raw counts of the k-grams of sentence s (not normalised by length);
  * idf(g) = log(N) - log(max(1, df(g))), where N is the number of items evaluated and df(g) the number
    of items whose *references* contain g. idf therefore depends on the evaluated set: on a handful of
    items it degenerates (with N = 1 every reference n-gram has idf 0 and every score is 0), so report
    CIDEr on hundreds of items. A candidate n-gram absent from all references gets idf log(N);
  * v_k(s) = g_k(s) * idf, and the clipped cosine
      c_k(h, r) = sum_g min(v_k(h)[g], v_k(r)[g]) * v_k(r)[g] / (|v_k(h)| |v_k(r)|)   (0 if a norm is 0);
  * a Gaussian length penalty exp(-(len_h - len_r)^2 / (2 sigma^2)) on every c_k;
  * score_i = 10 * mean_k mean_j penalty(h, r_j) * c_k(h, r_j). The corpus score is the mean over items.

pycocoevalcap quirks worth knowing (all reproduced or shown harmless here):
  * its "length" is the number of *bigrams* (words - 1), not words. The two only differ when a sentence
    is empty, and then the cosine is 0 anyway, so words are used here with identical results;
  * it always extracts 1..4-grams whatever `n` is, so `Cider(n=3)` crashes and `n > 4` averages in
    empty orders. Here `n` means orders 1..n; only n = 4 (the default) is comparable with it;
  * an empty reference string still counts in the mean over references (it contributes 0);
  * it expects pre-tokenised, space-separated strings (normally from the Java PTB tokenizer).

Tokenisation: `tokenize` lowercases and keeps maximal runs of [a-z0-9]. This approximates the PTB
tokenizer as used by the COCO scripts (lowercase, punctuation tokens dropped); it agrees on plain
sentences but differs on contractions ("don't" -> "don", "t" instead of "do", "n't") and hyphenated
words (split here). Non-ASCII letters are dropped. Pass `tokenize_text=False` to score strings that
are already tokenised; they are then split on whitespace exactly as pycocoevalcap does.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Hashable, Mapping, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")

NGrams = collections.Counter  # n-gram tuple -> count


def tokenize(text: str) -> list[str]:
  """Lowercased alphanumeric tokens of `text`; punctuation and whitespace separate and are dropped."""
  return _TOKEN.findall(text.lower())


def _words(text: str, tokenize_text: bool) -> list[str]:
  return tokenize(text) if tokenize_text else text.split()


def _ngram_counts(words: Sequence[str], n: int) -> list[NGrams]:
  """Counts of the k-grams of `words` for k = 1..n, one Counter per order."""
  return [collections.Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1)) for k in range(1, n + 1)]


def _check_inputs(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]) -> None:
  if not gts:
    raise ValueError("gts is empty: expected at least one id -> [reference, ...] entry")
  missing, extra = [k for k in gts if k not in res], [k for k in res if k not in gts]
  if missing or extra:
    raise ValueError(f"gts and res must have the same ids: ids only in gts {missing[:10]!r}, "
                     f"ids only in res {extra[:10]!r}")
  for key, refs in gts.items():
    # A bare string is a Sequence of characters: reject it rather than scoring single letters.
    if isinstance(refs, str) or not isinstance(refs, Sequence) or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"gts[{key!r}] must be a list of reference strings, got {refs!r}")
    if len(refs) == 0:
      raise ValueError(f"gts[{key!r}] has no references: expected at least one reference string")
  for key, hyp in res.items():
    if isinstance(hyp, str) or not isinstance(hyp, Sequence) or len(hyp) != 1 or not isinstance(hyp[0], str):
      raise ValueError(f"res[{key!r}] must be a list holding exactly one candidate string, got {hyp!r}")


def _document_frequency(refs_counts: Sequence[Sequence[list[NGrams]]]) -> collections.Counter:
  """For every n-gram, the number of items whose references (any of them) contain it."""
  df = collections.Counter()
  for item_refs in refs_counts:
    df.update({g for ref in item_refs for order in ref for g in order})
  return df


def _tfidf(counts: list[NGrams], df: collections.Counter, log_num_items: float) -> tuple[list[dict], np.ndarray]:
  """tf-idf vectors (one sparse dict per order) and their Euclidean norms."""
  vectors = [{g: tf * (log_num_items - math.log(max(1.0, df.get(g, 0)))) for g, tf in order.items()}
             for order in counts]
  norms = np.array([math.sqrt(sum(w * w for w in vec.values())) for vec in vectors], np.float64)
  return vectors, norms


def _clipped_cosines(hyp: list[dict], hyp_norms: np.ndarray, ref: list[dict], ref_norms: np.ndarray) -> np.ndarray:
  """Per-order sum_g min(v_h, v_r) * v_r / (|v_h| |v_r|); 0 where either vector is zero."""
  dots = np.array([sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in h.items()) for h, r in zip(hyp, ref)],
                  np.float64)
  denom = hyp_norms * ref_norms
  return np.divide(dots, denom, out=np.zeros_like(dots), where=denom != 0)


def cider_d(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]], *, n: int = 4,
            sigma: float = 6.0, tokenize_text: bool = True) -> tuple[float, np.ndarray]:
  """CIDEr-D of candidates `res` ({id: [candidate]}) against references `gts` ({id: [ref, ...]}).

  Returns (corpus score, per-item scores): the per-item scores are float64 in the iteration order of `gts`
  and the corpus score is their mean, as pycocoevalcap's `Cider().compute_score(gts, res)` returns them.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive int (n-gram orders 1..n), got {n!r}")
  if not (math.isfinite(sigma) and sigma > 0):
    raise ValueError(f"sigma must be a positive finite float (length-penalty width), got {sigma!r}")
  _check_inputs(gts, res)
  ids = list(gts)
  hyp_words = [_words(res[key][0], tokenize_text) for key in ids]
  refs_words = [[_words(r, tokenize_text) for r in gts[key]] for key in ids]
  hyp_counts = [_ngram_counts(w, n) for w in hyp_words]
  refs_counts = [[_ngram_counts(w, n) for w in refs] for refs in refs_words]

  df = _document_frequency(refs_counts)
  log_num_items = math.log(len(ids))
  scores = np.empty(len(ids), np.float64)
  for i, (words, counts, refs, ref_counts) in enumerate(zip(hyp_words, hyp_counts, refs_words, refs_counts)):
    hyp_vec, hyp_norms = _tfidf(counts, df, log_num_items)
    total = np.zeros(n)
    for ref, rc in zip(refs, ref_counts):
      ref_vec, ref_norms = _tfidf(rc, df, log_num_items)
      penalty = math.exp(-float(len(words) - len(ref)) ** 2 / (2.0 * sigma ** 2))
      total += penalty * _clipped_cosines(hyp_vec, hyp_norms, ref_vec, ref_norms)
    scores[i] = 10.0 * total.mean() / len(refs)
  return float(scores.mean()), scores
