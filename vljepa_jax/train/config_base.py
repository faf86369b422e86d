"""Every key an experiment config has, with its default: the one place the schema is written.

`configs/*.py` start from `base_config()`, change what their experiment needs, and return the
config locked (`finalize`), so a command-line override of a key that does not exist, or of the
wrong type, fails before anything is compiled:

    python -m vljepa_jax.main --config=configs/small.py --config.total_steps=50 --config.optimizer.learning_rate=1e-3

A key that a stage sets itself is overridden for that stage (`--config.stages.video.total_steps=50`);
`stages.resolve` and `main.py`'s flag parsing say which key to use when a top-level override would not reach it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from types import ModuleType

import ml_collections

from vljepa_jax.data import pipeline
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models import vljepa


# An LR-rule pattern standing for the token-embedding table of whichever predictor backbone the run
# uses (`model.predictor.backbone`); `resolve_lr_rules` replaces it, so one config serves every backbone.
PREDICTOR_TOKEN_EMBEDDING = "<predictor token embedding>"


def paper_lr_rules(predictor_backbone: str | None = None) -> tuple[tuple[str, float], ...]:
  """Parameters the paper does not train: the X-encoder (V-JEPA 2 is frozen) and the token-embedding
  table of the predictor's backbone (the backbone says which parameter that is); the Y-encoder learns
  at 0.05x the base rate. Without a backbone name the table's rule is `PREDICTOR_TOKEN_EMBEDDING`,
  resolved for the run's backbone when the stage is built."""
  table = PREDICTOR_TOKEN_EMBEDDING if predictor_backbone is None else predictor_backbones.token_embedding_rule(
      predictor_backbone)
  return (("x_encoder/.*", 0.0), (table, 0.0), ("y_encoder/.*", 0.05))


PAPER_LR_RULES = paper_lr_rules()


def resolve_lr_rules(rules, predictor_backbone: str) -> tuple[tuple[str, float], ...]:
  """`rules` with `PREDICTOR_TOKEN_EMBEDDING` replaced by the regex of `predictor_backbone`'s embedding table."""
  table = predictor_backbones.token_embedding_rule(predictor_backbone)
  return tuple((table if pattern == PREDICTOR_TOKEN_EMBEDDING else pattern, multiplier) for pattern, multiplier in rules)


def data_defaults() -> dict:
  return {f.name: f.default for f in dataclasses.fields(pipeline.DataConfig) if f.name != "sources"}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Loop and bookkeeping.
  c.total_steps = 1000
  c.batch_size = 64  # global, across all processes
  c.num_microbatches = 1  # GradCache accumulation: the step sees the full global batch's negatives
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.max_nonfinite_steps = 10  # stop after this many consecutive skipped (non-finite) steps
  # Weights & Biases, besides metrics.jsonl and TensorBoard: off while `project` is "" (see
  # train/wandb_log.py; needs the `wandb` extra). mode: "online", "offline", "disabled" or "" (WANDB_MODE);
  # group "": the workdir's name; entity "": the account's default.
  c.wandb = ml_collections.ConfigDict({"project": "", "entity": "", "group": "", "mode": ""})
  # Precision and memory: fp32 master weights, compute in `dtype`; `remat` rematerialises every
  # transformer block: "none", "full", "dots" or "dots_no_batch" (`layers.REMAT_POLICIES`).
  c.dtype = "bfloat16"
  c.param_dtype = "float32"
  c.remat = "none"
  # Parallelism: mesh axis sizes (-1: the rest of the devices) and the logical-axis rule set.
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.sharding_rules = "fsdp"
  # CPU-only processes: how many JAX devices the CPU is split into (-1: one per core), so that
  # `mesh` runs the step data-parallel over the cores; vljepa_jax/cpu_devices.py says when it pays
  # (large attention products) and what it costs (host memory).
  c.cpu_devices = 1
  # Architecture: a VLJEPAConfig as nested dicts (every field overridable).
  c.model = ml_collections.ConfigDict(vljepa.tiny_config().to_dict())
  # Converted checkpoints to start towers from ("" = random init); see train/model_setup.py.
  # `checkpoint`: start the first stage from the parameters of another run's stage instead
  # (e.g. `<image workdir>/image` for the video stage); its towers then override the above.
  # `predictor`: a converted checkpoint of the predictor backbone's family (a Llama slice for "llama").
  c.init = ml_collections.ConfigDict({"x_encoder": "", "predictor": "", "y_encoder": "", "checkpoint": ""})
  c.tokenizers = ml_collections.ConfigDict({"query": "predictor", "target": "y_encoder"})
  # Input pipeline: `pipeline.DataConfig` fields; `sources` is {name: source spec}.
  c.data = ml_collections.ConfigDict(data_defaults())
  c.data.sources = ml_collections.ConfigDict({"shapes": {"type": "shapes", "kind": "video", "size": 10_000}})
  # The paper is silent on the temperature; 0.07 is CLIP's initial value (also its usual fixed choice).
  # `bias`: SigLIP's (initial) bias, for name="siglip" only (None: SigLIP's -10).
  c.loss = ml_collections.ConfigDict({"name": "infonce", "temperature": 0.07, "learnable_temperature": False,
                                      "bias": ml_collections.config_dict.placeholder(float), "chunk_size": 2048})
  c.optimizer = ml_collections.ConfigDict({
      "learning_rate": 5e-5, "schedule": "constant", "warmup_steps": 0, "end_learning_rate_factor": 0.0,
      "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "grad_clip_norm": 0.0,  # 0: no clipping
      "lr_rules": PAPER_LR_RULES})
  # What a stage trains: a name in `objectives/registry.py`. "contrastive": InfoNCE between Ŝ_Y and
  # S_Y (`loss`). "y_decoder": the Y-decoder (`model.y_decoder`) learns to write the target text
  # back from an embedding by teacher forcing, everything else frozen; `y_decoder_condition` picks
  # the embedding: "target" (S_Y of the text itself) or "predictor" (Ŝ_Y of the visual input and
  # query). Contrastive stages keep the Y-decoder frozen.
  c.objective = "contrastive"
  c.y_decoder_condition = "target"
  # Evaluators by name: {name: {"type": ..., options}}; run after the last stage, every
  # `eval_every` steps of training (0 = never) and by `--mode=eval` sweeps over checkpoints.
  c.evals = ml_collections.ConfigDict()
  c.eval_batch_size = 256
  c.eval_every = 0
  c.stages = ml_collections.ConfigDict({"train": {}})
  c.stage_order = ("train",)
  return c


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config: from here on only existing keys can be set (with their types)."""
  config.lock()
  return config


def sibling_config(config_file: str, name: str) -> ModuleType:
  """Another config file of the same folder as a module, for configs that build on one another.

  Config files are loaded by path (`--config=configs/x.py`), not imported as a package, so
  `configs/vljepa_sft.py` reaches `vljepa_pretrain.py` with `sibling_config(__file__, "vljepa_pretrain")`.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
  spec = importlib.util.spec_from_file_location(f"vljepa_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
