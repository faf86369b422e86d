"""Selective decoding helpers (`vljepa_jax.eval.selective_decoding`).

`ward_segments` is checked against scikit-learn's Ward clustering with chain connectivity (a test-only
dependency); the other helpers against brute-force loops written from their docstrings.
"""
from __future__ import annotations

import numpy as np
import pytest

from vljepa_jax.eval import selective_decoding as sd

cluster = pytest.importorskip("sklearn.cluster")
sparse = pytest.importorskip("scipy.sparse")


def sklearn_ward(embeddings: np.ndarray, n_segments: int) -> np.ndarray:
  num_steps = len(embeddings)
  chain = sparse.diags([np.ones(num_steps - 1), np.ones(num_steps - 1)], [-1, 1])
  return cluster.AgglomerativeClustering(n_clusters=n_segments, linkage="ward",
                                         connectivity=chain).fit_predict(embeddings)


def canonical(labels: np.ndarray) -> np.ndarray:
  """Labels renamed 0, 1, ... by first occurrence, so equal partitions compare equal."""
  _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
  return np.argsort(np.argsort(first))[inverse]


def assert_temporal_labels(labels: np.ndarray, num_steps: int, n_segments: int) -> None:
  assert labels.dtype == np.int64 and labels.shape == (num_steps,)
  assert labels[0] == 0 and labels[-1] == n_segments - 1
  assert set(np.diff(labels).tolist()) <= {0, 1}  # contiguous runs numbered in temporal order


