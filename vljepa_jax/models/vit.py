"""V-JEPA 2 vision transformer (the X-encoder): video `(B, T, H, W, C)` -> patch tokens.

Meta's `vision_transformer.py` with `use_rope=True`, as shipped in the V-JEPA 2 checkpoints:
a Conv3d tubelet embedding (2x16x16) flattened time-major (token = t*H'W' + h*W' + w),
pre-norm blocks `x += attn(norm1(x)); x += mlp(norm2(x))` with qkv bias and exact-erf
GELU, 3D RoPE on q and k over the actual token grid of the input, no CLS token, no
position table, and a final LayerNorm. The output is the whole token sequence (Hugging
Face `last_hidden_state`); pooling belongs to whoever consumes it.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models import rope
from vljepa_jax.models.config import ArchConfig

CONV_AXES = ("conv_t", "conv_h", "conv_w", "conv_in", "embed")


@dataclasses.dataclass(frozen=True)
class ViTConfig(ArchConfig):
  hidden_size: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  mlp_dim: int = 4096
  patch_size: int = 16
  tubelet_size: int = 2
  in_channels: int = 3
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  # How RoPE angles fill a chunk: "tiled" for V-JEPA 2 weights, "interleaved" for 2.1
  # (see `rope.py`). Using the wrong one gives plausible-looking but wrong features.
  rope_layout: str = "tiled"
  attention_impl: str = "xla"
  remat: bool | str = False  # see layers.REMAT_POLICIES

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"ViT hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
    if self.rope_layout not in rope.ROPE_LAYOUTS:
      raise ValueError(f"ViT rope_layout {self.rope_layout!r}: expected one of {rope.ROPE_LAYOUTS}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


PRESETS = {
    # The architecture of the random model the parity tests build (head_dim 20: three
    # 6-dim RoPE chunks and 2 unrotated dims, like ViT-H's 26/26/26/2 split).
    "tiny": ViTConfig(hidden_size=80, num_layers=2, num_heads=4, mlp_dim=160),
    "vit_large": ViTConfig(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    # 1280 wide (bonsai's port says 2180, a typo).
    "vit_huge": ViTConfig(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
    "vit_giant": ViTConfig(hidden_size=1408, num_layers=40, num_heads=22, mlp_dim=6144),
}


def config_from_hf(hf: dict) -> ViTConfig:
  """The encoder half of a Hugging Face `VJEPA2Config` dict (the predictor is not ported)."""
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"V-JEPA 2 hidden_act {act!r} is not supported; expected 'gelu'")
  patch = hf.get("patch_size", 16)
  if isinstance(patch, (list, tuple)):
    if len(set(patch)) != 1:
      raise ValueError(f"V-JEPA 2 patch_size {patch}: only square patches are supported")
    patch = patch[0]
  hidden = hf["hidden_size"]
  return ViTConfig(
      hidden_size=hidden, num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      # Exactly HF's `int(hidden_size * mlp_ratio)`, so ViT-g's 48/11 ratio lands on the same width.
      mlp_dim=int(hidden * hf.get("mlp_ratio", 4.0)), patch_size=patch, tubelet_size=hf.get("tubelet_size", 2),
      in_channels=hf.get("in_chans", 3), layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
      qkv_bias=hf.get("qkv_bias", True))


def fill_tubelet(video: jax.Array, tubelet_size: int) -> jax.Array:
  """A single frame is repeated to fill one tubelet (Meta's image eval, HF `VJEPA2Embeddings`).

  Any other frame count must be a whole number of tubelets: the strided Conv3d would
  otherwise silently drop the trailing frames.
  """
  frames = video.shape[1]
  if frames == 1:
    return jnp.repeat(video, tubelet_size, axis=1)
  if frames % tubelet_size:
    raise ValueError(f"video has T={frames} frames, which is not a multiple of the tubelet size "
                     f"{tubelet_size} (a single frame, T=1, is repeated to fill one tubelet)")
  return video


class PatchEmbed(nn.Module):
  """The tubelet embedding: a Conv3d whose stride is its kernel, computed as patches times a matrix.

  Parameters are exactly `nn.Conv`'s (`kernel` `(t, p, p, C, D)`, `bias` `(D,)`), so converted
  checkpoints load unchanged. Cutting non-overlapping tubelets out with a reshape and multiplying
  by the flattened kernel is the same sum as the strided convolution; XLA:CPU ran that convolution
  at ~14 GFLOP/s (14 ms of the demo's step), a GEMM at the machine's matmul speed.
  Returns tokens `(B, T'H'W', D)` in the time-major order (token = t*H'W' + h*W' + w) and the grid.
  """

  config: ViTConfig

  @nn.compact
  def __call__(self, video: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
    cfg = self.config
    kt, kp = cfg.tubelet_size, cfg.patch_size
    kernel = self.param("kernel", nn.with_logical_partitioning(layers.default_kernel_init, CONV_AXES),
                        (kt, kp, kp, cfg.in_channels, cfg.hidden_size), cfg.weight_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (cfg.hidden_size,),
                      cfg.weight_dtype)
    batch, frames, height, width, channels = video.shape
    grid = (frames // kt, height // kp, width // kp)
    patches = video.reshape(batch, grid[0], kt, grid[1], kp, grid[2], kp, channels)
    patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, math.prod(grid), kt * kp * kp * channels)
    kernel, bias = nn.dtypes.promote_dtype(kernel, bias, dtype=cfg.compute_dtype)
    return patches @ kernel.reshape(-1, cfg.hidden_size) + bias, grid


class ViTBlock(nn.Module):
  """Pre-norm transformer block; `grid` (T', H', W') is static and fixes the RoPE positions."""

  config: ViTConfig
  grid: tuple[int, int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    rotate = functools.partial(rope.apply_rope_3d, grid=self.grid, layout=cfg.rope_layout)
    attn = layers.SelfAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, use_bias=cfg.qkv_bias,
                                attention_impl=cfg.attention_impl, name="attention", **kw)
    h = layers.layer_norm(cfg.layer_norm_eps, name="norm1", **kw)(x)
    x = x + attn(h, positions=lambda q, k: (rotate(q), rotate(k)))
    h = layers.layer_norm(cfg.layer_norm_eps, name="norm2", **kw)(x)
    x = x + layers.Mlp(cfg.mlp_dim, activation="gelu", name="mlp", **kw)(h)
    return layers.constrain_activations(x)


class VisionTransformer(nn.Module):
  """`apply(params, video)`: `(B, T, H, W, C)` -> `(B, T/tubelet * H/patch * W/patch, D)`.

  Positions come from the actual input grid (as in Meta's code), so any resolution that is
  a multiple of the patch size works; at 256x256 this equals HF's config-derived grid.
  """

  config: ViTConfig

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
      raise ValueError(f"expected a channels-last video (B, T, H, W, {cfg.in_channels}), got shape {video.shape}")
    height, width = video.shape[2:4]
    if height % cfg.patch_size or width % cfg.patch_size:
      raise ValueError(f"frame size {height}x{width} is not a multiple of the patch size {cfg.patch_size}")
    video = fill_tubelet(video, cfg.tubelet_size).astype(cfg.compute_dtype)
    x, (t, h, w) = PatchEmbed(cfg, name="patch_embed")(video)
    x = layers.constrain_activations(x)
    block = layers.remat_block(ViTBlock, cfg.remat)
    for i in range(cfg.num_layers):
      x = block(cfg, (t, h, w), name=f"layers_{i}")(x)
    return layers.layer_norm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                             name="norm")(x)
