"""VL-JEPA stage 1: caption pretraining, images then video (paper §3.2; VL-JEPA_BASE).

    python -m vljepa_jax.main --config=configs/vljepa_pretrain.py:image --workdir=$W/image_run \\
        --config.init.x_encoder=$CKPT/vjepa2_vitl --config.init.predictor=$CKPT/llama_l8_16 \\
        --config.init.y_encoder=$CKPT/embeddinggemma --config.data.sources.main.path=$DATA/datacomp_yfcc
    python -m vljepa_jax.main --config=configs/vljepa_pretrain.py:video8 --workdir=$W/video8_run \\
        --config.init.checkpoint=$W/image_run/image ...same init.* flags... \\
        --config.data.sources.main.path=$DATA/action100m
    python -m vljepa_jax.main --config=configs/vljepa_pretrain.py:video32 --workdir=$W/video32_run \\
        --config.init.checkpoint=$W/video8_run/video8 ...same init.* and data flags...

The paper's model (`vljepa.paper_config()`): a frozen V-JEPA 2 ViT-L X-encoder, a predictor made
of Llama-3.2-1B layers 8..15 run bidirectionally (its token-embedding table frozen), an
EmbeddingGemma-300M Y-encoder trained at 0.05x the base learning rate, and linear heads on both
branches into a shared 1,536-d space, trained with bidirectional InfoNCE.

Stages (arg = the stage this run trains; each starts from the previous stage's parameters):

  image    100k steps x 24,000 single frames (images duplicated in time), constant LR 5e-5,
           Datacomp + YFCC-100M captions.
  video8    60k steps at 8 frames, constant LR 5e-5, Action100M.
  video32   10k steps at 32 frames, constant LR 5e-5, Action100M.
  video16  the white paper's variant (one 16-frame video stage after the image stage, batch
           24,000). arXiv v2 does not have it (its 16 frames belong to the PE-ViT controlled
           comparison); kept so that reading can be reproduced. Starts from the image stage.
  ""       (no arg) image -> video8 -> video32 in one run and one workdir; each stage starts
           from the one before, and re-running the command resumes or skips finished stages.

Starting from the previous stage: a single-stage run reads the previous stage's parameters
from `config.init.checkpoint` (a stage workdir, `<workdir>/<stage>`, or its `checkpoints/`
folder; the optimizer state, step and data position are not carried over). For video8, video16
and video32 it defaults to a placeholder such as "<image workdir>/image" that fails loudly at
start-up if it is not replaced, because silently starting a 60k-step stage from the converted
towers would waste the run; pass `--config.init.checkpoint=""` to start from `init.*` on purpose.

Pretrained towers (`config.init.*`, "" = random init) are folders written by the converter:

    python -m vljepa_jax.convert --model vjepa2 --input vitl.pt --checkpoint_key target_encoder \\
        --output $CKPT/vjepa2_vitl                                           # init.x_encoder
    python -m vljepa_jax.convert --model llama --input Llama-3.2-1B --layers 8:16 \\
        --output $CKPT/llama_l8_16                                           # init.predictor
    python -m vljepa_jax.convert --model embeddinggemma --input embeddinggemma-300m \\
        --output $CKPT/embeddinggemma                                        # init.y_encoder

They are needed even when `init.checkpoint` is set: the tokenizers ("predictor", "y_encoder")
are the ones saved with these converted folders. (The paper does not say whether V-JEPA 2's
`encoder` or `target_encoder` weights are used; we take `target_encoder`, the EMA weights V-JEPA 2
evaluates with. Whether EmbeddingGemma's Sentence-Transformers Dense stack is kept is not stated
either; a converted Sentence-Transformers folder keeps it, a bare HF folder does not.)

Data: no dataset ships with the library, so every stage reads one ArrayRecord source named
`main` (`python -m vljepa_jax.data.write_arrayrecord`) whose path is a placeholder "": set
`--config.data.sources.main.path=...`. Sources are only opened when the pipeline is built, so
the config itself loads without data. In the all-stages run ("") the top level is the video32
stage: `data.sources.main.path` is the Action100M data of both video stages, and the image
data goes to `--config.stages.image.data.sources.main.path=...`. A run builds the data iterator
of every stage in `stage_order`, even finished ones (their data position is part of the
checkpoint), so keep passing every stage's path when resuming.

Where the paper is silent (optimizer, warmup, weight decay, clipping, temperature, precision,
video batch, token lengths, prompts, data loading) each value below says so in a comment.
No evaluators are configured: the paper's zero-shot benchmarks are not packaged; add
`config.evals` entries (see `configs/demo.py`) in a copy of this file.

Hardware: the paper used 24 nodes x 8 H200 (192 GPUs). Batches and microbatches below divide
evenly over 192 devices. The mesh shards parameters FSDP-style over the 8 GPUs of a node and
splits the batch over both axes; on a machine with fewer than 8 (or not a multiple of 8)
devices pass `--config.mesh.fsdp=1`.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from vljepa_jax.models import vljepa
from vljepa_jax.train import config_base

STAGES = ("image", "video8", "video32", "video16")
# Which stages a `get_config(arg)` run trains, in order.
VARIANTS = {
    "": ("image", "video8", "video32"),
    "image": ("image",),
    "video8": ("video8",),
    "video32": ("video32",),
    "video16": ("video16",),
}
# The stage each stage starts from (a single-stage run reads it through `init.checkpoint`).
PREVIOUS = {"image": None, "video8": "image", "video32": "video8", "video16": "image"}
# Which dataset a stage reads. Stages of one run that read different datasets each carry their
# own `data.sources.main.path`; stages on the same dataset share the top-level one.
DATASETS = {"image": "datacomp+yfcc100m", "video8": "action100m", "video32": "action100m", "video16": "action100m"}

PAPER_IMAGE_BATCH = 24_000
PAPER_LEARNING_RATE = 5e-5
# The paper does not give the video stages' batch. Table 1's 3.3B samples seen minus the image
# stage's 2.0-2.4B, over 70k video steps, puts it at 13k-19k; 15,360 is in that range and splits
# evenly over the paper's 192 GPUs (80 per GPU) and any power of two up to 1,024.
VIDEO_BATCH = 15_360
WHITE_PAPER_VIDEO_BATCH = 24_000

# A placeholder source: opened only when the pipeline is built, so the config loads without data.
PLACEHOLDER_SOURCE = {"type": "array_record", "path": ""}
# The paper does not give the query used for caption data (§4.1 mentions "a captioning prompt"
# without quoting it). Masked pooling ignores padding, so the query length only has to fit it.
IMAGE_QUERY = "Describe the image."
VIDEO_QUERY = "Describe the video."


def common() -> ml_collections.ConfigDict:
  """Settings every stage shares (unlocked); `stage_config` adds a stage's own."""
  c = config_base.base_config()
  c.seed = 0
  # Loop and bookkeeping (paper silent). Stage 1 took 4 weeks for 170k steps, ~14 s a step: a
  # preemption loses at most ~2 h (500 steps), and logs come about every 12 min (50 steps).
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  # Precision (paper silent): bf16 compute over fp32 master weights; every transformer block is
  # rematerialised, since activations, not the ~1.4B parameters, bound the per-GPU batch.
  c.dtype = "bfloat16"
  c.param_dtype = "float32"
  c.remat = "full"
  # FSDP over the 8 GPUs of a node (NVLink), data parallel across nodes; the batch is split over
  # both axes, so `fsdp` only shards parameters and optimizer state (~12 GB -> ~1.5 GB per GPU).
  c.mesh = {"data": -1, "fsdp": 8, "tensor": 1}
  c.sharding_rules = "fsdp"
  c.model = vljepa.paper_config().to_dict()
  c.model.freeze_x_encoder = True  # the paper's X-encoder is frozen (also its lr rule is 0)
  # Converted checkpoints (module docstring); "" = random init. `checkpoint` is set per stage.
  c.init.x_encoder = ""
  c.init.predictor = ""
  c.init.y_encoder = ""
  c.init.checkpoint = ""
  # Llama's tokenizer for queries, EmbeddingGemma's for targets (paper §3.1).
  c.tokenizers.query = "predictor"
  c.tokenizers.target = "y_encoder"
  c.data.crop_size = 256  # "uniformly sampled into frames at 256² resolution"
  # Paper silent on resizing: the short side goes to 256 and the centre 256² is kept.
  c.data.short_side = None
  c.data.text_mode = "caption"
  # Paper: at most 512 query and 512 target tokens. Caption queries are one fixed prompt, and
  # alt-text / action captions rarely pass 128 Gemma tokens (longer ones are truncated);
  # padding to 512 would make the Y-encoder cost as much as the predictor at batch 24,000.
  c.data.query_length = 32
  c.data.target_length = 128
  # Data loading (paper silent): raw uint8 frames (4x less host memory and transfer than
  # float32; normalised on device), 8 decode processes and 16 read threads per host.
  c.data.video_dtype = "uint8"
  c.data.num_workers = 8
  c.data.num_threads = 16
  c.data.sources = {"main": dict(PLACEHOLDER_SOURCE)}
  # Paper silent on the temperature and whether it is learnable: fixed 0.07, as CLIP's initial
  # value and both public reimplementations.
  c.loss.update(name="infonce", temperature=0.07, learnable_temperature=False)
  c.optimizer.update(
      learning_rate=PAPER_LEARNING_RATE,
      schedule="constant",  # paper: constant; it states no warmup, so there is none
      warmup_steps=0,
      b1=0.9,
      b2=0.95,  # paper silent: 0.95 as in Llama training; 0.999 adapts slowly to large-batch loss spikes
      eps=1e-8,  # paper silent: the AdamW default
      weight_decay=0.05,  # paper silent: a common AdamW value for CLIP/ViT-style training
      grad_clip_norm=1.0,  # paper silent: the usual global-norm clip for Llama-based training
      lr_rules=config_base.PAPER_LR_RULES)  # X-encoder and Llama embedding table frozen, Y-encoder x0.05
  return c


