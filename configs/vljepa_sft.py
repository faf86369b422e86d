"""VL-JEPA stage 2: query-conditioned supervised finetuning (paper §3.2; VL-JEPA_SFT).

    python -m vljepa_jax.main --config=configs/vljepa_sft.py --workdir=$W/sft_run \\
        --config.init.checkpoint=$W/video32_run/video32 \\
        --config.init.x_encoder=$CKPT/vjepa2_vitl --config.init.predictor=$CKPT/llama_l8_16 \\
        --config.init.y_encoder=$CKPT/embeddinggemma --config.data.sources.main.path=$DATA/plm_sft_mix

Starts from the pretrained model (VL-JEPA_BASE): `config.init.checkpoint` names the last
pretraining stage's workdir (`<workdir>/video32` of `configs/vljepa_pretrain.py:video32`, or of
the all-stages run), from which every tower's parameters are read (a fresh optimizer, step 0).
It defaults to the placeholder "<video32 workdir>/video32", which fails at start-up until it is
replaced; `--config.init.checkpoint=""` finetunes from the converted towers instead. The
`init.*` tower folders are still needed: the query and target tokenizers are the ones saved
with them (see `configs/vljepa_pretrain.py` for the conversion commands).

Paper settings: 83k steps at batch 3,072, cosine annealing, the same frozen X-encoder, frozen
Llama embedding table and x0.05 Y-encoder as pretraining. The data is the PerceptionLM mixture
(25M VQA, 2.8M captioning, 1.8M classification samples) plus down-sampled stage-1 data, which
no library can ship: write it to one ArrayRecord source and set
`--config.data.sources.main.path=...` (opened only when the pipeline is built). Records with an
answer train as ⟨video, question, answer⟩; the others as captions under `default_query`
(`data.text_mode="auto"`).

Where the paper is silent: the peak learning rate, warmup, frame count, token lengths and the
rest (optimizer, clipping, temperature, precision, data loading: the pretraining choices,
`configs/vljepa_pretrain.py`) each say so in a comment below.

`configs/vljepa_sft.py:ydecoder` trains the Y-decoder on top of a finished model (VL-JEPA_BASE or
_SFT, through `init.checkpoint`), everything else frozen:

    python -m vljepa_jax.main --config=configs/vljepa_sft.py:ydecoder --workdir=$W/ydecoder_run \
        --config.init.checkpoint=$W/sft_run/sft ...same init.* and data flags...

The paper gives no details of its decoder; every choice is marked below. The checkpoint has no
decoder parameters, so they start from their initialisation (the log says so).
"""
from __future__ import annotations


import ml_collections

from vljepa_jax.models import llama
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder
from vljepa_jax.train import config_base


pretrain = config_base.sibling_config(__file__, "vljepa_pretrain")

STAGE = "sft"
DATASET = "plm_sft_mixture"
# The stage SFT starts from, through `init.checkpoint`.
PREVIOUS = "video32"

# Paper silent on the Y-decoder. It writes the target tokenizer's ids (EmbeddingGemma's 262,144-token
# vocabulary), so its table and head dominate: 4 narrow Llama layers (512 wide, GQA 8/2) read the
# 1,536-d embedding through 4 prefix tokens; 128 new tokens cover captions and answers.
Y_DECODER_TEXT_LENGTH = 128
PAPER_Y_DECODER = y_decoder.YDecoderConfig(
    embed_dim=1536, num_prefix_tokens=4, max_length=4 + Y_DECODER_TEXT_LENGTH,
    llama=llama.LlamaConfig(vocab_size=262_144, hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8,
                            num_kv_heads=2, head_dim=64, rope_theta=10_000.0, rope_scaling_factor=None))


def sft_data() -> dict:
  """The SFT data settings (also the ablations' base: the paper ablates on SFT-stage data)."""
  return {
      "text_mode": "auto",  # QA where a record has an answer, caption (under default_query) otherwise
      # Paper silent on SFT frames: 32, what the model last pretrained on (video32).
      "num_frames": 32,
      "default_query": pretrain.VIDEO_QUERY,
      # Paper: at most 512 query tokens and a 512-token Y-encoder context. SFT questions and
      # answers vary in length, so both use the full 512 (right-padded; pooling ignores padding).
      # At batch 3,072 the Y-encoder's share of the compute stays small.
      "query_length": 512,
      "target_length": 512,
      "seed": 3,  # paper silent; another seed than the pretraining stages'
      "sources": {"main": dict(pretrain.PLACEHOLDER_SOURCE)},
  }


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in ("", "ydecoder"):
    raise ValueError(f"configs/vljepa_sft.py:{arg}: expected '' (SFT) or 'ydecoder'")
  if arg == "ydecoder":
    return ydecoder_config()
  c = pretrain.common()
  c.total_steps = 83_000
  c.batch_size = 3_072
  # GradCache microbatches (paper silent; exact, memory only): 4 clips of 32 frames (~4,600
  # tokens with a 512-token query) per GPU per microbatch on the paper's 192 GPUs.
  c.num_microbatches = 4
  c.checkpoint_every = 1_000  # paper silent: ~2.5 days / 83k steps ≈ 2.6 s a step, so ~45 min apart
  pretrain.merge(c, {"data": sft_data()})
  c.optimizer.update(
      schedule="warmup_cosine",  # paper: cosine annealing
      # Paper silent on the peak LR: pretraining's 5e-5, since SFT continues the same objective.
      learning_rate=pretrain.PAPER_LEARNING_RATE,
      # Paper silent on warmup: 1,000 steps (1.2% of 83k) let fresh Adam moments settle before
      # the peak rate, as every stage starts a new optimizer.
      warmup_steps=1_000,
      end_learning_rate_factor=0.0)  # annealed to zero at step 83k (paper silent on the floor)
  c.init.checkpoint = f"<{PREVIOUS} workdir>/{PREVIOUS}"  # must be replaced (module docstring)
  pretrain.set_stages(c, DATASET, [(STAGE, c, DATASET)])
  return config_base.finalize(c)


def ydecoder_config() -> ml_collections.ConfigDict:
  """The Y-decoder stage: teacher forcing on S_Y of the SFT mixture's answers and captions."""
  c = get_config()
  with c.unlocked():
    model = vljepa.VLJEPAConfig.from_dict(c.model.to_dict()).replace(y_decoder=PAPER_Y_DECODER)
    c.model = ml_collections.ConfigDict(model.to_dict())
  c.objective = "y_decoder"
  # Decoding S_Y of the text itself teaches the decoder the Y-encoder's whole space, so it reads
  # any embedding there (Ŝ_Y included) and needs no video forward pass; `y_decoder_condition=
  # "predictor"` trains on Ŝ_Y instead.
  c.y_decoder_condition = "target"
  c.total_steps = 20_000  # paper silent: ~60M texts at batch 3,072, a fraction of the SFT mixture
  c.num_microbatches = 1  # only the text towers run; no video activations to accumulate over
  c.data.target_length = Y_DECODER_TEXT_LENGTH
  c.optimizer.update(schedule="warmup_cosine", learning_rate=3e-4, warmup_steps=1_000, weight_decay=0.01)
  c.init.checkpoint = f"<{STAGE} workdir>/{STAGE}"  # must be replaced (module docstring)
  pretrain.set_stages(c, DATASET, [("ydecoder", c, DATASET)])
  return config_base.finalize(c)
