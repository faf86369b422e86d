"""Batched greedy and beam-search decoding for the Y-decoder, with a KV cache, jitted once.

    tokens, scores = generate(decoder, params, condition, bos_id=..., eos_id=..., pad_id=...,
                              max_new_tokens=32, beam_size=4)

`params` is the decoder's own parameter tree (`decoder.init(...)["params"]`, or the subtree a
larger model mounts it under). `condition` is what the decoder's `prefill` reads before the
first token: the Y-decoder's embedding `(B, E)`, or a tuple of batch-leading arrays, e.g. the
token-space baseline's `(video, query_ids, query_mask)` (`models/token_vlm.py`). A decoder module
offers `prefill(*condition, tokens, cache_length)`, `decode_step(token)`, a `vocab_size` and
`cache_length(condition, max_new_tokens)` (the KV-cache positions a search needs, checked
against its own limits). Outputs: tokens `(B, max_new_tokens)` int32 without BOS, EOS
included where one was emitted and `pad_id` after it; scores `(B,)` float32.

Compilation: `generator(...)` builds the jitted search for one decoder and one set of static
settings (token ids, max_new_tokens, beam_size) and is memoised (`functools.lru_cache`); jit
then compiles once per batch size. `length_penalty` is a traced argument, so sweeping it
reuses the executable too, as do new params or conditions of the same shapes. Having several
batch sizes is legitimate, so the search carries no one-trace guard (`vljepa_jax.trace_guard`);
callers with one fixed batch (`eval/captioning.py`'s `TextDecoder`) guard their own jitted call.
`greedy_search` and `beam_search` are the un-jitted searches, for use inside a larger jitted
function (e.g. a sharded evaluation step).

Scores. A hypothesis of n generated tokens (EOS counted; n = max_new_tokens if it never ended)
with log-probability sum s scores `s / n ** length_penalty` (0: plain sum; 1: mean per token).

Greedy (`beam_size == 1`): each row takes the arg-max token until it emits EOS.

Beam search (`beam_size == K`), per batch row, independently of the other rows:
  * K live hypotheses, initially only the empty one. At each step every live hypothesis is
    extended by every token; a candidate's raw score is its log-probability sum.
  * A candidate ending in EOS is finished and kept only if it ranks among the K best candidates
    of the step (by raw score); it then enters a list of the K best finished hypotheses (by
    normalised score; a tie keeps the older one). The live hypotheses of the next step are the K
    best candidates not ending in EOS.
  * The row stops once it holds K finished hypotheses and the worst of them scores at least the
    best live hypothesis' normalised score at its current length (Hugging Face's test for
    `early_stopping=False`). Its answer is then the best finished hypothesis.
  * After max_new_tokens steps a row still running picks the best of its finished and live
    hypotheses (live ones normalised with n = max_new_tokens); a tie prefers the finished one.
  The loop ends when every row has stopped or after max_new_tokens steps. Because an EOS only
  counts when it ranks in the top K and the stopping test uses current lengths, `beam_size=1`
  reproduces greedy decoding exactly, tokens and scores. Ties between candidates are broken
  towards the lower (beam, token) index.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models.y_decoder import YDecoder

Condition = jax.Array | tuple[jax.Array, ...]


def generate(decoder: YDecoder, params: Any, condition: Condition, *, bos_id: int, eos_id: int, pad_id: int,
             max_new_tokens: int, beam_size: int = 1,
             length_penalty: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Decodes each condition `(B, E)` (or row of a tuple of them) into `(tokens (B, max_new_tokens) int32,
  scores (B,) float32)`."""
  search = generator(decoder, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens,
                     beam_size=beam_size)
  return search(params, condition, jnp.float32(length_penalty))


@functools.lru_cache(maxsize=32)
def generator(decoder: YDecoder, *, bos_id: int, eos_id: int, pad_id: int, max_new_tokens: int, beam_size: int = 1):
  """The jitted `(params, condition, length_penalty) -> (tokens, scores)` that `generate` uses, memoised."""
  kw = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens)
  _check(decoder, beam_size=beam_size, **kw)
  if beam_size == 1:
    search = functools.partial(greedy_search, decoder, **kw)
  else:
    search = functools.partial(beam_search, decoder, beam_size=beam_size, **kw)
  # Boxed (logically partitioned) params from `init` are accepted too.
  return jax.jit(lambda params, condition, length_penalty: search(
      nn.meta.unbox(params), condition, length_penalty=length_penalty))


