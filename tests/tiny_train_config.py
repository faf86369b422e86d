"""A seconds-per-run experiment config for the trainer tests (not a test module itself).

    --config=tests/tiny_train_config.py            one stage ("train") of video clips
    --config=tests/tiny_train_config.py:two_stage  image stage, then video stage
    --config=tests/tiny_train_config.py:decoder    a contrastive stage, then a Y-decoder stage,
                                                   evaluated by retrieval and captioning

Everything is random and tiny (16x16 clips, 2-layer towers, the word-level shapes tokenizer), and
paraphrase sampling is off so a batch is a pure function of which records it holds: the same
losses whatever the number of processes the records are spread over.
"""
from vljepa_jax.models import llama as llama_lib
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder
from vljepa_jax.train import config_base


def get_config(arg: str = ""):
  c = config_base.base_config()
  tiny = vljepa.tiny_config()
  vit = tiny.x_encoder.replace(patch_size=8)
  llama = tiny.predictor.backbone_config.replace(vocab_size=160)
  bert = tiny.y_encoder.backbone_config.replace(vocab_size=160)
  c.model = tiny.replace(x_encoder=vit, predictor=tiny.predictor.replace(backbone_config=llama), freeze_x_encoder=False,
                         y_encoder=tiny.y_encoder.replace(backbone_config=bert)).to_dict()
  c.dtype = "float32"
  c.tokenizers.query = "shapes"
  c.tokenizers.target = "shapes"
  c.batch_size = 8
  c.total_steps = 8
  c.log_every = 1
  c.checkpoint_every = 2
  c.keep_checkpoints = 3
  c.data.update(crop_size=16, num_frames=2, query_length=8, target_length=12, num_threads=1, prefetch_batches=0,
                sample_paraphrase=False, default_query="what happens?")
  c.data.sources = {"shapes": {"type": "shapes", "kind": "video", "size": 256, "seed": 0}}
  c.optimizer.update(learning_rate=1e-3, lr_rules=(("y_encoder/.*", 0.05),))
  c.loss.temperature = 0.1
  if arg == "two_stage":
    c.stages = {"image": {"total_steps": 4, "data": {"num_frames": 1, "sources": {"shapes": {"kind": "image"}}}},
                "video": {}}
    c.stage_order = ("image", "video")
  elif arg == "decoder":
    decoder = y_decoder.YDecoderConfig(embed_dim=tiny.predictor.embed_dim, num_prefix_tokens=2, max_length=16,
                                       llama=llama_lib.PRESETS["tiny"].replace(vocab_size=160, num_layers=1))
    c.model = vljepa.VLJEPAConfig.from_dict(c.model.to_dict()).replace(y_decoder=decoder).to_dict()
    c.data.target_length = 10
    c.stages = {"train": {"total_steps": 4}, "decoder": {"total_steps": 4, "objective": "y_decoder"}}
    c.stage_order = ("train", "decoder")
    held_out = {"sources": {"shapes": {"type": "shapes", "kind": "video", "size": 12, "seed": 1000}}}
    c.evals = {"retrieval": {"type": "retrieval", "data": held_out, "batch_size": 8},
               "captioning": {"type": "captioning", "data": held_out, "batch_size": 8}}
    c.eval_batch_size = 16
  elif arg:
    raise ValueError(f"tests/tiny_train_config.py:{arg}: expected '', 'two_stage' or 'decoder'")
  return config_base.finalize(c)


def get_config_with(arg: str = "", **overrides):
  """`get_config(arg)` with dotted keys set, e.g. `get_config_with(**{"loss.learnable_temperature": True})`."""
  config = get_config(arg)
  with config.unlocked():
    for key, value in overrides.items():
      node = config
      *path, last = key.split(".")
      for name in path:
        node = node[name]
      node[last] = value
  return config
