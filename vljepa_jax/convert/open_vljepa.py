"""open-vljepa (github.com/dion-jy/open-vljepa, Hub `cun-bjy/open-vljepa`) `best.pt` -> a whole `VLJEPA`.

    python -m vljepa_jax.convert --model open_vljepa --input best.pt --output DIR [--x_encoder VITL_DIR]
    python -m vljepa_jax.convert --model open_vljepa --input cun-bjy/open-vljepa --output DIR

The file is `{"epoch", "model_state_dict", "loss", "config"}` (read with `weights_only=True`;
bf16 and fp32 tensors are both accepted). Its state dict maps onto our parameter tree as

    predictor.embed_tokens / layers.{i} / norm  -> predictor/llama/...   (Llama layers, renumbered 0..n-1)
    predictor.vis_proj  (Linear + bias)         -> predictor/vision_proj
    predictor.out_proj  (Linear + bias)         -> predictor/head
    y_encoder.model.*   (Gemma3TextModel)       -> y_encoder/backbone/... (no Sentence-Transformers dense stack)
    y_encoder.projector (Linear + bias)         -> y_head

and the model computes what open-vljepa does: [vis_proj(visual); embed(query)] through the kept
layers with a key-padding-only mask (bidirectional unless the run set `disable_causal_mask: false`)
and RoPE positions 0..L-1 over the concatenation, final norm, masked mean over the visual and real
query tokens, out_proj; S_Y is the masked mean of the Gemma backbone's last hidden state (no L2
normalisation) through the projector. Those are our defaults (`PredictorConfig(pool="all")`,
`TextEncoderConfig(dense_dims=(), normalize=False)`), so no special case is needed.

The X-encoder is not in the file (open-vljepa filters the frozen V-JEPA 2 out of its
checkpoints; it is stock `facebook/vjepa2-vitl-fpc64-256`). Either pass `--x_encoder DIR`, a
folder converted with `--model vjepa2`, and the output is the complete model; or leave it out and
the output records `x_encoder` as omitted: `load(DIR)` then returns parameters without
`x_encoder/`, enough for Ŝ_Y from cached X-encoder tokens `(B, N, 1024)` and for S_Y; feeding
video needs the X-encoder's parameters merged in (`params["x_encoder"] = load(VITL_DIR)[1]`) or
`config.init.x_encoder=VITL_DIR` when training from it.

Architecture: depths, widths and vocabularies come from the tensor shapes; what shapes cannot
tell (head_dim, RoPE with llama3 scaling, norm eps, Gemma's layer pattern, window and
query_pre_attn_scalar) comes from our Llama-3.2-1B and EmbeddingGemma-300M presets, the models the
checkpoint's `config` names. For those names the result must be the preset itself (a sliced
Llama-3.2-1B: source layers 16-n..15); a checkpoint built on other, smaller models of the same
families (the tests') gets the presets' non-shape settings.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from vljepa_jax.convert import embeddinggemma
from vljepa_jax.convert import llama as llama_convert
from vljepa_jax.convert.mapping import ConversionError, Rule, identity, linear_rules
from vljepa_jax.convert.source import torch_state_dict_to_numpy
from vljepa_jax.models import gemma
from vljepa_jax.models import llama
from vljepa_jax.models import predictor as predictor_lib
from vljepa_jax.models import text_encoder
from vljepa_jax.models import vit
from vljepa_jax.models import vljepa

CONFIG = vljepa.VLJEPAConfig
TOKENIZER_FILES = ()  # best.pt carries none: the Llama-3.2-1B and EmbeddingGemma tokenizers apply
HUB_FILENAME = "best.pt"  # what `--input owner/name` fetches from the Hub
IGNORE = ()
TOP_LEVEL_KEYS = ("epoch", "model_state_dict", "loss", "config")
X_ENCODER_PREFIX = "x_encoder/"  # converted V-JEPA 2 parameters, added to the state by `prepare`

KNOWN_PREDICTORS = {"meta-llama/Llama-3.2-1B": "llama3_2_1b"}
KNOWN_Y_ENCODERS = {"google/embeddinggemma-300m": "embeddinggemma_300m"}
KNOWN_X_ENCODERS = re.compile(r"facebook/vjepa2-vitl-fpc\d+-\d+(-\w+)?")
_LAYER = re.compile(r"predictor\.layers\.(\d+)\..*")
_GEMMA_LAYER = re.compile(r"y_encoder\.model\.layers\.(\d+)\..*")


class State(dict):
  """The tensors of `model_state_dict` (NumPy), plus the run's `config` dict as `.train_config`."""
  train_config: dict[str, Any] = {}


