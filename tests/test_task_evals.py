"""Discriminative VQA, inverse dynamics and hard negatives against per-sample references.

Each reference applies the model unjitted to one clip or one text at a time, normalises pixels
with its own ImageNet formula and picks answers with NumPy argmax / the TOT inequalities written
out here, so nothing is shared with the evaluators but the model. Sizes are chosen so that the
last batch is padded; every evaluator uses one shared set of prediction functions, which must compile each embedding
function once for all of them and for a second parameter set. Manifests, SugarCrepe++ JSON and
VISLA TSV/CSV files are written by the tests; missing files and malformed items must fail by name.
"""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import tiny_eval_model
import trace_checks
from vljepa_jax.data import shapes
from vljepa_jax.eval import evaluator as evaluator_lib
from vljepa_jax.eval import predictions as predictions_lib

BATCH = 8
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config, built, params, defaults = tiny_eval_model.build(str(tmp_path_factory.mktemp("task_evals")))
  predictions = predictions_lib.EmbeddingPredictions(built.model, text_batch_size=16)
  return Setup(config, built, params, defaults, predictions)


class Setup:
  """The model, its parameters, and per-sample reference embeddings (texts cached by content)."""

  def __init__(self, config, built, params, defaults, predictions):
    self.config, self.built, self.params, self.defaults = config, built, params, defaults
    self.predictions = predictions
    self.query_tok = built.query_tokenizer.with_max_length(config.data.query_length)
    self.target_tok = built.target_tokenizer.with_max_length(config.data.target_length)
    self._texts = {}

  def make(self, name, config, predictions=None):
    context = evaluator_lib.EvalContext(self.built.query_tokenizer, self.built.target_tokenizer,
                                        data_defaults=self.defaults)
    return evaluator_lib.make_evaluators({name: config}, predictions or self.predictions, context)[name]

  def visual(self, frames, query):
    """Ŝ_Y of one uint8 (T, H, W, 3) clip and one query, unjitted."""
    video = ((frames.astype(np.float64) / 255.0 - MEAN) / STD).astype(np.float32)[None]
    ids, mask = self.query_tok([query])
    return np.asarray(self.built.model.apply({"params": self.params}, video, ids, mask,
                                             method="encode_visual_query"))[0]

  def text(self, text):
    if text not in self._texts:
      ids, mask = self.target_tok([text])
      self._texts[text] = np.asarray(self.built.model.apply({"params": self.params}, ids, mask,
                                                            method="encode_text"))[0]
    return self._texts[text]


def _cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _png(path, rgb):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(rgb, np.uint8)).save(path, format="PNG")


def _random_image(rng):
  return rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)


# --- discriminative VQA ----------------------------------------------------------------------------


def test_vqa_matches_a_per_sample_reference(setup):
  size = 11  # one full batch of 8 and a padded one
  source = {"type": "shapes", "kind": "video", "size": size, "seed": 5}
  ev = setup.make("vqa", {"type": "vqa", "batch_size": BATCH, "data": {"sources": {"s": source}}})
  items = [shapes.make_clip(shapes.ShapesConfig(image_size=16, num_frames=2), 5, i) for i in range(size)]
  correct, chance, types = [], [], []
  for item in items:
    prediction = setup.visual(item["frames"], item["query"])
    candidates = list(dict.fromkeys(item["answer_candidates"]))
    scores = [_cos(setup.text(c), prediction) for c in candidates]
    correct.append(int(np.argmax(scores)) == candidates.index(item["answer"]))
    chance.append(1 / len(candidates))
    types.append(item["question_type"])
  got = ev.run(setup.params)
  assert got["num_samples"] == size
  assert got["accuracy"] == pytest.approx(np.mean(correct))
  assert got["chance_accuracy"] == pytest.approx(np.mean(chance))
  assert len(set(types)) > 1
  for kind in set(types):
    chosen = np.array(types) == kind
    assert got[f"accuracy/{kind}"] == pytest.approx(np.mean(np.array(correct)[chosen]))
    assert got[f"chance_accuracy/{kind}"] == pytest.approx(np.mean(np.array(chance)[chosen]))
    assert got[f"num_samples/{kind}"] == chosen.sum()


def _qa_manifest(tmp_path, rows, extra=None):
  rng = np.random.default_rng(0)
  images = []
  with open(tmp_path / "qa.jsonl", "w") as f:
    for i, (query, answer) in enumerate(rows):
      image = _random_image(rng)
      _png(str(tmp_path / f"img{i}.png"), image)
      images.append(image)
      entry = {"id": f"q{i}", "media": f"img{i}.png", "query": query, "answer": answer, **(extra[i] if extra else {})}
      f.write(json.dumps(entry) + "\n")
  return images, {"sources": {"m": {"type": "manifest", "manifest": str(tmp_path / "qa.jsonl")}}}


