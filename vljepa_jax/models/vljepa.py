"""VL-JEPA: X-encoder -> predictor -> Ŝ_Y, and Y-encoder -> S_Y, in one shared space.

    model = VLJEPA(preset("tiny"))
    variables = model.init(rng, video, query_ids, query_mask, target_ids, target_mask)
    pred, target = model.apply(variables, video, query_ids, query_mask, target_ids, target_mask)
    s_hat = model.apply(variables, video, query_ids, query_mask, method="encode_visual_query")
    s_y   = model.apply(variables, target_ids, target_mask, method="encode_text")

Training, zero-shot classification, retrieval, VQA and inverse dynamics all go through
`encode_visual_query` and `encode_text`: the model has no task heads. Outputs are float32
and *not* normalised; the loss and the evaluators normalise.

Parameter tree: `x_encoder/...` (V-JEPA 2 ViT), `predictor/{vision_proj, <backbone>, head}` (the
backbone named by `predictor.backbone`, "llama" in the paper: `predictor/llama/...`),
`y_encoder/{backbone, dense_*}` (a `TextEncoder`) and `y_head`. Converted checkpoints drop
into those subtrees unchanged (see `vljepa_jax.convert`).

With `config.y_decoder` set the model also holds the Y-decoder (`y_decoder/...`, see
`models/y_decoder.py`): used only when text must be written (captioning, selective decoding),
trained in its own stage by `y_decoder_loss` with everything else frozen. It reads embeddings
scaled to unit length (`decoder_condition`), the only scale the shared space has: training and
the loss compare directions, so Ŝ_Y and S_Y norms carry no meaning.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import attention as attention_lib
from vljepa_jax.models import bert as bert_lib
from vljepa_jax.models import gemma as gemma_lib
from vljepa_jax.models import layers
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models import predictor as predictor_lib
from vljepa_jax.models import text_encoder as text_encoder_lib
from vljepa_jax.models import vit as vit_lib
from vljepa_jax.models import y_decoder as y_decoder_lib
from vljepa_jax.models.config import ArchConfig


@dataclasses.dataclass(frozen=True)
class VLJEPAConfig(ArchConfig):
  x_encoder: vit_lib.ViTConfig | None = None
  predictor: predictor_lib.PredictorConfig | None = None
  y_encoder: text_encoder_lib.TextEncoderConfig | None = None
  # The paper freezes the X-encoder: its output is a constant to the rest of the model.
  freeze_x_encoder: bool = True
  y_decoder: y_decoder_lib.YDecoderConfig | None = None
  # Attention implementation of every tower (`models/attention.py`: xla, pallas, cudnn, splash or
  # auto); None leaves each tower's own `attention_impl`.
  attention_impl: str | None = "auto"
  # None: the X-encoder reads the whole clip at once (the paper). k: it reads independent chunks of
  # k frames (a multiple of the tubelet size) and their tokens are concatenated in time order, so
  # no visual token depends on later frames: with a causal, streaming predictor the whole model is
  # causal in time and a stream can be fed k frames at a time (`stream_step`).
  x_encoder_chunk_frames: int | None = None

  def __post_init__(self):
    if None in (self.x_encoder, self.predictor, self.y_encoder):
      raise ValueError("VLJEPAConfig needs x_encoder, predictor and y_encoder configs")
    settle_model_fields(self, ("x_encoder", "predictor", "y_encoder", "y_decoder"))
    if self.predictor.vision_dim != self.x_encoder.output_dim:
      raise ValueError(f"predictor.vision_dim ({self.predictor.vision_dim}) must equal the X-encoder's output width "
                       f"({self.x_encoder.output_dim})")
    if self.y_decoder is not None and self.y_decoder.embed_dim != self.predictor.embed_dim:
      raise ValueError(f"y_decoder.embed_dim ({self.y_decoder.embed_dim}) must equal the shared embedding size "
                       f"predictor.embed_dim ({self.predictor.embed_dim})")

  @property
  def embed_dim(self) -> int:
    return self.predictor.embed_dim


class VLJEPA(nn.Module):
  config: VLJEPAConfig

  def setup(self):
    cfg = self.config
    self.x_encoder = vit_lib.VisionTransformer(cfg.x_encoder)
    self.predictor = predictor_lib.Predictor(cfg.predictor)
    self.y_encoder = text_encoder_lib.TextEncoder(cfg.y_encoder)
    self.y_head = layers.dense(cfg.embed_dim, ("embed", "shared_embed"), dtype=cfg.compute_dtype,
                               param_dtype=cfg.weight_dtype, name="y_head")
    if cfg.y_decoder is not None:
      self.y_decoder = y_decoder_lib.YDecoder(cfg.y_decoder)

  def encode_visual(self, video: jax.Array) -> jax.Array:
    """`(B, T, H, W, C)` -> visual tokens `(B, N, Dv)`; a constant when the X-encoder is frozen."""
    return encode_video(self.x_encoder, video, chunk_frames=self.config.x_encoder_chunk_frames,
                        frozen=self.config.freeze_x_encoder)

  def encode_visual_query(self, video: jax.Array, query_ids: jax.Array, query_mask: jax.Array) -> jax.Array:
    """Ŝ_Y `(B, embed_dim)`: the predicted embedding of the answer."""
    return self.predictor(self.encode_visual(video), query_ids, query_mask)

  def stream_step(self, frames: jax.Array, state, query_ids: jax.Array, query_mask: jax.Array):
    """One step of a video stream: the next `frames (B, k, H, W, C)` -> (Ŝ_Y `(B, embed_dim)`, new state).

    k is `x_encoder_chunk_frames` (or the clip's tubelets when that is None, which only equals the
    offline model for a stream of one step). Cost and memory per step are constant: the X-encoder
    reads k frames and the predictor advances its carried state by their tokens, then reads the
    query from it (`Predictor.stream_query`). Start from `initial_stream_state(config, batch)`.
    Ŝ_Y after steps over frames f_1..f_t equals `encode_visual_query` over the clip f_1..f_t.
    """
    state = self.predictor.stream_visual(self.encode_visual(frames), state)
    return self.predictor.stream_query(state, query_ids, query_mask), state

  def encode_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """S_Y `(B, embed_dim)`: the target embedding of a text (answer, caption, class name)."""
    pooled = self.y_encoder.embed(ids, mask)
    return self.y_head(pooled.astype(self.config.compute_dtype)).astype(jnp.float32)

  def y_decoder_loss(self, video, query_ids, query_mask, target_ids, target_mask, *,
                     condition: str = "target") -> tuple[jax.Array, jax.Array]:
    """Teacher-forced loss of the Y-decoder writing the target text: (summed cross-entropy, tokens).

    `condition`: "target" decodes from S_Y of the text itself, "predictor" from Ŝ_Y of (video,
    query). Either way the embedding is a constant here: only the decoder learns from this loss.
    """
    if self.config.y_decoder is None:
      raise ValueError("y_decoder_loss needs VLJEPAConfig.y_decoder")
    if condition == "target":
      embedding = self.encode_text(target_ids, target_mask)
    elif condition == "predictor":
      embedding = self.encode_visual_query(video, query_ids, query_mask)
    else:
      raise ValueError(f"condition must be 'target' or 'predictor', got {condition!r}")
    logits = self.y_decoder(jax.lax.stop_gradient(decoder_condition(embedding)), target_ids)
    return y_decoder_lib.caption_loss(logits, target_ids, target_mask)

  def __call__(self, video, query_ids, query_mask, target_ids, target_mask) -> tuple[jax.Array, jax.Array]:
    pred, target = self.encode_visual_query(video, query_ids, query_mask), self.encode_text(target_ids, target_mask)
    if self.config.y_decoder is not None and self.is_initializing():
      self.y_decoder(decoder_condition(target), target_ids)  # creates its parameters in the same tree
    return pred, target


def settle_model_fields(config: ArchConfig, towers: tuple[str, ...]) -> None:
  """Checks and applies the model-wide fields a video model config shares (VL-JEPA's, the token baseline's).

  `attention_impl` (unless None) is set in every tower named in `towers` (frozen dataclass: set in
  place once, so every tower sees the model-wide choice); `x_encoder_chunk_frames` must be None or
  a positive multiple of the X-encoder's tubelet size.
  """
  if config.attention_impl is not None:
    if config.attention_impl not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"attention_impl={config.attention_impl!r}: expected one of {attention_lib.IMPLEMENTATIONS} "
                       "or None")
    for name in towers:
      tower = getattr(config, name)
      if tower is not None:
        object.__setattr__(config, name, tower.with_field_everywhere("attention_impl", config.attention_impl))
  chunk, tubelet = config.x_encoder_chunk_frames, config.x_encoder.tubelet_size
  if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or chunk % tubelet):
    raise ValueError(f"x_encoder_chunk_frames={chunk!r}: expected None or a positive multiple of the X-encoder's "
                     f"tubelet_size ({tubelet})")


def encode_video(x_encoder: nn.Module, video: jax.Array, *, chunk_frames: int | None, frozen: bool) -> jax.Array:
  """`(B, T, H, W, C)` -> the X-encoder's tokens `(B, N, Dv)`, in chunks of `chunk_frames` frames if set.

  Chunks are independent clips whose tokens are concatenated in time order (time-major, as one
  clip's are). A frozen X-encoder's tokens are a constant (`stop_gradient`).

  `(B, N, Dv)` input is those tokens already, read from a feature cache (`data/feature_cache.py`):
  the X-encoder is skipped. Only a frozen X-encoder's output can be cached.
  """
  if video.ndim == 3:
    if not frozen:
      raise ValueError(f"visual input of shape {video.shape} is cached X-encoder tokens, but the X-encoder is "
                       "trained (freeze_x_encoder=False): its output changes every step and cannot come from a cache")
    return jax.lax.stop_gradient(video.astype(x_encoder.config.compute_dtype))
  frames = video.shape[1]
  if chunk_frames is None or frames <= chunk_frames:  # one chunk (or a single image, repeated to a tubelet)
    tokens = x_encoder(video)
  else:
    if frames % chunk_frames:
      raise ValueError(f"video has T={frames} frames, not a whole number of x_encoder_chunk_frames={chunk_frames}")
    batch = video.shape[0]
    tokens = x_encoder(video.reshape((batch * (frames // chunk_frames), chunk_frames) + video.shape[2:]))
    tokens = tokens.reshape(batch, -1, tokens.shape[-1])
  return jax.lax.stop_gradient(tokens) if frozen else tokens


def initial_stream_state(config: VLJEPAConfig, batch: int):
  """The empty history of `batch` video streams for `VLJEPA.stream_step` (the predictor must stream)."""
  return predictor_lib.initial_stream_state(config.predictor, batch)


def decoder_condition(embedding: jax.Array) -> jax.Array:
  """What the Y-decoder reads: the embedding scaled to unit L2 norm (float32)."""
  embedding = embedding.astype(jnp.float32)
  return embedding / jnp.maximum(jnp.linalg.norm(embedding, axis=-1, keepdims=True), 1e-12)


def paper_config(*, y_dense: bool = False) -> VLJEPAConfig:
  """The paper's model: V-JEPA 2 ViT-L, Llama-3.2-1B layers 8-15 (bidirectional), EmbeddingGemma-300M.

  The paper does not say whether EmbeddingGemma's Sentence-Transformers dense stack is kept;
  like the public reimplementations we drop it by default and feed the masked mean of the
  last hidden state to the linear Y head (`y_dense=True` keeps 768->3072->768).
  """
  llama = llama_lib.PRESETS["llama3_2_1b_last8"].replace(causal=False)
  return VLJEPAConfig(
      x_encoder=vit_lib.PRESETS["vit_large"],
      predictor=predictor_lib.PredictorConfig(backbone="llama", backbone_config=llama, vision_dim=1024,
                                              embed_dim=1536),
      y_encoder=text_encoder_lib.TextEncoderConfig(
          backbone="gemma3", backbone_config=gemma_lib.PRESETS["embeddinggemma_300m"],
          dense_dims=(3072, 768) if y_dense else (), normalize=y_dense),
  )


def tiny_config(y_backbone: str = "bert") -> VLJEPAConfig:
  """A few-MB model with the same wiring, for tests and CPU smoke runs."""
  vit = vit_lib.PRESETS["tiny"]
  llama = llama_lib.PRESETS["tiny"].replace(causal=False)
  backbone = {"bert": bert_lib.PRESETS["tiny"], "gemma3": gemma_lib.PRESETS["tiny"]}[y_backbone]
  return VLJEPAConfig(
      x_encoder=vit,
      predictor=predictor_lib.PredictorConfig(backbone="llama", backbone_config=llama, vision_dim=vit.hidden_size,
                                              embed_dim=32),
      y_encoder=text_encoder_lib.TextEncoderConfig(backbone=y_backbone, backbone_config=backbone, normalize=False),
  )


PRESETS = {"paper": paper_config, "tiny": tiny_config}
