"""The token-space VLM: VL-JEPA's controlled baseline (paper §4.5), which predicts the answer's tokens.

Everything VL-JEPA's predictor has except its objective: the same X-encoder (frozen or not,
chunked or not) and visual projection feed a causal Llama-style decoder with an LM head, trained
by next-token cross-entropy on the target text (teacher forcing):

    visual tokens (B, Nv, Dv) --vision_proj--> (B, Nv, D)
    [visual ; query (Lq, padded) ; target (Lt, padded)] -> causal Llama -> lm_head
    logits[:, i] at target position i predicts target[:, i + 1]   (`y_decoder.caption_loss`)

Padding (the query's and the target's) is masked as keys wherever it sits, so a row's
prediction never depends on how much padding its batch needed; RoPE positions run 0..L-1 over
the concatenation. Following the paper, the decoder is the *whole* language model (there,
Llama-3.2-1B's 16 layers) where VL-JEPA's predictor is its last half (8 layers):
`TokenVLMConfig.from_vljepa` builds it from a VL-JEPA config by doubling the predictor's depth, so
the two models of a comparison come from one config.

Parameter tree: `x_encoder/...` (as VL-JEPA's), `vision_proj/`, `decoder/...` (a `llama.Llama`)
and `lm_head/kernel (D, V)`. Started from a converted language model (`config.init.predictor`, the
whole model, not a `--layers` slice), the decoder is its weights and the LM head starts as its
embedding table transposed (`head_from_embedding`): Llama-3.2 ties the two, so this is its head.

Scoring and writing text:
  `target_log_likelihood(video, query, target)`  per-row (sum of log p(target token), tokens);
      `prompt(video, query)` then `prompted_log_likelihood(prompt, target)` scores many texts
      against one encoded clip
  `prefill(video, query_ids, query_mask, bos, cache_length)` then `decode_step(token)`
      incremental decoding with a KV cache (the padded prompt's mask is kept in the cache), the
      interface `models/generate.py` drives.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import flops
from vljepa_jax.models import layers
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models import vit as vit_lib
from vljepa_jax.models import vljepa as vljepa_lib
from vljepa_jax.models import y_decoder as y_decoder_lib
from vljepa_jax.models.config import ArchConfig

# The paper's baseline language model is the full decoder, VL-JEPA's predictor its last half.
DEPTH_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class TokenVLMConfig(ArchConfig):
  x_encoder: vit_lib.ViTConfig | None = None
  decoder: llama_lib.LlamaConfig | None = None  # must be causal; its vocabulary is the LM head's
  freeze_x_encoder: bool = True
  x_encoder_chunk_frames: int | None = None  # as VLJEPAConfig's
  attention_impl: str | None = "auto"  # as VLJEPAConfig's

  def __post_init__(self):
    if self.x_encoder is None or self.decoder is None:
      raise ValueError("TokenVLMConfig needs x_encoder and decoder configs")
    if not self.decoder.causal:
      raise ValueError("TokenVLMConfig.decoder.causal must be True: the baseline predicts each token from the "
                       "ones before it")
    vljepa_lib.settle_model_fields(self, ("x_encoder", "decoder"))

  @property
  def vocab_size(self) -> int:
    return self.decoder.vocab_size

  @classmethod
  def from_vljepa(cls, config: vljepa_lib.VLJEPAConfig, *, depth_factor: int = DEPTH_FACTOR) -> "TokenVLMConfig":
    """The baseline of a VL-JEPA config: its X-encoder, and its Llama predictor `depth_factor` times as deep, causal."""
    predictor = config.predictor
    if not isinstance(predictor.backbone_config, llama_lib.LlamaConfig):
      raise ValueError(f"the token-space baseline decodes with a Llama; the config's predictor backbone is "
                       f"{predictor.backbone!r} (set --config.model.predictor.backbone=llama)")
    backbone = predictor.backbone_config
    decoder = backbone.replace(num_layers=backbone.num_layers * depth_factor, causal=True)
    return cls(x_encoder=config.x_encoder, decoder=decoder, freeze_x_encoder=config.freeze_x_encoder,
               x_encoder_chunk_frames=config.x_encoder_chunk_frames, attention_impl=config.attention_impl,
               dtype=config.dtype, param_dtype=config.param_dtype)


def head_from_embedding(params: dict) -> dict:
  """`params` with the LM head set to the decoder's token-embedding table, transposed (a tied head's value)."""
  table = params["decoder"]["embed_tokens"]["embedding"]  # (V, D)
  return {**params, "lm_head": {**params["lm_head"], "kernel": table.T.astype(params["lm_head"]["kernel"].dtype)}}


class TokenVLM(nn.Module):
  """`apply(v, video, query_ids, query_mask, target_ids, target_mask) -> logits (B, Lt, V)` float32."""

  config: TokenVLMConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.x_encoder = vit_lib.VisionTransformer(cfg.x_encoder)
    self.vision_proj = layers.dense(cfg.decoder.hidden_size, ("vision_embed", "embed"), name="vision_proj", **kw)
    self.decoder = llama_lib.Llama(cfg.decoder)
    self.lm_head = layers.dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, name="lm_head", **kw)

  @property
  def vocab_size(self) -> int:
    return self.config.vocab_size

  def cache_length(self, condition: tuple[jax.Array, jax.Array, jax.Array], max_new_tokens: int) -> int:
    """KV-cache positions to generate `max_new_tokens` after the prompt `(video, query_ids, query_mask)`
    (`models/generate.py`): the prompt, BOS, and every generated token but the last, fed back."""
    video, query_ids, _ = condition
    visual = flops.x_encoder_tokens(self.config, num_frames=video.shape[1], crop_size=video.shape[2])
    return visual + query_ids.shape[1] + max_new_tokens

  def encode_visual(self, video: jax.Array) -> jax.Array:
    return vljepa_lib.encode_video(self.x_encoder, video, chunk_frames=self.config.x_encoder_chunk_frames,
                                   frozen=self.config.freeze_x_encoder)

  def prompt(self, video: jax.Array, query_ids: jax.Array, query_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The prompt's embeddings `(B, Nv + Lq, D)` and key mask `(B, Nv + Lq)`: [visual ; query]."""
    cfg = self.config
    visual = self.vision_proj(self.encode_visual(video).astype(cfg.compute_dtype))
    query = self.decoder.embed(query_ids).astype(cfg.compute_dtype)
    mask = jnp.concatenate([jnp.ones(visual.shape[:2], jnp.int32), query_mask.astype(jnp.int32)], axis=1)
    return jnp.concatenate([visual, query], axis=1), mask

  def _logits(self, hidden: jax.Array) -> jax.Array:
    return self.lm_head(hidden).astype(jnp.float32)

  def __call__(self, video: jax.Array, query_ids: jax.Array, query_mask: jax.Array, target_ids: jax.Array,
               target_mask: jax.Array) -> jax.Array:
    """Teacher forcing: logits `(B, Lt, V)`; position i predicts target_ids[:, i + 1]."""
    return self.prompted_logits(*self.prompt(video, query_ids, query_mask), target_ids, target_mask)

  def prompted_logits(self, prompt: jax.Array, prompt_mask: jax.Array, target_ids: jax.Array,
                      target_mask: jax.Array) -> jax.Array:
    """`__call__` from a computed `prompt` (so that many texts can be scored against one encoded clip)."""
    target = self.decoder.embed(target_ids).astype(self.config.compute_dtype)
    hidden = self.decoder(inputs_embeds=jnp.concatenate([prompt.astype(self.config.compute_dtype), target], axis=1),
                          attention_mask=jnp.concatenate([prompt_mask.astype(jnp.int32),
                                                          target_mask.astype(jnp.int32)], axis=1),
                          causal=True)
    return self._logits(hidden[:, prompt.shape[1]:])

  def loss_terms(self, video, query_ids, query_mask, target_ids, target_mask) -> tuple[jax.Array, jax.Array]:
    """(summed next-token cross-entropy over the batch's target tokens, their count): the objective's loss."""
    logits = self(video, query_ids, query_mask, target_ids, target_mask)
    return y_decoder_lib.caption_loss(logits, target_ids, target_mask)

  def target_log_likelihood(self, video, query_ids, query_mask, target_ids, target_mask
                            ) -> tuple[jax.Array, jax.Array]:
    """Per row: (sum of log p(target token | visual, query, earlier tokens), number of such tokens).

    The first target token (BOS) is given, never scored, as in `caption_loss`.
    """
    return self.prompted_log_likelihood(*self.prompt(video, query_ids, query_mask), target_ids, target_mask)

  def prompted_log_likelihood(self, prompt, prompt_mask, target_ids, target_mask) -> tuple[jax.Array, jax.Array]:
    """`target_log_likelihood` from a computed `prompt`."""
    logits = self.prompted_logits(prompt, prompt_mask, target_ids, target_mask)
    log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(log_probs, target_ids[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    weights = target_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(picked * weights, axis=1), jnp.sum(weights, axis=1)

  def prefill(self, video: jax.Array, query_ids: jax.Array, query_mask: jax.Array, tokens: jax.Array,
              cache_length: int) -> jax.Array:
    """Starts a KV cache with [visual ; query ; tokens (usually BOS)]; the next token's logits `(B, V)`.

    Run with `mutable=["cache"]`. `cache_length` is the capacity in positions (prompt, tokens and
    every token to come); the query's padding is kept masked in the cache.
    """
    prompt, prompt_mask = self.prompt(video, query_ids, query_mask)
    needed = prompt.shape[1] + tokens.shape[1]
    if cache_length < needed:
      raise ValueError(f"cache_length={cache_length} cannot hold the prompt and tokens ({needed} positions)")
    text = self.decoder.embed(tokens).astype(self.config.compute_dtype)
    mask = jnp.concatenate([prompt_mask, jnp.ones(tokens.shape, jnp.int32)], axis=1)
    hidden = self.decoder(inputs_embeds=jnp.concatenate([prompt, text], axis=1), attention_mask=mask, causal=True,
                          decode=True, cache_length=cache_length)
    return self._logits(hidden[:, -1])

  def decode_step(self, token: jax.Array) -> jax.Array:
    """Appends one token per row `(B,)` to the cache; the next token's logits `(B, V)`."""
    if token.ndim != 1:
      raise ValueError(f"decode_step takes one token per row, shape (batch,), got {token.shape}")
    embeds = self.decoder.embed(token[:, None]).astype(self.config.compute_dtype)
    hidden = self.decoder(inputs_embeds=embeds, causal=True, decode=True)
    return self._logits(hidden[:, 0])
