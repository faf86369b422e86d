"""Selective decoding (paper §2, §4.6): an embedding stream is decoded only where meaning changes.

VL-JEPA predicts a stream of answer embeddings, one per step (sliding window), without generating text.
Turning every step into text is expensive and redundant, so only a few steps are decoded:

  * offline (adaptive): split the stream into N temporally contiguous segments of low internal variance
    (Ward agglomerative clustering with chain connectivity, `ward_segments`) and decode once per segment,
    at its midpoint (`segment_midpoints`), from the embedding there or the segment mean (`segment_means`);
  * uniform baseline: decode every `every` steps (`uniform_indices`);
  * online: decode when the variance of the embeddings since the last decode exceeds a threshold
    (`online_trigger`).

The benchmark matches every annotation time to the decode nearest in time (`nearest_decode`) and scores
the decoded text against the annotation (CIDEr, `vljepa_jax.eval.cider`).

All functions are pure NumPy on the host and work in float64. Step indices are int64.
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from vljepa_jax.eval import metrics


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
  """`value` as an int in [lo, hi]; ValueError naming the argument otherwise."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an int, got {value!r}")
  if value < lo or (hi is not None and value > hi):
    expected = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    raise ValueError(f"{name} must be {expected}, got {value}")
  return int(value)


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
  """The stream as a finite float64 (T, D) array with T >= 1."""
  e = metrics.real_matrix(embeddings, "embeddings", "steps, dim")
  if e.shape[0] < 1 or e.shape[1] < 1:
    raise ValueError(f"embeddings must have at least one step and one dimension, got shape {e.shape}")
  e = np.asarray(e, np.float64)  # no copy when already float64: streams can be ~10^4 x 10^3
  if not np.isfinite(e).all():
    bad = np.flatnonzero(~np.isfinite(e).all(axis=1))
    raise ValueError(f"embeddings must be finite; steps {bad[:10].tolist()} hold NaN or inf")
  return e


def _ward_cost(size_a: int, sum_a: np.ndarray, size_b: int, sum_b: np.ndarray) -> float:
  """Increase of the within-segment sum of squares when merging a and b: n_a n_b/(n_a+n_b) |mu_a - mu_b|^2."""
  diff = sum_a / size_a - sum_b / size_b
  return float(diff @ diff) * (size_a * size_b / (size_a + size_b))


def ward_segments(embeddings: np.ndarray, n_segments: int) -> np.ndarray:
  """Labels (T,) int64 of `n_segments` contiguous segments, numbered 0..N-1 in temporal order.

  Ward agglomerative clustering restricted to temporal neighbours: starting from T singletons, merge the
  adjacent pair of segments whose merge least increases the within-segment sum of squares (Ward cost
  n_a n_b/(n_a+n_b) |mu_a - mu_b|^2) until `n_segments` remain. Exact cost ties go to the earlier pair.
  This is the partition of `sklearn.cluster.AgglomerativeClustering(n_clusters=N, linkage="ward",
  connectivity=<chain graph>)`, up to label names.

  O(T log T + T D) time: live segments form a doubly-linked list, keyed by their first step; candidate
  merges sit in a heap keyed by (cost, position) and are invalidated lazily: each merge bumps the versions
  of both merged segments, and a popped entry whose recorded versions are stale is skipped. Each merge
  pushes at most two new candidates, so the heap holds O(T) entries. (scikit-learn breaks exact ties by
  its internal node ids instead; on real-valued streams exact ties do not occur in practice.)
  """
  e = _check_embeddings(embeddings)
  num_steps = e.shape[0]
  n_segments = _check_int("n_segments", n_segments, 1, num_steps)

  sums = e.copy()  # row s: sum of the embeddings of the segment starting at s (valid while s is live)
  sizes = np.ones(num_steps, np.int64)
  nxt = np.arange(1, num_steps + 1)  # next segment's start; num_steps marks the end
  prv = np.arange(-1, num_steps - 1)  # previous segment's start; -1 marks the beginning
  version = np.zeros(num_steps, np.int64)

  def candidate(a: int, b: int) -> tuple[float, int, int, int, int]:
    return (_ward_cost(sizes[a], sums[a], sizes[b], sums[b]), a, b, version[a], version[b])

  steps = e[1:] - e[:-1]  # singleton pairs, vectorised: Ward cost 1*1/2 |x_a - x_b|^2
  initial = 0.5 * np.einsum("ij,ij->i", steps, steps)
  heap = [(float(c), s, s + 1, 0, 0) for s, c in enumerate(initial)]
  heapq.heapify(heap)
  for _ in range(num_steps - n_segments):
    while True:
      _, a, b, version_a, version_b = heapq.heappop(heap)
      # Every merge bumps the versions of both participants, so matching versions mean neither segment
      # (nor their adjacency) changed since the entry was pushed; otherwise the entry is stale.
      if nxt[a] == b and version[a] == version_a and version[b] == version_b:
        break
    sums[a] += sums[b]
    sizes[a] += sizes[b]
    version[a] += 1
    version[b] += 1
    nxt[a] = nxt[b]
    if nxt[a] < num_steps:
      prv[nxt[a]] = a
      heapq.heappush(heap, candidate(a, nxt[a]))
    if prv[a] >= 0:
      heapq.heappush(heap, candidate(prv[a], a))

  starts = np.zeros(num_steps, np.int64)
  starts[0] = 1
  s = nxt[0]
  while s < num_steps:
    starts[s] = 1
    s = nxt[s]
  return np.cumsum(starts) - 1


