"""Y-decoder and its decoding, each against an independent reference.

The references are Hugging Face's `LlamaForCausalLM` (eager attention, fp32) carrying our
weights, copied by a mapping written here; its `generate` for greedy decoding; a brute-force
beam search written here in plain Python over HF's full (uncached) forward; and NumPy for the
caption loss. Weights are random with a large spread and a sharpened LM head, so that
distributions are peaked (no near-ties between candidates) and EOS is sometimes chosen.
"""
from __future__ import annotations

import dataclasses

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from vljepa_jax.models import generate as generate_lib
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import y_decoder

jax.config.update("jax_default_matmul_precision", "highest")

ATOL = 1e-4
TINY = y_decoder.PRESETS["tiny"]
# A small vocabulary for the searches: few candidates per step and EOS within reach.
SMALL_VOCAB = TINY.replace(llama=TINY.llama.replace(vocab_size=24))
# PAD is not a vocabulary id: generate only writes it, it never feeds it to the model.
BOS, EOS, PAD = 1, 2, -1


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  """The models here are tiny: more torch threads only contend with XLA's for the cores (badly, on 2)."""
  previous = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(previous)


def _random_params(cfg: y_decoder.YDecoderConfig, seed: int, head_scale: float = 1.0,
                   eos_scale: float = 1.0) -> dict:
  """Our parameter tree with every value redrawn: N(0, 0.2) weights and biases, norms near one.

  `head_scale` sharpens the output distribution; `eos_scale` widens the EOS logit's spread so
  that EOS wins at some steps.
  """
  decoder = y_decoder.YDecoder(cfg)
  shapes = params_lib.abstract_params(decoder, jnp.zeros((1, cfg.embed_dim)), jnp.zeros((1, 2), jnp.int32))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    if path[-1] == "scale":  # RMSNorm weights: away from one, so a misplaced norm shows
      flat[path] = 1.0 + 0.3 * rng.normal(size=leaf.shape)
    else:
      flat[path] = 0.2 * rng.normal(size=leaf.shape)
  head = flat[("lm_head", "kernel")] * head_scale
  head[:, EOS] *= eos_scale
  flat[("lm_head", "kernel")] = head
  return traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def _to_hf(cfg: y_decoder.YDecoderConfig, params: dict) -> transformers.LlamaForCausalLM:
  """A `LlamaForCausalLM` holding `params` (prefix projection excluded: HF has no such layer)."""
  lc = cfg.llama
  rope_parameters = dict(rope_type="llama3", rope_theta=lc.rope_theta, factor=lc.rope_scaling_factor,
                         low_freq_factor=lc.rope_low_freq_factor, high_freq_factor=lc.rope_high_freq_factor,
                         original_max_position_embeddings=lc.rope_original_max_position)
  config = transformers.LlamaConfig(
      vocab_size=lc.vocab_size, hidden_size=lc.hidden_size, intermediate_size=lc.intermediate_size,
      num_hidden_layers=lc.num_layers, num_attention_heads=lc.num_heads, num_key_value_heads=lc.num_kv_heads,
      head_dim=lc.head_dim, rms_norm_eps=lc.rms_norm_eps, max_position_embeddings=512, tie_word_embeddings=False,
      rope_parameters=rope_parameters, attn_implementation="eager", bos_token_id=BOS, eos_token_id=EOS)
  model = transformers.LlamaForCausalLM(config).eval()
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  ll = p["llama"]
  linear = lambda kernel: kernel.reshape(-1, kernel.shape[-1]).T  # (in..., out) -> torch (out, in)
  state = {"model.embed_tokens.weight": ll["embed_tokens"]["embedding"], "model.norm.weight": ll["final_norm"]["scale"],
           "lm_head.weight": p["lm_head"]["kernel"].T}
  for i in range(lc.num_layers):
    layer, hf = ll[f"layers_{i}"], f"model.layers.{i}."
    attn = layer["attention"]
    state.update({
        hf + "input_layernorm.weight": layer["input_norm"]["scale"],
        hf + "post_attention_layernorm.weight": layer["post_attention_norm"]["scale"],
        hf + "self_attn.q_proj.weight": attn["query"]["kernel"].reshape(lc.hidden_size, -1).T,
        hf + "self_attn.k_proj.weight": attn["key"]["kernel"].reshape(lc.hidden_size, -1).T,
        hf + "self_attn.v_proj.weight": attn["value"]["kernel"].reshape(lc.hidden_size, -1).T,
        hf + "self_attn.o_proj.weight": linear(attn["out"]["kernel"]),
        hf + "mlp.gate_proj.weight": layer["mlp"]["wi_gate"]["kernel"].T,
        hf + "mlp.up_proj.weight": layer["mlp"]["wi_up"]["kernel"].T,
        hf + "mlp.down_proj.weight": layer["mlp"]["wo"]["kernel"].T,
    })
  model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}, strict=True)
  return model


