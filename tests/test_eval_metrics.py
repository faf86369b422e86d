"""eval.metrics against independent references.

* scikit-learn's `top_k_accuracy_score` on random untied scores (where tie handling cannot matter);
* small cases whose answers are worked out by hand and written literally (ties, several positives);
* a pure-Python double loop over the definition of the pessimistic rank, on integer-valued scores
  (many ties), also with a tiny row chunk so the chunked loop and its error collection are covered;
* caption_owner -> positives matrices written out by hand; error messages.
"""
from __future__ import annotations

import numpy as np
import pytest

from vljepa_jax.eval import metrics


def brute_force_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """The definition, literally: rank_c = 1 + #{neg j: s_j >= s_c} + #{pos j != c: s_j > s_c}."""
  out = []
  for q in range(scores.shape[0]):
    best = None
    for c in range(scores.shape[1]):
      if not positives[q, c]:
        continue
      rank = 1
      for j in range(scores.shape[1]):
        if j == c:
          continue
        if positives[q, j]:
          rank += int(scores[q, j] > scores[q, c])
        else:
          rank += int(scores[q, j] >= scores[q, c])
      best = rank if best is None else min(best, rank)
    out.append(best)
  return np.array(out)


def random_positives(rng: np.random.Generator, q: int, c: int, p: float) -> np.ndarray:
  pos = rng.random((q, c)) < p
  pos[np.arange(q), rng.integers(0, c, size=q)] = True  # at least one per row
  return pos


# ---------------------------------------------------------------- top-k accuracy vs scikit-learn


@pytest.mark.parametrize("n,num_classes,ks", [
    (50, 3, (1, 2)),
    (200, 10, (1, 3, 5, 9)),
    (300, 101, (1, 5, 10, 50)),
    (64, 400, (1, 5, 399)),
])
def test_top_k_accuracy_matches_sklearn_on_untied_scores(n, num_classes, ks):
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(num_classes)
  scores = rng.normal(size=(n, num_classes))
  assert all(np.unique(row).size == num_classes for row in scores)  # untied
  labels = rng.integers(0, num_classes, size=n)
  got = metrics.top_k_accuracy(scores, labels, ks)
  assert list(got) == [f"top{k}" for k in ks]
  for k in ks:
    want = sklearn_metrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(num_classes))
    assert got[f"top{k}"] == pytest.approx(want, abs=1e-12), k
    assert isinstance(got[f"top{k}"], float)


def test_top_k_accuracy_sklearn_with_informative_scores():
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top
  # Scores that put the label near the top often, so accuracies are far from chance.
  rng = np.random.default_rng(7)
  n, num_classes = 500, 20
  labels = rng.integers(0, num_classes, size=n)
  scores = rng.normal(size=(n, num_classes))
  scores[np.arange(n), labels] += 1.5
  got = metrics.top_k_accuracy(scores, labels, ks=(1, 2, 5))
  for k in (1, 2, 5):
    want = sklearn_metrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(num_classes))
    assert got[f"top{k}"] == pytest.approx(want, abs=1e-12)
  assert got["top1"] > 0.3  # the test is not vacuous


# ---------------------------------------------------------------- hand-computed cases


def test_constant_scores_give_no_hits_until_k_covers_every_class():
  scores = np.full((4, 5), 0.25)
  labels = np.array([0, 1, 2, 4])
  # Each label ties with the 4 other classes, all ranked ahead of it: rank 5 for every row.
  # np.argmax would return class 0 and credit row 0 with a top-1 hit; the pessimistic rank does not.
  assert metrics.top_k_accuracy(scores, labels, ks=(1, 2, 4, 5)) == {
      "top1": 0.0, "top2": 0.0, "top4": 0.0, "top5": 1.0}
  positives = np.eye(5, dtype=bool)[labels]
  np.testing.assert_array_equal(metrics.ranks(scores, positives), [5, 5, 5, 5])


def test_small_classification_with_ties_by_hand():
  scores = np.array([
      [3.0, 1.0, 3.0, 2.0],  # label 0: tied with class 2 -> rank 2
      [3.0, 1.0, 3.0, 2.0],  # label 3: below the two 3.0s -> rank 3
      [0.0, 5.0, 1.0, 1.0],  # label 1: strictly best -> rank 1
      [2.0, 2.0, 2.0, 1.0],  # label 2: tied with classes 0 and 1 -> rank 3
  ])
  labels = np.array([0, 3, 1, 2])
  np.testing.assert_array_equal(metrics.ranks(scores, np.eye(4, dtype=bool)[labels]), [2, 3, 1, 3])
  assert metrics.top_k_accuracy(scores, labels, ks=(1, 2, 3)) == {
      "top1": 0.25, "top2": 0.5, "top3": 1.0}