def _check(decoder: YDecoder, *, bos_id: int, eos_id: int, pad_id: int, max_new_tokens: int, beam_size: int) -> None:
  del pad_id  # any int32 pads the output; it is never fed to the model
  vocab = decoder.vocab_size
  for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
    if not 0 <= value < vocab:
      raise ValueError(f"{name}={value} is outside the vocabulary (size {vocab})")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
  # Every step must be able to keep beam_size live hypotheses that do not end in EOS.
  if not 1 <= beam_size < vocab:
    raise ValueError(f"beam_size must be in [1, vocab_size - 1 = {vocab - 1}], got {beam_size}")


def _arguments(condition: Condition) -> tuple[jax.Array, ...]:
  return condition if isinstance(condition, tuple) else (condition,)


def _batch(condition: Condition) -> int:
  return _arguments(condition)[0].shape[0]


def _prefill(decoder: YDecoder, params: Any, condition: Condition, bos_id: int,
             max_new_tokens: int) -> tuple[jax.Array, Any]:
  bos = jnp.full((_batch(condition), 1), bos_id, jnp.int32)
  # Methods by name (here and in `_decode_step`), so that a subclass's overrides are the ones called.
  logits, variables = decoder.apply({"params": params}, *_arguments(condition), bos,
                                    decoder.cache_length(condition, max_new_tokens), method="prefill",
                                    mutable=["cache"])
  return logits, variables["cache"]


def _decode_step(decoder: YDecoder, params: Any, cache: Any, token: jax.Array) -> tuple[jax.Array, Any]:
  logits, variables = decoder.apply({"params": params, "cache": cache}, token, method="decode_step",
                                    mutable=["cache"])
  return logits, variables["cache"]


def _normalise(log_prob_sum: jax.Array, length: jax.Array, length_penalty: float | jax.Array) -> jax.Array:
  return log_prob_sum / jnp.asarray(length, jnp.float32) ** length_penalty


