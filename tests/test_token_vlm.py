"""The token-space baseline (`models/token_vlm.py`) against HF Llama in PyTorch and NumPy cross-entropy."""
import jax
import numpy as np
import pytest
import torch

from conftest import converted_hf_llama
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models import token_vlm
from vljepa_jax.models import vljepa

VOCAB = 64


def _inputs(cfg, seed=0, batch=2, frames=2, q_len=4, t_len=5):
  rng = np.random.default_rng(seed)
  size = 2 * cfg.x_encoder.patch_size
  video = rng.normal(size=(batch, frames, size, size, 3)).astype(np.float32)
  q_ids = rng.integers(1, VOCAB, size=(batch, q_len)).astype(np.int32)
  q_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)[:batch]
  t_ids = rng.integers(1, VOCAB, size=(batch, t_len)).astype(np.int32)
  t_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)[:batch]
  return video, q_ids * q_mask, q_mask, t_ids * t_mask, t_mask


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A 4-layer HF LlamaModel and its conversion: the baseline's decoder."""
  hf, llama_params, llama_cfg = converted_hf_llama(str(tmp_path_factory.mktemp("token_vlm")), num_layers=4,
                                                   vocab_size=VOCAB)
  cfg = token_vlm.TokenVLMConfig(x_encoder=vljepa.tiny_config().x_encoder, decoder=llama_cfg.replace(causal=True))
  model = token_vlm.TokenVLM(cfg)
  init = params_lib.unbox(jax.jit(model.init)(jax.random.key(1), *_inputs(cfg))["params"])
  return hf, cfg, model, dict(init, decoder=llama_params)


def test_logits_and_loss_match_hf_llama_and_numpy_cross_entropy(converted):
  """Logits == Linear(visual) ++ embed(query) ++ embed(target) through HF `LlamaModel` with a causal,
  key-padding 4-D mask and our LM head; the loss and per-row likelihoods == NumPy cross-entropy of them."""
  hf, cfg, model, params = converted
  video, q_ids, q_mask, t_ids, t_mask = _inputs(cfg)
  apply = lambda method, *a: np.asarray(jax.jit(lambda p, *x: model.apply({"params": p}, *x, method=method))(params, *a))
  ours = apply("__call__", video, q_ids, q_mask, t_ids, t_mask)
  total, count = (float(v) for v in jax.jit(lambda p, *x: model.apply({"params": p}, *x, method="loss_terms"))(
      params, video, q_ids, q_mask, t_ids, t_mask))
  row_sum, row_count = jax.jit(lambda p, *x: model.apply({"params": p}, *x, method="target_log_likelihood"))(
      params, video, q_ids, q_mask, t_ids, t_mask)

  visual = apply("encode_visual", video)  # the X-encoder has its own parity test against HF V-JEPA 2
  proj_w, proj_b = (torch.tensor(np.asarray(params["vision_proj"][k])) for k in ("kernel", "bias"))
  head = torch.tensor(np.asarray(params["lm_head"]["kernel"]))
  n, lq, lt = visual.shape[1], q_ids.shape[1], t_ids.shape[1]
  length = n + lq + lt
  with torch.no_grad():
    x = torch.cat([torch.tensor(visual) @ proj_w + proj_b, hf.embed_tokens(torch.tensor(q_ids)),
                   hf.embed_tokens(torch.tensor(t_ids))], dim=1)
    keep = torch.cat([torch.ones(2, n), torch.tensor(q_mask, dtype=torch.float32),
                      torch.tensor(t_mask, dtype=torch.float32)], dim=1)
    allowed = torch.tril(torch.ones(length, length))[None] * keep[:, None, :]
    additive = ((1.0 - allowed) * torch.finfo(torch.float32).min)[:, None]
    hidden = hf(inputs_embeds=x, attention_mask=additive).last_hidden_state
    ref = (hidden[:, n + lq:] @ head).numpy()
  assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())

  logits = ref.astype(np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs[:, :-1], t_ids[:, 1:, None], -1)[..., 0]
  weights = t_mask[:, 1:].astype(np.float64)
  assert count == weights.sum() == 6
  np.testing.assert_allclose(total / count, -(picked * weights).sum() / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(row_sum, (picked * weights).sum(1), rtol=1e-5)
  np.testing.assert_allclose(row_count, weights.sum(1))


def test_cached_decoding_equals_teacher_forcing_with_a_padded_prompt(converted):
  """prefill([visual ; padded query ; BOS]) then decode_step per token gives the teacher-forced logits:
  the query's padding stays masked in the KV cache."""
  _, cfg, model, params = converted
  video, q_ids, q_mask, t_ids, t_mask = _inputs(cfg, seed=3)
  t_mask = np.ones_like(t_mask)
  full = np.asarray(model.apply({"params": params}, video, q_ids, q_mask, t_ids, t_mask))
  n = model.apply({"params": params}, video, method="encode_visual").shape[1]
  logits, variables = model.apply({"params": params}, video, q_ids, q_mask, t_ids[:, :1],
                                  n + q_ids.shape[1] + t_ids.shape[1], method="prefill", mutable=["cache"])
  steps = [np.asarray(logits)]
  for i in range(1, t_ids.shape[1]):
    logits, variables = model.apply({"params": params, **variables}, t_ids[:, i], method="decode_step",
                                    mutable=["cache"])
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.stack(steps, 1), full, rtol=0, atol=1e-4 * np.abs(full).max())
  # Without the cached mask the padded row would read its padding: the rows differ in padding.
  assert q_mask[1].sum() < q_mask.shape[1]


