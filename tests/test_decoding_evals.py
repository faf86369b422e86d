"""Captioning and selective decoding evaluators against per-sample references written here.

References apply the model unjitted to one clip at a time (pixels normalised with the ImageNet
formula written here), decode with a naive greedy loop that re-runs the Y-decoder's full forward
over the whole sequence at every step (no KV cache, no `generate`), segment streams with
scikit-learn's Ward clustering, match annotations to decodes by brute force and score with
pycocoevalcap's CIDEr-D. The model is tiny and random; its Y-decoder is biased (`_decoder_params`) so
that clips that differ a little get different texts, of different lengths, made of the references'
words, so CIDEr-D is informative. Matching-rate rules are checked on curves made by hand; the JSONL
stream manifest on an MP4 written here with PyAV.
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import traverse_util

import media_files
import tiny_train_config
from vljepa_jax.data import shapes
from vljepa_jax.data import tokenizer as tokenizer_lib
from vljepa_jax.eval import captioning
from vljepa_jax.eval import cider
from vljepa_jax.eval import evaluator as evaluator_lib
from vljepa_jax.eval import predictions as predictions_lib
from vljepa_jax.eval import stream_decoding
from vljepa_jax.eval import text_decoder
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder
from vljepa_jax.train import model_setup

pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
cluster = pytest.importorskip("sklearn.cluster")
sparse = pytest.importorskip("scipy.sparse")

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
QUERY = "what happens?"  # tiny_train_config's default_query
BATCH = 4
ROWS = 32  # the reference decoder's fixed batch (eager ops compile once per shape)
NUM_CLIPS = 7  # one full batch of 4 and a padded one
CLIP_SEED = 5
# 30 frames per stream at 0.5 fps; this seed gives both streams 4 events (annotations).
STREAMS = {"type": "shapes", "num_streams": 2, "seed": 2020, "duration_s": 60.0, "stream_fps": 0.5}


# --- the model and its references -----------------------------------------------------------------


class Setup:
  """A tiny VL-JEPA with a Y-decoder, random parameters, and per-sample reference computations."""

  def __init__(self, tmp):
    config = tiny_train_config.get_config()
    built = model_setup.build(config, tmp)
    self.base_model, self.query_tokenizer = built.model, built.query_tokenizer
    self.tokenizer = built.target_tokenizer  # word-level shapes vocabulary
    self.target_length = config.data.target_length
    decoder_llama = llama_lib.PRESETS["tiny"].replace(vocab_size=self.tokenizer.vocab_size, num_layers=1)
    self.decoder_config = y_decoder.YDecoderConfig(embed_dim=built.model.config.embed_dim, num_prefix_tokens=2,
                                                   max_length=24, llama=decoder_llama)
    self.model = vljepa.VLJEPA(built.model.config.replace(y_decoder=self.decoder_config))
    self.params = _random_params(self.model, seed=0)
    self.defaults = {k: config.data[k] for k in ("num_frames", "crop_size", "query_length", "target_length",
                                                 "default_query", "num_threads")}
    self.predictions = predictions_lib.EmbeddingPredictions(self.model, text_batch_size=8)
    self.query_tok = built.query_tokenizer.with_max_length(config.data.query_length)
    self.target_tok = built.target_tokenizer.with_max_length(config.data.target_length)
    # BOS / EOS as the tokenizer itself writes them around a text.
    ids, mask = self.target_tok(["a red square"])
    self.bos, self.eos = int(ids[0, 0]), int(ids[0, mask[0].sum() - 1])

  def make(self, name, config, model=None):
    predictions = self.predictions if model is None else predictions_lib.EmbeddingPredictions(model)
    context = evaluator_lib.EvalContext(self.query_tokenizer, self.tokenizer, data_defaults=self.defaults)
    return evaluator_lib.make_evaluators({name: config}, predictions, context)[name]

  def visual(self, frames, query=QUERY):
    """Ŝ_Y of one uint8 (T, H, W, 3) clip, unjitted."""
    video = ((frames.astype(np.float64) / 255.0 - MEAN) / STD).astype(np.float32)[None]
    ids, mask = self.query_tok([query])
    return np.asarray(self.model.apply({"params": self.params}, video, ids, mask, method="encode_visual_query"))[0]

  def text(self, text):
    """S_Y of one text, unjitted."""
    ids, mask = self.target_tok([text])
    return np.asarray(self.model.apply({"params": self.params}, ids, mask, method="encode_text"))[0]

  def greedy(self, params, embeddings):
    """Naive greedy decoding: the full forward of the whole sequence at every step, argmax until EOS or
    `target_length` tokens (the evaluators' default max_new_tokens). Rows are run ROWS at a time so
    that eager ops compile once; nothing in the decoder mixes rows."""
    steps = self.target_length
    decoder = y_decoder.YDecoder(self.decoder_config)
    embeddings = np.asarray(embeddings, np.float64)
    condition = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    texts = []
    for begin in range(0, len(condition), ROWS):
      chunk = condition[begin:begin + ROWS]
      rows = np.zeros((ROWS, condition.shape[1]), np.float32)
      rows[:len(chunk)] = chunk
      # Right-padded sequences: attention is causal, so position i never sees what follows it.
      tokens = np.full((ROWS, steps + 1), self.tokenizer.pad_id, np.int32)
      tokens[:, 0] = self.bos
      ended = np.arange(ROWS) >= len(chunk)
      for i in range(steps):
        logits = np.asarray(decoder.apply({"params": params["y_decoder"]}, rows, tokens))
        tokens[:, i + 1] = logits[:, i].argmax(-1)
        ended |= tokens[:, i + 1] == self.eos
        if ended.all():
          break
      for row in tokens[:len(chunk), 1:].tolist():
        texts.append(self.tokenizer.decode(row[:row.index(self.eos)] if self.eos in row else row))
    return texts


def _random_params(model, seed):
  """Every parameter drawn with NumPy (fan-in scaled normals, norms near one): no jitted init to compile."""
  video = jnp.zeros((1, 2, 16, 16, 3))
  ids = jnp.zeros((1, 8), jnp.int32)
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(params_lib.abstract_params(model, video, ids, ids, ids, ids)).items():
    if path[-1] == "scale":
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    elif path[-1] == "bias" or len(leaf.shape) < 2:
      value = 0.02 * rng.normal(size=leaf.shape)
    elif path[-1] == "embedding":
      value = rng.normal(size=leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    flat[path] = np.asarray(value, leaf.dtype)
  return traverse_util.unflatten_dict(flat)


def _decoder_params(setup, embeddings, captions, eos_gain=2.5, seed=None):
  """`setup.params` with a Y-decoder biased towards text that CIDEr can tell apart.

  It reads (unit condition - the mean unit condition of `embeddings`) and its token embeddings are shrunk
  tenfold, so the condition outweighs the tokens and clips that differ a little get different text; its LM
  head favours the words of `captions` (other columns shrunk tenfold), so texts share n-grams with the
  references; and its EOS column has `eos_gain` times the spread, so texts end at different lengths.
  `seed` redraws the decoder's weights first.
  """
  params = _random_params(setup.model, seed) if seed is not None else setup.params
  dec = jax.tree.map(np.array, params["y_decoder"])
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  kernel = dec["prefix_proj"]["kernel"]  # (E, P, D)
  dec["prefix_proj"]["bias"] = -np.einsum("e,epd->pd", unit.mean(0), kernel).astype(np.float32)
  dec["llama"]["embed_tokens"]["embedding"] *= 0.1
  head = dec["lm_head"]["kernel"]  # (D, V)
  words = {setup.tokenizer.token_to_id(w) for c in captions for w in c.split()} - {None}
  other = np.setdiff1d(np.arange(head.shape[1]), sorted(words | {setup.eos}))
  head[:, other] *= 0.1
  head[:, setup.eos] *= eos_gain
  return {**setup.params, "y_decoder": dec}


def _tokenised(text):
  return " ".join(cider.tokenize(text))


def pycoco(gts, res):
  """pycocoevalcap's CIDEr-D on pre-tokenised strings."""
  score, _ = pycoco_cider.Cider().compute_score({k: [_tokenised(r) for r in v] for k, v in gts.items()},
                                                {k: [_tokenised(h) for h in v] for k, v in res.items()})
  return float(score)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return Setup(str(tmp_path_factory.mktemp("decoding_evals")))


# --- captioning -----------------------------------------------------------------------------------


def _clip_data(size=NUM_CLIPS):
  return {"sources": {"s": {"type": "shapes", "kind": "video", "size": size, "seed": CLIP_SEED}}}


def _all_captions(items):
  return [c for item in items for c in item["captions"]]


def _clips(size=NUM_CLIPS):
  config = shapes.ShapesConfig(image_size=16, num_frames=2)
  return [shapes.make_clip(config, CLIP_SEED, i) for i in range(size)]


@pytest.fixture(scope="module")
def captioning_eval(setup):
  return setup.make("cap", {"type": "captioning", "batch_size": BATCH, "data": _clip_data()})


def _check_captions(setup, got, texts, refs):
  gts = {i: r for i, r in enumerate(refs)}
  shuffled = captioning.derangement(len(texts))
  assert got["num_samples"] == len(texts)
  assert got["cider_d"] == pytest.approx(pycoco(gts, {i: [t] for i, t in enumerate(texts)}), abs=1e-6)
  assert got["chance_cider_d"] == pytest.approx(pycoco(gts, {i: [texts[j]] for i, j in enumerate(shuffled)}),
                                                abs=1e-6)
  assert got["mean_words"] == pytest.approx(np.mean([len(cider.tokenize(t)) for t in texts]))
  assert got["example_0"].startswith(repr(texts[0]))


def test_captioning_matches_a_per_sample_greedy_reference(setup, captioning_eval):
  items = _clips()
  predictions = np.stack([setup.visual(item["frames"]) for item in items])
  params = _decoder_params(setup, predictions, _all_captions(items))
  texts = setup.greedy(params, predictions)
  # The setting must make the comparison meaningful: different texts, of different lengths, some ending early.
  assert len(set(texts)) >= 4 and len({len(t.split()) for t in texts}) >= 3
  assert captioning_eval.captioner.decoder(params, predictions) == texts
  got = captioning_eval.run(params)
  _check_captions(setup, got, texts, [item["captions"] for item in items])
  assert got["cider_d"] > 0


def test_captioning_from_the_target_embedding(setup):
  items = _clips()
  ev = setup.make("cap_target", {"type": "captioning", "batch_size": BATCH, "condition": "target",
                                 "data": _clip_data()})
  targets = np.stack([setup.text(item["captions"][0]) for item in items])
  params = _decoder_params(setup, targets, _all_captions(items))
  texts = setup.greedy(params, targets)
  assert len(set(texts)) >= 4
  _check_captions(setup, ev.run(params), texts, [item["captions"] for item in items])


def test_decode_function_compiles_once_across_parameter_sets(setup, captioning_eval):
  items = _clips()
  predictions = np.stack([setup.visual(item["frames"]) for item in items])
  refs = [item["captions"] for item in items]
  for seed in (11, 12):  # two "checkpoints" whose decoders differ entirely
    params = _decoder_params(setup, predictions, _all_captions(items), seed=seed)
    _check_captions(setup, captioning_eval.run(params), setup.greedy(params, predictions), refs)
  # `TextDecoder` jits under a one-trace guard (`trace_guard`): the runs above traced it once, or they would have
  # raised. And the guard is there: a batch of another size trips it.
  with pytest.raises(AssertionError, match="traced > 1 times"):
    captioning_eval.captioner.decoder._decode(params[text_decoder.DECODER_PARAMS], np.zeros((BATCH + 1, predictions.shape[1])))


def test_decoding_needs_a_y_decoder(setup):
  with pytest.raises(ValueError, match=r"decoding text needs a Y-decoder: set config.model.y_decoder"):
    setup.make("cap", {"type": "captioning", "data": _clip_data()}, model=setup.base_model)
  with pytest.raises(ValueError, match=r"decoding text needs a Y-decoder"):
    setup.make("sd", {"type": "selective_decoding", "streams": {**STREAMS, "num_streams": 1}},
               model=setup.base_model)
  with pytest.raises(ValueError, match=r"evals.cap.condition='video'; expected 'predictor' or 'target'"):
    setup.make("cap", {"type": "captioning", "condition": "video", "data": _clip_data()})
  with pytest.raises(ValueError, match=r"give both bos_id and eos_id"):
    setup.make("cap", {"type": "captioning", "bos_id": 2, "data": _clip_data()})
  ev = setup.make("cap", {"type": "captioning", "data": _clip_data()})
  no_decoder = {k: v for k, v in setup.params.items() if k != "y_decoder"}
  with pytest.raises(ValueError, match=r"no 'y_decoder' subtree"):
    ev.captioner.decoder(no_decoder, np.ones((2, setup.decoder_config.embed_dim), np.float32))


def test_special_ids_are_the_tokenizers_own_start_and_end(setup):
  tok = setup.tokenizer
  assert text_decoder.special_ids(tok) == (setup.bos, setup.eos)
  assert (setup.bos, setup.eos) == (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"))
  for text in ("the red square moves left", "", "what happens?"):
    ids, mask = tok.with_max_length(16)([text])
    row = ids[0][mask[0] > 0]
    assert (row[0], row[-1]) == (setup.bos, setup.eos)
  # A template with only a start token cannot give the end token: the error says what to set instead.
  raw = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "red": 3},
                                                         unk_token="[UNK]"))
  raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  raw.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 2)])
  with pytest.raises(ValueError, match=r"encodes the empty text as \[2\], not as \[start, end\].*bos_id and eos_id"):
    text_decoder.special_ids(tokenizer_lib.HuggingFaceTokenizer(raw, pad_id=0))


