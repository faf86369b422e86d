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
from vljepa_jax.eval import embedding
from vljepa_jax.eval import evaluator as evaluator_lib
from vljepa_jax.train import sharding

NUM_CLIPS = 21  # not a multiple of the batch: the last batch is padded
TEMPLATES = ("a shape {}", "something {}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config, built, params, defaults = tiny_eval_model.build(str(tmp_path_factory.mktemp("eval")))
  return config, built, params, defaults


def _evaluators(built, defaults, mesh=None):
  data = {"sources": {"shapes": {"type": "shapes", "kind": "video", "size": NUM_CLIPS, "seed": 5}}}
  evals = {"cls": {"type": "classification", "class_names": "shapes_actions", "templates": TEMPLATES,
                   "data": data, "batch_size": 8},
           "ret": {"type": "retrieval", "data": data, "batch_size": 8, "ks": (1, 5)}}
  embedder = embedding.Embedder(built.model, mesh=mesh, rules=sharding.logical_rules("fsdp") if mesh else None,
                                text_batch_size=16)
  return embedder, evaluator_lib.make_evaluators(evals, embedder=embedder, query_tokenizer=built.query_tokenizer,
                                                 target_tokenizer=built.target_tokenizer, data_defaults=defaults)


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


def test_classification_and_retrieval_match_a_per_sample_reference(setup):
  config, built, params, defaults = setup
  _, evaluators = _evaluators(built, defaults)
  preds, labels = _reference_embeddings(built, params, defaults)
  # Classification: template-averaged class embeddings, argmax of cosine.
  names = shapes.action_classes()
  class_emb = _text_embeddings(built, params, [t.format(n) for n in names for t in TEMPLATES], config.data.target_length)
  class_emb = _unit(_unit(class_emb).reshape(len(names), len(TEMPLATES), -1).mean(1))
  scores = _unit(preds) @ class_emb.T
  expected_top1 = float(np.mean(scores.argmax(1) == labels))
  expected_top5 = float(np.mean([label in np.argsort(-s)[:5] for s, label in zip(scores, labels)]))
  got = evaluators["cls"].run(params)
  assert got["num_samples"] == NUM_CLIPS
  assert got["top1"] == pytest.approx(expected_top1) and got["top5"] == pytest.approx(expected_top5)
  assert got["chance_top1"] == pytest.approx(1 / len(names))
  # Retrieval: every caption of every clip against every clip.
  source = shapes.ShapesSource(shapes.ShapesConfig(image_size=16, num_frames=2), kind="video", size=NUM_CLIPS, seed=5)
  texts, owner = [], []
  for i in range(NUM_CLIPS):
    texts += source[i]["captions"]
    owner += [i] * len(source[i]["captions"])
  owner = np.array(owner)
  caption_emb = _text_embeddings(built, params, texts, config.data.target_length)
  sim = _unit(caption_emb) @ _unit(preds).T
  t2v_r1 = np.mean(sim.argmax(1) == owner)
  t2v_r5 = np.mean([o in np.argsort(-row)[:5] for row, o in zip(sim, owner)])
  v2t_r1 = np.mean([owner[sim[:, v].argmax()] == v for v in range(NUM_CLIPS)])
  got = evaluators["ret"].run(params)
  assert got["num_videos"] == NUM_CLIPS and got["num_captions"] == len(texts)
  assert got["t2v_R@1"] == pytest.approx(t2v_r1) and got["t2v_R@5"] == pytest.approx(t2v_r5)
  assert got["v2t_R@1"] == pytest.approx(v2t_r1)


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
  kwargs = dict(embedder=None, query_tokenizer=built.query_tokenizer, target_tokenizer=built.target_tokenizer,
                data_defaults=defaults)
  with pytest.raises(ValueError, match=r"evals.x.type='open_vocabulary_detection'"):
    evaluator_lib.make_evaluators({"x": {"type": "open_vocabulary_detection"}}, **kwargs)
  with pytest.raises(ValueError, match=r"evals.x: unknown option\(s\) \['template'\]"):
    evaluator_lib.make_evaluators({"x": {"type": "classification", "template": "a {}"}}, **kwargs)