def _prefix(params: dict, condition: np.ndarray) -> np.ndarray:
  """The prefix vectors (B, P, D), computed in NumPy from our projection's weights."""
  kernel = np.asarray(params["prefix_proj"]["kernel"], np.float64)
  bias = np.asarray(params["prefix_proj"]["bias"], np.float64)
  e, p, d = kernel.shape
  out = np.asarray(condition, np.float64) @ kernel.reshape(e, p * d) + bias.reshape(p * d)
  return out.reshape(-1, p, d).astype(np.float32)


def _hf_embeds(hf, prefix: np.ndarray, tokens: np.ndarray) -> torch.Tensor:
  with torch.no_grad():
    text = hf.model.embed_tokens(torch.from_numpy(np.asarray(tokens, np.int64)))
  return torch.cat([torch.from_numpy(prefix), text], dim=1)


def _hf_logits(hf, prefix: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  """HF's full forward over [prefix; tokens]: logits (B, P + L, V)."""
  with torch.no_grad():
    return hf(inputs_embeds=_hf_embeds(hf, prefix, tokens)).logits.numpy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def tiny():
  """Tiny decoder (vocab 256) with random weights, and the same weights in HF."""
  params = _random_params(TINY, seed=0)
  return y_decoder.YDecoder(TINY), params, _to_hf(TINY, params)


@pytest.fixture(scope="module")
def small_vocab():
  """Vocabulary 24 with a sharp head whose EOS logit varies widely, for the searches."""
  params = _random_params(SMALL_VOCAB, seed=1, head_scale=2.0, eos_scale=1.5)
  return y_decoder.YDecoder(SMALL_VOCAB), params, _to_hf(SMALL_VOCAB, params)


def _conditions(n: int, seed: int, dim: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_forward_parity_with_hf(tiny):
  decoder, params, hf = tiny
  condition = _conditions(3, 10, TINY.embed_dim)
  tokens = np.random.default_rng(11).integers(0, TINY.llama.vocab_size, size=(3, 10)).astype(np.int32)
  tokens[:, 0] = BOS
  forward = jax.jit(lambda c, t: decoder.apply({"params": params}, c, t))
  ours = np.asarray(forward(jnp.asarray(condition), jnp.asarray(tokens)))
  ref = _hf_logits(hf, _prefix(params, condition), tokens)[:, TINY.num_prefix_tokens:]
  assert ours.shape == (3, 10, TINY.llama.vocab_size) and ours.dtype == np.float32
  err = np.abs(ours - ref).max()
  print(f"forward max abs err {err:.2e} (logit std {ref.std():.2f})")
  assert err <= ATOL
  # The condition reaches the logits: another condition gives other logits.
  other = np.asarray(forward(jnp.asarray(condition[::-1].copy()), jnp.asarray(tokens)))
  assert np.abs(other - ours).max() > 100 * ATOL


@pytest.mark.parametrize("prompt_len, cache_length", [(1, None), (3, TINY.num_prefix_tokens + 9)])
def test_cached_decoding_matches_full_forward(tiny, prompt_len, cache_length):
  """prefill(prompt) then one decode_step per token gives the uncached logits at every position."""
  decoder, params, _ = tiny
  condition = jnp.asarray(_conditions(3, 20, TINY.embed_dim))
  tokens = jnp.asarray(np.random.default_rng(21).integers(0, TINY.llama.vocab_size, size=(3, 9)), jnp.int32)
  full = np.asarray(jax.jit(lambda c, t: decoder.apply({"params": params}, c, t))(condition, tokens))
  prefill = jax.jit(lambda c, t: decoder.apply({"params": params}, c, t, cache_length, method="prefill",
                                               mutable=["cache"]))
  logits, variables = prefill(condition, tokens[:, :prompt_len])
  got = [np.asarray(logits)]
  step = jax.jit(lambda cache, token: decoder.apply({"params": params, "cache": cache}, token,
                                                    method="decode_step", mutable=["cache"]))
  for i in range(prompt_len, tokens.shape[1]):
    logits, variables = step(variables["cache"], tokens[:, i])
    got.append(np.asarray(logits))
  got = np.stack(got, axis=1)
  err = np.abs(got - full[:, prompt_len - 1:]).max()
  print(f"cached vs full max abs err {err:.2e}")
  assert err <= 1e-5
  capacity = cache_length or TINY.max_length
  cache = variables["cache"]["llama"]
  assert cache["layers_0"]["attention"]["cached_key"].shape == (3, capacity, TINY.llama.num_kv_heads,
                                                                TINY.llama.head_dim)
  assert int(cache["layers_1"]["cache_index"]) == TINY.num_prefix_tokens + tokens.shape[1]


def test_llama_decodes_in_chunks_with_remat(tiny):
  """Multi-token chunks continue the sequence causally from the cache index (also under remat)."""
  _, params, _ = tiny
  model = llama_lib.Llama(TINY.llama.replace(remat=True))
  variables = {"params": params["llama"]}
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 9, TINY.llama.hidden_size)), jnp.float32)
  full = jax.jit(lambda v, x: model.apply(v, inputs_embeds=x))(variables, x)

  def chunked(variables, x):
    outs, cache = [], {}
    for start, stop, capacity in ((0, 4, 12), (4, 7, None), (7, 9, None)):
      out, cache = model.apply({**variables, **cache}, inputs_embeds=x[:, start:stop], decode=True,
                               cache_length=capacity, mutable=["cache"])
      outs.append(out)
    return jnp.concatenate(outs, axis=1)

  got, full = np.asarray(jax.jit(chunked)(variables, x)), np.asarray(full)
  assert np.abs(got - full).max() <= 1e-5 * max(1.0, np.abs(full).max())