def test_vqa_with_per_record_candidates_and_types_from_a_manifest(setup, tmp_path):
  rows = [("what colour is it?", "red"), ("how many?", "two"), ("what colour is it?", "green")]
  extra = [{"answer_candidates": ["red", "blue"], "question_type": "colour"},
           {"answer_candidates": ["one", "two", "three"], "question_type": "count"},
           {"answer_candidates": ["green", "red"], "question_type": "colour"}]
  images, data = _qa_manifest(tmp_path, rows, extra)
  ev = setup.make("vqa", {"type": "vqa", "batch_size": BATCH, "data": data})
  correct = []
  for image, (query, answer), e in zip(images, rows, extra):
    prediction = setup.visual(np.stack([image, image]), query)
    scores = [_cos(setup.text(c), prediction) for c in e["answer_candidates"]]
    correct.append(int(np.argmax(scores)) == e["answer_candidates"].index(answer))
  got = ev.run(setup.params)
  assert got["accuracy"] == pytest.approx(np.mean(correct))
  assert got["chance_accuracy"] == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 2]))
  assert got["accuracy/colour"] == pytest.approx(np.mean([correct[0], correct[2]]))
  assert got["accuracy/count"] == pytest.approx(float(correct[1]))


def test_vqa_with_a_manifest_and_fixed_candidates(setup, tmp_path):
  rows = [("what colour is it?", "red"), ("which colour?", "blue"), ("what colour is it?", "green")]
  images, data = _qa_manifest(tmp_path, rows)
  candidates = ["red", "green", "blue"]
  # text_mode "caption" is what a training stage would pass; VQA must ask the record's question anyway.
  ev = setup.make("vqa", {"type": "vqa", "batch_size": BATCH, "candidates": candidates,
                          "data": {**data, "text_mode": "caption"}})
  correct = []
  for image, (query, answer) in zip(images, rows):
    prediction = setup.visual(np.stack([image, image]), query)
    correct.append(int(np.argmax([_cos(setup.text(c), prediction) for c in candidates])) == candidates.index(answer))
  got = ev.run(setup.params)
  assert got == pytest.approx({"accuracy": np.mean(correct), "chance_accuracy": 1 / 3, "num_samples": 3})

  with pytest.raises(ValueError, match=r"record 'q1'.*'blue' is not among its candidates"):
    setup.make("vqa", {"type": "vqa", "batch_size": BATCH, "candidates": ["red", "green"], "data": data}).run(
        setup.params)
  with pytest.raises(ValueError, match=r"record 'q0' has no answer_candidates"):
    setup.make("vqa", {"type": "vqa", "batch_size": BATCH, "data": data}).run(setup.params)


# --- inverse dynamics ------------------------------------------------------------------------------

STATE_QUERY, ACTION_QUERY = "what happens?", "what does the shape do?"


def _check_inverse_dynamics(setup, ev, items):
  """`items`: (initial, final, [candidate clips], answer) as uint8 arrays at the evaluation size."""
  states, candidates, answers = ev.embeddings(setup.params)
  correct = []
  for i, (initial, final, clips, answer) in enumerate(items):
    state = setup.visual(np.stack([initial, final]), STATE_QUERY)  # T = 2: one frame of each state
    actions = [setup.visual(clip, ACTION_QUERY) for clip in clips]
    np.testing.assert_allclose(states[i], state, atol=2e-5)
    np.testing.assert_allclose(candidates[i], np.stack(actions), atol=2e-5)
    assert answers[i] == answer
    correct.append(int(np.argmax([_cos(a, state) for a in actions])) == answer)
  got = ev.run(setup.params)
  assert got == pytest.approx({"accuracy": np.mean(correct), "chance_accuracy": 0.25, "num_samples": len(items)})


def test_inverse_dynamics_on_shapes_matches_a_per_sample_reference(setup):
  size = 5  # 25 clips: three batches of 8, the last one padded
  ev = setup.make("id", {"type": "inverse_dynamics", "batch_size": BATCH, "state_query": STATE_QUERY,
                         "action_query": ACTION_QUERY, "source": {"type": "shapes", "size": size}})
  config = shapes.ShapesConfig(image_size=16, num_frames=2)
  items = []
  for i in range(size):
    item = shapes.make_state_action_item(config, 1000, i)
    items.append((item["initial"], item["final"], list(item["candidates"]), item["answer"]))
  _check_inverse_dynamics(setup, ev, items)