def test_the_baseline_is_the_vljepa_predictor_twice_as_deep_and_causal():
  arch = vljepa.tiny_config()
  cfg = token_vlm.TokenVLMConfig.from_vljepa(arch)
  llama = arch.predictor.backbone_config
  assert cfg.decoder == llama.replace(num_layers=2 * llama.num_layers, causal=True).with_field_everywhere(
      "attention_impl", arch.attention_impl)
  assert cfg.x_encoder == arch.x_encoder and cfg.freeze_x_encoder == arch.freeze_x_encoder
  mamba = arch.predictor.replace(backbone="mamba3",
                                 backbone_config=predictor_backbones.matched_config("mamba3", llama))
  with pytest.raises(ValueError, match=r"decodes with a Llama; the config's predictor backbone is 'mamba3'"):
    token_vlm.TokenVLMConfig.from_vljepa(arch.replace(predictor=mamba))
  with pytest.raises(ValueError, match=r"decoder.causal must be True"):
    token_vlm.TokenVLMConfig(x_encoder=arch.x_encoder, decoder=llama.replace(causal=False))


def test_likelihood_scores_are_each_candidates_mean_log_probability_per_token(converted):
  """`LikelihoodPredictions.score_candidates` == NumPy means of the model's own per-token log-probabilities
  (one full forward per row and text), averaged over the first `max_phrasings` phrasings; per-row
  candidate lists (VQA's) are padded with -inf / -1; padding rows are dropped."""
  from vljepa_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.eval import likelihood  # pylint: disable=g-import-not-at-top
  from vljepa_jax.eval import predictions as predictions_lib  # pylint: disable=g-import-not-at-top
  _, cfg, model, params = converted
  words = ["red", "blue", "green", "circle", "square", "moves", "up", "left", "a"]
  tokenizer = tokenizer_lib.word_level(words).with_max_length(6)
  assert tokenizer.vocab_size <= VOCAB
  video, q_ids, q_mask, _, _ = _inputs(cfg, seed=5)
  batches = [{"video": video, "query_ids": q_ids, "query_mask": q_mask, "valid": np.array([True, True]),
              "label": np.array([0, 1]), "source_index": np.array([0, 1])},
             {"video": video[::-1].copy(), "query_ids": q_ids[::-1].copy(), "query_mask": q_mask[::-1].copy(),
              "valid": np.array([True, False]), "label": np.array([2, 0]), "source_index": np.array([2, 0])}]
  texts = [["a red circle", "red circle"], ["a blue square moves up"], ["green", "a green square moves left"]]

  def reference(video_row, q_row, q_mask_row, text):
    ids, mask = tokenizer([text])
    total, count = model.apply({"params": params}, video_row[None], q_row[None], q_mask_row[None], ids, mask,
                               method="target_log_likelihood")
    return float(total[0]) / float(count[0])

  rows = [(video[0], q_ids[0], q_mask[0]), (video[1], q_ids[1], q_mask[1]), (video[1], q_ids[1], q_mask[1])]
  expected = np.array([[np.mean([reference(*row, t) for t in phrasings]) for phrasings in texts] for row in rows])
  scorer = likelihood.LikelihoodPredictions(model, pair_batch_size=4, max_phrasings=2)
  got = scorer.score_candidates(params, batches, predictions_lib.Candidates(texts), tokenizer)
  np.testing.assert_allclose(got.scores, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got.ids, np.tile(np.arange(3), (3, 1)))
  np.testing.assert_array_equal(got.label, [0, 1, 2])
  assert np.all(got.scores < 0)

  first_only = likelihood.LikelihoodPredictions(model, pair_batch_size=4).score_candidates(
      params, batches, predictions_lib.Candidates(texts), tokenizer)
  np.testing.assert_allclose(first_only.scores, [[reference(*row, p[0]) for p in texts] for row in rows],
                             rtol=1e-5, atol=1e-5)
  own = {0: [2], 1: [0, 1], 2: [1, 2, 0]}
  per_row = scorer.score_candidates(params, batches, predictions_lib.Candidates(texts, own.__getitem__), tokenizer)
  np.testing.assert_array_equal(per_row.ids, [[2, -1, -1], [0, 1, -1], [1, 2, 0]])
  for n, chosen in enumerate(own.values()):
    np.testing.assert_allclose(per_row.scores[n, :len(chosen)], expected[n, chosen], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(per_row.scores[n, len(chosen):]))


