"""Evaluators against a per-sample reference: the model applied to one record at a time, unjitted,
with NumPy cosine scores and argmax/recall computed here. Padding must not count, the embedding
functions compile once across checkpoints, and a sharded run equals an unsharded one."""
import jax
import numpy as np
import pytest

import tiny_eval_model
import trace_checks
from vljepa_jax.data import pipeline
from vljepa_jax.data import shapes
from vljepa_jax.eval import evaluator as evaluator_lib
from vljepa_jax.eval import predictions as predictions_lib
from vljepa_jax.train import sharding

NUM_CLIPS = 21  # not a multiple of the batch: the last batch is padded
TEMPLATES = ("a shape {}", "something {}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config, built, params, defaults = tiny_eval_model.build(str(tmp_path_factory.mktemp("eval")))
  return config, built, params, defaults


def _evaluators(built, defaults, mesh=None):
  data = {"sources": {"shapes": {"type": "shapes", "kind": "video", "size": NUM_CLIPS, "seed": 5}}}
  evals = {"cls": {"type": "classification", "class_names": "source", "templates": TEMPLATES,
                   "data": data, "batch_size": 8},
           "ret": {"type": "retrieval", "data": data, "batch_size": 8, "ks": (1, 5)}}
  predictions = predictions_lib.EmbeddingPredictions(
      built.model, mesh=mesh, rules=sharding.logical_rules("fsdp") if mesh else None, text_batch_size=16)
  context = evaluator_lib.EvalContext(built.query_tokenizer, built.target_tokenizer, data_defaults=defaults)
  return predictions.embedder, evaluator_lib.make_evaluators(evals, predictions, context)


def _reference_embeddings(built, params, defaults):
  """Per record: the pipeline's example (batch of 1, no padding) through model.apply, unjitted."""
  model = built.model
  config = {**defaults, "sources": [{"type": "shapes", "kind": "video", "size": NUM_CLIPS, "seed": 5}],
            "shuffle": False, "num_epochs": 1, "sample_paraphrase": False}
  it = pipeline.make_iterator(config, global_batch_size=1, query_tokenizer=built.query_tokenizer,
                              target_tokenizer=built.target_tokenizer)
  preds, labels = [], []
  for batch in it:
    preds.append(np.asarray(model.apply({"params": params}, batch["video"], batch["query_ids"], batch["query_mask"],
                                        method="encode_visual_query"))[0])
    labels.append(int(batch["label"][0]))
  return np.stack(preds), np.array(labels)


def _text_embeddings(built, params, texts, length):
  tok = built.target_tokenizer.with_max_length(length)
  out = []
  for text in texts:
    ids, mask = tok([text])
    out.append(np.asarray(built.model.apply({"params": params}, ids, mask, method="encode_text"))[0])
  return np.stack(out)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _recall_bounds(scores, positives, k, tol=1e-5):
  """Bounds on recall@k (a hit: some positive strictly above all but k - 1 negatives) that float noise cannot cross.

  A query whose best positive is within `tol` of its k-th best negative is a near-tie: two
  programs computing the same cosines (batched and jitted vs one sample at a time) may round it
  either way. Clear hits give the lower bound, clear hits plus near-ties the upper one.
  """
  hits = fragile = 0
  for row, pos in zip(scores, positives):
    best = row[pos].max()
    negatives = np.sort(row[~pos])[::-1]
    kth = negatives[k - 1] if len(negatives) >= k else -np.inf
    if abs(best - kth) < tol:
      fragile += 1
    elif best > kth:
      hits += 1
  return hits / len(scores), (hits + fragile) / len(scores), fragile


def _assert_recall(got, scores, positives, k):
  low, high, fragile = _recall_bounds(scores, positives, k)
  assert fragile <= len(scores) // 4, f"{fragile} near-ties: the reference cannot check this recall"
  assert low - 1e-9 <= got <= high + 1e-9, (got, low, high)


def test_classification_and_retrieval_match_a_per_sample_reference(setup):
  config, built, params, defaults = setup
  _, evaluators = _evaluators(built, defaults)
  preds, labels = _reference_embeddings(built, params, defaults)
  # Classification: template-averaged class embeddings, ranked by cosine.
  names = shapes.action_classes()
  class_emb = _text_embeddings(built, params, [t.format(n) for n in names for t in TEMPLATES], config.data.target_length)
  class_emb = _unit(_unit(class_emb).reshape(len(names), len(TEMPLATES), -1).mean(1))
  scores = _unit(preds) @ class_emb.T
  is_label = np.arange(len(names))[None, :] == labels[:, None]
  got = evaluators["cls"].run(params)
  assert got["num_samples"] == NUM_CLIPS
  _assert_recall(got["top1"], scores, is_label, 1)
  _assert_recall(got["top5"], scores, is_label, 5)
  assert got["chance_top1"] == pytest.approx(1 / len(names))
  # Retrieval: every caption of every clip against every clip.
  source = shapes.ShapesSource(shapes.ShapesConfig(image_size=16, num_frames=2), kind="video", size=NUM_CLIPS, seed=5)
  texts, owner = [], []
  for i in range(NUM_CLIPS):
    texts += source[i]["captions"]
    owner += [i] * len(source[i]["captions"])
  owner = np.array(owner)
  caption_emb = _text_embeddings(built, params, texts, config.data.target_length)
  sim = _unit(caption_emb) @ _unit(preds).T  # (captions, videos)
  own = owner[:, None] == np.arange(NUM_CLIPS)[None, :]
  got = evaluators["ret"].run(params)
  assert got["num_videos"] == NUM_CLIPS and got["num_captions"] == len(texts)
  _assert_recall(got["t2v_R@1"], sim, own, 1)
  _assert_recall(got["t2v_R@5"], sim, own, 5)
  _assert_recall(got["v2t_R@1"], sim.T, own.T, 1)


def test_embeddings_drop_padding_compile_once_and_match_when_sharded(setup):
  _, built, params, defaults = setup
  embedder, evaluators = _evaluators(built, defaults)
  trace_checks.guard_embedder(embedder)  # two evaluators, two parameter sets: one trace of each function
  preds, _ = _reference_embeddings(built, params, defaults)
  got, info = embedder.visual_query(params, evaluators["cls"].batches())
  assert got.shape == preds.shape  # 21 rows from 3 batches of 8: the 3 padding rows are gone
  np.testing.assert_allclose(got, preds, atol=1e-5)
  np.testing.assert_array_equal(np.sort(info["source_index"]), np.arange(NUM_CLIPS))
  other = jax.tree.map(lambda p: p * 1.01, params)  # a second "checkpoint"
  for p in (params, other):
    for ev in evaluators.values():
      ev.run(p)
  trace_checks.assert_traced_once(embedder._visual_query)
  trace_checks.assert_traced_once(embedder._text)

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded_embedder, sharded = _evaluators(built, defaults, mesh=mesh)
  got_sharded, _ = sharded_embedder.visual_query(params, sharded["cls"].batches())
  np.testing.assert_allclose(got_sharded, preds, atol=1e-5)
  assert sharded["ret"].run(params) == pytest.approx(evaluators["ret"].run(params))


def test_bad_evaluator_configs_fail_by_name(setup):
  _, built, _, defaults = setup
  context = evaluator_lib.EvalContext(built.query_tokenizer, built.target_tokenizer, data_defaults=defaults)
  with pytest.raises(ValueError, match=r"evals.x.type='open_vocabulary_detection'"):
    evaluator_lib.make_evaluators({"x": {"type": "open_vocabulary_detection"}}, None, context)
  with pytest.raises(ValueError, match=r"evals.x: unknown option\(s\) \['template'\]"):
    evaluator_lib.make_evaluators({"x": {"type": "classification", "template": "a {}"}}, None, context)
  # A string other than "source" is a class-list file: a missing one fails when the evaluator is built.
  with pytest.raises(ValueError, match=r"evals.x.class_names='shapes_actions': expected 'source', a list of names, "
                                       r"or a file with one class name per line"):
    evaluator_lib.make_evaluators({"x": {"type": "classification", "class_names": "shapes_actions"}},
                                  ScoringOnly(), context)
  with pytest.raises(ValueError, match=r"evals.x.templates: .*exactly once, got \['a', 'b \{\}'\]"):
    evaluator_lib.make_evaluators({"x": {"type": "classification", "templates": ["a", "b {}"]}}, ScoringOnly(), context)


class ScoringOnly:
  """A model that only scores candidates, by a rule (no embeddings): stands in for a token-space VLM.

  Row with source index i scores 1 for one candidate: the right one (`truth`) when `correct(i)`,
  else the next candidate of the row, which leaves the right one second (0.5); the rest score 0.
  """

  def __init__(self, truth=None, correct=None):
    self.truth, self.correct = truth, correct

  def score_candidates(self, params, batches, candidates, tokenizer):
    label, index = [], []
    for batch in batches:
      label += batch["label"][batch["valid"]].tolist()
      index += batch["source_index"][batch["valid"]].tolist()
    own = [list(candidates.of_source_index(i)) if candidates.of_source_index else list(range(len(candidates.texts)))
           for i in index]
    width = max(map(len, own))
    scores, ids = np.full((len(own), width), -np.inf, np.float32), np.full((len(own), width), -1)
    for row, (i, l, chosen) in enumerate(zip(index, label, own)):
      right = self.truth(i, l, [candidates.texts[c][0] for c in chosen])  # a position in the row's candidates
      pick = right if self.correct(i) else (right + 1) % len(chosen)
      positions = np.arange(len(chosen))
      scores[row, :len(chosen)] = np.where(positions == pick, 1.0, np.where(positions == right, 0.5, 0.0))
      ids[row, :len(chosen)] = chosen
    return predictions_lib.CandidateScores(scores, ids, np.array(label), np.array(index))


def test_a_model_that_only_scores_candidates_reuses_the_evaluators_and_others_fail_by_name(setup):
  """Classification and VQA read nothing but `score_candidates`; evaluators that need embeddings refuse by name."""
  _, built, _, defaults = setup
  context = evaluator_lib.EvalContext(built.query_tokenizer, built.target_tokenizer, data_defaults=defaults)
  data = {"sources": {"s": {"type": "shapes", "kind": "video", "size": NUM_CLIPS, "seed": 5}}, "text_mode": "qa"}
  every_other = ScoringOnly(truth=lambda i, label, texts: label, correct=lambda i: i % 2 == 0)
  cls = evaluator_lib.make_evaluators({"cls": {"type": "classification", "data": data, "batch_size": 8}},
                                      every_other, context)["cls"]
  got = cls.run(None)
  assert got["top1"] == pytest.approx(np.mean(np.arange(NUM_CLIPS) % 2 == 0))
  assert got["top5"] == pytest.approx(1.0)  # the right class is always second at worst

  two_in_three = ScoringOnly(correct=lambda i: i % 3 != 0)
  vqa = evaluator_lib.make_evaluators({"vqa": {"type": "vqa", "data": data, "batch_size": 8}},
                                      two_in_three, context)["vqa"]
  source = vqa.source()
  two_in_three.truth = lambda i, label, texts: texts.index(source[i]["answer"].strip())
  got = vqa.run(None)
  assert got["num_samples"] == NUM_CLIPS
  assert got["accuracy"] == pytest.approx(np.mean(np.arange(NUM_CLIPS) % 3 != 0))

  for kind, needs in (("inverse_dynamics", r"\['embed_visual_query'\]"), ("hard_negatives", r"\['embed_texts'\]"),
                      ("captioning", r"\['captioner'\]")):
    with pytest.raises(ValueError, match=rf"evals.x: a \w+ needs {needs} of the model's prediction functions; "
                                         rf"ScoringOnly provides \['score_candidates'\]"):
      evaluator_lib.make_evaluators({"x": {"type": kind}}, two_in_three, context)