def test_positive_tied_with_one_negative_at_the_top_ranks_second():
  scores = np.array([[0.9, 0.2, 0.9, 0.5]])
  positives = np.array([[False, False, True, False]])
  np.testing.assert_array_equal(metrics.ranks(scores, positives), [2])
  assert metrics.recall_at_k(scores, positives, ks=(1, 2)) == {"R@1": 0.0, "R@2": 1.0}


def test_two_positive_captions_the_later_one_is_the_hit():
  # Video with captions 1 and 3. Caption 1 (0.5) is below negatives 0 and 2 (its own rank would
  # be 3; positive caption 3 above it does not count), caption 3 (0.7) is below negative 0 only
  # (rank 2): the query's rank is 2.
  scores = np.array([[0.9, 0.5, 0.6, 0.7, 0.1]])
  positives = np.array([[False, True, False, True, False]])
  np.testing.assert_array_equal(metrics.ranks(scores, positives), [2])
  assert metrics.recall_at_k(scores, positives, ks=(1, 2, 5)) == {"R@1": 0.0, "R@2": 1.0, "R@5": 1.0}


def test_positives_do_not_push_each_other_down():
  # Both positives above every negative: rank 1, even when they tie with each other.
  scores = np.array([
      [0.1, 0.9, 0.2, 0.8],
      [0.1, 0.9, 0.2, 0.9],
  ])
  positives = np.array([[False, True, False, True]] * 2)
  np.testing.assert_array_equal(metrics.ranks(scores, positives), [1, 1])


def test_infinite_scores_follow_the_same_rule():
  scores = np.array([
      [-np.inf, -np.inf, 0.0],  # positive at -inf tied with one negative at -inf, below 0.0 -> 3
      [np.inf, 1.0, np.inf],    # positive at +inf tied with a negative at +inf -> 2
      [np.inf, 1.0, 2.0],       # positive at +inf alone -> 1
  ])
  positives = np.array([[True, False, False], [True, False, False], [True, False, False]])
  np.testing.assert_array_equal(metrics.ranks(scores, positives), [3, 2, 1])


# ---------------------------------------------------------------- brute-force reference


@pytest.mark.parametrize("seed,q,c,levels,p", [
    (0, 60, 25, 4, 0.1),
    (1, 40, 7, 2, 0.3),
    (2, 30, 50, 10, 0.02),
    (3, 20, 1, 3, 0.5),
])
def test_ranks_match_brute_force_with_many_ties(seed, q, c, levels, p):
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels, size=(q, c)).astype(np.float32)
  positives = random_positives(rng, q, c, p)
  want = brute_force_ranks(scores, positives)
  got = metrics.ranks(scores, positives)
  assert got.shape == (q,) and got.dtype.kind == "i"
  np.testing.assert_array_equal(got, want)
  # Integer dtypes take the same path.
  np.testing.assert_array_equal(metrics.ranks(scores.astype(np.int32), positives), want)
  # recall@k is the fraction of those ranks within k.
  ks = [k for k in (1, 2, 5) if k <= c]
  got_recall = metrics.recall_at_k(scores, positives, ks)
  assert got_recall == {f"R@{k}": float(np.mean(want <= k)) for k in ks}


def test_chunked_rows_match_brute_force_and_collect_errors_across_chunks(monkeypatch):
  monkeypatch.setattr(metrics, "_ROW_CHUNK", 7)
  rng = np.random.default_rng(11)
  scores = rng.integers(0, 5, size=(45, 12)).astype(np.float64)  # 6 full chunks + a partial one
  positives = random_positives(rng, 45, 12, 0.15)
  np.testing.assert_array_equal(metrics.ranks(scores, positives), brute_force_ranks(scores, positives))
  labels = rng.integers(0, 12, size=45)
  got = metrics.top_k_accuracy(scores, labels, ks=(1, 3))
  want = brute_force_ranks(scores, np.eye(12, dtype=bool)[labels])
  assert got == {"top1": float(np.mean(want <= 1)), "top3": float(np.mean(want <= 3))}

  bad = scores.copy()
  bad[[3, 20, 44], 5] = np.nan
  with pytest.raises(ValueError, match=r"NaN in rows \[3, 20, 44\]"):
    metrics.ranks(bad, positives)
  empty = positives.copy()
  empty[[0, 13, 40]] = False
  with pytest.raises(ValueError, match=r"no positive in rows \[0, 13, 40\]"):
    metrics.ranks(scores, empty)