def _hf_greedy(hf, prefix: np.ndarray, steps: int) -> np.ndarray:
  """HF `generate` from [prefix; BOS] embeddings: `steps` new tokens, PAD after the first EOS."""
  embeds = _hf_embeds(hf, prefix, np.full((prefix.shape[0], 1), BOS))
  with torch.no_grad():  # HF feeds its pad id back to the model, so it must be a vocabulary id
    out = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                      do_sample=False, num_beams=1, max_new_tokens=steps, eos_token_id=EOS, pad_token_id=0)
  out = out.numpy()
  assert out.shape[1] <= steps  # only the new tokens: there were no input ids
  out = np.pad(out, ((0, 0), (0, steps - out.shape[1])), constant_values=PAD)
  after_eos = np.cumsum(out == EOS, axis=1) - (out == EOS) > 0
  return np.where(after_eos, PAD, out)


def _reference_score(hf, prefix: np.ndarray, tokens: np.ndarray, length_penalty: float) -> np.ndarray:
  """Length-normalised log-probability of each row's tokens up to and including its first EOS."""
  # Causal: what follows EOS cannot change the log-probs up to it, so PAD may become any id.
  inputs = np.concatenate([np.full((len(tokens), 1), BOS), np.where(tokens == PAD, 0, tokens)], axis=1)
  log_probs = _log_softmax(_hf_logits(hf, prefix, inputs)[:, prefix.shape[1]:-1])
  scores = []
  for row, lp in zip(tokens, log_probs):
    n = (list(row).index(EOS) + 1) if EOS in row else len(row)
    scores.append(sum(lp[i, row[i]] for i in range(n)) / n ** length_penalty)
  return np.asarray(scores)


