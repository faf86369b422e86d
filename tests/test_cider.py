"""CIDEr-D (`vljepa_jax.eval.cider`) against pycocoevalcap's reference scorer, plus input checks.

pycocoevalcap is a test-only dependency; its `Cider` is pure Python (no Java needed). idf comes from the
evaluated set, so every hand-written case holds several items to keep idf away from its degenerate
one-item value (log 1 = 0, which zeroes every score).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from vljepa_jax.eval.cider import cider_d, tokenize

pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")

TOL = 1e-6


def reference_score(gts, res, **kwargs):
  # pycocoevalcap asserts plain lists; copy so it cannot share state with the inputs.
  return pycoco_cider.Cider(**kwargs).compute_score({k: list(v) for k, v in gts.items()},
                                                    {k: list(v) for k, v in res.items()})


def assert_matches_reference(gts, res, sigma=6.0):
  score, scores = cider_d(gts, res, sigma=sigma, tokenize_text=False)
  ref_score, ref_scores = reference_score(gts, res, sigma=sigma)
  assert scores.dtype == np.float64 and scores.shape == (len(gts),)
  np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=TOL)
  assert abs(score - ref_score) <= TOL
  assert score == pytest.approx(scores.mean(), abs=1e-12)
  return scores


# Shared filler items so idf is informative in the small hand-written cases.
FILLER_GTS = {
    "f1": ["a dog runs on the beach", "the dog is running near water"],
    "f2": ["two people ride bicycles down a street"],
    "f3": ["a bowl of fruit sits on a table", "apples and bananas in a bowl"],
}
FILLER_RES = {"f1": ["a dog on a beach"], "f2": ["people riding bikes"], "f3": ["a bowl with fruit"]}

HAND_CASES = {
    "identical": ({"x": ["a man is slicing an onion"]}, {"x": ["a man is slicing an onion"]}),
    "partial_overlap": ({"x": ["a man is slicing an onion"]}, {"x": ["a woman is slicing a tomato"]}),
    "no_overlap": ({"x": ["a man is slicing an onion"]}, {"x": ["birds fly over hills"]}),
    "repeated_words": ({"x": ["the the cat sat on the mat"]}, {"x": ["the the the the cat cat"]}),
    "different_lengths": ({"x": ["a cat"]}, {"x": ["a cat sits on a very long and winding red carpet today"]}),
    "several_references": ({"x": ["a man slices an onion", "someone is cutting an onion", "onion being chopped",
                                  "a person cuts vegetables in a kitchen"]},
                           {"x": ["a person is cutting an onion"]}),
    "empty_candidate": ({"x": ["a man is slicing an onion", "a cook cuts onions"]}, {"x": [""]}),
    "empty_reference": ({"x": ["", "a cook cuts onions"]}, {"x": ["a cook cuts onions"]}),
    "one_word_each": ({"x": ["onion"]}, {"x": ["onion"]}),
    "extra_whitespace": ({"x": ["  a   man\tslices an\nonion "]}, {"x": ["a man  slices onion"]}),
}


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_cases_match_pycocoevalcap(name):
  gts, res = HAND_CASES[name]
  scores = assert_matches_reference({**gts, **FILLER_GTS}, {**res, **FILLER_RES})
  if name == "empty_candidate":
    assert scores[0] == 0.0
  if name == "identical":
    assert scores[0] > scores[1:].max()


def test_hand_computed_value():
  # Two items with disjoint vocabularies: every reference n-gram has df 1, idf log 2, and the candidates
  # equal their reference, so the 1- and 2-gram cosines are 1 and the (empty) 3- and 4-gram terms are 0.
  gts, res = {0: ["a b"], 1: ["c d"]}, {0: ["a b"], 1: ["c d"]}
  score, scores = cider_d(gts, res, tokenize_text=False)
  np.testing.assert_allclose(scores, [5.0, 5.0], atol=1e-12)
  assert score == pytest.approx(5.0)
  assert_matches_reference(gts, res)
  # n counts orders 1..n: with n = 2 the same captions score 10 * mean(1, 1).
  np.testing.assert_allclose(cider_d(gts, res, n=2, tokenize_text=False)[1], [10.0, 10.0], atol=1e-12)


def test_single_item_scores_zero_like_pycocoevalcap():
  gts, res = {"only": ["a man slices an onion"]}, {"only": ["a man slices an onion"]}
  assert cider_d(gts, res)[1].tolist() == [0.0]
  assert_matches_reference(gts, res)


def random_caption(rng: random.Random, vocab: list[str], max_len: int) -> str:
  return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, max_len)))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_corpus_matches_pycocoevalcap(seed):
  rng = random.Random(seed)
  vocab = [f"w{i}" for i in range(12)]
  gts, res = {}, {}
  for i in range(300):
    gts[f"clip{i}"] = [random_caption(rng, vocab, 10) for _ in range(rng.randint(1, 5))]
    res[f"clip{i}"] = [random_caption(rng, vocab, 10)]
  scores = assert_matches_reference(gts, res)
  assert (scores > 0).mean() > 0.5  # the case is not trivially all zeros


def test_sigma_matches_pycocoevalcap():
  gts = {**FILLER_GTS, "x": ["a cat"]}
  res = {**FILLER_RES, "x": ["a cat sits on a very long red carpet"]}
  assert_matches_reference(gts, res, sigma=2.0)


def test_tokenize_path_matches_pretokenised_pycocoevalcap():
  rng = random.Random(7)
  vocab = ["A", "man", "Slices", "onion,", "the", "Cat.", "sat!", "on-the", "mat?", "42", "dog's", "(red)"]
  gts = {i: [random_caption(rng, vocab, 9) for _ in range(rng.randint(1, 4))] for i in range(200)}
  res = {i: [random_caption(rng, vocab, 9)] for i in range(200)}
  pretok = lambda d: {k: [" ".join(tokenize(s)) for s in v] for k, v in d.items()}  # noqa: E731
  score, scores = cider_d(gts, res)  # tokenize_text=True is the default
  ref_score, ref_scores = reference_score(pretok(gts), pretok(res))
  np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=TOL)
  assert abs(score - ref_score) <= TOL
  # Case and punctuation no longer matter, so the raw strings score differently without tokenisation.
  assert not np.allclose(cider_d(gts, res, tokenize_text=False)[1], scores)


def test_scores_follow_gts_order_and_accept_tuples():
  gts = {**FILLER_GTS, "x": ["a man slices an onion"]}
  res = {"x": ("a man cuts an onion",), **FILLER_RES}  # different order, tuple candidate
  ref = reference_score(gts, {k: list(v) for k, v in res.items()})[1]
  np.testing.assert_allclose(cider_d(gts, res, tokenize_text=False)[1], ref, rtol=0, atol=TOL)


def test_tokenize_lowercases_and_drops_punctuation():
  assert tokenize("A Man, slicing an ONION!") == ["a", "man", "slicing", "an", "onion"]
  assert tokenize("  two\tdogs\n(3 cats)...  ") == ["two", "dogs", "3", "cats"]
  assert tokenize("well-known don't") == ["well", "known", "don", "t"]  # documented PTB differences
  assert tokenize("") == [] and tokenize("?!.,") == []


@pytest.mark.parametrize("gts, res, match", [
    ({}, {}, r"gts is empty"),
    ({"a": ["x y"]}, {"b": ["x y"]}, r"same ids.*only in gts \['a'\].*only in res \['b'\]"),
    ({"a": ["x y"], "b": ["z"]}, {"a": ["x y"]}, r"same ids.*only in gts \['b'\]"),
    ({"a": ["x y"]}, {"a": "x y"}, r"res\['a'\] must be a list holding exactly one candidate string"),
    ({"a": ["x y"]}, {"a": ["x y", "z"]}, r"res\['a'\] must be a list holding exactly one candidate"),
    ({"a": ["x y"]}, {"a": []}, r"res\['a'\] must be a list holding exactly one candidate"),
    ({"a": ["x y"]}, {"a": [None]}, r"res\['a'\] must be a list holding exactly one candidate"),
    ({"a": []}, {"a": ["x y"]}, r"gts\['a'\] has no references"),
    ({"a": "x y"}, {"a": ["x y"]}, r"gts\['a'\] must be a list of reference strings"),
    ({"a": ["x y", 3]}, {"a": ["x y"]}, r"gts\['a'\] must be a list of reference strings"),
])
def test_bad_inputs_raise(gts, res, match):
  with pytest.raises(ValueError, match=match):
    cider_d(gts, res)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, r"n must be a positive int"), ({"n": 2.0}, r"n must be a positive int"),
    ({"sigma": 0.0}, r"sigma must be a positive finite"), ({"sigma": float("nan")}, r"sigma must be"),
])
def test_bad_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    cider_d({"a": ["x"]}, {"a": ["x"]}, **kwargs)
