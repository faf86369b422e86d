"""The paper's zero-shot suite on benchmarks in their official formats: one command, one results table.

1. Turn each benchmark's official annotation files into a manifest (`vljepa_jax/data/benchmarks.py`;
   layouts and conventions in ../shared/reference/benchmark-formats.md):

    python -m vljepa_jax.data.benchmarks msrvtt --annotations MSRVTT_JSFUSION_test.csv \\
        --media-root $V/msrvtt --output $M/msrvtt.jsonl
    python -m vljepa_jax.data.benchmarks kinetics400 --annotations k400/annotations/val.csv \\
        --media-root $V/k400/val --output $M/kinetics400.jsonl --label-names-out $M/kinetics400.txt
    python -m vljepa_jax.data.benchmarks activitynet_captions --annotations val_1.json --granularity paragraph \\
        --media-root $V/activitynet --output $M/activitynet_captions.jsonl
    cat coco_pope_{random,popular,adversarial}.jsonl > $M/pope.jsonl   # after importing each variant

2. Evaluate a trained run (or a converted checkpoint laid out as one) on the benchmarks named in
   the config argument:

    python -m vljepa_jax.main --mode=eval --workdir=$W \\
        --config=configs/eval_benchmarks.py:msrvtt,kinetics400 \\
        --config.init.checkpoint=$RUN/video32 \\
        --config.init.predictor=$CKPT/llama_l8_16 --config.init.y_encoder=$CKPT/embeddinggemma \\
        --config.evals.msrvtt.data.sources.main.manifest=$M/msrvtt.jsonl \\
        --config.evals.msrvtt.data.sources.main.media_root=$V/msrvtt \\
        --config.evals.kinetics400.data.sources.main.manifest=$M/kinetics400.jsonl \\
        --config.evals.kinetics400.data.sources.main.media_root=$V/k400/val \\
        --config.evals.kinetics400.class_names=$M/kinetics400.txt

   `init.predictor` and `init.y_encoder` supply the tokenizers (as in configs/vljepa_pretrain.py);
   the weights come from `init.checkpoint`, evaluated as global step 0 (stage "init") when the
   workdir holds no training checkpoints. Every placeholder left as it is ("") fails when the
   evaluators are built, naming the key, before anything is compiled. Results go to
   `$W/eval_results.{json,md,csv}`: one row per benchmark.

The model is the paper's (configs/vljepa_pretrain.py, the video32 stage: frozen V-JEPA 2 ViT-L,
Llama-3.2-1B layers 8-15 bidirectional, EmbeddingGemma-300M, 1536-d).

Protocol per benchmark (the paper, §4.1-4.2, states the task and metric, not the prompts):
  msrvtt               text<->video retrieval on the 1k-A test CSV (one caption per video: 1000
                       queries), R@1/5/10 both ways; the paper reports text->video R@1.
  activitynet_captions paragraph-to-video retrieval on val_1, CLIP4Clip's protocol (import with
                       `--granularity paragraph`: one record per video, its sentences joined); the
                       paper does not say which protocol it used. Targets up to 512 tokens, the
                       paper's maximum, since paragraphs are long.
  youcook2             clip-level retrieval over validation segments (one record per timed sentence,
                       the segment as the clip window), as UniVL / CLIP4Clip-style work does.
  coco_karpathy        text<->image retrieval on the Karpathy test split (5 captions per image;
                       `--split test`), single frames.
  kinetics400          zero-shot classification (top-1/top-5) over the 400 official class names,
                       each written through CLIP's video templates and averaged.
  ssv2                 zero-shot classification over the 174 templates (brackets removed); they are
                       sentences already, so the class name is the whole prompt.
  pope                 discriminative VQA on the three POPE variants (yes/no candidates per record;
                       accuracy per variant, `question_type`), single frames; the paper reports the
                       average of the three, which the overall accuracy equals at 3000 questions each.
Queries: "Describe the video." / "Describe the image." for retrieval and classification, the
pretraining configs' captioning prompts (the paper does not quote its prompt; open-vljepa uses the
same); each record's question for VQA. Frames: 32 at 256² for video, the final pretraining stage's
setting, short side resized to 256 and centre-cropped as in training; `--config.data.num_frames=8`
evaluates an 8-frame model. Images are single frames, duplicated in time by the X-encoder as in
the image stage.
"""
from __future__ import annotations

import ml_collections

from vljepa_jax.train import config_base

BENCHMARKS = ("msrvtt", "activitynet_captions", "youcook2", "coco_karpathy", "kinetics400", "ssv2", "pope")
IMAGE_BENCHMARKS = ("coco_karpathy", "pope")
# CLIP's Kinetics prompts, a subset of its ensemble that reads as a sentence for every K400 name.
KINETICS_TEMPLATES = ("a video of a person {}.", "a photo of a person {}.", "a person {}.", "{}")
PARAGRAPH_TARGET_LENGTH = 512  # the paper's maximum text length


def _manifest_source() -> dict:
  # Placeholders: `manifest` must be passed; `media_root` defaults to the manifest's folder when "".
  return {"main": {"type": "manifest", "manifest": "", "media_root": ""}}


def benchmark_evals(names, *, video_query: str, image_query: str) -> dict:
  """`config.evals` for the named benchmarks: each an evaluator over a placeholder manifest source."""
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown or not names:
    raise ValueError(f"configs/eval_benchmarks.py: unknown benchmark(s) {unknown}; expected some of {BENCHMARKS}, "
                     "comma-separated")
  evals = {}
  for name in names:
    data = {"sources": _manifest_source()}
    if name in IMAGE_BENCHMARKS:
      data.update(num_frames=1, default_query=image_query)
    else:
      data.update(default_query=video_query)
    if name == "activitynet_captions":
      data["target_length"] = PARAGRAPH_TARGET_LENGTH
    if name in ("kinetics400", "ssv2"):
      templates = KINETICS_TEMPLATES if name == "kinetics400" else ("{}",)
      evals[name] = {"type": "classification", "class_names": "", "templates": templates, "top_k": (1, 5),
                     "data": data}
    elif name == "pope":
      evals[name] = {"type": "vqa", "data": data}
    else:
      evals[name] = {"type": "retrieval", "ks": (1, 5, 10), "directions": ("t2v", "v2t"), "data": data}
  return evals


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  names = tuple(n for n in arg.split(",") if n)
  pretrain = config_base.sibling_config(__file__, "vljepa_pretrain")
  evals = benchmark_evals(names, video_query=pretrain.VIDEO_QUERY, image_query=pretrain.IMAGE_QUERY)
  config = pretrain.get_config("video32")
  with config.unlocked():
    # Fails at start-up unless replaced: the run (or converted checkpoint) to evaluate.
    config.init.checkpoint = "<trained run>/video32"
    config.evals = evals
    # Evaluation batches (paper silent): 64 clips of 32 frames per step of the whole mesh.
    config.eval_batch_size = 64
  return config