# Every search test decodes the same conditions to the same length, so each search compiles once.
NUM_CONDITIONS, STEPS = 6, 8


@pytest.fixture(scope="module")
def search_conditions():
  return _conditions(NUM_CONDITIONS, 30, SMALL_VOCAB.embed_dim)


def test_greedy_matches_hf_generate(small_vocab, search_conditions):
  decoder, params, hf = small_vocab
  prefix = _prefix(params, search_conditions)
  ref = _hf_greedy(hf, prefix, STEPS)
  ended = (ref == EOS).any(1)
  assert ended.any() and not ended.all(), "the test should see rows that end and rows that run to the limit"
  for length_penalty in (0.0, 1.0):
    tokens, scores = generate_lib.generate(decoder, params, jnp.asarray(search_conditions), bos_id=BOS, eos_id=EOS,
                                           pad_id=PAD, max_new_tokens=STEPS, length_penalty=length_penalty)
    np.testing.assert_array_equal(np.asarray(tokens), ref)
    np.testing.assert_allclose(np.asarray(scores), _reference_score(hf, prefix, ref, length_penalty), atol=ATOL)


def _reference_beam_search(next_log_probs, beam_size: int, steps: int, length_penalty: float,
                           early_stopping: bool = True):
  """The module docstring's beam search for one row, by brute force.

  `next_log_probs(sequences)` returns the next-token log-probs (n, V) after BOS + each sequence.
  Returns (tokens up to EOS or `steps`, score). `early_stopping=False` drops the stopping test
  (only to show that a test case depends on it).
  """
  norm = lambda score, n: score / n ** length_penalty
  live = [((), 0.0)]  # (tokens, log-prob sum)
  finished = []  # (normalised score, tokens), best first, at most beam_size
  for step in range(1, steps + 1):
    log_probs = next_log_probs([tokens for tokens, _ in live])
    candidates = [(score + log_probs[b][v], tokens + (v,)) for b, (tokens, score) in enumerate(live)
                  for v in range(log_probs.shape[1])]
    ranked = sorted(candidates, key=lambda c: -c[0])  # stable: lower (beam, token) first on ties
    ended = [(norm(score, step), tokens) for score, tokens in ranked[:beam_size] if tokens[-1] == EOS]
    finished = sorted(finished + ended, key=lambda f: -f[0])[:beam_size]
    live = [(tokens, score) for score, tokens in ranked if tokens[-1] != EOS][:beam_size]
    if early_stopping and len(finished) == beam_size and finished[-1][0] >= norm(live[0][1], step):
      return finished[0][1], finished[0][0]
  pool = finished + sorted([(norm(score, steps), tokens) for tokens, score in live], key=lambda f: -f[0])
  best = max(pool, key=lambda f: f[0])  # first of equals: finished before live
  return best[1], best[0]