def test_inverse_dynamics_from_a_manifest_of_pngs(setup, tmp_path):
  rng = np.random.default_rng(1)
  lines, items = [], []
  for i in range(3):
    initial, final = _random_image(rng), _random_image(rng)
    _png(str(tmp_path / f"s{i}" / "a.png"), initial)
    _png(str(tmp_path / f"s{i}" / "b.png"), final)
    paths, clips = [], []
    for k in range(4):
      if k == 1:  # one still image: its frame repeated T times
        frame = _random_image(rng)
        _png(str(tmp_path / f"c{i}_{k}.png"), frame)
        paths.append(f"c{i}_{k}.png")
        clips.append(np.stack([frame, frame]))
      else:  # a frame directory; the one of 4 frames is sampled at frames 1 and 3, in numeric order
        count = 4 if k == 2 else 2
        frames = [_random_image(rng) for _ in range(count)]
        for j, frame in enumerate(frames):
          _png(str(tmp_path / f"c{i}_{k}" / f"frame{j * 5}.png"), frame)  # frame0, frame5, frame10, frame15
        paths.append(str(tmp_path / f"c{i}_{k}") if k == 3 else f"c{i}_{k}")  # absolute and relative
        clips.append(np.stack([frames[1], frames[3]]) if count == 4 else np.stack(frames))
    answer = (i + 1) % 4
    lines.append({"id": f"item{i}", "initial": f"s{i}/a.png", "final": f"s{i}/b.png", "candidates": paths,
                  "answer": answer})
    items.append((initial, final, clips, answer))
  manifest = tmp_path / "id.jsonl"
  manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
  options = {"type": "inverse_dynamics", "batch_size": BATCH, "state_query": STATE_QUERY,
             "action_query": ACTION_QUERY, "source": {"type": "manifest", "path": str(manifest)}}
  _check_inverse_dynamics(setup, setup.make("id", options), items)

  with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*\"initial\": image path"):
    setup.make("id", {**options, "source": {"type": "manifest", "path": str(tmp_path / "nope.jsonl")}})
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps({**lines[1], "answer": 4}) + "\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl:3: 'answer' must be an int index into the 4 candidates"):
    setup.make("id", {**options, "source": {"type": "manifest", "path": str(bad)}})
  bad.write_text(json.dumps({**lines[0], "candidate": lines[0]["candidates"]}) + "\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl:1: unknown key\(s\) \['candidate'\]"):
    setup.make("id", {**options, "source": {"type": "manifest", "path": str(bad)}})
  bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps({**lines[1], "final": "s1/missing.png"}) + "\n")
  with pytest.raises(ValueError, match=r"item 'item1'.*state images.*missing_file.*missing\.png"):
    setup.make("id", {**options, "source": {"type": "manifest", "path": str(bad)}}).run(setup.params)


# --- hard negatives --------------------------------------------------------------------------------


def _tot(setup, p1, p2, n):
  e1, e2, en = setup.text(p1), setup.text(p2), setup.text(n)
  return _cos(e1, e2) > _cos(e1, en) and _cos(e1, e2) > _cos(e2, en)


def test_hard_negatives_on_shapes_match_a_per_sample_reference(setup):
  size = 12
  ev = setup.make("hn", {"type": "hard_negatives", "size": size, "seed": 7})
  items = [shapes.make_hard_negative(shapes.ShapesConfig(), 7, i) for i in range(size)]
  correct = np.array([_tot(setup, t["positive_1"], t["positive_2"], t["negative"]) for t in items])
  kinds = np.array([t["kind"] for t in items])
  got = ev.run(setup.params)
  assert got["accuracy"] == pytest.approx(correct.mean())
  assert got["chance_accuracy"] == pytest.approx(1 / 3) and got["num_samples"] == size
  assert set(kinds) == set(shapes.HARD_NEGATIVE_KINDS)
  for kind in set(kinds):
    assert got[f"accuracy/{kind}"] == pytest.approx(correct[kinds == kind].mean())
    assert got[f"num_samples/{kind}"] == (kinds == kind).sum()


# Words of the shapes vocabulary, so the word-level test tokenizer sees real tokens.
SENTENCES = [("a red square above a blue circle", "a blue circle below a red square",
              "a blue square above a red circle"),
             ("a green circle", "an emerald disc", "a green triangle"),
             ("a white box left of a cyan dot", "a cyan dot to the right of a white box",
              "a white box right of a cyan dot"),
             ("the circle grows", "the disc expands", "the circle shrinks")]