def test_derangement_moves_every_index():
  for n in range(2, 300):
    for seed in (0, 1, 7):
      perm = captioning.derangement(n, seed)
      np.testing.assert_array_equal(np.sort(perm), np.arange(n))
      assert not np.any(perm == np.arange(n)), (n, seed)
      np.testing.assert_array_equal(perm, captioning.derangement(n, seed))  # a fixed pairing per seed


# --- selective decoding on shapes streams ---------------------------------------------------------

SD_OPTIONS = {"type": "selective_decoding", "streams": STREAMS, "frame_stride": 2, "step": 2, "batch_size": 8,
              "uniform_rates_hz": (0.25, 0.125, 0.1, 0.05), "adaptive_rates_hz": (0.15, 0.05, 0.02),
              "online_window": 3, "reference_rate_hz": 0.09, "report_curve": True}
WINDOW, STRIDE, STEP = 2, 2, 2  # the evaluator's window defaults to the data's num_frames


def _ward(embeddings, n_segments):
  """scikit-learn's Ward clustering with temporal (chain) connectivity, labels renamed 0, 1, ... in time."""
  num_steps = len(embeddings)
  chain = sparse.diags([np.ones(num_steps - 1), np.ones(num_steps - 1)], [-1, 1])
  labels = cluster.AgglomerativeClustering(n_clusters=n_segments, linkage="ward",
                                           connectivity=chain).fit_predict(embeddings)
  _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
  return np.argsort(np.argsort(first))[inverse]


