"""open-vljepa's MSR-VTT text-to-video evaluation, to compare a converted `best.pt` with its R@1 23.9.

open-vljepa (github.com/dion-jy/open-vljepa, Hub `cun-bjy/open-vljepa`) is the one public trained
VL-JEPA of the paper's architecture. Its README reports MSR-VTT text->video R@1 23.9 / R@5 51.4 /
R@10 65.1 on a 500-video test pool (`scripts/eval.py --n_videos 500`, the "MSRVTT-only Stage B"
checkpoint). With the checkpoint and the videos:

    # 1. The frozen X-encoder (not in best.pt) and the trained predictor + Y-encoder, as one model.
    python -m vljepa_jax.convert --model vjepa2 --input facebook/vjepa2-vitl-fpc64-256 --output $CKPT/vjepa2_vitl
    python -m vljepa_jax.convert --model open_vljepa --input cun-bjy/open-vljepa \\
        --x_encoder $CKPT/vjepa2_vitl --output $CKPT/open_vljepa
    # 2. open-vljepa's annotations.json (its scripts/download_msrvtt.py) -> a manifest of the test split,
    #    in the file's order (the pool is its first 500 videos).
    python -m vljepa_jax.data.benchmarks msrvtt --annotations $MSRVTT/annotations.json --split test \\
        --media-root $MSRVTT/videos --output $M/msrvtt_open_vljepa.jsonl
    # 3. Evaluate.
    python -m vljepa_jax.main --mode=eval --config=configs/eval_open_vljepa.py --workdir=$W \\
        --config.init.checkpoint=$CKPT/open_vljepa \\
        --config.evals.msrvtt.data.sources.main.manifest=$M/msrvtt_open_vljepa.jsonl \\
        --config.evals.msrvtt.data.sources.main.media_root=$MSRVTT/videos

The architecture comes from the converted model (`model_setup.whole_model`): `config.model` below
is not used. Converted without `--x_encoder`, the model lacks its X-encoder: pass
`--config.init.x_encoder=$CKPT/vjepa2_vitl` instead. The tokenizers are the Hub's Llama-3.2-1B
(gated: accept its licence and log in) and EmbeddingGemma-300M, of which only the tokenizer and
config files are fetched; `--config.tokenizers.query=DIR` / `.target=DIR` take local folders.

The protocol, as open-vljepa's code runs it (`scripts/eval.py`, `openvljepa/data/msrvtt.py`,
`configs/stage_b_retrain.yaml`), and where ours differs:
  pool       the first 500 test videos of annotations.json in file order (the source's `limit`),
             every caption of each as a query (about 10,000 text->video queries). The import fails
             while any test video is missing; `--skip-missing` leaves the missing ones out (and lists
             them), which would move later videos into the pool, so check none of the first 500 is;
  frames     8 per video, `np.linspace(0, n - 1, 8)` truncated over the whole video
             (`data.frame_sampling="first_to_last"`), short side resized to 256 (bilinear,
             antialiased), centre crop 256, ImageNet mean and std;
  query      "Describe the video.", Llama-3.2 tokens with BOS, padded to 64 with id 128004 and
             masked (padding never reaches the pooled prediction, so its id does not matter);
  targets    each caption through EmbeddingGemma's tokenizer (BOS and EOS), at most 64 tokens;
  score      cosine of Ŝ_Y and S_Y; R@1/5/10 in both directions (open-vljepa reports text->video);
  precision  open-vljepa runs under bf16 autocast; so does this config (`dtype`), with fp32 weights.
  ties       open-vljepa ranks by the number of *strictly* higher scores (a tie favours the correct
             video); ours counts ties against the model (`metrics.ranks`). Scores tie only for
             identical inputs (a duplicated video), which moves R@1 by a query or two at most.
open-vljepa's default is a 2990-video pool (the whole test split); `--config.evals.msrvtt.data.
sources.main.limit=2990` evaluates that. Its README's Stage-A and WebVid figures used other
checkpoints; only the in-domain Stage-B `best.pt` is published.
"""
from __future__ import annotations

import ml_collections

from vljepa_jax.models import vljepa
from vljepa_jax.train import config_base

POOL_SIZE = 500  # open-vljepa's eval.n_videos: its README's figures
QUERY = "Describe the video."  # scripts/eval.py DEFAULT_RETRIEVAL_PROMPT
# configs/stage_b_retrain.yaml: data.num_frames, image_size, max_query_len, max_caption_len.
NUM_FRAMES, IMAGE_SIZE, TEXT_LENGTH = 8, 256, 64
QUERY_TOKENIZER = "meta-llama/Llama-3.2-1B"  # open-vljepa's predictor.llama_name
TARGET_TOKENIZER = "google/embeddinggemma-300m"  # its y_encoder.model_name


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = config_base.base_config()
  c.model = vljepa.paper_config().to_dict()  # replaced by the converted model's architecture
  c.dtype, c.param_dtype = "bfloat16", "float32"
  c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
  # Fails at start-up unless replaced: the converted model (module docstring, step 1).
  c.init.checkpoint = "<converted open-vljepa folder>"
  c.tokenizers.query = QUERY_TOKENIZER
  c.tokenizers.target = TARGET_TOKENIZER
  c.data.num_frames = NUM_FRAMES
  c.data.crop_size = IMAGE_SIZE
  c.data.short_side = IMAGE_SIZE  # torchvision Resize(256) then CenterCrop(256)
  c.data.frame_sampling = "first_to_last"
  c.data.default_query = QUERY
  c.data.query_length = TEXT_LENGTH
  c.data.target_length = TEXT_LENGTH
  c.data.shuffle = False
  c.eval_batch_size = 8  # scripts/eval.py --video_batch_size
  source = {"type": "manifest", "manifest": "", "media_root": "", "limit": POOL_SIZE}
  c.evals = {"msrvtt": {"type": "retrieval", "ks": (1, 5, 10), "directions": ("t2v", "v2t"),
                        "data": {"sources": {"main": source}}}}
  return config_base.finalize(c)
