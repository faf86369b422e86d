"""Analytic FLOPs of VL-JEPA per sample: matmuls and attention, counted from the architecture.

A multiply-add is 2 FLOPs. Per transformer layer over L tokens of width D:
  projections  2 L (D*q + 2 D*kv + q*D)       q = heads * head_dim, kv = kv_heads * head_dim
  attention    4 L^2 q                        QK^T and AV (bidirectional: the full L x L)
  MLP          2 L D I * (3 if gated else 2)  SwiGLU/GeGLU have gate, up and down
Norms, RoPE, softmax and elementwise ops are left out (a few % at these widths). Training costs
3x the forward for towers that get gradients (forward, and a backward twice as expensive), and 1x
for a frozen tower (the train step stops gradients at its parameters, so XLA drops its backward).

The predictor's backbone counts itself (`Backbone.forward_flops`, models/predictor_backbones.py);
transformer backbones use `transformer_layer` below.
"""
from __future__ import annotations

import dataclasses

from typing import TYPE_CHECKING

from vljepa_jax.models import predictor_backbones

if TYPE_CHECKING:  # annotations only: backbone modules import this one, and vljepa imports them
  from vljepa_jax.models import vljepa


def transformer_layer(tokens: int, width: int, q: int, kv: int, mlp: int, gated: bool) -> float:
  """Forward FLOPs of one pre-norm attention + MLP block over `tokens` tokens (see the module docstring)."""
  projections = 2 * tokens * (width * q + 2 * width * kv + q * width)
  attention = 4 * tokens * tokens * q
  return projections + attention + 2 * tokens * width * mlp * (3 if gated else 2)


def x_encoder_tokens(config: vljepa.VLJEPAConfig, num_frames: int, crop_size: int) -> int:
  """Visual tokens of a `(num_frames, crop_size, crop_size)` clip: any config with an `x_encoder`."""
  vit = config.x_encoder
  frames = max(num_frames, vit.tubelet_size)  # a single image is duplicated to fill a tubelet
  return (frames // vit.tubelet_size) * (crop_size // vit.patch_size) ** 2


def forward_flops(config: vljepa.VLJEPAConfig, *, num_frames: int, crop_size: int, query_length: int,
                  target_length: int) -> dict[str, float]:
  """Forward FLOPs of one sample per tower: {"x_encoder", "predictor", "y_encoder"}."""
  vit = config.x_encoder
  n = x_encoder_tokens(config, num_frames, crop_size)
  # With x_encoder_chunk_frames the X-encoder attends within chunks: the clip's cost is its chunks'.
  chunk = config.x_encoder_chunk_frames
  chunks = num_frames // chunk if chunk is not None and num_frames > chunk else 1
  # V-JEPA 2.1 embeds a single frame with its own tubelet-1 kernel instead of duplicating it.
  tubelet = 1 if vit.image_patch_embed and num_frames == 1 else vit.tubelet_size
  patch = 2 * n * tubelet * vit.patch_size ** 2 * vit.in_channels * vit.hidden_size
  x = patch + chunks * vit.num_layers * transformer_layer(n // chunks, vit.hidden_size, vit.hidden_size,
                                                          vit.hidden_size, vit.mlp_dim, False)

  predictor = config.predictor
  backbone_config = predictor.backbone_config
  if "causal" in {f.name for f in dataclasses.fields(backbone_config)}:
    # The predictor sets the attention pattern; a backbone whose cost depends on it (Mamba-3 runs two
    # directions when bidirectional) counts the pattern the predictor uses.
    backbone_config = dataclasses.replace(backbone_config, causal=predictor.causal)
  backbone_flops = predictor_backbones.get(predictor.backbone).forward_flops(backbone_config, n + query_length)
  p = (2 * n * predictor.vision_dim * predictor.hidden_size + backbone_flops
       + 2 * predictor.hidden_size * predictor.embed_dim)

  backbone = config.y_encoder.backbone_config
  if config.y_encoder.backbone == "bert":
    y_layer = transformer_layer(target_length, backbone.hidden_size, backbone.hidden_size, backbone.hidden_size,
                                backbone.intermediate_size, False)
  else:  # gemma3
    yq, ykv = backbone.num_heads * backbone.head_dim, backbone.num_kv_heads * backbone.head_dim
    y_layer = transformer_layer(target_length, backbone.hidden_size, yq, ykv, backbone.intermediate_size, True)
  dims = (backbone.hidden_size,) + tuple(config.y_encoder.dense_dims)
  dense = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
  y = backbone.num_layers * y_layer + dense + 2 * dims[-1] * config.embed_dim
  return {"x_encoder": float(x), "predictor": float(p), "y_encoder": float(y)}


def train_flops_per_sample(config: vljepa.VLJEPAConfig, *, trainable: dict[str, bool], **shape) -> float:
  """Forward + backward FLOPs of one training sample; `trainable` says which towers get gradients."""
  forward = forward_flops(config, **shape)
  return sum(f * (3 if trainable.get(tower, True) else 1) for tower, f in forward.items())