def _online(embeddings, window, threshold):
  """Decode at step 0, then wherever the mean squared distance to the mean of the steps since the last
  decode (at most `window` of them, the decode included) exceeds `threshold`; labels of the runs."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  labels, last = [0], 0
  for t in range(1, len(unit)):
    members = unit[max(last, t - window + 1):t + 1]
    if np.mean(np.sum((members - members.mean(0)) ** 2, axis=1)) > threshold:
      last = t
    labels.append(labels[-1] + (last == t))
  return np.array(labels)


def _online_threshold(streams, window):
  """A threshold inside the middle half of the variances the online rule can meet (every run of 2..window
  steps), in their widest gap: it fires at some steps only, and no variance lies near it."""
  values = []
  for embeddings in streams:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    for a in range(len(unit)):
      for b in range(a + 2, min(a + window, len(unit)) + 1):
        values.append(np.mean(np.sum((unit[a:b] - unit[a:b].mean(0)) ** 2, axis=1)))
  values = np.sort(values)[len(values) // 4:3 * len(values) // 4 + 1]
  k = int(np.argmax(np.diff(values)))
  return float(values[k] + values[k + 1]) / 2


def _runs(labels):
  """(start, end) of each run of equal labels, in time order."""
  edges = [0] + [t for t in range(1, len(labels)) if labels[t] != labels[t - 1]] + [len(labels)]
  return list(zip(edges[:-1], edges[1:]))


def _matching_rate(points, target):
  """Walking down the adaptive curve from its highest rate while it stays at or above `target`: the rate where
  it crosses (linear interpolation), or the last rate walked; NaN if the highest rate already falls short."""
  points = sorted(points, reverse=True)  # (rate, cider) from the highest rate down
  if points[0][1] < target:
    return float("nan")
  for (high, high_score), (low, low_score) in zip(points, points[1:]):
    if low_score < target:
      return low + (high - low) * (target - low_score) / (high_score - low_score)
  return points[-1][0]


def test_selective_decoding_matches_a_per_window_reference(setup):
  fps, duration = STREAMS["stream_fps"], STREAMS["duration_s"]
  num_frames = int(round(duration * fps))
  starts = list(range(0, num_frames - (WINDOW - 1) * STRIDE, STEP))
  centre = (WINDOW - 1) * STRIDE / 2
  config = shapes.ShapesConfig(image_size=16, stream_fps=fps)
  streams = []
  for i in range(STREAMS["num_streams"]):
    long = shapes.LongStream(config, STREAMS["seed"], i, duration_s=duration)
    assert long.num_frames == num_frames
    embeddings = np.stack([setup.visual(long.clip(s, WINDOW, STRIDE)) for s in starts])
    annotations = [((seg.start_s + seg.end_s) / 2, seg.caption) for seg in long.segments]
    streams.append((np.array([(s + centre) / fps for s in starts]), embeddings, annotations))
  params = _decoder_params(setup, np.concatenate([e for _, e, _ in streams]),
                          [c for _, _, annotations in streams for _, c in annotations])
  threshold = _online_threshold([e for _, e, _ in streams], SD_OPTIONS["online_window"])
  ev = setup.make("sd", {**SD_OPTIONS, "online_thresholds": (threshold,)})

  got_streams = ev.stream_embeddings(params)
  for (times, embeddings, _), (got_times, got_embeddings) in zip(streams, got_streams):
    np.testing.assert_allclose(got_times, times)
    np.testing.assert_allclose(got_embeddings, embeddings, atol=2e-5)

  step_s, num_steps = STEP / fps, len(starts)
  plans = {}  # (strategy, setting) -> per stream, the segment of every step
  for rate in SD_OPTIONS["uniform_rates_hz"]:
    every = max(1.0, 1.0 / (rate * step_s))
    plans["uniform", rate] = [np.floor(np.arange(num_steps) / every).astype(int) for _ in streams]
  for rate in SD_OPTIONS["adaptive_rates_hz"]:
    n = int(np.clip(round(rate * num_steps * step_s), 1, num_steps))
    plans["adaptive", rate] = [_ward(e, n) for _, e, _ in streams]
  plans["online", threshold] = [_online(e, SD_OPTIONS["online_window"], threshold) for _, e, _ in streams]
  got_plans = ev.plans(got_streams)
  assert set(got_plans) == set(plans)
  for key, labels_per_stream in plans.items():
    for labels, got_labels in zip(labels_per_stream, got_plans[key]):
      np.testing.assert_array_equal(got_labels, labels, err_msg=str(key))

  # Every decode: the segment's mean embedding, at the segment's middle step (the earlier one if even).
  decodes = {}
  conditions = []
  for key, labels_per_stream in plans.items():
    decodes[key] = []
    for (times, embeddings, _), (_, got_embeddings), labels in zip(streams, got_streams, labels_per_stream):
      runs = _runs(labels)
      mids = [a + (b - a - 1) // 2 for a, b in runs]
      means = [embeddings[a:b].mean(0) for a, b in runs]
      got_mids, got_means = stream_decoding.decode_points(got_embeddings, labels, "mean")
      np.testing.assert_array_equal(got_mids, mids)
      np.testing.assert_allclose(got_means, means, atol=2e-5)
      decodes[key].append((times[mids], len(conditions)))
      conditions += means
  texts = setup.greedy(params, np.stack(conditions))
  assert len(set(texts)) >= 10
  assert ev.decoder(params, np.stack(conditions)) == texts
  gts = {(s, a): [caption] for s, (_, _, annotations) in enumerate(streams)
         for a, (_, caption) in enumerate(annotations)}
  total_s = len(streams) * num_steps * step_s
  expected = {}
  matched = {}
  for (strategy, setting), per_stream in decodes.items():
    res = {}
    for s, (decode_times, offset) in enumerate(per_stream):
      for a, (t, _) in enumerate(streams[s][2]):
        res[s, a] = [texts[offset + int(np.argmin([abs(t - d) for d in decode_times]))]]
    tag = f"{strategy}_{setting:g}"
    matched[tag] = res
    expected[f"{tag}/cider_d"] = pycoco(gts, res)
    expected[f"{tag}/decodes_per_s"] = sum(len(times) for times, _ in per_stream) / total_s

  got = ev.run(params)
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, abs=1e-6), name
  assert any(v > 0 for k, v in expected.items() if k.endswith("cider_d"))
  # Uniform at 0.1 Hz is the measured setting nearest the 0.09 Hz reference.
  ref_cider, ref_rate = expected["uniform_0.1/cider_d"], expected["uniform_0.1/decodes_per_s"]
  adaptive = [(expected[f"adaptive_{r:g}/decodes_per_s"], expected[f"adaptive_{r:g}/cider_d"])
              for r in SD_OPTIONS["adaptive_rates_hz"]]
  rate = _matching_rate(adaptive, ref_cider)
  assert got["reference_cider_d"] == pytest.approx(ref_cider, abs=1e-6)
  assert got["reference_decodes_per_s"] == pytest.approx(ref_rate)
  np.testing.assert_allclose(got["adaptive_rate_matching_reference"], rate, rtol=1e-6)
  np.testing.assert_allclose(got["reduction_factor"], ref_rate / rate, rtol=1e-6)
  assert got["reduction_factor_is_bound"] == int(rate == min(r for r, _ in adaptive))
  keys = list(gts)
  reference_texts = [matched["uniform_0.1"][k][0] for k in keys]
  shuffled = captioning.derangement(len(keys))
  assert got["chance_reference_cider_d"] == pytest.approx(
      pycoco(gts, {k: [reference_texts[j]] for k, j in zip(keys, shuffled)}), abs=1e-6)
  assert got["num_streams"] == 2 and got["num_annotations"] == len(gts)


# --- matching rate and summary on hand-made curves ------------------------------------------------


def _curve(strategy, *points):
  """Curves from (setting, decodes per second, CIDEr-D); settings differ from the measured rates on purpose."""
  return [stream_decoding.Curve(strategy, setting, rate, score) for setting, rate, score in points]


ADAPTIVE = _curve("adaptive", (0.15, 0.1, 2.0), (0.25, 0.2, 5.0), (0.6, 0.5, 8.0))


@pytest.mark.parametrize("target, expected", [
    (8.0, 0.5),  # reached exactly at the highest rate, not below it
    (5.0, 0.2),  # exactly at a measured rate: that rate, not an interpolation below it
    (6.5, 0.35),  # between 0.2 (5) and 0.5 (8): 0.2 + (6.5 - 5) / (8 - 5) * 0.3
    (3.5, 0.15),  # between 0.1 (2) and 0.2 (5)
    (2.0, 0.1),  # reached at the lowest rate
    (1.0, 0.1),
    (8.5, float("nan")),  # above the whole curve
])
def test_matching_rate_on_a_monotonic_curve(target, expected):
  np.testing.assert_allclose(stream_decoding.matching_rate(ADAPTIVE, target), expected, rtol=1e-12)
  np.testing.assert_allclose(_matching_rate([(c.decodes_per_second, c.cider_d) for c in ADAPTIVE], target),
                             expected, rtol=1e-12)


def test_matching_rate_on_non_monotonic_curves():
  dip = _curve("adaptive", (0.0, 0.05, 9.0), (0.1, 0.1, 2.0), (0.2, 0.2, 5.0), (0.5, 0.5, 8.0))
  # Walking down from 0.5, the curve first falls below 4 between 0.1 and 0.2; the high score at 0.05 does not count.
  assert stream_decoding.matching_rate(dip, 4.0) == pytest.approx(0.1 + 0.1 * 2 / 3)
  assert stream_decoding.matching_rate(list(reversed(dip)), 4.0) == pytest.approx(0.1 + 0.1 * 2 / 3)  # order-free
  # The highest rate falls short and a lower one does not: no rate reaches the target walking down.
  short_at_top = _curve("adaptive", (0.1, 0.1, 6.0), (0.5, 0.5, 3.0))
  assert np.isnan(stream_decoding.matching_rate(short_at_top, 5.0))
  assert np.isnan(stream_decoding.matching_rate([], 1.0))


def test_summarize_reference_and_reduction_factor():
  uniform = _curve("uniform", (2.0, 1.9, 9.0), (1.0, 1.0, 6.5), (0.5, 0.5, 4.0))
  got = stream_decoding.summarize(uniform + ADAPTIVE, 0.9)  # the 1.0 Hz setting is nearest
  assert got["_reference_setting"] == 1.0
  assert got["reference_cider_d"] == 6.5 and got["reference_decodes_per_s"] == 1.0
  assert got["adaptive_rate_matching_reference"] == pytest.approx(0.35)
  assert got["reduction_factor"] == pytest.approx(1.0 / 0.35)
  assert got["reduction_factor_is_bound"] == 0
  # Matched at the lowest adaptive rate measured: the factor is only a lower bound.
  got = stream_decoding.summarize(uniform + ADAPTIVE, 0.5)
  assert got["adaptive_rate_matching_reference"] == pytest.approx(0.1 + 0.1 * 2 / 3)  # 4.0: between 0.1 and 0.2
  low = _curve("uniform", (0.05, 0.05, 1.5))
  got = stream_decoding.summarize(low + ADAPTIVE, 0.05)
  assert got["adaptive_rate_matching_reference"] == 0.1 and got["reduction_factor"] == pytest.approx(0.5)
  assert got["reduction_factor_is_bound"] == 1
  # Out of reach of the adaptive curve: NaN rate and factor, not a bound.
  got = stream_decoding.summarize(uniform + ADAPTIVE, 2.0)
  assert np.isnan(got["adaptive_rate_matching_reference"]) and np.isnan(got["reduction_factor"])
  assert got["reduction_factor_is_bound"] == 0
  assert stream_decoding.summarize(uniform, 1.0) == {} and stream_decoding.summarize(ADAPTIVE, 1.0) == {}


# --- streams from a JSONL manifest of videos ------------------------------------------------------

VIDEO_FPS, VIDEO_SECONDS = 4, 10


def _block_frames():
  """10 s at 4 fps of 16x16 frames: a red block sliding right, then a blue one sliding down."""
  n = VIDEO_FPS * VIDEO_SECONDS
  frames = np.full((n, 16, 16, 3), 30, np.uint8)
  for t in range(n):
    if t < n // 2:
      x = 2 * t * 12 // n
      frames[t, 4:10, x:x + 4] = (220, 30, 30)
    else:
      y = 2 * (t - n // 2) * 12 // n
      frames[t, y:y + 4, 6:12] = (30, 60, 230)
  return frames


def _decoded_frames(path):
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_stream_manifest_of_videos(setup, tmp_path):
  media_files.write_video(tmp_path / "blocks.mp4", _block_frames(), fps=VIDEO_FPS)
  manifest = tmp_path / "streams.jsonl"
  annotations = [[7.5, "a blue block moves down"], [2.0, "a red block moves right"]]  # out of order on purpose
  manifest.write_text(json.dumps({"id": "blocks", "media": "blocks.mp4", "annotations": annotations}) + "\n\n")
  options = {"type": "selective_decoding", "batch_size": 8, "uniform_rates_hz": (1.0, 0.5),
             "adaptive_rates_hz": (0.5, 0.2), "reference_rate_hz": 1.0}
  for fps, step in ((4.0, 2), (2.0, 1), (3.0, 3)):
    ev = setup.make("sd", {**options, "streams": {"type": "manifest", "path": str(manifest), "fps": fps},
                           "step": step})
    (stream,) = ev.streams
    num_frames = int(round(VIDEO_SECONDS * fps))
    assert stream.name == "blocks" and stream.num_frames == num_frames and stream.fps == fps
    assert len(ev._rows()) == len(range(0, num_frames - (WINDOW - 1) * 2, step))  # frame_stride defaults to 2
    np.testing.assert_array_equal(stream.annotation_times, [2.0, 7.5])
    assert stream.annotation_captions == ["a red block moves right", "a blue block moves down"]

  # At the file's own frame rate the stream is every decoded frame (16x16 already: no resize, no crop).
  ev = setup.make("sd", {**options, "streams": {"type": "manifest", "path": str(manifest), "fps": 4.0}, "step": 2})
  frames = _decoded_frames(str(tmp_path / "blocks.mp4"))
  assert len(frames) == VIDEO_FPS * VIDEO_SECONDS
  np.testing.assert_array_equal(ev.streams[0].frames(np.arange(len(frames))), frames)
  starts = range(0, len(frames) - 2, 2)
  embeddings = np.stack([setup.visual(frames[[s, min(s + 2, len(frames) - 1)]]) for s in starts])
  params = _decoder_params(setup, embeddings, [c for _, c in annotations])
  ((times, got),) = ev.stream_embeddings(params)
  np.testing.assert_allclose(times, [(s + 1) / 4.0 for s in starts])
  np.testing.assert_allclose(got, embeddings, atol=2e-5)
  result = ev.run(params)
  assert result["num_streams"] == 1 and result["num_annotations"] == 2
  # 19 windows, one per 0.5 s; 1 Hz decodes blocks of 2 of them: 10 decodes over 9.5 s.
  assert result["uniform_1/decodes_per_s"] == pytest.approx(10 / 9.5)
  assert all(np.isfinite(result[f"{k}/cider_d"]) for k in ("uniform_1", "uniform_0.5", "adaptive_0.5", "adaptive_0.2"))


def test_stream_manifest_errors_name_the_file_and_line(setup, tmp_path):
  media_files.write_video(tmp_path / "v.mp4", _block_frames()[:8], fps=VIDEO_FPS)
  make = lambda path: setup.make("sd", {"type": "selective_decoding", "streams": {"type": "manifest",
                                                                                    "path": str(path)}})
  good = {"id": "v", "media": "v.mp4", "annotations": [[1.0, "a red block"]]}
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + r".*one JSON object per line.*\"annotations\""):
    make(missing)
  bad = tmp_path / "bad.jsonl"
  where = re.escape(str(bad))
  bad.write_text(json.dumps(good) + "\n\n{not json\n")
  with pytest.raises(ValueError, match=where + r":3: invalid JSON"):
    make(bad)
  bad.write_text(json.dumps({"id": "v", "media": "v.mp4"}) + "\n")
  with pytest.raises(ValueError, match=where + r":1: not a stream entry \(KeyError: 'annotations'\)"):
    make(bad)
  bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "annotations": [[1.0]]}) + "\n")
  with pytest.raises(ValueError, match=where + r":2: not a stream entry \(ValueError"):
    make(bad)
  bad.write_text(json.dumps({**good, "annotations": []}) + "\n")
  with pytest.raises(ValueError, match=where + r":1: no annotations"):
    make(bad)
  bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "media": "gone.mp4"}) + "\n")
  with pytest.raises(FileNotFoundError, match=where + r":2: video .*gone\.mp4.* does not exist"):
    make(bad)
  bad.write_text("\n \n")
  with pytest.raises(ValueError, match=where + r": no streams"):
    make(bad)
  with pytest.raises(ValueError, match=r"evals.sd.streams.type='youtube'"):
    setup.make("sd", {"type": "selective_decoding", "streams": {"type": "youtube"}})


# --- the recurrent stream mode: a streaming predictor reads each frame once --------------------------


def _streaming_model(setup):
  """The setup's model with a causal Mamba-3 predictor pooling the query, and a frame-chunked X-encoder."""
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  config = setup.model.config
  backbone = predictor_backbones.matched_config("mamba3", config.predictor.backbone_config)
  predictor = config.predictor.replace(backbone="mamba3", backbone_config=backbone.replace(chunk_size=4), causal=True,
                                       pool="query")
  return vljepa.VLJEPA(config.replace(predictor=predictor, x_encoder_chunk_frames=2))


