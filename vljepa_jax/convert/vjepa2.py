"""V-JEPA 2 encoder -> `vljepa_jax.models.vit.VisionTransformer`.

Two sources, one set of rules:
  * a Hugging Face folder of `VJEPA2Model` (`encoder.layer.{i}.attention.query...`), or of
    `VJEPA2ForVideoClassification` (the same under `vjepa2.`); the predictor, pooler and
    classifier are dropped;
  * Meta's native `.pt` (`vitl.pt`, ...): a dict of `encoder` / `target_encoder` /
    `predictor` state dicts with `module.` / `backbone.` prefixes and a fused
    `blocks.{i}.attn.qkv`. It has no config.json, so the architecture is read off the
    tensor shapes, and the head count (invisible in shapes) off the width.

Names are kept as the source spells them (the rules accept both spellings) so errors point
at the user's own tensors; the one rewrite is the fused qkv, split into q/k/v thirds named
`blocks.{i}.attn.{query,key,value}.*` (the names HF's own converter gives them).

V-JEPA 2.1 (`vjepa2_1.py`) shares the native reading (`native_encoder`), the shape inference,
the preset check and the block rules; a 2.1 checkpoint given here is refused with a pointer there.
"""
from __future__ import annotations

import re

import jax.numpy as jnp

from vljepa_jax.convert.mapping import ConversionError, Rule, conv3d, layer_norm_rules, linear_rules
from vljepa_jax.convert.source import StateDict, select_state_dict, strip_prefixes
from vljepa_jax.models import vit

CONFIG = vit.ViTConfig
TOKENIZER_FILES = ()
# HF: predictor, and the classifier head of VJEPA2ForVideoClassification. Native: the
# sincos `pos_embed` table, unused because positions are RoPE.
IGNORE = (r"predictor\..*", r"pooler\..*", r"classifier\..*", r"pos_embed")
# HF's classification wrapper; native DDP (`module.`) and hub wrapper (`backbone.`) prefixes.
_PREFIXES = ("vjepa2.", "module.", "backbone.")
# Heads by width for native checkpoints, which carry no config (models.md section 1.1).
HEADS_BY_WIDTH = {1024: 16, 1280: 16, 1408: 22}
# The V-JEPA 2 presets (`--variant`): those without V-JEPA 2.1's per-layer norms.
PRESETS = {name: c for name, c in vit.PRESETS.items() if not c.hierarchical_layers}
# Tensors only a V-JEPA 2.1 encoder has (app/vjepa_2_1/models/vision_transformer.py), behind any wrapper prefix.
_V2_1_ONLY = re.compile(r"(?:^|\.)(?:norms_block\.\d+\.|patch_embed_img\.proj\.|img_mod_embed$|video_mod_embed$)")

_PATCH = r"(?:encoder\.embeddings\.patch_embeddings|patch_embed)\.proj\."
_LAYER = r"(?:encoder\.layer|blocks)\.(?P<i>\d+)\."
_ATTN = r"(?:attention|attn)\."
_FINAL_NORM = r"(?:encoder\.layernorm|norm)\."
_FUSED_QKV = re.compile(r"(blocks\.\d+\.attn\.)qkv\.(weight|bias)")


def _split_fused_qkv(state: dict) -> dict:
  """`blocks.{i}.attn.qkv.*` rows [0:D], [D:2D], [2D:3D] are q, k, v (heads contiguous in each)."""
  out, bad = {}, []
  for name, value in state.items():
    m = _FUSED_QKV.fullmatch(name)
    if not m:
      out[name] = value
    elif value.ndim not in (1, 2) or value.shape[0] % 3:
      bad.append(f"{name} {tuple(value.shape)}")
    else:
      n = value.shape[0] // 3
      for i, part in enumerate(("query", "key", "value")):
        out[f"{m.group(1)}{part}.{m.group(2)}"] = value[i * n:(i + 1) * n]
  if bad:
    raise ConversionError("fused qkv tensors must be [3*D, D] weights or [3*D] biases; got: " + ", ".join(bad))
  return out


def prepare(state, options, path):
  """Selects the state dict, strips wrapper prefixes, splits fused qkv, rejects other families."""
  if is_vjepa2_1(state):
    raise ConversionError(f"{path} is a V-JEPA 2.1 checkpoint (it has norms_block / patch_embed_img / modality "
                          "embeddings); convert it with --model vjepa2_1")
  key = options.checkpoint_key or "encoder"
  state = native_encoder(state, key, path, explicit=key != "encoder")
  require_patch_embedding(state, path, "V-JEPA 2", [r.pattern for r in rules(None)] + list(IGNORE))
  return state


def is_vjepa2_1(state) -> bool:
  """Whether any tensor of the checkpoint (in any of its state dicts) is one only V-JEPA 2.1 has."""
  names = [k for v in state.values() if isinstance(v, dict) for k in v] + [k for k in state]
  return any(_V2_1_ONLY.search(name) for name in names)


def native_encoder(state, key: str, path: str, *, explicit: bool) -> StateDict:
  """The encoder's tensors: `state[key]` if the checkpoint nests state dicts (Meta's .pt), with wrapper
  prefixes stripped and fused qkv split. `explicit`: the user named `key`, which a single state dict refuses."""
  nested = any(isinstance(v, dict) for v in state.values())
  if not nested and explicit:
    raise ConversionError(f"{path} holds a single state dict; --checkpoint_key {key} "
                          "only applies to a native V-JEPA .pt with several")
  state = select_state_dict(state, key if nested else None, path)
  return _split_fused_qkv(strip_prefixes(state, _PREFIXES))


