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
"""
from __future__ import annotations

import re

import jax.numpy as jnp

from vljepa_jax.convert.mapping import ConversionError, Rule, conv3d, layer_norm_rules, linear_rules
from vljepa_jax.convert.source import select_state_dict, strip_prefixes
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
  nested = any(isinstance(v, dict) for v in state.values())
  if not nested and options.checkpoint_key != "encoder":
    raise ConversionError(f"{path} holds a single state dict; --checkpoint_key {options.checkpoint_key} "
                          "only applies to a native V-JEPA 2 .pt with several")
  state = select_state_dict(state, options.checkpoint_key if nested else None, path)
  state = _split_fused_qkv(strip_prefixes(state, _PREFIXES))
  if not any(re.fullmatch(_PATCH + "weight", k) for k in state):
    known = [re.compile(r.pattern) for r in rules(None)] + [re.compile(p) for p in IGNORE]
    foreign = sorted(k for k in state if not any(p.fullmatch(k) for p in known))
    raise ConversionError(
        f"{path} is not a V-JEPA 2 encoder checkpoint: it has no patch embedding "
        f"(patch_embed.proj.weight or encoder.embeddings.patch_embeddings.proj.weight); "
        f"{len(foreign)} tensors are not V-JEPA 2 names, e.g. {foreign[:8]}")
  return state


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


def _preset(variant: str, shapes: dict) -> vit.ViTConfig:
  if variant not in vit.PRESETS:
    raise ConversionError(f"unknown V-JEPA 2 variant {variant!r}; expected one of {sorted(vit.PRESETS)}")
  config = vit.PRESETS[variant]
  differ = {k: (getattr(config, k), v) for k, v in shapes.items() if getattr(config, k) != v}
  if differ:
    raise ConversionError(f"checkpoint does not match --variant {variant}: "
                          + ", ".join(f"{k} is {got} in the checkpoint, {want} in the preset"
                                      for k, (want, got) in sorted(differ.items())))
  return config


def config_from_source(hf_config, state, options, path):
  if options.variant:
    return _preset(options.variant, infer_shapes(state))
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
        f"(one of {sorted(vit.PRESETS)})")
  return vit.ViTConfig(num_heads=heads, **shapes)


def rules(config):
  del config
  dst = "layers_{i}/"
  rs = [
      Rule(_PATCH + "weight", "patch_embed/kernel", conv3d),
      Rule(_PATCH + "bias", "patch_embed/bias"),
      *layer_norm_rules(_LAYER + r"norm1\.", dst + "norm1"),
      *layer_norm_rules(_LAYER + r"norm2\.", dst + "norm2"),
      *linear_rules(_LAYER + _ATTN + r"proj\.", dst + "attention/out", in_dims=2),
      *linear_rules(_LAYER + r"mlp\.fc1\.", dst + "mlp/wi"),
      *linear_rules(_LAYER + r"mlp\.fc2\.", dst + "mlp/wo"),
      *layer_norm_rules(_FINAL_NORM, "norm"),
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