def _llama_layer_keys(i: int) -> list[str]:
  p = f"predictor.layers.{i}."
  return ([p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
          + [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
          + [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"])


def _gemma_layer_keys(i: int) -> list[str]:
  p = f"y_encoder.model.layers.{i}."
  return ([p + f"self_attn.{x}_proj.weight" for x in "qkvo"] + [p + f"self_attn.{x}_norm.weight" for x in "qk"]
          + [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
          + [p + f"{n}.weight" for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                                         "post_feedforward_layernorm")])


def expected_keys(predictor_layers: int, y_layers: int) -> list[str]:
  """Every tensor name of an open-vljepa state dict with these depths (394 for the published one)."""
  keys = ["predictor.embed_tokens.weight", "predictor.norm.weight", "predictor.vis_proj.weight",
          "predictor.vis_proj.bias", "predictor.out_proj.weight", "predictor.out_proj.bias", "y_encoder.model.embed_tokens.weight",
          "y_encoder.model.norm.weight", "y_encoder.projector.weight", "y_encoder.projector.bias"]
  for i in range(predictor_layers):
    keys += _llama_layer_keys(i)
  for i in range(y_layers):
    keys += _gemma_layer_keys(i)
  return keys


def _depth(state, pattern: re.Pattern) -> int:
  return max((int(m.group(1)) + 1 for m in map(pattern.fullmatch, state) if m), default=0)


def prepare(state, options, path):
  if not isinstance(state, dict) or not isinstance(state.get("model_state_dict"), dict):
    shown = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
    raise ConversionError(f"{path} is not an open-vljepa checkpoint: expected a dict with keys {list(TOP_LEVEL_KEYS)} "
                          f"(its 'model_state_dict' holding 'predictor.*' and 'y_encoder.*' tensors); found {shown}")
  train_config = state.get("config") or {}
  if not isinstance(train_config, dict):
    raise ConversionError(f"{path}: 'config' is a {type(train_config).__name__}, expected the run's config dict")
  tensors = torch_state_dict_to_numpy(state["model_state_dict"], path)
  xenc = sorted(k for k in tensors if k.startswith("x_encoder."))
  if xenc:
    raise ConversionError(f"{path} holds X-encoder tensors ({xenc[:3]}...), which open-vljepa never saves; "
                          "this is not a best.pt written by its scripts/train.py")
  want = expected_keys(_depth(tensors, _LAYER), _depth(tensors, _GEMMA_LAYER))
  missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
  if missing or unexpected:
    problems = ([f"missing tensor(s) {missing[:10]}"] if missing else []) + (
        [f"unexpected tensor(s) {unexpected[:10]}"] if unexpected else [])
    raise ConversionError(f"{path} is not a complete open-vljepa state dict: " + "; ".join(problems))
  out = State(tensors)
  out.train_config = train_config
  if options.x_encoder is not None:
    out.update(_x_encoder_tensors(options.x_encoder))
  return out


def _x_encoder_tensors(directory: str) -> dict[str, np.ndarray]:
  from vljepa_jax import convert  # pylint: disable=g-import-not-at-top  (this module is imported by it)
  from vljepa_jax.convert import mapping  # pylint: disable=g-import-not-at-top
  family, _ = convert.load_config(directory)
  if family != "vjepa2":
    raise ConversionError(f"--x_encoder {directory} holds a {family!r} model; expected a converted V-JEPA 2 "
                          "(python -m vljepa_jax.convert --model vjepa2 --input facebook/vjepa2-vitl-fpc64-256 ...)")
  _, params = convert.load(directory)
  return {X_ENCODER_PREFIX + k: np.asarray(v) for k, v in mapping.flatten(params).items()}


def _shape(state, name: str) -> tuple[int, ...]:
  return tuple(state[name].shape)


def _section(train_config, name: str) -> dict[str, Any]:
  section = train_config.get(name) or {}
  return section if isinstance(section, dict) else {}


def _from_preset(preset, shapes: dict[str, int], known: bool, what: str, name: str | None):
  """The preset with the shape-given fields replaced; a named (known) model must equal the preset."""
  differ = {k: (getattr(preset, k), v) for k, v in shapes.items() if getattr(preset, k) != v}
  if known and differ:
    raise ConversionError(f"the checkpoint's config names {name} as the {what}, but its tensors do not have that "
                          f"model's shapes: " + ", ".join(f"{k} {v} (expected {p})" for k, (p, v) in differ.items()))
  if not known:
    logging.warning("%s %r is not a model we have a preset for: taking its head_dim, RoPE and norm settings from "
                    "our %s preset, and its widths from the tensors", what, name, what)
  return preset.replace(**shapes)


def _heads(rows: int, head_dim: int, name: str) -> int:
  if rows % head_dim:
    raise ConversionError(f"{name} has {rows} rows, not a multiple of head_dim {head_dim}")
  return rows // head_dim


def llama_config(state, train_config) -> llama.LlamaConfig:
  section = _section(train_config, "predictor")
  name = section.get("llama_name")
  full = llama.PRESETS["llama3_2_1b"]
  n = _depth(state, _LAYER)
  vocab, hidden = _shape(state, "predictor.embed_tokens.weight")
  shapes = dict(vocab_size=vocab, hidden_size=hidden,
                intermediate_size=_shape(state, "predictor.layers.0.mlp.gate_proj.weight")[0],
                num_heads=_heads(_shape(state, "predictor.layers.0.self_attn.q_proj.weight")[0], full.head_dim,
                                 "predictor.layers.0.self_attn.q_proj.weight"),
                num_kv_heads=_heads(_shape(state, "predictor.layers.0.self_attn.k_proj.weight")[0], full.head_dim,
                                    "predictor.layers.0.self_attn.k_proj.weight"))
  known = name in KNOWN_PREDICTORS
  config = _from_preset(full, shapes, known, "predictor", name)
  keep = section.get("n_keep_layers", n)
  if keep != n:
    raise ConversionError(f"the checkpoint's config keeps predictor.n_keep_layers={keep} layers, but its state dict "
                          f"has {n} (predictor.layers.0..{n - 1})")
  if known:
    if n > full.num_layers:
      raise ConversionError(f"{n} predictor layers, more than {name}'s {full.num_layers}")
    return config.slice_layers(full.num_layers - n, full.num_layers)  # open-vljepa keeps the last n
  return config.replace(num_layers=n)



def gemma_config(state, train_config) -> gemma.Gemma3Config:
  name = _section(train_config, "y_encoder").get("model_name")
  preset = gemma.PRESETS["embeddinggemma_300m"]
  n = _depth(state, _GEMMA_LAYER)
  vocab, hidden = _shape(state, "y_encoder.model.embed_tokens.weight")
  q = "y_encoder.model.layers.0.self_attn.q_proj.weight"
  k = "y_encoder.model.layers.0.self_attn.k_proj.weight"
  shapes = dict(vocab_size=vocab, hidden_size=hidden, num_layers=n,
                intermediate_size=_shape(state, "y_encoder.model.layers.0.mlp.gate_proj.weight")[0],
                num_heads=_heads(_shape(state, q)[0], preset.head_dim, q),
                num_kv_heads=_heads(_shape(state, k)[0], preset.head_dim, k))
  known = name in KNOWN_Y_ENCODERS
  if not known:
    shapes["layer_types"] = gemma.default_layer_types(n)
  return _from_preset(preset, shapes, known, "Y-encoder", name)


def x_encoder_config(train_config, options, vision_dim: int) -> vit.ViTConfig:
  if options.x_encoder is not None:
    from vljepa_jax import convert  # pylint: disable=g-import-not-at-top
    _, config = convert.load_config(options.x_encoder)
    if config.hidden_size != vision_dim:
      raise ConversionError(f"--x_encoder {options.x_encoder} is {config.hidden_size} wide, but the checkpoint's "
                            f"predictor.vis_proj reads {vision_dim}-wide visual tokens")
    return config
  name = _section(train_config, "encoder").get("model_name")
  config = vit.PRESETS["vit_large"]
  if vision_dim != config.hidden_size or (name is not None and not KNOWN_X_ENCODERS.fullmatch(str(name))):
    raise ConversionError(f"the checkpoint's X-encoder {name!r} ({vision_dim}-wide tokens) is not a V-JEPA 2 ViT-L; "
                          "pass its converted folder with --x_encoder DIR")
  return config


def config_from_source(hf_config, state, options, path):
  del hf_config, path
  train_config = getattr(state, "train_config", {})
  vision_dim = _shape(state, "predictor.vis_proj.weight")[1]
  embed_dim = _shape(state, "predictor.out_proj.weight")[0]
  if _shape(state, "y_encoder.projector.weight")[0] != embed_dim:
    raise ConversionError(f"y_encoder.projector.weight {_shape(state, 'y_encoder.projector.weight')} and "
                          f"predictor.out_proj.weight {(embed_dim,)} disagree on the shared embedding size")
  causal = not _section(train_config, "predictor").get("disable_causal_mask", True)
  backbone = llama_config(state, train_config).replace(causal=causal)
  return vljepa.VLJEPAConfig(
      x_encoder=x_encoder_config(train_config, options, vision_dim),
      predictor=predictor_lib.PredictorConfig(backbone="llama", backbone_config=backbone, vision_dim=vision_dim,
                                              embed_dim=embed_dim, causal=causal, pool="all"),
      y_encoder=text_encoder.TextEncoderConfig(backbone="gemma3", backbone_config=gemma_config(state, train_config),
                                               dense_dims=(), normalize=False))


def omitted(config, options) -> tuple[str, ...]:
  """Top-level parameter subtrees the output deliberately lacks: the X-encoder unless `--x_encoder`."""
  del config
  return () if options.x_encoder is not None else ("x_encoder",)


def _prefixed(rules, src: str, dst: str, keep: str = "") -> list[Rule]:
  return [Rule(src + r.pattern, dst + r.target, r.transform) for r in rules if r.target.startswith(keep)]


def rules(config):
  return [
      *_prefixed(llama_convert.rules(config), r"predictor\.", "predictor/llama/"),
      *linear_rules(r"predictor\.vis_proj\.", "predictor/vision_proj"),
      *linear_rules(r"predictor\.out_proj\.", "predictor/head"),
      *_prefixed(embeddinggemma.rules(config), r"y_encoder\.model\.", "y_encoder/", keep="backbone/"),
      *linear_rules(r"y_encoder\.projector\.", "y_head"),
      Rule(re.escape(X_ENCODER_PREFIX) + r"(?P<path>.+)", X_ENCODER_PREFIX + "{path}", identity),
  ]


def make_model(config):
  return vljepa.VLJEPA(config)


def example_inputs(config):
  size = config.x_encoder.patch_size
  video = jnp.zeros((1, config.x_encoder.tubelet_size, size, size, config.x_encoder.in_channels), jnp.float32)
  ids, mask = jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)
  return video, ids, mask, ids, mask
