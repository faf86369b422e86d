"""VL-JEPA's Y-decoder: turns an embedding in the shared space back into text.

VL-JEPA predicts embeddings, not tokens; when a task needs text (captioning, open-ended VQA)
a small decoder, used only at inference, reads one embedding and writes the text. Design:

    condition (B, E) --prefix_proj--> P prefix vectors (B, P, D)
    [prefix_0 .. prefix_{P-1}, embed(tok_0) .. embed(tok_{L-1})]
    -> causal Llama stack (RMSNorm, RoPE, GQA, SwiGLU; `llama.Llama`, not a second transformer)
    -> untied LM head (D -> V) read at the token positions: logits[:, i] predicts tok_{i+1}.

Several prefix vectors rather than one give the decoder more than a single key/value slot to
read the condition from. Teacher-forced tokens start with BOS, so the first text token is
predicted from the prefix alone. Right padding needs no mask: attention is causal, so padding
sits after every real token and can change only logits that `caption_loss` ignores.

Parameter tree: `prefix_proj/{kernel (E, P, D), bias (P, D)}`, `llama/...` (as `llama.Llama`)
and `lm_head/kernel (D, V)` (no bias, like Llama's). A larger model that mounts a `YDecoder`
under some name passes that subtree, e.g. `variables["params"]["y_decoder"]`, to `apply` and
to `generate`.

Incremental decoding (used by `models.generate`) keeps a KV cache in the "cache" collection:

    logits, vars = decoder.apply({"params": p}, condition, bos, method="prefill", mutable=["cache"])
    logits, vars = decoder.apply({"params": p, **vars}, token, method="decode_step", mutable=["cache"])

`prefill` starts a fresh cache of fixed capacity (by default `max_length` positions, prefix
included), so every later `decode_step` has static shapes and compiles once.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models.config import ArchConfig


@dataclasses.dataclass(frozen=True)
class YDecoderConfig(ArchConfig):
  embed_dim: int = 1536  # width of the condition: the shared embedding space
  num_prefix_tokens: int = 4
  llama: llama_lib.LlamaConfig | None = None  # must be causal
  # The longest sequence the decoder handles, prefix included: the KV cache's default capacity,
  # and the bound `generate` checks `num_prefix_tokens + max_new_tokens` against.
  max_length: int = 132

  def __post_init__(self):
    if self.llama is None:
      raise ValueError("YDecoderConfig needs a llama config")
    if not self.llama.causal:
      raise ValueError("YDecoderConfig.llama.causal must be True: the Y-decoder predicts each token from the "
                       "ones before it")
    if self.embed_dim < 1:
      raise ValueError(f"YDecoderConfig.embed_dim must be positive, got {self.embed_dim}")
    if self.num_prefix_tokens < 1:
      raise ValueError(f"YDecoderConfig.num_prefix_tokens must be at least 1, got {self.num_prefix_tokens}")
    if self.max_length <= self.num_prefix_tokens:
      raise ValueError(f"YDecoderConfig.max_length ({self.max_length}) must exceed num_prefix_tokens "
                       f"({self.num_prefix_tokens}) to leave room for text")


PRESETS = {
    # Llama-3 vocabulary (the tokenizer the predictor uses) and 4 narrow layers: 147M parameters,
    # 131M of them in the embedding table and the untied head.
    "small": YDecoderConfig(
        embed_dim=1536, num_prefix_tokens=4, max_length=132,
        llama=llama_lib.LlamaConfig(vocab_size=128256, hidden_size=512, intermediate_size=1536, num_layers=4,
                                    num_heads=8, num_kv_heads=2, head_dim=64, rope_theta=10000.0,
                                    rope_scaling_factor=None)),
    "tiny": YDecoderConfig(embed_dim=32, num_prefix_tokens=4, max_length=64, llama=llama_lib.PRESETS["tiny"]),
}


class YDecoder(nn.Module):
  """`apply(v, condition (B, E), tokens (B, L) int32) -> logits (B, L, V) float32` (teacher forcing).

  Methods `prefill` and `decode_step` decode with a KV cache (see the module docstring).
  """

  config: YDecoderConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.prefix_proj = layers.dense((cfg.num_prefix_tokens, cfg.llama.hidden_size),
                                    ("shared_embed", "prefix", "embed"), name="prefix_proj", **kw)
    self.llama = llama_lib.Llama(cfg.llama)
    self.lm_head = layers.dense(cfg.llama.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head", **kw)

  @property
  def vocab_size(self) -> int:
    return self.config.llama.vocab_size

  def cache_length(self, condition: jax.Array, max_new_tokens: int) -> int:
    """KV-cache positions to generate `max_new_tokens` (`models/generate.py`): the prefix, BOS, and
    every generated token but the last, fed back."""
    del condition
    cfg = self.config
    if cfg.num_prefix_tokens + max_new_tokens > cfg.max_length:
      raise ValueError(f"max_new_tokens={max_new_tokens} with {cfg.num_prefix_tokens} prefix tokens exceeds "
                       f"YDecoderConfig.max_length={cfg.max_length}")
    return cfg.num_prefix_tokens + max_new_tokens

  def prefix(self, condition: jax.Array) -> jax.Array:
    """The prefix vectors `(B, P, D)` of a condition `(B, E)`."""
    if condition.ndim != 2 or condition.shape[-1] != self.config.embed_dim:
      raise ValueError(f"condition has shape {condition.shape}; the Y-decoder expects (batch, embed_dim="
                       f"{self.config.embed_dim})")
    return self.prefix_proj(condition.astype(self.config.compute_dtype))

  def _inputs(self, condition: jax.Array, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be (batch, length), got shape {tokens.shape}")
    text = self.llama.embed(tokens).astype(self.config.compute_dtype)
    return jnp.concatenate([self.prefix(condition), text], axis=1)

  def _logits(self, hidden: jax.Array) -> jax.Array:
    return self.lm_head(hidden).astype(jnp.float32)

  def __call__(self, condition: jax.Array, tokens: jax.Array) -> jax.Array:
    hidden = self.llama(inputs_embeds=self._inputs(condition, tokens), causal=True)
    # The prefix positions predict nothing that is trained (the first text token, BOS, is given).
    return self._logits(hidden[:, self.config.num_prefix_tokens:])

  def prefill(self, condition: jax.Array, tokens: jax.Array, cache_length: int | None = None) -> jax.Array:
    """Starts a KV cache with the prefix and `tokens` (usually just BOS); returns the last position's
    logits `(B, V)`, i.e. the distribution of the next token.

    Must run with `mutable=["cache"]` and variables that hold no cache. `cache_length` is the capacity
    in positions, prefix included (default and maximum: `config.max_length`); it is a Python int, so
    each capacity compiles separately.
    """
    cfg = self.config
    cache_length = cfg.max_length if cache_length is None else cache_length
    needed = cfg.num_prefix_tokens + tokens.shape[-1]
    if not needed <= cache_length <= cfg.max_length:
      raise ValueError(f"cache_length={cache_length} must hold the prefix and the prompt ({needed} positions) and "
                       f"not exceed YDecoderConfig.max_length={cfg.max_length}")
    hidden = self.llama(inputs_embeds=self._inputs(condition, tokens), causal=True, decode=True,
                        cache_length=cache_length)
    return self._logits(hidden[:, -1])

  def decode_step(self, token: jax.Array) -> jax.Array:
    """Appends one token per row `(B,)` to the cache `prefill` started; returns the next token's logits `(B, V)`.

    The caller keeps the cache within its capacity: a write past it is not detected.
    """
    if token.ndim != 1:
      raise ValueError(f"decode_step takes one token per row, shape (batch,), got {token.shape}")
    embeds = self.llama.embed(token[:, None]).astype(self.config.compute_dtype)
    hidden = self.llama(inputs_embeds=embeds, causal=True, decode=True)
    return self._logits(hidden[:, 0])


def caption_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed next-token cross-entropy and the number of targets it sums over (both float32 scalars).

  logits `(B, L, V)` from `YDecoder`; tokens and mask `(B, L)`, mask 1 for real tokens. Position i
  predicts tokens[i + 1] and counts where mask[i + 1] is 1, so BOS is never a target and padding
  never is. The caller divides (after summing over devices or micro-batches, so that every target
  weighs the same).
  """
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  targets = tokens[:, 1:]
  weights = mask[:, 1:].astype(jnp.float32)
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.sum(target_log_probs * weights), jnp.sum(weights)