def random_stream_cases(seed: int, count: int):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    num_steps, dim = int(rng.integers(2, 301)), int(rng.integers(1, 65))
    embeddings = rng.normal(size=(num_steps, dim)) * rng.uniform(0.1, 10)
    for n_segments in sorted({1, num_steps, int(rng.integers(1, num_steps + 1)), max(1, num_steps // 10)}):
      yield embeddings, n_segments


@pytest.mark.parametrize("seed", range(4))
def test_ward_matches_sklearn_on_random_streams(seed):
  for embeddings, n_segments in random_stream_cases(seed, 30):
    labels = sd.ward_segments(embeddings, n_segments)
    assert_temporal_labels(labels, len(embeddings), n_segments)
    np.testing.assert_array_equal(labels, canonical(sklearn_ward(embeddings, n_segments)),
                                  err_msg=f"T={len(embeddings)} D={embeddings.shape[1]} N={n_segments}")


@pytest.mark.parametrize("seed", range(3))
def test_ward_recovers_planted_boundaries(seed):
  rng = np.random.default_rng(100 + seed)
  num_steps, dim, n_segments = 400, 32, 9
  bounds = np.sort(rng.choice(np.arange(5, num_steps - 5), n_segments - 1, replace=False))
  while np.diff(bounds).min() < 5:  # keep every planted segment at least 5 steps long
    bounds = np.sort(rng.choice(np.arange(5, num_steps - 5), n_segments - 1, replace=False))
  planted = np.zeros(num_steps, np.int64)
  planted[bounds] = 1
  planted = np.cumsum(planted)
  means = rng.normal(size=(n_segments, dim)) * 3.0
  embeddings = (means[planted] + 0.3 * rng.normal(size=(num_steps, dim))).astype(np.float32)
  labels = sd.ward_segments(embeddings, n_segments)
  np.testing.assert_array_equal(labels, planted)
  np.testing.assert_array_equal(labels, canonical(sklearn_ward(embeddings, n_segments)))


def test_ward_edge_cases_and_ties():
  assert sd.ward_segments(np.ones((1, 3)), 1).tolist() == [0]
  assert sd.ward_segments(np.arange(5.0)[:, None], 5).tolist() == [0, 1, 2, 3, 4]
  assert sd.ward_segments(np.arange(5)[:, None], 1).tolist() == [0] * 5  # integer input is fine
  # A constant stream: every merge costs 0, and ties go to the earliest pair, which grows from the left.
  assert sd.ward_segments(np.zeros((5, 2)), 2).tolist() == [0, 0, 0, 0, 1]
  # Equal-cost pairs (0,1) and (2,3): the earlier one merges first.
  assert sd.ward_segments(np.array([[0.0], [1.0], [5.0], [6.0]]), 3).tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("embeddings, n_segments, match", [
    (np.zeros(5), 1, r"embeddings must be a 2-D \(steps, dim\) array, got shape \(5,\)"),
    (np.zeros((2, 3, 4)), 1, r"embeddings must be a 2-D"),
    (np.zeros((0, 3)), 1, r"at least one step and one dimension, got shape \(0, 3\)"),
    (np.zeros((3, 0)), 1, r"at least one step and one dimension"),
    (np.array([[0.0], [np.nan], [np.inf]]), 1, r"embeddings must be finite; steps \[1, 2\]"),
    (np.array([["a"]]), 1, r"embeddings must be real numbers"),
    (np.zeros((4, 2)), 0, r"n_segments must be in \[1, 4\], got 0"),
    (np.zeros((4, 2)), 5, r"n_segments must be in \[1, 4\], got 5"),
    (np.zeros((4, 2)), 2.0, r"n_segments must be an int, got 2.0"),
    (np.zeros((4, 2)), True, r"n_segments must be an int"),
])
def test_ward_bad_inputs_raise(embeddings, n_segments, match):
  with pytest.raises(ValueError, match=match):
    sd.ward_segments(embeddings, n_segments)


def test_segment_bounds_midpoints_and_means():
  labels = np.array([0, 0, 0, 1, 2, 2, 2, 2, 3, 3])
  starts, ends = sd.segment_bounds(labels)
  assert starts.tolist() == [0, 3, 4, 8] and ends.tolist() == [3, 4, 8, 10]
  assert sd.segment_midpoints(labels).tolist() == [1, 3, 5, 8]  # earlier middle for even lengths
  # Runs need not be numbered in order, only contiguous.
  assert sd.segment_bounds(np.array([7, 7, 2]))[0].tolist() == [0, 2]
  assert sd.segment_midpoints(np.array([4])).tolist() == [0]

  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(10, 6)).astype(np.float32)
  expected = np.stack([embeddings[labels == k].astype(np.float64).mean(axis=0) for k in range(4)])
  means = sd.segment_means(embeddings, labels)
  assert means.dtype == np.float64 and means.shape == (4, 6)
  np.testing.assert_allclose(means, expected, rtol=1e-12, atol=1e-12)


def test_ward_labels_feed_segment_helpers():
  rng = np.random.default_rng(3)
  embeddings = rng.normal(size=(50, 4))
  labels = sd.ward_segments(embeddings, 7)
  starts, ends = sd.segment_bounds(labels)
  assert len(starts) == 7 and starts[0] == 0 and ends[-1] == 50 and (starts[1:] == ends[:-1]).all()
  assert ((sd.segment_midpoints(labels) >= starts) & (sd.segment_midpoints(labels) < ends)).all()
  assert sd.segment_means(embeddings, labels).shape == (7, 4)


@pytest.mark.parametrize("fn", [sd.segment_bounds, sd.segment_midpoints])
@pytest.mark.parametrize("labels, match", [
    (np.array([0, 1, 0]), r"contiguous runs; label\(s\) \[0\] occur in several runs"),
    (np.array([], np.int64), r"non-empty 1-D array, got shape \(0,\)"),
    (np.zeros((2, 2), np.int64), r"non-empty 1-D array, got shape \(2, 2\)"),
    (np.array([0.0, 1.0]), r"labels must be integers"),
])
def test_segment_helpers_bad_labels_raise(fn, labels, match):
  with pytest.raises(ValueError, match=match):
    fn(labels)


def test_segment_means_length_mismatch_raises():
  with pytest.raises(ValueError, match=r"labels has 3 steps but embeddings has 4"):
    sd.segment_means(np.zeros((4, 2)), np.array([0, 0, 1]))


@pytest.mark.parametrize("num_steps, every, expected", [
    (10, 1, list(range(10))),  # half-way centres round down: every step once
    (10, 2, [1, 3, 5, 7, 9]),
    (10, 3, [1, 4, 7, 9]),  # the last interval [9, 12) is clipped to step 9
    (10, 4, [2, 6, 9]),
    (10, 2.5, [1, 4, 6, 9]),
    (5, 0.5, [0, 1, 2, 3, 4]),  # several intervals per step collapse
    (3, 100, [2]),
    (1, 1, [0]),
    (12, 4.0, [2, 6, 10]),
])
def test_uniform_indices(num_steps, every, expected):
  got = sd.uniform_indices(num_steps, every)
  assert got.dtype == np.int64 and got.tolist() == expected


@pytest.mark.parametrize("num_steps, every, match", [
    (0, 1, r"num_steps must be >= 1, got 0"), (5.0, 1, r"num_steps must be an int"),
    (5, 0, r"every must be a positive finite number of steps, got 0"), (5, -1.5, r"every must be"),
    (5, float("inf"), r"every must be"), (5, float("nan"), r"every must be"), (5, "2", r"every must be"),
])
def test_uniform_indices_bad_inputs_raise(num_steps, every, match):
  with pytest.raises(ValueError, match=match):
    sd.uniform_indices(num_steps, every)


def online_trigger_reference(embeddings: np.ndarray, window: int, threshold: float) -> list[int]:
  """The docstring's definition, spelled out step by step."""
  decoded, last = [0], 0
  for t in range(1, len(embeddings)):
    start = max(last, t - window + 1)
    members = [embeddings[i] for i in range(start, t + 1)]
    mean = sum(members) / len(members)
    variance = sum(float(np.sum((m - mean) ** 2)) for m in members) / len(members)
    if variance > threshold:
      decoded.append(t)
      last = t
  return decoded


def test_online_trigger_hand_cases():
  step = np.array([0.0] * 5 + [10.0] * 5)[:, None]
  assert sd.online_trigger(step, window=4, threshold=1.0).tolist() == [0, 5]  # decodes at the jump only
  ramp = np.arange(10.0)[:, None]
  # Two members since the last decode have variance 0.25, three have 2/3: decode every second step.
  assert sd.online_trigger(ramp, window=3, threshold=0.5).tolist() == [0, 2, 4, 6, 8]
  # A 2-step window never exceeds 0.25 on the ramp; the comparison is strict.
  assert sd.online_trigger(ramp, window=2, threshold=0.25).tolist() == [0]
  assert sd.online_trigger(ramp, window=2, threshold=0.2).tolist() == list(range(10))
  assert sd.online_trigger(np.zeros((1, 3)), window=5, threshold=0.0).tolist() == [0]
  assert sd.online_trigger(np.zeros((6, 3)), window=5, threshold=0.0).tolist() == [0]


def test_online_trigger_matches_reference_loop():
  rng = np.random.default_rng(0)
  for _ in range(20):
    num_steps, dim = int(rng.integers(1, 200)), int(rng.integers(1, 16))
    # A random walk, so variance builds up until a decode resets it.
    embeddings = np.cumsum(rng.normal(size=(num_steps, dim)), axis=0)
    window, threshold = int(rng.integers(2, 20)), float(rng.uniform(0.1, 5.0))
    got = sd.online_trigger(embeddings, window, threshold)
    assert got.dtype == np.int64
    assert got.tolist() == online_trigger_reference(embeddings, window, threshold)


@pytest.mark.parametrize("window, threshold, match", [
    (1, 1.0, r"window must be >= 2, got 1"), (2.5, 1.0, r"window must be an int"),
    (3, -0.1, r"threshold must be a finite number >= 0, got -0.1"), (3, float("nan"), r"threshold must be"),
])
def test_online_trigger_bad_inputs_raise(window, threshold, match):
  with pytest.raises(ValueError, match=match):
    sd.online_trigger(np.zeros((4, 2)), window, threshold)


def nearest_decode_reference(query_times: np.ndarray, decode_times: np.ndarray) -> np.ndarray:
  # argmin returns the first minimum, i.e. the earliest decode among equidistant ones.
  return np.array([int(np.argmin(np.abs(q - decode_times))) for q in query_times], np.int64)


def test_nearest_decode_hand_cases():
  decodes = np.array([0, 10, 20])
  queries = np.array([-3, 0, 4, 5, 6, 10, 15, 16, 25])
  assert sd.nearest_decode(queries, decodes).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
  assert sd.nearest_decode(np.array([[1.0, 12.0]]), decodes).tolist() == [[0, 1]]  # query shape is kept
  assert sd.nearest_decode(np.array([7.0]), np.array([3.0])).tolist() == [0]
  assert sd.nearest_decode(np.array([6, 10, 14]), np.array([2, 10, 10, 10, 18])).tolist() == [0, 1, 1]


def test_nearest_decode_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(50):
    # Integer times make exact ties and repeated decode times common.
    decodes = np.sort(rng.integers(0, 40, size=int(rng.integers(1, 12))))
    queries = rng.integers(-5, 45, size=100)
    got = sd.nearest_decode(queries, decodes)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, nearest_decode_reference(queries, decodes))
    real_queries = rng.uniform(-5, 45, size=100)
    np.testing.assert_array_equal(sd.nearest_decode(real_queries, decodes.astype(float)),
                                  nearest_decode_reference(real_queries, decodes))


@pytest.mark.parametrize("queries, decodes, match", [
    (np.array([1.0]), np.array([]), r"decode_times must be a non-empty 1-D array, got shape \(0,\)"),
    (np.array([1.0]), np.zeros((2, 2)), r"decode_times must be a non-empty 1-D array"),
    (np.array([1.0]), np.array([0.0, 5.0, 3.0]), r"decode_times must be sorted .*decode_times\[2\] < "
                                                 r"decode_times\[1\]"),
    (np.array([1.0]), np.array([0.0, np.nan]), r"decode_times must be finite"),
    (np.array([np.inf]), np.array([0.0]), r"query_times must be finite"),
    (np.array(["a"]), np.array([0.0]), r"query_times must be real numbers"),
])
def test_nearest_decode_bad_inputs_raise(queries, decodes, match):
  with pytest.raises(ValueError, match=match):
    sd.nearest_decode(queries, decodes)