def test_generated_captions_are_the_greedy_argmax_of_the_full_forward(converted):
  """The baseline's captioner (KV cache, `models/generate.py`) == a naive loop that re-runs the whole
  teacher-forced forward and appends the arg-max token until EOS, for a padded and an unpadded query."""
  from vljepa_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.eval import likelihood  # pylint: disable=g-import-not-at-top
  _, cfg, model, params = converted
  tokenizer = tokenizer_lib.word_level(["red", "blue", "circle"]).with_max_length(6)
  video, q_ids, q_mask, _, _ = _inputs(cfg, seed=7)
  bos, eos, steps = 2, 5, 6  # ids inside the decoder's 64-token vocabulary
  captioner = likelihood.LikelihoodPredictions(model).captioner(tokenizer, max_new_tokens=steps, bos_id=bos,
                                                                eos_id=eos)
  got = np.asarray(captioner._decode(params, video, q_ids, q_mask))  # pylint: disable=protected-access
  forward = jax.jit(lambda t: model.apply({"params": params}, video, q_ids, q_mask, t, jax.numpy.ones_like(t)))
  tokens = np.full((2, 1), bos, np.int32)
  expected = np.full((2, steps), tokenizer.pad_id, np.int32)
  ended = np.zeros(2, bool)
  for i in range(steps):
    nxt = np.asarray(forward(tokens))[:, -1].argmax(-1).astype(np.int32)
    expected[:, i] = np.where(ended, tokenizer.pad_id, nxt)
    ended |= nxt == eos
    tokens = np.concatenate([tokens, np.where(ended, eos, nxt)[:, None]], axis=1)
  np.testing.assert_array_equal(got, expected)
  texts, info = captioner(params, [{"video": video, "query_ids": q_ids, "query_mask": q_mask,
                                    "valid": np.array([True, False]), "label": np.array([4, 0]),
                                    "source_index": np.array([9, 0])}])
  assert len(texts) == 1 and info["source_index"].tolist() == [9]