def require_patch_embedding(state: StateDict, path: str, family: str, known: list[str]) -> None:
  """Refuses a checkpoint of another family, naming some of its tensors that no `known` regex matches."""
  if any(re.fullmatch(_PATCH + "weight", k) for k in state):
    return
  patterns = [re.compile(p) for p in known]
  foreign = sorted(k for k in state if not any(p.fullmatch(k) for p in patterns))
  raise ConversionError(
      f"{path} is not a {family} encoder checkpoint: it has no patch embedding "
      f"(patch_embed.proj.weight or encoder.embeddings.patch_embeddings.proj.weight); "
      f"{len(foreign)} tensors are not {family} names, e.g. {foreign[:8]}")


def _shape(state, pattern: str) -> tuple[int, ...] | None:
  for name, value in state.items():
    if re.fullmatch(pattern, name):
      return tuple(value.shape)
  return None


def infer_shapes(state) -> dict:
  """The fields of `ViTConfig` that tensor shapes determine: width, depth, MLP, patch, tubelet."""
  patch = _shape(state, _PATCH + "weight")
  if patch is None or len(patch) != 5 or patch[3] != patch[4]:
    raise ConversionError(f"V-JEPA 2 patch embedding weight has shape {patch}; expected "
                          "[width, channels, tubelet, patch, patch]")
  depth = 1 + max((int(m.group("i")) for m in (re.match(_LAYER, k) for k in state) if m), default=-1)
  fc1 = _shape(state, r"(?:encoder\.layer|blocks)\.0\.mlp\.fc1\.weight")
  if depth == 0 or fc1 is None:
    raise ConversionError("V-JEPA 2 checkpoint has no transformer blocks (blocks.0.mlp.fc1.weight "
                          "or encoder.layer.0.mlp.fc1.weight)")
  width, channels, tubelet, size, _ = patch
  return dict(hidden_size=width, num_layers=depth, mlp_dim=fc1[0], patch_size=size, tubelet_size=tubelet,
              in_channels=channels)


def preset(variant: str, shapes: dict, presets: dict = PRESETS, family: str = "V-JEPA 2") -> vit.ViTConfig:
  """The `--variant` preset, checked against the checkpoint's shapes (`infer_shapes`)."""
  if variant not in presets:
    raise ConversionError(f"unknown {family} variant {variant!r}; expected one of {sorted(presets)}")
  config = presets[variant]
  differ = {k: (getattr(config, k), v) for k, v in shapes.items() if getattr(config, k) != v}
  if differ:
    raise ConversionError(f"checkpoint does not match --variant {variant}: "
                          + ", ".join(f"{k} is {got} in the checkpoint, {want} in the preset"
                                      for k, (want, got) in sorted(differ.items())))
  return config


def config_from_source(hf_config, state, options, path):
  if options.variant:
    return preset(options.variant, infer_shapes(state))
  if hf_config is not None:
    if hf_config.get("model_type", "vjepa2") != "vjepa2":
      raise ConversionError(f"config.json has model_type {hf_config.get('model_type')!r}, expected 'vjepa2'")
    try:
      return vit.config_from_hf(hf_config)
    except (KeyError, ValueError) as e:
      raise ConversionError(f"unsupported V-JEPA 2 config.json: {e}") from None
  shapes = infer_shapes(state)
  heads = HEADS_BY_WIDTH.get(shapes["hidden_size"])
  if heads is None:
    raise ConversionError(
        f"{path} has no config.json and its width {shapes['hidden_size']} is not a known V-JEPA 2 size "
        f"({sorted(HEADS_BY_WIDTH)}), so the head count is unknown; pass --variant "
        f"(one of {sorted(PRESETS)})")
  return vit.ViTConfig(num_heads=heads, **shapes)


def rules(config):
  del config
  return block_rules() + layer_norm_rules(_FINAL_NORM, "norm")


def block_rules() -> list[Rule]:
  """The patch embedding and the transformer blocks: what V-JEPA 2 and 2.1 encoders share."""
  dst = "layers_{i}/"
  rs = [
      Rule(_PATCH + "weight", "patch_embed/kernel", conv3d),
      Rule(_PATCH + "bias", "patch_embed/bias"),
      *layer_norm_rules(_LAYER + r"norm1\.", dst + "norm1"),
      *layer_norm_rules(_LAYER + r"norm2\.", dst + "norm2"),
      *linear_rules(_LAYER + _ATTN + r"proj\.", dst + "attention/out", in_dims=2),
      *linear_rules(_LAYER + r"mlp\.fc1\.", dst + "mlp/wi"),
      *linear_rules(_LAYER + r"mlp\.fc2\.", dst + "mlp/wo"),
  ]
  for proj in ("query", "key", "value"):
    rs += linear_rules(_LAYER + _ATTN + rf"{proj}\.", dst + f"attention/{proj}", head_shaped_bias=True)
  return rs


def make_model(config):
  return vit.VisionTransformer(config)


def example_inputs(config):
  """One tubelet of one patch: parameter shapes do not depend on the input size."""
  return (jnp.zeros((1, config.tubelet_size, config.patch_size, config.patch_size, config.in_channels),
                    jnp.float32),)