@pytest.mark.parametrize("beam_size", [1, 2, 4])
def test_beam_search_matches_brute_force(small_vocab, search_conditions, beam_size):
  decoder, params, hf = small_vocab
  prefix = _prefix(params, search_conditions)
  ended = []
  for length_penalty in (0.0, 1.0):
    tokens, scores = generate_lib.generate(decoder, params, jnp.asarray(search_conditions), bos_id=BOS, eos_id=EOS,
                                           pad_id=PAD, max_new_tokens=STEPS, beam_size=beam_size,
                                           length_penalty=length_penalty)
    assert tokens.shape == (NUM_CONDITIONS, STEPS) and tokens.dtype == jnp.int32 and scores.dtype == jnp.float32
    lengths = []
    for row in range(NUM_CONDITIONS):
      def next_log_probs(sequences, row=row):
        inputs = np.array([(BOS,) + s for s in sequences])
        logits = _hf_logits(hf, np.repeat(prefix[row:row + 1], len(sequences), axis=0), inputs)
        return _log_softmax(logits[:, -1])
      ref_tokens, ref_score = _reference_beam_search(next_log_probs, beam_size, STEPS, length_penalty)
      lengths.append(len(ref_tokens) if ref_tokens[-1] == EOS else None)
      expected = list(ref_tokens) + [PAD] * (STEPS - len(ref_tokens))
      assert list(np.asarray(tokens[row])) == expected, (length_penalty, row, ref_tokens)
      assert abs(float(scores[row]) - ref_score) <= ATOL, (length_penalty, row, float(scores[row]), ref_score)
    print(f"beam {beam_size} penalty {length_penalty}: lengths of ended answers {lengths}")
    ended.extend(length is not None for length in lengths)
  # Length penalty 1 favours long answers; with 0 some should end, exercising the finished list.
  assert any(ended) and not all(ended)


def test_beam_size_one_is_greedy(small_vocab, search_conditions):
  """The beam-search code path with one beam reproduces the greedy one (which HF's generate checks)."""
  decoder, params, _ = small_vocab
  kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=STEPS)
  one_beam = jax.jit(lambda p, c, penalty: generate_lib.beam_search(decoder, p, c, beam_size=1, length_penalty=penalty,
                                                                    **kw))
  condition = jnp.asarray(search_conditions)
  for length_penalty in (0.0, 1.0):
    greedy = generate_lib.generate(decoder, params, condition, length_penalty=length_penalty, **kw)
    beam = one_beam(params, condition, length_penalty)
    np.testing.assert_array_equal(np.asarray(beam[0]), np.asarray(greedy[0]))
    # Two compiled programs may round the logits differently.
    np.testing.assert_allclose(np.asarray(beam[1]), np.asarray(greedy[1]), atol=1e-5)


class _MarkovDecoder(y_decoder.YDecoder):
  """A YDecoder whose next-token logits come from fixed tables, one per batch row, indexed by the last token,
  so that a test can script the search. The real stack still runs: it keeps the KV cache the searches carry."""

  tables: tuple = ()  # (batch, V, V) logits as nested tuples, so that the module stays hashable

  def _table_logits(self, last_token):
    tables = jnp.asarray(self.tables, jnp.float32)
    # Searches run beams of a batch row on consecutive rows, so row r of n belongs to batch row r * batch // n.
    rows = jnp.arange(last_token.shape[0]) * tables.shape[0] // last_token.shape[0]
    return tables[rows, last_token]

  def prefill(self, condition, tokens, cache_length=None):
    super().prefill(condition, tokens, cache_length)
    return self._table_logits(tokens[:, -1])

  def decode_step(self, token):
    super().decode_step(token)
    return self._table_logits(token)