def test_both_objectives_train_from_one_config_with_one_key_changed(tmp_path):
  """`config.objective` alone switches the run between VL-JEPA and the token baseline; both train and
  run the same candidate-scoring evaluators (the baseline by likelihood), and the baseline captions."""
  import json  # pylint: disable=g-import-not-at-top
  import tiny_train_config  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  held_out = {"sources": {"shapes": {"type": "shapes", "kind": "video", "size": 12, "seed": 1000}}}
  evals = {"classification": {"type": "classification", "class_names": "source", "data": held_out, "batch_size": 8},
           "vqa": {"type": "vqa", "data": held_out, "batch_size": 8}}
  trained = {}
  for objective in ("contrastive", "tokens"):
    extra = {"captioning": {"type": "captioning", "data": held_out, "batch_size": 8}} if objective == "tokens" else {}
    config = tiny_train_config.get_config_with(**{"total_steps": 4, "objective": objective, "eval_batch_size": 8,
                                                  "evals": {**evals, **extra}})
    workdir = str(tmp_path / objective)
    trainer.run(config, workdir)
    with open(f"{workdir}/eval_results.json") as f:
      results = json.load(f)
    with open(f"{workdir}/train/metrics.jsonl") as f:
      losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    setup = trainer.model_setup.build(config, workdir)
    trained[objective] = (results[max(results, key=int)]["tasks"], losses, setup.model)
  (vl_tasks, vl_losses, vl_model), (tok_tasks, tok_losses, tok_model) = trained["contrastive"], trained["tokens"]
  assert isinstance(vl_model, vljepa.VLJEPA) and isinstance(tok_model, token_vlm.TokenVLM)
  predictor = vl_model.config.predictor.backbone_config
  assert tok_model.config.decoder.num_layers == 2 * predictor.num_layers
  assert tok_model.config.x_encoder == vl_model.config.x_encoder
  assert len(vl_losses) == len(tok_losses) == 4 and tok_losses[-1] < tok_losses[0]
  assert abs(tok_losses[0] - np.log(160)) < 0.5  # a random LM over the 160-token table starts near log V
  for tasks in (vl_tasks, tok_tasks):
    assert 0.0 <= tasks["classification"]["top1"] <= 1.0 and tasks["classification"]["num_samples"] == 12
    assert 0.0 <= tasks["vqa"]["accuracy"] <= 1.0
  assert "cider_d" in tok_tasks["captioning"]


def test_a_run_trains_one_kind_of_model_and_the_baseline_refuses_what_it_cannot_use(tmp_path):
  import tiny_train_config  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import model_setup  # pylint: disable=g-import-not-at-top
  mixed = tiny_train_config.get_config_with("two_stage", **{"stages.video.objective": "tokens"})
  with pytest.raises(ValueError, match=r"the stages of one run train one model, but image \(objective 'contrastive'\) "
                                       r"trains a 'vljepa' model; video \(objective 'tokens'\) trains a 'token_vlm'"):
    model_setup.build(mixed, str(tmp_path))
  two_tokenizers = tiny_train_config.get_config_with(**{"objective": "tokens", "tokenizers.target": "y_encoder"})
  with pytest.raises(ValueError, match=r"one vocabulary, but config.tokenizers.query='shapes' and "
                                       r"config.tokenizers.target='y_encoder'"):
    model_setup.build(two_tokenizers, str(tmp_path))
  built = model_setup.build(tiny_train_config.get_config_with(**{"objective": "tokens"}), str(tmp_path))
  assert isinstance(built.model, token_vlm.TokenVLM)