def test_hard_negative_benchmark_files(setup, tmp_path):
  # SugarCrepe++: the five category files; one in SugarCrepe's object-keyed layout.
  scpp = tmp_path / "scpp"
  scpp.mkdir()
  per_file = {}
  for k, category in enumerate(("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")):
    triplets = [SENTENCES[(k + j) % 4] for j in range(2)]
    items = [{"id": j, "filename": f"{j}.jpg", "caption": p1, "caption2": p2, "negative_caption": n}
             for j, (p1, p2, n) in enumerate(triplets)]
    data = {str(j): item for j, item in enumerate(items)} if category == "swap_obj" else items
    (scpp / f"{category}.json").write_text(json.dumps(data))
    per_file[category] = np.mean([_tot(setup, *t) for t in triplets])
  got = setup.make("scpp", {"type": "hard_negatives", "format": "sugarcrepe_pp", "path": str(scpp)}).run(setup.params)
  for category, accuracy in per_file.items():
    assert got[f"accuracy/{category}"] == pytest.approx(accuracy) and got[f"num_samples/{category}"] == 2
  assert got["accuracy"] == pytest.approx(np.mean(list(per_file.values())))
  assert got["num_samples"] == 10 and got["chance_accuracy"] == pytest.approx(1 / 3)
  one = setup.make("one", {"type": "hard_negatives", "format": "sugarcrepe_pp", "path": str(scpp / "swap_att.json")})
  assert one.run(setup.params)["accuracy"] == pytest.approx(per_file["swap_att"])

  # VISLA: the published Generic and Spatial layouts (tab-separated, CRLF), and a CSV with named columns.
  visla = tmp_path / "visla"
  visla.mkdir()
  generic = ["filename\tcaption\tsecond positive\tnegative_caption"]
  generic += [f"{j}.jpg\t{p1}\t{p2}\t{n}" for j, (p1, p2, n) in enumerate(SENTENCES[:3])]
  (visla / "Generic_VISLA.tsv").write_bytes(("\r\n".join(generic) + "\r\n").encode())
  spatial = ["image\tsent1\tsent2\tBest reference (Semantically close)\tReference-2 (Completely irrelevant)"]
  spatial += [f"{j}.jpg\t{p1}\t{p2}\t{n}\ta red dot" for j, (p1, p2, n) in enumerate(SENTENCES[1:])]
  (visla / "Spatial_VISLA.tsv").write_bytes(("\r\n".join(spatial) + "\r\n").encode())
  got = setup.make("visla", {"type": "hard_negatives", "format": "visla", "path": str(visla)}).run(setup.params)
  expected = {"Generic_VISLA": np.mean([_tot(setup, *t) for t in SENTENCES[:3]]),
              "Spatial_VISLA": np.mean([_tot(setup, *t) for t in SENTENCES[1:]])}
  for stem, accuracy in expected.items():
    assert got[f"accuracy/{stem}"] == pytest.approx(accuracy) and got[f"num_samples/{stem}"] == 3
  assert got["accuracy"] == pytest.approx(np.mean(list(expected.values())))
  assert got["num_samples"] == 6 and got["num_skipped"] == 0
  custom = tmp_path / "mine.csv"
  custom.write_text("neg,pos_a,pos_b\n" + "".join(f'"{n}",{p1},"{p2}"\n' for p1, p2, n in SENTENCES))
  got = setup.make("csv", {"type": "hard_negatives", "format": "visla", "path": str(custom),
                           "columns": ["pos_a", "pos_b", "neg"]}).run(setup.params)
  assert got["accuracy/mine"] == pytest.approx(np.mean([_tot(setup, *t) for t in SENTENCES]))


