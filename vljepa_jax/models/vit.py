"""V-JEPA 2 / 2.1 vision transformer (the X-encoder): video `(B, T, H, W, C)` -> patch tokens.

Meta's `vision_transformer.py` with `use_rope=True`, as shipped in the V-JEPA 2 checkpoints:
a Conv3d tubelet embedding (2x16x16) flattened time-major (token = t*H'W' + h*W' + w),
pre-norm blocks `x += attn(norm1(x)); x += mlp(norm2(x))` with qkv bias and exact-erf
GELU, 3D RoPE on q and k over the actual token grid of the input, no CLS token, no
position table, and a final LayerNorm. The output is the whole token sequence (Hugging
Face `last_hidden_state`); pooling belongs to whoever consumes it.

V-JEPA 2.1 (`app/vjepa_2_1/models/vision_transformer.py`, `vjepa2_1(...)` and the `vjepa2_1_*`
presets) is the same network with five config switches, each off by default so a V-JEPA 2
config keeps its parameter tree and numbers: the textbook RoPE layout (`rope_layout`), row and
column positions stretched to the pretraining grid (`rope_reference_grid`), learnable image /
video embeddings added to every token (`modality_embeddings`), a tubelet-1 patch embedding for
single frames (`image_patch_embed`), and per-layer LayerNorms at a few blocks in place of the
final norm (`hierarchical_layers`, read out by `output`).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models import projection
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
  # V-JEPA 2.1 fields (app/vjepa_2_1/models/vision_transformer.py); the defaults are V-JEPA 2's.
  # G > 0: RoPE row/column positions are stretched to a G x G pretraining grid whatever the input size
  # (`interpolate_rope`, see `rope.grid_positions`); 0: raw patch indices.
  rope_reference_grid: int = 0
  # Learnable `img_mod_embed` / `video_mod_embed` `(D,)` added to every token after the patch embedding.
  modality_embeddings: bool = False
  # A single frame (T=1) goes through its own tubelet-1 embedding `patch_embed_img` (Meta's
  # `img_temporal_dim_size=1`) instead of being repeated to fill a video tubelet (`fill_tubelet`).
  image_patch_embed: bool = False
  # Blocks (0-based, increasing, ending at the last) whose output gets its own LayerNorm
  # (`norms_block.{j}`); when set they replace the final `norm`. Empty: V-JEPA 2's final norm.
  hierarchical_layers: tuple[int, ...] = ()
  # "last": the last block through the last hierarchical norm (D wide; Meta's eval output);
  # "hierarchical": every hierarchical norm's tokens concatenated along features (Meta's
  # `return_hierarchical` / training output, len(hierarchical_layers) * D wide).
  output: str = "last"
  attention_impl: str = "xla"
  remat: bool | str = False  # see layers.REMAT_POLICIES

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"ViT hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
    if self.rope_layout not in rope.ROPE_LAYOUTS:
      raise ValueError(f"ViT rope_layout {self.rope_layout!r}: expected one of {rope.ROPE_LAYOUTS}")
    grid = self.rope_reference_grid
    if not _is_int(grid) or grid < 0 or grid == 1:
      raise ValueError(f"ViT rope_reference_grid {grid!r}: expected 0 (raw positions) or a "
                       "pretraining grid of at least 2 patches")
    self._check_hierarchical_layers()
    if self.output not in OUTPUTS:
      raise ValueError(f"ViT output {self.output!r}: expected one of {OUTPUTS}")
    if self.output == "hierarchical" and not self.hierarchical_layers:
      raise ValueError("ViT output 'hierarchical' needs hierarchical_layers (the V-JEPA 2.1 per-layer norms)")

  def _check_hierarchical_layers(self):
    blocks = self.hierarchical_layers
    if isinstance(blocks, list):
      blocks = tuple(blocks)
      object.__setattr__(self, "hierarchical_layers", blocks)  # a config must stay hashable
    if not isinstance(blocks, tuple):
      raise ValueError(f"ViT hierarchical_layers {blocks!r}: expected a tuple of block indices")
    if not blocks:
      return
    if (not all(_is_int(i) for i in blocks) or any(b <= a for a, b in zip(blocks, blocks[1:]))
        or blocks[0] < 0 or blocks[-1] != self.num_layers - 1):
      raise ValueError(f"ViT hierarchical_layers {blocks}: expected increasing block indices ending at the last "
                       f"block, {self.num_layers - 1} (num_layers {self.num_layers})")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def output_dim(self) -> int:
    """Width of the output tokens: what a consumer (VL-JEPA's predictor `vision_dim`) reads."""
    if self.output == "hierarchical":
      return self.hidden_size * len(self.hierarchical_layers)
    return self.hidden_size


OUTPUTS = ("last", "hierarchical")


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


# V-JEPA 2.1 constants (app/vjepa_2_1/models/vision_transformer.py `VisionTransformer.__init__`, and
# `RoPEAttention.pretrained_grid_size` in app/vjepa_2_1/models/utils/modules.py).
# Meta fixes the per-layer norms by depth: ViT-B, ViT-L, ViT-g, ViT-G.
HIERARCHICAL_LAYERS_BY_DEPTH = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39), 48: (11, 23, 37, 47)}
# The RoPE reference grid by patch size: 2.1 was pretrained at 256 px (patch 16) or 252 px (patch 14).
ROPE_REFERENCE_GRID_BY_PATCH = {16: 256 // 16, 14: 252 // 14}


def vjepa2_1(*, hierarchical_layers: tuple[int, ...] | None = None, **fields) -> ViTConfig:
  """A V-JEPA 2.1 encoder with the given architecture fields; the hierarchical layers (by depth)
  and RoPE reference grid (by patch size) default to Meta's, and a depth or patch size Meta has
  no value for raises ValueError."""
  config = ViTConfig(**fields)
  if hierarchical_layers is None:
    if config.num_layers not in HIERARCHICAL_LAYERS_BY_DEPTH:
      raise ValueError(f"V-JEPA 2.1 defines per-layer norms for depths {sorted(HIERARCHICAL_LAYERS_BY_DEPTH)}, "
                       f"not {config.num_layers}")
    hierarchical_layers = HIERARCHICAL_LAYERS_BY_DEPTH[config.num_layers]
  if config.patch_size not in ROPE_REFERENCE_GRID_BY_PATCH:
    raise ValueError(f"V-JEPA 2.1 interpolates RoPE for patch sizes {sorted(ROPE_REFERENCE_GRID_BY_PATCH)}, "
                     f"not {config.patch_size}")
  # The hub builds every 2.1 encoder with use_rope=True, interpolate_rope=True, img_temporal_dim_size=1
  # and the default modality_embedding=True (src/hub/backbones.py `_make_vjepa2_1_model`).
  return config.replace(rope_layout="interleaved", rope_reference_grid=ROPE_REFERENCE_GRID_BY_PATCH[config.patch_size],
                        modality_embeddings=True, image_patch_embed=True, hierarchical_layers=hierarchical_layers)


PRESETS = {
    # The architecture of the random model the parity tests build (head_dim 20: three
    # 6-dim RoPE chunks and 2 unrotated dims, like ViT-H's 26/26/26/2 split).
    "tiny": ViTConfig(hidden_size=80, num_layers=2, num_heads=4, mlp_dim=160),
    "vit_large": ViTConfig(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    # 1280 wide (bonsai's port says 2180, a typo).
    "vit_huge": ViTConfig(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
    "vit_giant": ViTConfig(hidden_size=1408, num_layers=40, num_heads=22, mlp_dim=6144),
    # V-JEPA 2.1 (src/hub/backbones.py `ARCH_NAME_MAP`, 384 px): vit_base, vit_large, vit_giant_xformers and
    # vit_gigantic_xformers, all GELU (the hub's `use_SiLU` kwarg is misspelt, so `use_silu` stays False).
    # MLP widths are Meta's int(D * mlp_ratio): 1408 * 48/11 = 6144, 1664 * 64/13 = 8192.
    "vjepa2_1_vit_base_384": vjepa2_1(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "vjepa2_1_vit_large_384": vjepa2_1(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "vjepa2_1_vit_giant_384": vjepa2_1(hidden_size=1408, num_layers=40, num_heads=22, mlp_dim=6144),
    "vjepa2_1_vit_gigantic_384": vjepa2_1(hidden_size=1664, num_layers=48, num_heads=26, mlp_dim=8192),
    # The random 2.1 model of the parity tests: "tiny" with every 2.1 switch on, and two per-layer
    # norms (Meta's depths start at 12) that skip a block, so the norms' placement is tested.
    "tiny_2_1": vjepa2_1(hidden_size=80, num_layers=4, num_heads=4, mlp_dim=160, hierarchical_layers=(1, 3)),
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
  """A single frame is repeated to fill one tubelet (Meta's image eval, HF `VJEPA2Embeddings`); with
  `image_patch_embed` (V-JEPA 2.1) a single frame has its own embedding and never comes here.

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
  tubelet_size: int | None = None  # None: the config's (videos); 1: V-JEPA 2.1's image embedding

  @nn.compact
  def __call__(self, video: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
    cfg = self.config
    kt, kp = self.tubelet_size or cfg.tubelet_size, cfg.patch_size
    kernel = self.param("kernel", nn.with_logical_partitioning(layers.default_kernel_init, CONV_AXES),
                        (kt, kp, kp, cfg.in_channels, cfg.hidden_size), cfg.weight_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (cfg.hidden_size,),
                      cfg.weight_dtype)
    batch, frames, height, width, channels = video.shape
    grid = (frames // kt, height // kp, width // kp)
    patches = video.reshape(batch, grid[0], kt, grid[1], kp, grid[2], kp, channels)
    patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, math.prod(grid), kt * kp * kp * channels)
    kernel, bias = nn.dtypes.promote_dtype(kernel, bias, dtype=cfg.compute_dtype)
    # `projection.project`, as every other projection: its CPU backward keeps the weight gradient in YNNPACK.
    return projection.project(patches, kernel.reshape(-1, cfg.hidden_size)) + bias, grid


class ViTBlock(nn.Module):
  """Pre-norm transformer block; `grid` (T', H', W') is static and fixes the RoPE positions."""

  config: ViTConfig
  grid: tuple[int, int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    rotate = functools.partial(rope.apply_rope_3d, grid=self.grid, layout=cfg.rope_layout,
                               reference_grid=cfg.rope_reference_grid)
    attn = layers.SelfAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, use_bias=cfg.qkv_bias,
                                attention_impl=cfg.attention_impl, name="attention", **kw)
    h = layers.layer_norm(cfg.layer_norm_eps, name="norm1", **kw)(x)
    x = x + attn(h, positions=lambda q, k: (rotate(q), rotate(k)))
    h = layers.layer_norm(cfg.layer_norm_eps, name="norm2", **kw)(x)
    x = x + layers.Mlp(cfg.mlp_dim, activation="gelu", name="mlp", **kw)(h)
    return layers.constrain_activations(x)


class VisionTransformer(nn.Module):
  """`apply(params, video)`: `(B, T, H, W, C)` -> `(B, T/tubelet * H/patch * W/patch, output_dim)`.

  Positions come from the actual input grid (as in Meta's code), so any resolution that is
  a multiple of the patch size works; at 256x256 this equals HF's config-derived grid. With
  `image_patch_embed` a single frame gives H/patch * W/patch tokens from its own embedding.
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
    x, grid = self.embed(video.astype(cfg.compute_dtype))
    x = layers.constrain_activations(x)
    block = layers.remat_block(ViTBlock, cfg.remat)
    hierarchical = []
    for i in range(cfg.num_layers):
      x = block(cfg, grid, name=f"layers_{i}")(x)
      if i in cfg.hierarchical_layers:
        # Every norm runs whatever `output` is, so the parameter tree does not depend on it; XLA drops
        # the ones the output does not read.
        hierarchical.append(self.layer_norm(f"norms_block_{len(hierarchical)}")(x))
    if not cfg.hierarchical_layers:
      return self.layer_norm("norm")(x)
    return jnp.concatenate(hierarchical, axis=-1) if cfg.output == "hierarchical" else hierarchical[-1]

  def layer_norm(self, name: str) -> nn.LayerNorm:
    cfg = self.config
    return layers.layer_norm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, name=name)

  def embed(self, video: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
    """Patch tokens (plus the modality embedding) and their grid.

    V-JEPA 2.1 (`VisionTransformer.forward`, `check_temporal_dim`) embeds an input of exactly one
    frame with `patch_embed_img` and adds `img_mod_embed`; anything else is a video: `patch_embed`
    and `video_mod_embed`. At init both embeddings are created whatever the input, so converted
    checkpoints have one parameter tree.
    """
    cfg = self.config
    image = cfg.image_patch_embed and video.shape[1] == 1
    video_embed = PatchEmbed(cfg, name="patch_embed")
    image_embed = PatchEmbed(cfg, tubelet_size=1, name="patch_embed_img") if cfg.image_patch_embed else None
    if image:
      x, grid = image_embed(video)
      if self.is_initializing():
        video_embed(fill_tubelet(video, cfg.tubelet_size))
    else:
      x, grid = video_embed(fill_tubelet(video, cfg.tubelet_size))
      if image_embed is not None and self.is_initializing():
        image_embed(video[:, :1])
    if cfg.modality_embeddings:
      init = nn.with_logical_partitioning(nn.initializers.normal(1e-6), ("embed",))  # Meta's std
      embeds = {m: self.param(f"{m}_mod_embed", init, (cfg.hidden_size,), cfg.weight_dtype) for m in ("img", "video")}
      x = x + embeds["img" if image else "video"].astype(x.dtype)
    return x, grid