def test_large_int_scores_stay_exact():
  big = 2**60
  scores = np.array([[big + 1, big], [big, big]], dtype=np.int64)  # differ below float64 precision
  positives = np.array([[False, True], [False, True]])
  np.testing.assert_array_equal(metrics.ranks(scores, positives), [2, 2])
  scores = np.array([[big, big + 1]], dtype=np.int64)
  np.testing.assert_array_equal(metrics.ranks(scores, positives[:1]), [1])


# ---------------------------------------------------------------- retrieval positives


def test_retrieval_positives_from_caption_owner_by_hand():
  caption_owner = np.array([0, 0, 1, 2, 2, 2])
  t2v = metrics.text_to_video_positives(caption_owner, num_videos=3)
  np.testing.assert_array_equal(t2v, np.array([
      [True, False, False],
      [True, False, False],
      [False, True, False],
      [False, False, True],
      [False, False, True],
      [False, False, True],
  ]))
  v2t = metrics.video_to_text_positives(caption_owner, num_videos=3)
  np.testing.assert_array_equal(v2t, np.array([
      [True, True, False, False, False, False],
      [False, False, True, False, False, False],
      [False, False, False, True, True, True],
  ]))
  assert t2v.dtype == v2t.dtype == np.bool_


def test_retrieval_end_to_end_by_hand():
  caption_owner = np.array([0, 0, 1, 2])
  # text->video scores (captions x videos).
  t2v_scores = np.array([
      [0.9, 0.1, 0.3],  # caption 0 -> video 0: rank 1
      [0.2, 0.2, 0.1],  # caption 1 -> video 0: tied with video 1 -> rank 2
      [0.5, 0.4, 0.6],  # caption 2 -> video 1: rank 3
      [0.0, 0.1, 0.7],  # caption 3 -> video 2: rank 1
  ])
  got = metrics.recall_at_k(t2v_scores, metrics.text_to_video_positives(caption_owner, 3), ks=(1, 2, 3))
  assert got == {"R@1": 0.5, "R@2": 0.75, "R@3": 1.0}
  # video->text scores (videos x captions); video 0 owns captions 0 and 1.
  v2t_scores = np.array([
      [0.3, 0.6, 0.6, 0.1],  # best positive caption 1 ties negative caption 2 -> rank 2
      [0.5, 0.5, 0.5, 0.5],  # constant: its one positive (caption 2) is behind 3 tied negatives -> 4
      [0.2, 0.1, 0.0, 0.4],  # caption 3 strictly best -> rank 1
  ])
  v2t = metrics.video_to_text_positives(caption_owner, 3)
  np.testing.assert_array_equal(metrics.ranks(v2t_scores, v2t), [2, 4, 1])
  assert metrics.recall_at_k(v2t_scores, v2t, ks=(1, 2, 4)) == {
      "R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "R@4": 1.0}


def test_video_without_captions_is_rejected_by_ranks():
  v2t = metrics.video_to_text_positives(np.array([0, 0, 2]), num_videos=4)  # videos 1 and 3: none
  with pytest.raises(ValueError, match=r"no positive in rows \[1, 3\]"):
    metrics.recall_at_k(np.zeros((4, 3)), v2t, ks=(1,))


# ---------------------------------------------------------------- errors


def test_shape_and_dtype_errors():
  with pytest.raises(ValueError, match=r"scores must be a 2-D \(queries, candidates\) array, got shape \(5,\)"):
    metrics.ranks(np.zeros(5), np.ones(5, bool))
  with pytest.raises(ValueError, match=r"positives must have the same shape as scores \(2, 3\), got \(2, 4\)"):
    metrics.ranks(np.zeros((2, 3)), np.ones((2, 4), bool))
  with pytest.raises(ValueError, match=r"positives must be a bool array, got dtype int64"):
    metrics.ranks(np.zeros((2, 3)), np.ones((2, 3), np.int64))
  with pytest.raises(ValueError, match=r"scores must be real numbers"):
    metrics.ranks(np.zeros((2, 3), complex), np.ones((2, 3), bool))
  with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(2,\) .*got \(3,\)"):
    metrics.top_k_accuracy(np.zeros((2, 3)), np.zeros(3, np.int64), ks=(1,))
  with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(2,\) .*got \(2, 1\)"):
    metrics.top_k_accuracy(np.zeros((2, 3)), np.zeros((2, 1), np.int64), ks=(1,))
  with pytest.raises(ValueError, match=r"labels must be integers, got dtype float64"):
    metrics.top_k_accuracy(np.zeros((2, 3)), np.zeros(2), ks=(1,))
  with pytest.raises(ValueError, match=r"scores must be a 2-D"):
    metrics.recall_at_k(np.zeros((2, 3, 1)), np.ones((2, 3, 1), bool), ks=(1,))
  with pytest.raises(ValueError, match=r"positives must have the same shape"):
    metrics.recall_at_k(np.zeros((2, 3)), np.ones((3, 2), bool), ks=(1,))
  with pytest.raises(ValueError, match=r"caption_owner must be 1-D .*got shape \(2, 2\)"):
    metrics.text_to_video_positives(np.zeros((2, 2), np.int64), 3)


def test_rows_without_positives_and_nan_are_named():
  positives = np.array([[True, False], [False, False], [False, True], [False, False]])
  with pytest.raises(ValueError, match=r"no positive in rows \[1, 3\]"):
    metrics.ranks(np.zeros((4, 2)), positives)
  scores = np.array([[0.0, 1.0], [np.nan, 0.0], [0.0, 0.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match=r"NaN in rows \[1\]"):
    metrics.ranks(scores, np.ones((4, 2), bool))
  with pytest.raises(ValueError, match=r"NaN in rows \[1\]"):
    metrics.top_k_accuracy(scores, np.array([0, 1, 0, 1]), ks=(1,))
  many = np.zeros((25, 2))
  many[:, 0] = np.nan
  with pytest.raises(ValueError, match=r"NaN in rows \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(25 rows in total\)\]"):
    metrics.ranks(many, np.ones((25, 2), bool))


def test_label_out_of_range_names_first_bad_index_and_value():
  scores = np.zeros((5, 3))
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\); labels\[2\] = 3 \(2 out-of-range"):
    metrics.top_k_accuracy(scores, np.array([0, 1, 3, 2, 7]), ks=(1,))
  with pytest.raises(ValueError, match=r"labels\[0\] = -1 "):
    metrics.top_k_accuracy(scores, np.array([-1, 1, 2, 2, 0]), ks=(1,))


def test_k_out_of_range():
  with pytest.raises(ValueError, match=r"k=5 is larger than the number of classes \(3\)"):
    metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 1]))  # default ks=(1, 5)
  with pytest.raises(ValueError, match=r"k=10 is larger than the number of candidates \(8\)"):
    metrics.recall_at_k(np.zeros((2, 8)), np.ones((2, 8), bool))  # default ks=(1, 5, 10)
  with pytest.raises(ValueError, match=r"each k must be >= 1, got 0"):
    metrics.recall_at_k(np.zeros((2, 8)), np.ones((2, 8), bool), ks=(0,))
  with pytest.raises(ValueError, match=r"each k must be an int"):
    metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 1]), ks=(1.5,))
  with pytest.raises(ValueError, match=r"ks must be a sequence"):
    metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 1]), ks=1)
  # k equal to the number of candidates is allowed (and trivially 1.0).
  assert metrics.top_k_accuracy(np.zeros((2, 3)), np.array([0, 1]), ks=(3,)) == {"top3": 1.0}


def test_caption_owner_errors():
  with pytest.raises(ValueError, match=r"caption_owner must be in \[0, 3\); caption_owner\[1\] = 3"):
    metrics.text_to_video_positives(np.array([0, 3, 1]), 3)
  with pytest.raises(ValueError, match=r"caption_owner\[2\] = -2"):
    metrics.video_to_text_positives(np.array([0, 1, -2]), 3)
  with pytest.raises(ValueError, match=r"caption_owner must be integers"):
    metrics.video_to_text_positives(np.array([0.0, 1.0]), 3)
  with pytest.raises(ValueError, match=r"num_videos must be >= 1"):
    metrics.text_to_video_positives(np.zeros(0, np.int64), 0)


def test_empty_inputs():
  np.testing.assert_array_equal(metrics.ranks(np.zeros((0, 3)), np.zeros((0, 3), bool)), np.zeros(0))
  with pytest.raises(ValueError, match=r"zero"):
    metrics.top_k_accuracy(np.zeros((0, 3)), np.zeros(0, np.int64), ks=(1,))
  with pytest.raises(ValueError, match=r"zero"):
    metrics.recall_at_k(np.zeros((0, 3)), np.zeros((0, 3), bool), ks=(1,))