def test_beam_search_stopping_rule_decides(small_vocab):
  """A scripted row (beam 2, length penalty 1) where stopping, and freezing a stopped row, decide the answer.

  Step 1: EOS (p .5) finishes; A, B live. Step 2: A -> EOS finishes at -1.802 / 2 = -0.901, the best
  live B -> D is at -1.833 / 2 = -0.916: two finished and none live better, so the row stops with
  the lone EOS (-0.693). Run on, B D D D D D D D (D -> D at .97) would win at -1.98 / 8; and a row
  that kept collecting after stopping would take B D D D D D D EOS, finished at step 8 at -5.49 / 8.
  The second row never emits EOS, so the loop runs all steps while the first row is stopped.
  """
  _, params, _ = small_vocab
  vocab = SMALL_VOCAB.llama.vocab_size
  a, b, c, d, e, f = 3, 4, 5, 6, 7, 8
  # Unscripted transitions: a weak distribution without ties, so that leaving the script costs >= 2.2 a step.
  default = np.exp(-0.1 * np.arange(vocab))
  probs = np.tile(default / default.sum(), (vocab, 1))
  for token, row in {BOS: {EOS: .5, a: .3, b: .2}, a: {EOS: .55, c: .45}, b: {d: .8, e: .2},
                     c: {c: .5, f: .3, e: .2}, d: {d: .97, EOS: .03}}.items():
    probs[token] = 1e-9
    for successor, p in row.items():
      probs[token, successor] = p
  scripted = np.log(probs)
  endless = np.random.default_rng(0).normal(size=(vocab, vocab)) * 2.0
  endless[:, EOS] = -30.0
  tables = np.stack([scripted, endless])
  decoder = _MarkovDecoder(SMALL_VOCAB, tables=tuple(tuple(map(tuple, t)) for t in tables.tolist()))
  references = []
  for table in tables:
    next_log_probs = lambda sequences, table=table: _log_softmax(table[[s[-1] if s else BOS for s in sequences]])
    references.append(_reference_beam_search(next_log_probs, 2, STEPS, 1.0))
  assert references[0][0] == (EOS,) and len(references[1][0]) == STEPS and EOS not in references[1][0]
  next_log_probs = lambda sequences: _log_softmax(scripted[[s[-1] if s else BOS for s in sequences]])
  assert _reference_beam_search(next_log_probs, 2, STEPS, 1.0, early_stopping=False)[0] == (b,) + (d,) * 7
  tokens, scores = generate_lib.generate(decoder, params, jnp.zeros((2, SMALL_VOCAB.embed_dim)), bos_id=BOS,
                                         eos_id=EOS, pad_id=PAD, max_new_tokens=STEPS, beam_size=2)
  np.testing.assert_array_equal(np.asarray(tokens), [[EOS] + [PAD] * (STEPS - 1), list(references[1][0])])
  np.testing.assert_allclose(np.asarray(scores), [score for _, score in references], atol=1e-5)


_TRACES = []


class _CountingDecoder(y_decoder.YDecoder):
  """A YDecoder that records every trace of `prefill` (a Python side effect runs only when tracing)."""

  def prefill(self, *args, **kwargs):
    _TRACES.append(args[0].shape)
    return super().prefill(*args, **kwargs)


def test_generate_compiles_once_per_shape():
  decoder = _CountingDecoder(SMALL_VOCAB)
  kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_new_tokens=3, beam_size=2)
  _TRACES.clear()
  # New params, new conditions and another length penalty, same shapes: one trace.
  for seed, length_penalty in ((0, 1.0), (1, 0.5)):
    params = _random_params(SMALL_VOCAB, seed=seed)
    tokens, _ = generate_lib.generate(decoder, params, jnp.asarray(_conditions(2, seed, 32)),
                                      length_penalty=length_penalty, **kw)
    assert tokens.shape == (2, 3)
  # One trace, so one jitted function served both calls (the memo). `generator` carries no one-trace guard: its
  # contract is one trace per batch size, as below.
  assert len(_TRACES) == 1
  generate_lib.generate(decoder, params, jnp.asarray(_conditions(3, 2, 32)), **kw)  # a new batch size compiles
  assert len(_TRACES) == 2


