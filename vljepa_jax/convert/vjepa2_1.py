"""V-JEPA 2.1 encoder (Meta's native `.pt`) -> `vljepa_jax.models.vit.VisionTransformer`.

The torch-hub files (`vjepa2_1_vitl_dist_vitG_384.pt`, ...) are a dict of state dicts:
`ema_encoder` (the distilled ViT-B / ViT-L), `target_encoder` (ViT-g / ViT-G), `encoder`,
`predictor`, with `module.` / `backbone.` prefixes (what the hub's `_clean_backbone_key` strips).
The key read defaults to the hub's: `ema_encoder` when the file has one, else `target_encoder`;
`--checkpoint_key` overrides it.

The encoder is V-JEPA 2's (fused `blocks.{i}.attn.qkv`, `patch_embed.proj`: read with
`vjepa2.native_encoder` and mapped by `vjepa2.block_rules`) plus V-JEPA 2.1's tensors
(app/vjepa_2_1/models/vision_transformer.py): the image patch embedding `patch_embed_img.proj`,
the `(1, 1, D)` modality embeddings `img_mod_embed` / `video_mod_embed`, and the per-layer norms
`norms_block.{j}` in place of the final `norm`. There is no config in the file: the architecture
comes from the shapes, the head count from the width, the hierarchical layers from the depth and
the RoPE reference grid from the patch size (`vit.vjepa2_1`), or from `--variant`.
"""
from __future__ import annotations

from vljepa_jax.convert import vjepa2
from vljepa_jax.convert.mapping import ConversionError, Rule, conv3d, layer_norm_rules, squeeze
from vljepa_jax.models import vit

CONFIG = vit.ViTConfig
TOKENIZER_FILES = ()
IGNORE = vjepa2.IGNORE
# The V-JEPA 2.1 presets (`--variant`): those with per-layer norms.
PRESETS = {name: c for name, c in vit.PRESETS.items() if c.hierarchical_layers}
# Heads by width (src/hub/backbones.py `ARCH_NAME_MAP` -> vit_base, vit_large, vit_giant_xformers,
# vit_gigantic_xformers).
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1408: 22, 1664: 26}
# Which state dict the hub reads, in order of preference.
DEFAULT_KEYS = ("ema_encoder", "target_encoder")


def default_key(state) -> str:
  """What torch hub reads: `ema_encoder` for the distilled ViT-B/L, else `target_encoder` (ViT-g/G)."""
  return next((k for k in DEFAULT_KEYS if isinstance(state.get(k), dict)), DEFAULT_KEYS[-1])


def prepare(state, options, path):
  """Selects the encoder's state dict (see `default_key`), strips prefixes, splits fused qkv, and
  refuses other families, V-JEPA 2 included."""
  key = options.checkpoint_key or default_key(state)
  state = vjepa2.native_encoder(state, key, path, explicit=options.checkpoint_key is not None)
  vjepa2.require_patch_embedding(state, path, "V-JEPA 2.1", [r.pattern for r in rules(None)] + list(IGNORE))
  if not vjepa2.is_vjepa2_1(state):
    raise ConversionError(f"{path} is a V-JEPA 2 checkpoint, not V-JEPA 2.1 (no norms_block, patch_embed_img or "
                          "modality embeddings); convert it with --model vjepa2")
  return state


def config_from_source(hf_config, state, options, path):
  del hf_config  # 2.1 ships as native .pt only
  shapes = vjepa2.infer_shapes(state)
  if options.variant:
    return vjepa2.preset(options.variant, shapes, PRESETS, "V-JEPA 2.1")
  heads = HEADS_BY_WIDTH.get(shapes["hidden_size"])
  if heads is None:
    raise ConversionError(
        f"{path}: width {shapes['hidden_size']} is not a known V-JEPA 2.1 size ({sorted(HEADS_BY_WIDTH)}), so the "
        f"head count is unknown; pass --variant (one of {sorted(PRESETS)})")
  try:
    return vit.vjepa2_1(num_heads=heads, **shapes)
  except ValueError as e:
    raise ConversionError(f"{path}: {e}; pass --variant (one of {sorted(PRESETS)})") from None


def rules(config):
  del config
  return vjepa2.block_rules() + [
      Rule(r"patch_embed_img\.proj\.weight", "patch_embed_img/kernel", conv3d),
      Rule(r"patch_embed_img\.proj\.bias", "patch_embed_img/bias"),
      Rule(r"(?P<modality>img|video)_mod_embed", "{modality}_mod_embed", squeeze),
      *layer_norm_rules(r"norms_block\.(?P<j>\d+)\.", "norms_block_{j}"),
  ]


make_model = vjepa2.make_model
example_inputs = vjepa2.example_inputs