def test_vljepa_lr_rules_carry_over_to_the_baseline(converted):
  """The paper's rules (frozen X-encoder and predictor token table, Y-encoder x0.05) act on the same
  parts of the baseline, and rules on towers it lacks are dropped rather than failing."""
  from vljepa_jax.objectives import tokens  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import config_base  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import optimizer  # pylint: disable=g-import-not-at-top
  _, _, _, params = converted
  paper = config_base.resolve_lr_rules(config_base.PAPER_LR_RULES, "llama")
  rules = tokens.Tokens("llama").lr_rules(paper + (("predictor/head/.*", 2.0), ("y_head/.*", 0.0)), params)
  assert rules == (("x_encoder/.*", 0.0), ("decoder/embed_tokens/.*", 0.0))
  multipliers = {optimizer.param_path(path): m for path, m in
                 jax.tree_util.tree_leaves_with_path(optimizer.lr_multipliers(params, rules))}
  assert multipliers["decoder/embed_tokens/embedding"] == 0.0 and multipliers["lm_head/kernel"] == 1.0
  assert all(m == 0.0 for p, m in multipliers.items() if p.startswith("x_encoder/"))
  assert tokens.baseline_rule("predictor/.*", "llama") == "(vision_proj|decoder)/.*"
  assert tokens.baseline_rule("predictor/vision_proj/kernel", "llama") == "vision_proj/kernel"


def test_the_baseline_starts_from_a_whole_converted_language_model(tmp_path):
  """`init.predictor` with objective='tokens': the decoder is the converted LM and the LM head its tied
  embedding table, so the baseline's logits on text equal HF `LlamaForCausalLM`'s with tied weights.
  A folder that is not the whole model (2x the predictor's depth) is refused naming the fix."""
  import tiny_train_config  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import model_setup  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import stages  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  vocab = 160  # the tiny config's "shapes" tokenizer
  depth = tiny_train_config.get_config().model.predictor.backbone_config.num_layers
  hf, llama_params, _ = converted_hf_llama(str(tmp_path / "lm"), num_layers=2 * depth, vocab_size=vocab)
  config = tiny_train_config.get_config_with(**{"objective": "tokens", "init.predictor": str(tmp_path / "lm" / "out")})
  stage_config = stages.resolve(config)[0][1]
  setup = model_setup.build(stage_config, str(tmp_path))
  assert setup.checkpoints == {"decoder": str(tmp_path / "lm" / "out")}
  assert setup.model.config.decoder.num_layers == 2 * depth and setup.model.config.decoder.causal
  stage = trainer.Stage(stage_config, "train", setup, sharding.make_mesh(dict(stage_config.mesh)),
                        str(tmp_path / "train"))
  params = jax.device_get(stage.init_state(None).params)
  jax.tree.map(np.testing.assert_array_equal, params["decoder"], llama_params)
  # Text alone (an empty prompt) through our decoder and head, against HF's causal LM with tied weights.
  tied = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**hf.config.to_dict(), "tie_word_embeddings": True}))
  tied.model.load_state_dict(hf.state_dict())
  tied.tie_weights()
  ids = np.array([[5, 17, 42, 99, 3], [7, 8, 150, 0, 0]], np.int64)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)
  with torch.no_grad():
    want = tied.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  width = setup.model.config.decoder.hidden_size
  got = setup.model.apply({"params": params}, np.zeros((2, 0, width), np.float32), np.zeros((2, 0), np.int32),
                          ids.astype(np.int32), mask.astype(np.int32), method="prompted_logits")
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-4, rtol=1e-4)

  half, _, _ = converted_hf_llama(str(tmp_path / "half"), num_layers=depth, vocab_size=vocab)
  del half
  wrong = tiny_train_config.get_config_with(**{"objective": "tokens", "init.predictor": str(tmp_path / "half" / "out")})
  with pytest.raises(ValueError, match=rf"the baseline's decoder is the whole language model, {2 * depth} layers "
                                       rf"\(2x the predictor's {depth}\), but the folder holds source layers 0:{depth}; "
                                       r"convert the language model without --layers"):
    model_setup.build(wrong, str(tmp_path))