def test_caption_loss_matches_numpy():
  rng = np.random.default_rng(0)
  batch, length, vocab = 3, 7, 11
  logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 3
  tokens = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
  mask = np.zeros((batch, length), np.int32)
  for row, n in enumerate((7, 4, 1)):  # full, padded, BOS only (no target at all)
    mask[row, :n] = 1
  # bf16 logits (the training compute dtype): the loss must still be computed in float32.
  loss_sum, count = y_decoder.caption_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(tokens), jnp.asarray(mask))
  logits64 = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
  ref_sum, ref_count = 0.0, 0
  for b in range(batch):
    for i in range(length - 1):
      if mask[b, i + 1]:
        row = logits64[b, i]
        ref_sum += np.log(np.exp(row - row.max()).sum()) + row.max() - row[tokens[b, i + 1]]
        ref_count += 1
  assert loss_sum.dtype == jnp.float32 and count.dtype == jnp.float32
  np.testing.assert_allclose(float(loss_sum), ref_sum, rtol=1e-5)
  assert float(count) == ref_count == 6 + 3


def test_parameters_are_logically_named_and_config_round_trips():
  decoder = y_decoder.YDecoder(TINY)
  inputs = (jnp.zeros((1, TINY.embed_dim)), jnp.zeros((1, 3), jnp.int32))
  specs = traverse_util.flatten_dict(params_lib.logical_partition_specs(decoder, *inputs))
  shapes = traverse_util.flatten_dict(params_lib.abstract_params(decoder, *inputs))
  assert specs.keys() == shapes.keys()
  for path, spec in specs.items():
    assert len(spec) == len(shapes[path].shape) and None not in spec, (path, spec)
  assert tuple(specs[("prefix_proj", "kernel")]) == ("shared_embed", "prefix", "embed")
  assert tuple(specs[("lm_head", "kernel")]) == ("embed", "vocab")
  assert ("lm_head", "bias") not in specs
  for config in y_decoder.PRESETS.values():
    assert y_decoder.YDecoderConfig.from_dict(config.to_dict()) == config


def test_bad_configs_and_inputs_name_the_problem(tiny):
  decoder, params, _ = tiny
  with pytest.raises(ValueError, match="llama.causal must be True"):
    dataclasses.replace(TINY, llama=TINY.llama.replace(causal=False))
  with pytest.raises(ValueError, match="max_length"):
    TINY.replace(max_length=TINY.num_prefix_tokens)
  with pytest.raises(ValueError, match="needs a llama config"):
    y_decoder.YDecoderConfig()
  tokens = jnp.full((2, 3), BOS, jnp.int32)
  with pytest.raises(ValueError, match=r"embed_dim=32"):
    decoder.apply({"params": params}, jnp.zeros((2, 31)), tokens)
  condition = jnp.zeros((2, TINY.embed_dim))
  with pytest.raises(ValueError, match="first \\(prefill\\) call must pass cache_length"):
    decoder.apply({"params": params}, tokens[:, 0], method="decode_step", mutable=["cache"])
  _, variables = decoder.apply({"params": params}, condition, tokens, method="prefill", mutable=["cache"])
  with pytest.raises(ValueError, match="already exists"):
    decoder.apply({"params": params, **variables}, condition, tokens, method="prefill", mutable=["cache"])
  with pytest.raises(ValueError, match="max_length=64"):
    decoder.apply({"params": params}, condition, tokens, 65, method="prefill", mutable=["cache"])
  kw = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match="max_length"):
    generate_lib.generate(decoder, params, condition, max_new_tokens=TINY.max_length, **kw)
  with pytest.raises(ValueError, match="beam_size"):
    generate_lib.generate(decoder, params, condition, max_new_tokens=4, beam_size=TINY.llama.vocab_size, **kw)
  with pytest.raises(ValueError, match="eos_id=256"):
    generate_lib.generate(decoder, params, condition, max_new_tokens=4, bos_id=BOS, eos_id=256, pad_id=PAD)
  with pytest.raises(ValueError, match="decode=True needs causal"):
    llama_lib.Llama(TINY.llama).apply({"params": params["llama"]}, inputs_embeds=jnp.zeros((1, 2, 64)), causal=False,
                        decode=True, cache_length=4, mutable=["cache"])