def test_hard_negative_files_fail_by_name(setup, tmp_path):
  make = lambda **o: setup.make("hn", {"type": "hard_negatives", **o})
  with pytest.raises(FileNotFoundError, match=r"gone\.json.*caption2"):
    make(format="sugarcrepe_pp", path=str(tmp_path / "gone.json"))
  (tmp_path / "replace_att.json").write_text("[]")
  with pytest.raises(FileNotFoundError, match=r"lacks .*replace_obj\.json"):
    make(format="sugarcrepe_pp", path=str(tmp_path))
  bad = tmp_path / "swap_obj.json"
  bad.write_text(json.dumps([{"id": 0, "caption": "a", "caption2": "b", "negative_caption": "c"},
                             {"id": 7, "caption": "a", "caption2": "b"}]))
  with pytest.raises(ValueError, match=r"swap_obj\.json: item 7: 'negative_caption' must be a non-empty string"):
    make(format="sugarcrepe_pp", path=str(bad))
  with pytest.raises(FileNotFoundError, match=r"gone\.tsv.*second positive"):
    make(format="visla", path=str(tmp_path / "gone.tsv"))
  tsv = tmp_path / "Spatial_VISLA.tsv"
  tsv.write_text("image\tsent1\tsent2\tBest reference (Semantically close)\tReference-2 (Completely irrelevant)\n"
                 "0.jpg\ta red dot\ta scarlet dot\ta blue dot\tx\n1.jpg\ta box\ta tile\t\t\n")
  with pytest.raises(ValueError, match=r"Spatial_VISLA\.tsv:3: empty \['Best reference .*skip_incomplete"):
    make(format="visla", path=str(tsv))
  assert make(format="visla", path=str(tsv), skip_incomplete=True).skipped == 1
  tsv.write_text("a\tb\tc\n1\t2\t3\n")
  with pytest.raises(ValueError, match=r"header \['a', 'b', 'c'\] has none of the VISLA layouts"):
    make(format="visla", path=str(tsv))
  tsv.write_text("caption\tsecond positive\tnegative_caption\nx\ty\tz\textra\n")
  with pytest.raises(ValueError, match=r"Spatial_VISLA\.tsv:2: expected 3 tab-separated fields"):
    make(format="visla", path=str(tsv))
  with pytest.raises(ValueError, match=r"evals\.hn\.format='xml'"):
    make(format="xml")
  with pytest.raises(ValueError, match=r"format 'visla' needs `path`"):
    make(format="visla")


class _FixedTexts:
  """Prediction functions whose text embeddings are chosen by hand."""

  def __init__(self, vectors):
    self.vectors = vectors

  def embed_texts(self, params, texts, tokenizer):
    return np.array([self.vectors[t] for t in texts], np.float32)


def test_tot_rule_is_strict_on_controlled_embeddings(setup, tmp_path):
  s, c = 0.6, 0.8  # (s, c) and (s, -c) are unit vectors at the same angle to (1, 0)
  cases = {  # name: (p1, p2, n, correct)
      "clear": ((1, 0, 0), (1, 0.1, 0), (0, 1, 0), True),
      "all_tied": ((1, 0, 0), (0, 1, 0), (0, 0, 1), False),  # every pair orthogonal
      "tie_with_p1": ((1, 0, 0), (s, c, 0), (s, -c, 0), False),  # sim(p1, p2) == sim(p1, n)
      "tie_with_p2": ((s, c, 0), (1, 0, 0), (s, -c, 0), False),  # sim(p1, p2) == sim(p2, n)
      "negative_nearest": ((1, 0, 0), (0, 1, 0), (1, 1, 0), False),
      "scale_ignored": ((10, 0, 0), (1, 0.1, 0), (0, 0.01, 0), True),
  }
  vectors = {}
  for name, (p1, p2, n, correct) in cases.items():
    texts = [f"{name} p1", f"{name} p2", f"{name} n"]
    vectors.update(zip(texts, (p1, p2, n)))
    item = {"id": 0, "caption": texts[0], "caption2": texts[1], "negative_caption": texts[2]}
    (tmp_path / f"{name}.json").write_text(json.dumps([item]))
  fixed = _FixedTexts(vectors)
  for name, (*_, correct) in cases.items():
    options = {"type": "hard_negatives", "format": "sugarcrepe_pp", "path": str(tmp_path / f"{name}.json")}
    ev = setup.make("tot", options, fixed)
    assert ev.run(None)["accuracy"] == float(correct), name


# --- compilation ----------------------------------------------------------------------------------


def test_each_embedding_function_compiles_once_across_evaluators_and_checkpoints(setup, tmp_path):
  predictions = predictions_lib.EmbeddingPredictions(setup.built.model, text_batch_size=16)
  embedder = predictions.embedder
  trace_checks.guard_embedder(embedder)
  data = {"sources": {"s": {"type": "shapes", "kind": "video", "size": 3, "seed": 2}}}
  evaluators = [setup.make("vqa", {"type": "vqa", "batch_size": BATCH, "data": data}, predictions),
                setup.make("id", {"type": "inverse_dynamics", "batch_size": BATCH, "source": {"size": 3}}, predictions),
                setup.make("hn", {"type": "hard_negatives", "size": 20}, predictions)]
  other = jax.tree.map(lambda p: p * 1.01, setup.params)  # a second checkpoint
  results = [[ev.run(p) for ev in evaluators] for p in (setup.params, other)]
  trace_checks.assert_traced_once(embedder._visual_query)
  trace_checks.assert_traced_once(embedder._text)
  assert [r["num_samples"] for r in results[0]] == [3, 3, 20]
