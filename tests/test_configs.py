"""The experiment configs in configs/: they load, lock, resolve, build, and say what the paper says.

Every config file and arg is loaded the way `--config=path:arg` loads it, its stages resolved, and
each stage's data and model configs built; the paper's numbers are checked against literals
written here (not against the config modules' own constants). Parameter-level checks (which
parameters the lr rules freeze) run on abstract parameter trees: shapes only, no arrays.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

from vljepa_jax import losses
from vljepa_jax.data import pipeline
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vljepa
from vljepa_jax.train import config_base
from vljepa_jax.train import optimizer
from vljepa_jax.train import sharding
from vljepa_jax.train import stages as stages_lib
from vljepa_jax.train import trainer

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
PAPER_GPUS = 24 * 8  # 24 nodes x 8 H200
# What the trainer builds once per run from the top level; stage overrides must leave these alone.
RUN_LEVEL = {"model", "init", "tokenizers", "mesh", "dtype", "param_dtype", "remat"}

ABLATION_ARGS = (
    ["", "loss=l1,y_lr=0", "causal=on,pretrain=on"]
    + [f"loss={v}" for v in ("infonce", "cosine", "l1", "l2", "siglip")]
    + [f"y_lr={v}" for v in ("0", "0.01", "0.05", "0.1", "1")]
    + [f"layers={v}" for v in ("8:16", "0:2", "0:4", "0:8", "0:16", "4:12")]
    + [f"{axis}={v}" for axis in ("llama_init", "causal", "pretrain") for v in ("on", "off")]
    + [f"y_encoder={v}" for v in ("embeddinggemma", "minilm")])


@functools.lru_cache(maxsize=None)
def _module(name: str):
  path = os.path.join(CONFIGS, name + ".py")
  spec = importlib.util.spec_from_file_location(f"test_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(name: str, arg: str = ""):
  """`--config=configs/NAME.py:ARG` without the flag machinery (`get_config()` with no arg when "")."""
  module = _module(name)
  return module.get_config(arg) if arg else module.get_config()


def parse_flags(*args: str):
  """The real command-line path: `--config=...` plus `--config.KEY=VALUE` overrides."""
  argv = ["test", *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def build(config):
  """Checks the config is locked and every stage builds; `{stage: (config, DataConfig, VLJEPAConfig)}`."""
  with pytest.raises(AttributeError):
    config.no_such_key = 1
  with pytest.raises(AttributeError):
    config.data.no_such_key = 1
  with pytest.raises(TypeError):
    config.total_steps = "many"
  for name, override in config.stages.items():
    touched = set(override.keys()) & RUN_LEVEL
    assert not touched, f"stage {name} overrides run-level keys {touched}"
  built = {}
  for name, stage in stages_lib.resolve(config):
    data = pipeline.DataConfig.from_dict(stage.data)
    model = vljepa.VLJEPAConfig.from_dict(stage.model.to_dict())
    losses.make_loss(stage.loss.name, temperature=stage.loss.temperature,
                     learnable_temperature=stage.loss.learnable_temperature)
    opt = stage.optimizer
    optimizer.make_schedule(learning_rate=opt.learning_rate, schedule=opt.schedule, warmup_steps=opt.warmup_steps,
                            total_steps=stage.total_steps, end_learning_rate_factor=opt.end_learning_rate_factor)
    assert stage.batch_size % stage.num_microbatches == 0
    built[name] = (stage, data, model)
  return built


@functools.lru_cache(maxsize=None)
def _abstract(model_json: str):
  model = vljepa.VLJEPA(vljepa.VLJEPAConfig.from_dict(json.loads(model_json)))
  video = jax.ShapeDtypeStruct((1, 2, 32, 32, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  return params_lib.abstract_params(model, video, text, text, text, text)


def abstract_params(model: vljepa.VLJEPAConfig):
  """Shape-only parameters; `causal` does not change them, so it is not part of the cache key."""
  model = model.replace(predictor=model.predictor.replace(causal=False))
  return _abstract(json.dumps(model.to_dict(), sort_keys=True))


def multipliers(model: vljepa.VLJEPAConfig, rules) -> dict[str, float]:
  """'/'-joined parameter path -> learning-rate multiplier."""
  rules = config_base.resolve_lr_rules(tuple(map(tuple, rules)), model.predictor.backbone)  # as the trainer does
  tree = optimizer.lr_multipliers(abstract_params(model), rules)
  return {optimizer.param_path(path): m for path, m in jax.tree_util.tree_leaves_with_path(tree)}


def group(mults: dict[str, float], prefix: str) -> set[float]:
  found = {m for path, m in mults.items() if path.startswith(prefix)}
  assert found, f"no parameter under {prefix}"
  return found


def flatten(tree, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_paper_model(model: vljepa.VLJEPAConfig) -> None:
  assert model.embed_dim == 1536
  assert model.freeze_x_encoder
  assert (model.x_encoder.hidden_size, model.x_encoder.num_layers) == (1024, 24)  # ViT-L
  llama = model.predictor.backbone_config
  assert model.predictor.backbone == "llama"
  assert llama.num_layers == 8 and tuple(range(*llama.source_layers)) == tuple(range(8, 16))
  assert (llama.hidden_size, llama.vocab_size) == (2048, 128256)  # Llama-3.2-1B
  assert not model.predictor.causal
  assert model.y_encoder.backbone == "gemma3" and model.y_encoder.backbone_config.hidden_size == 768


def check_paper_lr_rules(model: vljepa.VLJEPAConfig, rules) -> None:
  mults = multipliers(model, rules)
  assert group(mults, "x_encoder/") == {0.0}
  assert group(mults, "y_encoder/") == {0.05}
  assert group(mults, "predictor/llama/embed_tokens/") == {0.0}
  trained = {m for p, m in mults.items() if p.startswith("predictor/") and "embed_tokens" not in p}
  assert trained == {1.0} and group(mults, "y_head/") == {1.0}


# --- demo.py -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, order", [("", ("image", "video", "ydecoder")), ("image", ("image",)),
                                        ("video", ("video",)), ("video,ydecoder", ("video", "ydecoder"))])
def test_demo(arg, order):
  built = build(load("demo", arg))
  assert tuple(built) == order
  frames = {"image": 1, "video": 4, "ydecoder": 4}
  objectives = {"image": "contrastive", "video": "contrastive", "ydecoder": "y_decoder"}
  for name, (stage, data, model) in built.items():
    assert data.num_frames == frames[name]
    assert stage.objective == objectives[name]
    assert model.y_decoder is not None and model.y_decoder.embed_dim == model.embed_dim
  tasks = set(built[order[-1]][0].evals)
  if order[-1] == "ydecoder":
    assert tasks == {"zero_shot_actions", "text_to_video", "vqa", "inverse_dynamics", "hard_negatives", "captioning",
                     "selective_decoding"}
  elif order[-1] == "video":
    assert "captioning" not in tasks and "vqa" in tasks


def test_demo_streaming_is_the_demo_made_causal_in_time():
  """demo_streaming.py changes the demo's predictor to a causal, query-pooled Mamba-3 matched to the demo
  Llama, reads one tubelet at a time, and adds the recurrent selective decoding; nothing else."""
  demo, streaming = build(load("demo", "")), build(load("demo_streaming", ""))
  assert tuple(streaming) == tuple(demo)
  for name, (stage, data, model) in streaming.items():
    demo_stage, demo_data, demo_model = demo[name]
    assert data == demo_data and stage.total_steps == demo_stage.total_steps
    predictor, llama = model.predictor, demo_model.predictor.backbone_config
    assert (predictor.backbone, predictor.causal, predictor.pool) == ("mamba3", True, "query")
    backbone = predictor.backbone_config
    assert (backbone.hidden_size, backbone.num_layers, backbone.vocab_size, backbone.intermediate_size) == (
        llama.hidden_size, llama.num_layers, llama.vocab_size, llama.intermediate_size)
    assert model.x_encoder_chunk_frames == model.x_encoder.tubelet_size == 2
    assert model.replace(predictor=demo_model.predictor, x_encoder_chunk_frames=None) == demo_model
  evals = streaming["ydecoder"][0].evals
  assert set(evals) - set(demo["ydecoder"][0].evals) == {"selective_decoding_recurrent"}
  assert dict(evals.selective_decoding_recurrent) == {**dict(evals.selective_decoding), "stream_mode": "recurrent"}


# --- vljepa_pretrain.py --------------------------------------------------------------------------

PRETRAIN = {  # stage: (steps, batch or None where the paper gives none, frames)
    "image": (100_000, 24_000, 1),
    "video8": (60_000, None, 8),
    "video32": (10_000, None, 32),
    "video16": (70_000, 24_000, 16),  # the white paper's variant: its 16 frames and batch
}


def check_pretrain_stage(name, stage, data, model):
  steps, batch, frames = PRETRAIN[name]
  assert stage.total_steps == steps and data.num_frames == frames
  if batch is not None:
    assert stage.batch_size == batch
  assert data.crop_size == 256 and data.text_mode == "caption"
  assert stage.optimizer.learning_rate == 5e-5 and stage.optimizer.schedule == "constant"
  assert stage.loss.name == "infonce"
  assert (stage.dtype, stage.param_dtype, stage.remat) == ("bfloat16", "float32", "full")
  assert stage.sharding_rules == "fsdp"
  assert (stage.tokenizers.query, stage.tokenizers.target) == ("predictor", "y_encoder")
  assert dict(stage.init) == {"x_encoder": "", "predictor": "", "y_encoder": "",
                              "checkpoint": stage.init.checkpoint}
  assert data.sources == ({"type": "array_record", "path": ""},)
  check_paper_model(model)


@pytest.mark.parametrize("arg", ["image", "video8", "video32", "video16"])
def test_pretrain_single_stage(arg):
  built = build(load("vljepa_pretrain", arg))
  assert tuple(built) == (arg,)
  stage, data, model = built[arg]
  check_pretrain_stage(arg, stage, data, model)
  previous = {"image": None, "video8": "image", "video32": "video8", "video16": "image"}[arg]
  if previous is None:
    assert stage.init.checkpoint == ""
  else:  # a placeholder naming the stage to start from; it fails at start-up unless replaced
    assert stage.init.checkpoint.startswith("<") and stage.init.checkpoint.endswith(f"/{previous}")


def test_pretrain_all_stages_in_one_run():
  config = load("vljepa_pretrain")
  built = build(config)
  assert tuple(built) == ("image", "video8", "video32")
  for name, (stage, data, model) in built.items():
    check_pretrain_stage(name, stage, data, model)
    assert stage.init.checkpoint == ""  # each stage starts from the one before, in the same run
  # The video stages read the top-level path; the image stage its own.
  config.data.sources.main.path = "/data/action100m"
  config.stages.image.data.sources.main.path = "/data/datacomp_yfcc"
  paths = {name: stage.data.sources.main.path for name, stage in stages_lib.resolve(config)}
  assert paths == {"image": "/data/datacomp_yfcc", "video8": "/data/action100m", "video32": "/data/action100m"}


def test_pretrain_lr_rules_on_parameters():
  stage, _, model = build(load("vljepa_pretrain", "image"))["image"]
  check_paper_lr_rules(model, stage.optimizer.lr_rules)
  tree = abstract_params(model)
  expected = [f"layers_{i}" for i in range(8)] + ["embed_tokens", "final_norm"]
  assert sorted(tree["predictor"]["llama"]) == sorted(expected)


@pytest.mark.parametrize("name, arg", [("vljepa_pretrain", a) for a in ("", "image", "video8", "video32", "video16")]
                         + [("vljepa_sft", "")])
def test_batches_split_over_the_paper_hardware(name, arg):
  config = load(name, arg)
  assert sharding.mesh_shape(dict(config.mesh), PAPER_GPUS)["fsdp"] == 8
  for _, stage in stages_lib.resolve(config):
    micro = stage.batch_size // stage.num_microbatches
    assert stage.batch_size % PAPER_GPUS == 0 and micro % PAPER_GPUS == 0, (stage.batch_size, micro)


def test_pretrain_bad_arg():
  with pytest.raises(ValueError, match="video64.*expected one of.*image"):
    load("vljepa_pretrain", "video64")


# --- vljepa_sft.py -------------------------------------------------------------------------------

def test_sft():
  built = build(load("vljepa_sft"))
  assert tuple(built) == ("sft",)
  stage, data, model = built["sft"]
  assert (stage.total_steps, stage.batch_size) == (83_000, 3_072)
  assert data.text_mode == "auto" and data.num_frames == 32 and data.crop_size == 256
  opt = stage.optimizer
  assert opt.schedule == "warmup_cosine" and 0 < opt.warmup_steps < stage.total_steps
  kwargs = dict(learning_rate=opt.learning_rate, schedule=opt.schedule, warmup_steps=opt.warmup_steps,
                total_steps=stage.total_steps, end_learning_rate_factor=opt.end_learning_rate_factor)
  assert optimizer.learning_rate_at(0, **kwargs) == 0.0
  assert optimizer.learning_rate_at(opt.warmup_steps, **kwargs) == pytest.approx(opt.learning_rate)
  assert optimizer.learning_rate_at(stage.total_steps, **kwargs) == pytest.approx(0.0, abs=1e-12)
  # Starts from the last pretraining stage (a placeholder until the user names its workdir).
  assert stage.init.checkpoint.startswith("<") and stage.init.checkpoint.endswith("/video32")
  check_paper_model(model)
  check_paper_lr_rules(model, opt.lr_rules)
  # The same run-level settings as pretraining, so the pretrained parameters fit.
  pretrain = load("vljepa_pretrain", "video32")
  for key in ("model", "tokenizers", "mesh", "dtype", "param_dtype", "remat"):
    value, expected = stage[key], pretrain[key]
    assert (value.to_dict() if hasattr(value, "to_dict") else value) == (
        expected.to_dict() if hasattr(expected, "to_dict") else expected), key


def test_sft_bad_arg():
  with pytest.raises(ValueError, match="expected '' \\(SFT\\) or 'ydecoder'"):
    load("vljepa_sft", "video")


def test_sft_ydecoder_trains_only_a_decoder_over_the_shared_space():
  built = build(load("vljepa_sft", "ydecoder"))
  assert tuple(built) == ("ydecoder",)
  stage, data, model = built["ydecoder"]
  assert stage.objective == "y_decoder" and stage.init.checkpoint.endswith("/sft")
  decoder = model.y_decoder
  assert decoder.embed_dim == 1536 == model.embed_dim
  assert decoder.llama.vocab_size == 262_144  # EmbeddingGemma's tokenizer: the decoder writes target ids
  assert decoder.max_length >= decoder.num_prefix_tokens + data.target_length
  # Everything but the decoder keeps the SFT model's architecture, so the checkpoint fits.
  sft = load("vljepa_sft")
  assert {k: v for k, v in stage.model.to_dict().items() if k != "y_decoder"} == {
      k: v for k, v in sft.model.to_dict().items() if k != "y_decoder"}
  abstract = jax.eval_shape(lambda: {"y_decoder": {"w": jnp.zeros(1)}, "predictor": {"w": jnp.zeros(1)},
                                     "y_encoder": {"w": jnp.zeros(1)}})
  rules = trainer.stage_lr_rules(stage, abstract)
  mults = optimizer.lr_multipliers(abstract, rules)
  assert mults == {"y_decoder": {"w": 1.0}, "predictor": {"w": 0.0}, "y_encoder": {"w": 0.0}}


# --- vljepa_ablation.py --------------------------------------------------------------------------

def ablation_changes(arg: str) -> dict[str, object]:
  """Flattened config keys whose values differ from the base ablation run."""
  base, config = flatten(load("vljepa_ablation").to_dict()), flatten(load("vljepa_ablation", arg).to_dict())
  missing = object()  # keys of one tower's config that the other tower's lacks count as changed
  return {k: config.get(k) for k in base.keys() | config.keys() if config.get(k, missing) != base.get(k, missing)}


@pytest.mark.parametrize("arg", ABLATION_ARGS)
def test_ablation_builds(arg):
  built = build(load("vljepa_ablation", arg))
  assert tuple(built) == ("ablation",)
  stage, data, model = built["ablation"]
  assert (stage.total_steps, stage.batch_size) == (10_000, 512)
  assert stage.optimizer.schedule == "constant" and stage.optimizer.learning_rate == 5e-5
  assert data.text_mode == "auto"  # SFT-stage data
  assert model.embed_dim == 1536 and model.freeze_x_encoder
  # Other slices: seconds each, same rules.
  if tuple(model.predictor.backbone_config.source_layers) in ((8, 16), (4, 12)):
    mults = multipliers(model, stage.optimizer.lr_rules)  # every rule matches a parameter
    assert group(mults, "x_encoder/") == {0.0}


def test_ablation_base_is_the_paper_model():
  stage, _, model = build(load("vljepa_ablation"))["ablation"]
  check_paper_model(model)
  check_paper_lr_rules(model, stage.optimizer.lr_rules)
  assert stage.init.checkpoint == ""  # Table 7's defaults start without stage-1 pretraining


# arg -> the config keys it may change (prefixes), each of which must change.
ABLATION_CHANGES = {
    "loss=infonce": {"optimizer.lr_rules"},
    "loss=cosine": {"loss.name", "optimizer.lr_rules"},
    "loss=l1": {"loss.name", "optimizer.lr_rules"},
    "loss=l2": {"loss.name", "optimizer.lr_rules"},
    "loss=siglip": {"loss.name", "loss.temperature", "loss.learnable_temperature", "optimizer.lr_rules"},
    "y_lr=0.05": set(),
    "y_lr=0": {"optimizer.lr_rules"},
    "y_lr=1": {"optimizer.lr_rules"},
    "layers=8:16": set(),
    # The converted slice to pass is named in init.predictor's placeholder.
    "layers=4:12": {"model.predictor.backbone_config.source_layers", "init.predictor"},
    "layers=0:2": {"model.predictor.backbone_config.source_layers", "model.predictor.backbone_config.num_layers",
                   "init.predictor"},
    "llama_init=on": set(),
    "llama_init=off": {"tokenizers.query", "init.predictor"},
    "causal=off": set(),
    "causal=on": {"model.predictor.causal"},
    "y_encoder=embeddinggemma": {"optimizer.lr_rules"},
    "y_encoder=minilm": {"optimizer.lr_rules", "model.y_encoder.", "init.y_encoder"},
    "pretrain=off": set(),
    "pretrain=on": {"init.checkpoint", "init.predictor"},
    "loss=l1,y_lr=0": {"loss.name", "optimizer.lr_rules"},
}


@pytest.mark.parametrize("arg", sorted(ABLATION_CHANGES))
def test_ablation_changes_exactly_its_axis(arg):
  changes = ablation_changes(arg)
  allowed = ABLATION_CHANGES[arg]
  assert all(any(k.startswith(p) for p in allowed) for k in changes), (arg, sorted(changes))
  assert all(any(k.startswith(p) for k in changes) for p in allowed), (arg, sorted(changes))


@pytest.mark.parametrize("value", ["infonce", "cosine", "l1", "l2", "siglip"])
def test_ablation_loss(value):
  stage, _, model = build(load("vljepa_ablation", f"loss={value}"))["ablation"]
  assert stage.loss.name == value
  mults = multipliers(model, stage.optimizer.lr_rules)  # Table 7(c): frozen text encoder, no (trained) head
  assert group(mults, "y_encoder/") == {0.0} and group(mults, "y_head/") == {0.0}
  assert group(mults, "predictor/head/") == {1.0}


@pytest.mark.parametrize("value", ["0", "0.01", "0.05", "0.1", "1"])
def test_ablation_y_lr(value):
  stage, _, model = build(load("vljepa_ablation", f"y_lr={value}"))["ablation"]
  mults = multipliers(model, stage.optimizer.lr_rules)
  assert group(mults, "y_encoder/") == {float(value)}
  assert group(mults, "y_head/") == {1.0} and group(mults, "x_encoder/") == {0.0}


@pytest.mark.parametrize("value, layers", [("8:16", (8, 16)), ("0:2", (0, 2)), ("0:4", (0, 4)), ("0:8", (0, 8)),
                                           ("0:16", (0, 16)), ("4:12", (4, 12))])
def test_ablation_layers(value, layers):
  _, _, model = build(load("vljepa_ablation", f"layers={value}"))["ablation"]
  llama = model.predictor.backbone_config
  assert llama.num_layers == layers[1] - layers[0] and tuple(llama.source_layers) == layers
  assert (llama.hidden_size, llama.num_heads, llama.vocab_size) == (2048, 32, 128256)
  assert not model.predictor.causal


def test_ablation_layers_parameters():
  stage, _, model = build(load("vljepa_ablation", "layers=4:12"))["ablation"]
  assert tuple(range(*model.predictor.backbone_config.source_layers)) == tuple(range(4, 12))
  tree = abstract_params(model)
  assert sum(k.startswith("layers_") for k in tree["predictor"]["llama"]) == 8
  check_paper_lr_rules(model, stage.optimizer.lr_rules)


def test_ablation_causal_and_init():
  _, _, model = build(load("vljepa_ablation", "causal=on"))["ablation"]
  assert model.predictor.causal
  off, _, _ = build(load("vljepa_ablation", "llama_init=off"))["ablation"]
  assert off.init.predictor == "" and off.tokenizers.query == ""  # the Llama tokenizer must be named
  on, _, _ = build(load("vljepa_ablation", "pretrain=on"))["ablation"]
  assert on.init.checkpoint.endswith("/video32") and on.init.predictor == ""
  base, _, _ = build(load("vljepa_ablation"))["ablation"]
  assert base.init.predictor == "<converted Llama-3.2-1B --layers 8:16>"  # fails at start-up until replaced
  siglip, _, _ = build(load("vljepa_ablation", "loss=siglip"))["ablation"]
  assert (siglip.loss.temperature, siglip.loss.learnable_temperature) == (0.1, True)  # SigLIP's initial t = 10


def test_ablation_placeholders_fail_at_start_up_naming_what_to_pass(tmp_path):
  from vljepa_jax.train import model_setup  # pylint: disable=g-import-not-at-top
  config = load("vljepa_ablation", "base=demo,layers=0:2")
  with pytest.raises(FileNotFoundError, match=r"config.init.predictor='<converted token-baseline decoder .* "
                                              r"--layers 0:2>' is not a folder"):
    model_setup.build(config, str(tmp_path))


# base=demo: the same axes on the demo's video stage, at laptop scale (the runner's configs).
DEMO_ABLATION_ARGS = ["", "loss=siglip", "y_lr=0", "y_lr=1", "layers=0:1", "layers=0:8", "llama_init=off",
                      "causal=on", "pretrain=on"]


@pytest.mark.parametrize("arg", DEMO_ABLATION_ARGS)
def test_demo_ablation_is_the_demo_video_stage_with_the_axis(arg):
  stage, data, model = build(load("vljepa_ablation", ",".join(["base=demo"] + ([arg] if arg else []))))["ablation"]
  video, video_data, video_model = build(load("demo", "video"))["video"]
  assert (stage.batch_size, stage.total_steps, data.num_frames, data.crop_size) == (
      video.batch_size, video.total_steps, video_data.num_frames, video_data.crop_size)
  assert stage.optimizer.schedule == "warmup_constant" and stage.optimizer.learning_rate == video.optimizer.learning_rate
  assert set(stage.evals) == {"zero_shot_actions", "text_to_video", "vqa"}  # Table 7's three columns
  assert model.x_encoder == video_model.x_encoder and model.freeze_x_encoder  # pretrained, frozen, as V-JEPA 2
  llama = model.predictor.backbone_config
  knobs = _module("vljepa_ablation").parse("base=demo," + arg)
  start, stop = knobs["layers"]
  assert (llama.num_layers, tuple(llama.source_layers)) == (stop - start, (start, stop))
  assert llama.hidden_size == video_model.predictor.backbone_config.hidden_size
  assert model.predictor.causal == (arg == "causal=on")
  mults = multipliers(model, stage.optimizer.lr_rules)
  assert group(mults, "x_encoder/") == {0.0}
  assert group(mults, "y_encoder/") == {knobs["y_lr"]}
  assert group(mults, "y_head/") == {0.0 if arg == "loss=siglip" else 1.0}
  assert (stage.init.predictor != "") == (arg not in ("llama_init=off", "pretrain=on"))
  assert (stage.init.checkpoint != "") == (arg == "pretrain=on") == (stage.init.x_encoder == "")


def test_ablation_y_encoder_minilm():
  stage, data, model = build(load("vljepa_ablation", "y_encoder=minilm"))["ablation"]
  assert model.y_encoder.backbone == "bert" and model.y_encoder.backbone_config.hidden_size == 384
  assert stage.init.y_encoder == "minilm"
  assert data.target_length <= model.y_encoder.backbone_config.max_position_embeddings
  mults = multipliers(model, stage.optimizer.lr_rules)  # Table 7(e): frozen tower, trainable head
  assert group(mults, "y_encoder/") == {0.0} and group(mults, "y_head/") == {1.0}
  assert np.prod(abstract_params(model)["y_head"]["kernel"].shape) == 384 * 1536


@pytest.mark.parametrize("arg, message", [
    ("foo=1", r"unknown axis 'foo'.*loss=infonce\|cosine\|l1\|l2.*pretrain=off\|on"),
    ("loss=mse", r"unknown value 'mse' for axis 'loss'; expected infonce\|cosine\|l1\|l2\|siglip"),
    ("y_lr=0.2", r"'0.2' for axis 'y_lr'; expected 0\|0.01\|0.05\|0.1\|1"),
    ("y_lr=fast", r"'fast' for axis 'y_lr'"),
    ("layers=8:17", r"'8:17' for axis 'layers'; expected START:STOP"),
    ("layers=8", r"'8' for axis 'layers'"),
    ("causal=maybe", r"'maybe' for axis 'causal'; expected on\|off"),
    ("y_encoder=qwen3_0.6b", r"'qwen3_0.6b' for axis 'y_encoder'; expected embeddinggemma\|minilm"),
    ("loss", r"'loss' is not AXIS=VALUE"),
    ("loss=l1,loss=l2", r"axis 'loss' is given twice"),
    ("loss=l1,y_lr=0.05", r"y_lr=0.05 sets y_lr=0.05, contradicting loss=l1"),
    ("pretrain=on,layers=0:4", r"pretrain=on .*\['layers'\]"),
    ("pretrain=on,y_encoder=minilm", r"pretrain=on .*\['y_encoder'\]"),
    ("base=demo,layers=0:9", r"'0:9' for axis 'layers'; expected START:STOP with 0 <= START < STOP <= 8"),
    ("base=demo,y_encoder=minilm", r"axis 'y_encoder' is not available with base=demo"),
    ("base=laptop", r"unknown value 'laptop' for 'base'; expected paper\|demo"),
    ("base=demo,base=paper", r"axis 'base' is given twice"),
])
def test_ablation_bad_args(arg, message):
  with pytest.raises(ValueError, match=message):
    load("vljepa_ablation", arg)


# --- the command line ----------------------------------------------------------------------------

# ml_collections loads config files with the deprecated `load_module()`.
@pytest.mark.filterwarnings("ignore:the load_module\\(\\) method is deprecated:DeprecationWarning")
def test_command_line_overrides():
  config = parse_flags(f"--config={CONFIGS}/vljepa_ablation.py:layers=4:12,causal=on",
                       "--config.data.sources.main.path=/data/sft", "--config.init.checkpoint=")
  assert config.data.sources.main.path == "/data/sft" and config.init.checkpoint == ""
  assert tuple(config.model.predictor.backbone_config.source_layers) == (4, 12) and config.model.predictor.causal
  config = parse_flags(f"--config={CONFIGS}/vljepa_sft.py", "--config.init.checkpoint=/w/pretrain/video32")
  assert config.init.checkpoint == "/w/pretrain/video32"
  with pytest.raises(AttributeError, match="path"):  # a misspelt key fails by name
    parse_flags(f"--config={CONFIGS}/vljepa_pretrain.py:image", "--config.data.sources.main.pth=/data")


def test_eval_open_vljepa_is_open_vljepas_msrvtt_protocol():
  """The values of open-vljepa's configs/stage_b_retrain.yaml (data) and scripts/eval.py (prompt, pool)."""
  built = build(load("eval_open_vljepa"))
  (stage, data, _), = built.values()
  assert (data.num_frames, data.crop_size, data.short_side, data.frame_sampling) == (8, 256, 256, "first_to_last")
  assert (data.query_length, data.target_length, data.default_query) == (64, 64, "Describe the video.")
  spec = stage.evals.msrvtt
  assert spec.type == "retrieval" and spec.data.sources.main.limit == 500 and spec.data.sources.main.type == "manifest"
  assert (stage.tokenizers.query, stage.tokenizers.target) == ("meta-llama/Llama-3.2-1B", "google/embeddinggemma-300m")
