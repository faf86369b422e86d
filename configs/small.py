"""A mid-size VL-JEPA for one accelerator: the paper's wiring at about a tenth of its widths.

    python -m vljepa_jax.main --config=configs/small.py --workdir=/tmp/vljepa_small

ViT-S-like X-encoder (384 wide, 12 layers, patch 16) on 8 frames at 128², a 6-layer 512-wide
Llama-style predictor and a MiniLM-sized Y-encoder, all randomly initialised (`init.*` can load
converted towers of these sizes), trained on the embedded dataset. Used by
`benchmarks/train_step.py` as the step between the laptop demo and the paper's model.
"""
from vljepa_jax.models import bert
from vljepa_jax.models import vljepa
from vljepa_jax.train import config_base


def get_config(arg: str = ""):
  del arg
  c = config_base.base_config()
  tiny = vljepa.tiny_config()
  vit = tiny.x_encoder.replace(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536, patch_size=16)
  llama = tiny.predictor.backbone_config.replace(vocab_size=512, hidden_size=512, intermediate_size=1536,
                                                 num_layers=6, num_heads=8, num_kv_heads=2, head_dim=64)
  predictor = tiny.predictor.replace(backbone_config=llama, vision_dim=vit.hidden_size, embed_dim=512)
  y_encoder = tiny.y_encoder.replace(backbone_config=bert.PRESETS["minilm_l6"].replace(vocab_size=512))
  c.model = tiny.replace(x_encoder=vit, predictor=predictor, y_encoder=y_encoder, freeze_x_encoder=False).to_dict()
  c.tokenizers.query = "shapes"
  c.tokenizers.target = "shapes"
  c.batch_size = 32
  c.total_steps = 2000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.data.update(num_frames=8, crop_size=128, query_length=16, target_length=16,
                default_query="what is happening in this video?")
  c.data.sources = {"shapes": {"type": "shapes", "kind": "video", "size": 50_000}}
  c.optimizer.update(learning_rate=5e-4, schedule="warmup_cosine", warmup_steps=200, weight_decay=0.05,
                     grad_clip_norm=1.0, lr_rules=(("y_encoder/.*", 0.05),))
  return config_base.finalize(c)