def stage_settings(name: str) -> dict[str, Any]:
  """The keys stage `name` changes on top of `common()`."""
  if name == "image":
    return {
        "total_steps": 100_000,
        "batch_size": PAPER_IMAGE_BATCH,
        "num_microbatches": 1,  # 125 single frames per GPU fit without GradCache
        # Images are duplicated in time to fill the X-encoder's 2-frame tubelet.
        "data": {"num_frames": 1, "default_query": IMAGE_QUERY, "seed": 0},
    }
  # GradCache microbatches (paper silent; exact, only memory changes), sized for 80 GB GPUs with
  # the plain XLA attention: 1,024 (8 frames) / 4,096 (32 frames) visual tokens per clip.
  if name == "video8":
    return {"total_steps": 60_000, "batch_size": VIDEO_BATCH, "num_microbatches": 2,
            "data": {"num_frames": 8, "default_query": VIDEO_QUERY, "seed": 1}}
  if name == "video32":
    # A new data seed (paper silent): a fresh permutation of Action100M rather than replaying
    # the order video8 started with.
    return {"total_steps": 10_000, "batch_size": VIDEO_BATCH, "num_microbatches": 16,
            "data": {"num_frames": 32, "default_query": VIDEO_QUERY, "seed": 2}}
  if name == "video16":
    # White paper: 16 frames at batch 24,000; it gives no step count, so 70k = v2's whole video
    # budget (60k + 10k). 24,000 = 192 x 125, so microbatches of 4,800 (25 per GPU).
    return {"total_steps": 70_000, "batch_size": WHITE_PAPER_VIDEO_BATCH, "num_microbatches": 5,
            "data": {"num_frames": 16, "default_query": VIDEO_QUERY, "seed": 1}}
  raise ValueError(f"unknown pretraining stage {name!r}; expected one of {STAGES}")


