"""The demo with a streaming predictor: a causal Mamba-3 that reads each frame once and carries its state.

    python -m vljepa_jax.main --config=configs/demo_streaming.py --workdir=/tmp/vljepa_streaming
    python experiments/selective_decoding/streaming.py --workdir=/tmp/vljepa_streaming

`configs/demo.py` (the same data, stages, schedule and evaluators) with the three changes that
make the whole model causal in time, so that a video stream can be fed a few frames at a time at
constant cost and memory per step (`VLJEPA.stream_step`) and Ŝ_Y read at every step:

  model.predictor.backbone = "mamba3"   matched to the demo Llama's width, depth, vocabulary and MLP
  model.predictor.causal = True          no token reads a later one
  model.predictor.pool = "query"         Ŝ_Y pools the query's tokens, which read the state
  model.x_encoder_chunk_frames = 2       the X-encoder reads one tubelet at a time

Selective decoding runs in both stream modes on the same streams (`evals.selective_decoding`, sliding
windows, and `evals.selective_decoding_recurrent`, the carried state); the comparison of their cost
per frame and CIDEr-D is `experiments/selective_decoding/streaming.py`.
"""
from vljepa_jax.train import config_base
from vljepa_jax.train import overrides

CHUNK_FRAMES = 2  # one tubelet of the demo's ViT


def get_config(arg: str = ""):
  c = config_base.sibling_config(__file__, "demo").get_config(arg)
  predictor = c.model.predictor
  predictor.backbone = "mamba3"
  overrides.switch_predictor_backbone(c)  # the Mamba-3 config matched to the demo's Llama
  predictor.causal = True
  predictor.pool = "query"
  c.model.x_encoder_chunk_frames = CHUNK_FRAMES
  if "selective_decoding" in c.evals:
    with c.evals.unlocked():
      c.evals.selective_decoding_recurrent = {**c.evals.selective_decoding.to_dict(), "stream_mode": "recurrent"}
  return c