def test_recurrent_stream_mode_equals_the_offline_model_on_every_prefix(setup):
  """Each recurrent Ŝ_Y equals the offline model over the whole prefix its phase has read.

  frame_stride 2 and 2 frames per step span 4 raw frames; emitting every 2 raw frames takes 2
  phase-shifted streams, starting at raw frames 0 and 2. Step i of the phase starting at f reads
  raw frames f + 2j for j < 2(i + 1), so its Ŝ_Y is the offline one of that clip, stamped where a
  window (2 frames, stride 2) ending at its last frame is centred."""
  model = _streaming_model(setup)
  params = _random_params(model, seed=3)
  context = evaluator_lib.EvalContext(setup.query_tokenizer, setup.tokenizer, data_defaults=setup.defaults)
  recurrent = {**SD_OPTIONS, "stream_mode": "recurrent"}
  evaluators = evaluator_lib.make_evaluators({"sd": recurrent, "sd_reset": {**recurrent, "reset_every": 3}},
                                             predictions_lib.EmbeddingPredictions(model), context)
  ev = evaluators["sd"]
  assert ev.requires() == ("embed_stream", "text_decoder")
  got = ev.stream_embeddings(params)
  got_reset = evaluators["sd_reset"].stream_embeddings(params)

  fps, stride, k, centre = STREAMS["stream_fps"], 2, 2, (WINDOW - 1) * 2 / 2
  config = shapes.ShapesConfig(image_size=16, stream_fps=fps)
  ids, mask = setup.query_tok([QUERY])
  # The whole-clip model, compiled once per prefix length (eager Mamba-3 takes seconds per call).
  offline = jax.jit(lambda p, video: model.apply({"params": p}, video, ids, mask, method="encode_visual_query"))
  for i, ((got_times, got_embeddings), (reset_times, reset_embeddings)) in enumerate(zip(got, got_reset)):
    long = shapes.LongStream(config, STREAMS["seed"], i, duration_s=STREAMS["duration_s"])
    expected, expected_reset = [], []
    for first in (0, 2):
      for step in range(long.num_frames):
        last = first + ((step + 1) * k - 1) * stride
        if last >= long.num_frames:
          break
        for since, out in ((0, expected), (step // 3 * 3, expected_reset)):  # the state's latest (re)start
          frames = long.clip(first + since * k * stride, (step - since + 1) * k, stride)
          video = ((frames.astype(np.float64) / 255.0 - MEAN) / STD).astype(np.float32)[None]
          out.append(((last - centre) / fps, np.asarray(offline(params, video)[0])))
    for want, (times, embeddings) in ((expected, (got_times, got_embeddings)),
                                      (expected_reset, (reset_times, reset_embeddings))):
      want.sort(key=lambda e: e[0])
      np.testing.assert_allclose(times, [t for t, _ in want])
      # Emissions every `step` (2) raw frames, from the first phase's first step on.
      np.testing.assert_allclose(np.diff(times), 2 / fps)
      np.testing.assert_allclose(embeddings, np.stack([e for _, e in want]), atol=2e-5)
    assert np.abs(reset_embeddings - got_embeddings).max() > 1e-3  # the resets changed something
  # The decoding and scoring downstream are the window mode's; they run on the recurrent stream.
  result = ev.run(params)
  assert result["num_streams"] == 2 and "reference_cider_d" in result


def test_recurrent_stream_mode_refuses_a_model_that_cannot_stream(setup):
  with pytest.raises(ValueError, match=r"evals.sd.stream_mode='recurrent': the predictor cannot stream: backbone "
                                       r"'llama' carries no constant-size state.*predictor.causal=False.*"
                                       r"predictor.pool='all'"):
    setup.make("sd", {**SD_OPTIONS, "stream_mode": "recurrent"})
  with pytest.raises(ValueError, match=r"evals.sd.stream_mode='sliding'; expected one of \('window', 'recurrent'\)"):
    setup.make("sd", {**SD_OPTIONS, "stream_mode": "sliding"})
  with pytest.raises(ValueError, match=r"evals.sd.step=3: stream_mode='recurrent' .* step must divide 4"):
    setup.make("sd", {**SD_OPTIONS, "stream_mode": "recurrent", "step": 3}, model=_streaming_model(setup))
  with pytest.raises(ValueError, match=r"evals.sd.reset_every applies to stream_mode='recurrent' only"):
    setup.make("sd", {**SD_OPTIONS, "reset_every": 2})
  with pytest.raises(ValueError, match=r"evals.sd.reset_every=0; expected None \(never\) or a positive number"):
    setup.make("sd", {**SD_OPTIONS, "stream_mode": "recurrent", "reset_every": 0}, model=_streaming_model(setup))