def _check_labels(labels: np.ndarray) -> np.ndarray:
  lab = np.asarray(labels)
  if lab.ndim != 1 or lab.size == 0:
    raise ValueError(f"labels must be a non-empty 1-D array, got shape {lab.shape}")
  if lab.dtype.kind not in "iu":
    raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
  return lab


def segment_bounds(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) int64 of the runs of equal labels, in temporal order; ends are exclusive.

  Raises if a label occurs in more than one run: segments must be contiguous in time.
  """
  lab = _check_labels(labels)
  change = np.flatnonzero(lab[1:] != lab[:-1]) + 1
  starts = np.concatenate([[0], change]).astype(np.int64)
  ends = np.concatenate([change, [lab.size]]).astype(np.int64)
  run_labels = lab[starts]
  values, counts = np.unique(run_labels, return_counts=True)
  if (counts > 1).any():
    split = values[counts > 1]
    raise ValueError(f"labels must form contiguous runs; label(s) {split[:10].tolist()} occur in several runs")
  return starts, ends


def segment_midpoints(labels: np.ndarray) -> np.ndarray:
  """Middle step of each segment (the earlier of the two middles for even lengths), in temporal order."""
  starts, ends = segment_bounds(labels)
  return starts + (ends - starts - 1) // 2


def segment_means(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(N, D) float64 mean embedding of each segment, in temporal order (= label order for `ward_segments`)."""
  e = _check_embeddings(embeddings)
  starts, ends = segment_bounds(labels)
  if ends[-1] != e.shape[0]:
    raise ValueError(f"labels has {ends[-1]} steps but embeddings has {e.shape[0]}")
  return np.add.reduceat(e, starts, axis=0) / (ends - starts)[:, None]


def uniform_indices(num_steps: int, every: float) -> np.ndarray:
  """Steps decoded by uniform decoding every `every` steps: one per interval [k*every, (k+1)*every).

  Interval k (for k with k*every < num_steps) is decoded at the step nearest its middle (k + 0.5)*every,
  with an exact half rounding down (so every=1 decodes every step; NumPy's half-to-even rounding would skip
  steps and half-up would skip step 0), clipped to num_steps - 1. `every` may be fractional; `every` < 1
  maps several intervals to one step. Returns unique sorted int64 indices.
  """
  num_steps = _check_int("num_steps", num_steps, 1)
  if isinstance(every, bool) or not isinstance(every, (int, float, np.integer, np.floating)) \
      or not (math.isfinite(every) and every > 0):
    raise ValueError(f"every must be a positive finite number of steps, got {every!r}")
  k = np.arange(math.ceil(num_steps / every) + 1)  # one spare: the division may round either way
  k = k[k * float(every) < num_steps]
  centers = (k + 0.5) * float(every)
  nearest = np.ceil(centers - 0.5).astype(np.int64)  # round half down
  return np.unique(np.minimum(nearest, num_steps - 1))


def online_trigger(embeddings: np.ndarray, window: int, threshold: float) -> np.ndarray:
  """Steps decoded by the online variant (decode when the local window variance exceeds a threshold).

  Exactly: step 0 is decoded; let `last` be the latest decoded step. At each step t = 1..T-1 the window
  is the embeddings e[max(last, t - window + 1) .. t] (inclusive: at most `window` steps, starting no
  earlier than the last decode, which it includes). Its variance is the mean squared Euclidean distance
  of its members to their mean. If that exceeds `threshold` (strictly), t is decoded and `last` = t, so
  the next window starts afresh at t. Returns sorted int64 step indices.

  Cost O(T * window * D); windows are meant to be short (a few seconds of stream).
  """
  e = _check_embeddings(embeddings)
  window = _check_int("window", window, 2)  # a 1-step window has variance 0 and would never trigger
  if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
      or not (math.isfinite(threshold) and threshold >= 0):
    raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
  decoded, last = [0], 0
  for t in range(1, e.shape[0]):
    members = e[max(last, t - window + 1):t + 1]
    spread = members - members.mean(axis=0)
    if np.einsum("ij,ij->", spread, spread) / len(members) > threshold:
      decoded.append(t)
      last = t
  return np.asarray(decoded, np.int64)


def nearest_decode(query_times: np.ndarray, decode_times: np.ndarray) -> np.ndarray:
  """For each query time, the index into `decode_times` of the decode nearest in time.

  `decode_times` must be 1-D, non-empty, finite and sorted (non-decreasing). Equidistant decodes, and
  repeated decode times, resolve to the earliest index. The result has the shape of `query_times`.
  """
  d = np.asarray(decode_times)
  q = np.asarray(query_times)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"decode_times must be a non-empty 1-D array, got shape {d.shape}")
  for name, x in (("decode_times", d), ("query_times", q)):
    if x.dtype.kind not in "fiu":
      raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    if not np.isfinite(x).all():
      raise ValueError(f"{name} must be finite, got NaN or inf")
  if (np.diff(d) < 0).any():
    first = int(np.flatnonzero(np.diff(d) < 0)[0])
    raise ValueError(f"decode_times must be sorted (non-decreasing); decode_times[{first + 1}] < "
                     f"decode_times[{first}]")
  # d[right - 1] < q <= d[right]: the nearest decode is one of these two neighbours.
  right = np.searchsorted(d, q, side="left")
  left = np.maximum(right - 1, 0)
  right = np.minimum(right, d.size - 1)
  # With repeated decode times, the left neighbour may be a later copy; move it to the first copy.
  left = np.searchsorted(d, d[left], side="left")
  # abs: past either end both neighbours clip to the same time (possibly different copies of it).
  take_left = np.abs(q - d[left]) <= np.abs(d[right] - q)
  return np.where(take_left, left, right).astype(np.int64)