def merge(config: ml_collections.ConfigDict, override: Mapping[str, Any]) -> None:
  """Recursive update that, like stage overrides, only changes keys the config already has."""
  for key, value in override.items():
    if key not in config:
      raise KeyError(f"{key!r} is not a config key (known: {sorted(config.keys())})")
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      merge(config[key], value)
    else:
      config[key] = value


def stage_config(name: str) -> ml_collections.ConfigDict:
  """The complete single-stage config of pretraining stage `name` (unlocked)."""
  c = common()
  merge(c, stage_settings(name))
  return c


def diff(full: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
  """The nested keys whose values differ between two configs of the same schema (a stage override)."""
  out = {}
  for key, value in full.items():
    if isinstance(value, Mapping) and isinstance(base[key], Mapping):
      nested = diff(value, base[key])
      if nested:
        out[key] = nested
    elif value != base[key]:
      out[key] = value
  return out


def set_stages(top: ml_collections.ConfigDict, top_dataset: str,
               stages: list[tuple[str, ml_collections.ConfigDict, str]]) -> None:
  """`top.stages` / `top.stage_order` for `[(name, full stage config, dataset)]`, run in that order.

  `top` is the last stage's config; every other stage becomes its difference from `top`. A stage
  on another dataset than `top` always overrides the source path, so setting the top-level
  `data.sources.main.path` can never point it at the wrong data. A difference in a run-level key
  (one model, mesh and pair of tokenizers for every stage) fails in `stages.resolve`.
  """
  base = top.to_dict()
  overrides = {}
  for name, full, dataset in stages:
    override = diff(full.to_dict(), base)
    if dataset != top_dataset:
      sources = override.setdefault("data", {}).setdefault("sources", {})
      sources["main"] = {**sources.get("main", {}), "path": full.data.sources.main.path}
    overrides[name] = override
  top.stages = overrides
  top.stage_order = tuple(name for name, _, _ in stages)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"configs/vljepa_pretrain.py:{arg}: unknown stage {arg!r}; expected one of "
                     f"{sorted(k for k in VARIANTS if k)} or no arg (image -> video8 -> video32 in one run)")
  order = VARIANTS[arg]
  last = order[-1]
  c = stage_config(last)
  if len(order) == 1 and PREVIOUS[last] is not None:
    # Fails at start-up unless replaced (module docstring); "" starts from `init.*` instead.
    c.init.checkpoint = f"<{PREVIOUS[last]} workdir>/{PREVIOUS[last]}"
  # The last stage is the top level itself (its override is empty); earlier ones are differences.
  set_stages(c, DATASETS[last], [(name, c if name == last else stage_config(name), DATASETS[name])
                                 for name in order])
  return config_base.finalize(c)