def greedy_search(decoder: YDecoder, params: Any, condition: Condition, *, bos_id: int, eos_id: int, pad_id: int,
                  max_new_tokens: int, length_penalty: float | jax.Array = 1.0) -> tuple[jax.Array, jax.Array]:
  """Arg-max decoding (un-jitted; `generate` jits it). See the module docstring for the score."""
  batch = _batch(condition)
  logits, cache = _prefill(decoder, params, condition, bos_id, max_new_tokens)

  def choose(state, logits):
    """Picks token number `step` of every row from `logits`, the distribution after token step - 1."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    gained = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    running = ~state["finished"]
    token = jnp.where(running, token, pad_id)
    return dict(
        state, step=state["step"] + 1, tokens=state["tokens"].at[:, state["step"]].set(token),
        log_prob_sum=state["log_prob_sum"] + jnp.where(running, gained, 0.0),
        length=state["length"] + running.astype(jnp.int32), finished=state["finished"] | (token == eos_id),
        # A finished row keeps decoding in lock-step; feed it a valid id (pad_id need not be one).
        last=jnp.where(running, token, eos_id))

  state = dict(step=jnp.zeros((), jnp.int32), tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
               log_prob_sum=jnp.zeros((batch,), jnp.float32), length=jnp.zeros((batch,), jnp.int32),
               finished=jnp.zeros((batch,), bool), last=jnp.zeros((batch,), jnp.int32), cache=cache)
  state = choose(state, logits)

  def body(state):
    logits, cache = _decode_step(decoder, params, state["cache"], state["last"])
    return choose(dict(state, cache=cache), logits)

  state = jax.lax.while_loop(lambda s: (s["step"] < max_new_tokens) & ~jnp.all(s["finished"]), body, state)
  return state["tokens"], _normalise(state["log_prob_sum"], state["length"], length_penalty)


def beam_search(decoder: YDecoder, params: Any, condition: Condition, *, bos_id: int, eos_id: int, pad_id: int,
                max_new_tokens: int, beam_size: int,
                length_penalty: float | jax.Array = 1.0) -> tuple[jax.Array, jax.Array]:
  """Beam search (un-jitted; `generate` jits it) with the semantics of the module docstring."""
  batch, beams, steps = _batch(condition), beam_size, max_new_tokens
  logits, cache = _prefill(decoder, params, condition, bos_id, max_new_tokens)
  vocab = logits.shape[-1]
  # The model runs on batch * beams rows, row b * beams + k holding beam k of batch row b. All beams
  # start from the same prefix, so the prefill of B rows is copied rather than recomputed.
  cache = jax.tree.map(lambda x: jnp.repeat(x, beams, axis=0) if x.ndim else x, cache)
  neg_inf = jnp.float32(-jnp.inf)

  def expand(state, logits):
    """Extends the live beams by the token distributions `logits (B * K, V)`: token number `step`."""
    length = state["step"] + 1
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, vocab)
    candidates = (state["live_scores"][:, :, None] + log_probs).reshape(batch, beams * vocab)
    is_eos = (jnp.arange(beams * vocab) % vocab == eos_id)[None]

    def extend(flat_index):
      """The token sequences (B, K, T) of the candidates at `flat_index` (B, K)."""
      parent, token = flat_index // vocab, (flat_index % vocab).astype(jnp.int32)
      sequences = jnp.take_along_axis(state["live_tokens"], parent[:, :, None], axis=1)
      return parent, sequences.at[:, :, state["step"]].set(token), token

    # Finished: EOS candidates among the step's K best, merged into the K best finished so far.
    top_scores, top_index = jax.lax.top_k(candidates, beams)
    _, ended_tokens, ended_last = extend(top_index)
    ended_scores = jnp.where(ended_last == eos_id, _normalise(top_scores, length, length_penalty), neg_inf)
    pool_scores = jnp.concatenate([state["finished_scores"], ended_scores], axis=1)
    pool_tokens = jnp.concatenate([state["finished_tokens"], ended_tokens], axis=1)
    finished_scores, keep = jax.lax.top_k(pool_scores, beams)  # older entries first on ties
    finished_tokens = jnp.take_along_axis(pool_tokens, keep[:, :, None], axis=1)
    # Live: the K best candidates that do not end in EOS.
    live_scores, live_index = jax.lax.top_k(jnp.where(is_eos, neg_inf, candidates), beams)
    parent, live_tokens, live_last = extend(live_index)
    rows = (jnp.arange(batch)[:, None] * beams + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[rows] if x.ndim else x, state["cache"])
    # A stopped row keeps its finished list; its live beams run on in lock-step, unused.
    stopped = state["stopped"]
    finished_scores = jnp.where(stopped[:, None], state["finished_scores"], finished_scores)
    finished_tokens = jnp.where(stopped[:, None, None], state["finished_tokens"], finished_tokens)
    best_live = _normalise(jnp.max(live_scores, axis=1), length, length_penalty)
    stopped = stopped | (jnp.min(finished_scores, axis=1) >= best_live)
    return dict(step=length, live_tokens=live_tokens, live_scores=live_scores, last=live_last.reshape(-1),
                finished_tokens=finished_tokens, finished_scores=finished_scores, stopped=stopped, cache=cache)

  empty = jnp.full((batch, beams, steps), pad_id, jnp.int32)
  # Only beam 0 is live at first; -inf keeps copies of it from filling the other beams.
  first_live = jnp.where(jnp.arange(beams) == 0, 0.0, neg_inf).astype(jnp.float32)
  state = dict(step=jnp.zeros((), jnp.int32), live_tokens=empty, live_scores=jnp.tile(first_live, (batch, 1)),
               last=jnp.zeros((batch * beams,), jnp.int32), finished_tokens=empty,
               finished_scores=jnp.full((batch, beams), neg_inf), stopped=jnp.zeros((batch,), bool), cache=cache)
  state = expand(state, jnp.repeat(logits, beams, axis=0))

  def body(state):
    logits, cache = _decode_step(decoder, params, state["cache"], state["last"])
    return expand(dict(state, cache=cache), logits)

  state = jax.lax.while_loop(lambda s: (s["step"] < steps) & ~jnp.all(s["stopped"]), body, state)
  # Rows still running compete their live beams (length = steps) with their finished ones.
  live = jnp.where(state["stopped"][:, None], neg_inf, _normalise(state["live_scores"], state["step"], length_penalty))
  scores = jnp.concatenate([state["finished_scores"], live], axis=1)
  tokens = jnp.concatenate([state["finished_tokens"], state["live_tokens"]], axis=1)
  best = jnp.argmax(scores, axis=1)
  best_tokens = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
  return best_tokens, jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
