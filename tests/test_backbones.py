"""Predictor backbones behind the registry (models/predictor_backbones.py).

A toy backbone defined and registered here (one `Backbone`, one registry line) is selected by an
experiment config and trained for a step through the trainer's own stage: nothing else has to
change for a new backbone. Also: converted Llama checkpoints load into `predictor/llama` through
`init.predictor`, and bad backbone names or configs fail by name.
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_train_config
from vljepa_jax.convert import checkpoint
from vljepa_jax.data import global_batch
from vljepa_jax.models import flops
from vljepa_jax.models import llama
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import predictor as predictor_lib
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models import vit
from vljepa_jax.models import vljepa
from vljepa_jax.models.config import ArchConfig
from vljepa_jax.train import config_base
from vljepa_jax.train import model_setup
from vljepa_jax.train import sharding
from vljepa_jax.train import stages
from vljepa_jax.train import train_step
from vljepa_jax.train import trainer


@dataclasses.dataclass(frozen=True)
class ToyConfig(ArchConfig):
  vocab_size: int = 160
  hidden_size: int = 24


class ToyMixer(nn.Module):
  """One token-mixing step: every token adds a projection of the mean of the tokens it may see."""

  config: ToyConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, **kw)
    self.mix = nn.Dense(cfg.hidden_size, **kw)

  def embed(self, ids):
    return self.tokens(ids)

  def __call__(self, *, inputs_embeds, attention_mask, causal):
    mask = attention_mask[..., None].astype(inputs_embeds.dtype)
    total, count = inputs_embeds * mask, mask
    if causal:
      context = jnp.cumsum(total, axis=1) / jnp.maximum(jnp.cumsum(count, axis=1), 1)
    else:
      context = total.sum(axis=1, keepdims=True) / jnp.maximum(count.sum(axis=1, keepdims=True), 1)
    return inputs_embeds + jnp.tanh(self.mix(context))


def toy_flops(config: ToyConfig, tokens: int) -> float:
  return 2.0 * tokens * config.hidden_size ** 2  # the `mix` projection of every token


TOY = predictor_backbones.Backbone(module=ToyMixer, config=ToyConfig, token_embedding="tokens",
                                   forward_flops=toy_flops)


@pytest.fixture
def toy_registered(monkeypatch):
  monkeypatch.setitem(predictor_backbones.BACKBONES, "toy", f"{__name__}:TOY")  # the one registry line


def _toy_experiment():
  """The trainer tests' tiny config with the toy predictor backbone and the paper's LR rules for it."""
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.model.predictor.backbone = "toy"
    config.model.predictor.backbone_config = ToyConfig().to_dict()
    config.optimizer.lr_rules = config_base.PAPER_LR_RULES  # the table rule resolves to the toy's own
  config.model.predictor.backbone_config.hidden_size = 32  # a command-line-style override of the toy's field
  config.model.x_encoder.num_layers = 1  # the encoders only need to exist: one layer each compiles faster
  config.model.y_encoder.backbone_config.num_layers = 1
  return config


def _flat(tree):
  return {"/".join(str(k.key) for k in path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_a_registered_backbone_trains_through_the_trainer(toy_registered, tmp_path):
  config = _toy_experiment()
  assert config_base.paper_lr_rules("toy")[1] == ("predictor/toy/tokens/.*", 0.0)
  name, stage_config = stages.resolve(config)[0]
  setup = model_setup.build(config, str(tmp_path))
  arch = setup.model.config
  assert arch.predictor.backbone_config == ToyConfig(hidden_size=32)
  mesh = sharding.make_mesh(dict(stage_config.mesh))
  stage = trainer.Stage(stage_config, name, setup, mesh, str(tmp_path / name))
  state = stage.init_state(None)
  before = _flat(jax.device_get(state.params))
  host = next(stage.make_iterator())
  batch = global_batch.to_global_batch({k: host[k] for k in train_step.MODEL_INPUTS}, stage.mesh)
  state, metrics = stage.step_fn(state, batch)
  after = _flat(jax.device_get(state.params))

  assert np.isfinite(float(metrics["loss"]))
  predictor = sorted(k for k in before if k.startswith("predictor/"))
  assert predictor == ["predictor/head/bias", "predictor/head/kernel", "predictor/toy/mix/bias",
                       "predictor/toy/mix/kernel", "predictor/toy/tokens/embedding", "predictor/vision_proj/bias",
                       "predictor/vision_proj/kernel"]
  assert before["predictor/toy/tokens/embedding"].shape == (160, 32)
  moved = {k for k in predictor if not np.array_equal(before[k], after[k])}
  # The paper's rule freezes the backbone's own token-embedding table; the rest of the predictor learns.
  assert moved == set(predictor) - {"predictor/toy/tokens/embedding"}
  assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("x_encoder/"))  # rule x0

  # FLOPs: the predictor's count is the projections + the toy's own count over [visual ; query].
  shape = dict(num_frames=2, crop_size=16, query_length=8, target_length=12)
  n = (16 // 8) ** 2  # one tubelet of 2 frames, 16x16 at patch 8
  length = n + 8
  expected = 2 * n * arch.predictor.vision_dim * 32 + 2 * length * 32 * 32 + 2 * 32 * arch.predictor.embed_dim
  assert flops.forward_flops(arch, **shape)["predictor"] == expected


def test_unknown_backbone_and_mismatched_configs_fail_by_name(toy_registered, tmp_path):
  tiny = vljepa.tiny_config()
  unknown = r"predictor backbone='mamba9'; expected one of \['hybrid', 'llama', 'mamba3', 'toy'\]"
  with pytest.raises(ValueError, match=unknown):
    tiny.predictor.replace(backbone="mamba9")
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.model.predictor.backbone = "mamba9"
  with pytest.raises(ValueError, match=unknown):
    model_setup.build(config, str(tmp_path))
  # Switching the backbone but keeping the Llama fields: the toy's config names the first stranger.
  with config.unlocked():
    config.model.predictor.backbone = "toy"
  with pytest.raises(ValueError, match=r"backbone_config for backbone 'toy': ToyConfig: unknown field\(s\) "
                                       r"\['attention_impl', 'causal', 'head_dim'"):
    model_setup.build(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"backbone_config is a LlamaConfig, but backbone 'toy' takes a ToyConfig"):
    tiny.predictor.replace(backbone="toy")
  # A rule for the Llama embedding matches nothing in a toy model: refused, not ignored.
  config = _toy_experiment()
  with config.unlocked():
    config.optimizer.lr_rules = config_base.paper_lr_rules("llama")
  setup = model_setup.build(config, str(tmp_path))
  stage_name, stage_config = stages.resolve(config)[0]
  with pytest.raises(ValueError, match=r"lr rule 'predictor/llama/embed_tokens/\.\*' matches no parameter"):
    trainer.Stage(stage_config, stage_name, setup, sharding.make_mesh(dict(stage_config.mesh)), str(tmp_path))
  # A backbone without converted checkpoints cannot take `init.predictor`.
  config = _toy_experiment()
  with config.unlocked():
    config.init.predictor = str(tmp_path)
  with pytest.raises(ValueError, match=r"predictor backbone 'toy' loads no converted checkpoints"):
    model_setup.build(config, str(tmp_path))


def test_config_round_trip_names_the_backbone_not_its_class(toy_registered):
  predictor = predictor_lib.PredictorConfig(backbone="toy", backbone_config=ToyConfig(), vision_dim=8, embed_dim=4)
  d = predictor.to_dict()
  assert d["backbone_config"] == {"dtype": "float32", "param_dtype": "float32", "vocab_size": 160, "hidden_size": 24}
  assert predictor_lib.PredictorConfig.from_dict(d) == predictor
  paper = vljepa.paper_config()
  assert vljepa.VLJEPAConfig.from_dict(paper.to_dict()) == paper
  assert config_base.paper_lr_rules("llama")[1] == ("predictor/llama/embed_tokens/.*", 0.0)
  # The paper's rules name the table symbolically; each backbone resolves it to its own.
  assert config_base.resolve_lr_rules(config_base.PAPER_LR_RULES, "llama") == config_base.paper_lr_rules("llama")
  assert config_base.resolve_lr_rules(config_base.PAPER_LR_RULES, "toy") == config_base.paper_lr_rules("toy")


def test_init_predictor_loads_a_converted_llama_into_predictor_llama(tmp_path):
  # A converted Llama folder of another size than the config's, holding known random weights.
  converted = llama.PRESETS["tiny"].replace(vocab_size=170, hidden_size=32, intermediate_size=48, num_heads=4,
                                            num_kv_heads=2, head_dim=8)
  ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  shapes = params_lib.abstract_params(llama.Llama(converted), ids)
  rng = np.random.default_rng(0)
  weights = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), shapes)
  folder = str(tmp_path / "converted")
  checkpoint.save(folder, family="llama", config=converted.to_dict(), params=weights, source="test")

  config = tiny_train_config.get_config()
  with config.unlocked():
    config.init.predictor = folder
  setup = model_setup.build(config, str(tmp_path))
  assert setup.checkpoints == {"predictor/llama": folder}
  # The architecture is the checkpoint's; the experiment's attention implementation and dtypes apply.
  assert setup.model.config.predictor.backbone_config == converted.replace(attention_impl=config.model.attention_impl)
  inputs = [jax.ShapeDtypeStruct((1, 2, 16, 16, 3), jnp.float32)] + [jax.ShapeDtypeStruct((1, 8), jnp.int32)] * 4
  params = params_lib.abstract_params(setup.model, *inputs)
  shardings = jax.tree.map(lambda _: jax.sharding.make_single_device_sharding(jax.devices()[0]), params)
  loaded = model_setup.load_pretrained(setup.checkpoints, params, shardings)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded["predictor"]["llama"]), weights)
  assert loaded["predictor"]["head"] is params["predictor"]["head"]  # the rest of the predictor untouched
  assert loaded["y_encoder"] is params["y_encoder"]

  # The folder's family is checked against the backbone's: a V-JEPA 2 folder (its metadata suffices).
  vit_folder = tmp_path / "vjepa2"
  os.makedirs(vit_folder)
  with open(vit_folder / checkpoint.METADATA_FILE, "w") as f:
    json.dump({"format": checkpoint.FORMAT_VERSION, "family": "vjepa2", "config": vit.PRESETS["tiny"].to_dict(),
               "source": "test"}, f)
  with config.unlocked():
    config.init.predictor = str(vit_folder)
  with pytest.raises(ValueError,
                     match=r"config.init.predictor=.* holds a 'vjepa2' model; expected one of \('llama',\)"):
    model_setup.build(config, str(tmp_path))

  # A config that declares which source layers it wants (the depth ablation) gets exactly those:
  # the checkpoint's architecture would otherwise silently replace the config's.
  with config.unlocked():
    config.init.predictor = folder  # the whole 2-layer model: source layers 0:2
    config.model.predictor.backbone_config.source_layers = (0, 2)
  model_setup.build(config, str(tmp_path))
  with config.unlocked():
    config.model.predictor.backbone_config.source_layers = (2, 4)
  with pytest.raises(ValueError, match=r"config.init.predictor=.* holds source layers 0:2, but "
                                       r"config.model.predictor declares 2:4; convert the predictor with --layers 2:4"):
    model_setup.build(config, str(tmp_path))


def test_the_llama_backbone_counts_its_own_flops():
  cfg = llama.PRESETS["tiny"]  # D=64, 4 heads and 2 KV heads of 16 (q=64, kv=32), MLP 128, 2 layers
  tokens = 10
  projections = 2 * tokens * (64 * 64 + 2 * 64 * 32 + 64 * 64)  # q, k+v, o
  attention = 4 * tokens ** 2 * 64
  mlp = 2 * tokens * 64 * 128 * 3  # gate, up, down
  assert predictor_backbones.get("llama").forward_flops(cfg, tokens) == 2 * (projections + attention + mlp)


# Parses a command line as `python -m vljepa_jax.main` does and prints the predictor it resolves to.
_PARSE = textwrap.dedent("""
    import json, sys
    from absl import flags
    from vljepa_jax import main
    main.parse_flags(sys.argv)
    predictor = flags.FLAGS.config.model.predictor
    print(json.dumps({"backbone": predictor.backbone, "config": predictor.backbone_config.to_dict()}))
""")


def _parse(*args):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-c", _PARSE, "--config=tests/tiny_train_config.py", *args], cwd=root,
                        capture_output=True, text=True, timeout=120)


def test_one_flag_switches_any_config_to_a_state_space_predictor():
  """`--config.model.predictor.backbone=mamba3` builds Mamba-3 at the Llama's width, depth and vocabulary, and
  `backbone_config.FIELD` flags then set the new backbone's fields; a field it lacks fails naming it."""
  llama_config = tiny_train_config.get_config().model.predictor.backbone_config
  run = _parse("--config.model.predictor.backbone=mamba3", "--config.model.predictor.backbone_config.state_size=8",
               "--config.model.predictor.backbone_config.rotation=false")
  assert run.returncode == 0, run.stderr
  got = json.loads(run.stdout.strip().splitlines()[-1])
  assert got["backbone"] == "mamba3"
  config = got["config"]
  assert {k: config[k] for k in ("hidden_size", "num_layers", "vocab_size", "intermediate_size")} == {
      k: llama_config[k] for k in ("hidden_size", "num_layers", "vocab_size", "intermediate_size")}
  assert config["state_size"] == 8 and config["rotation"] is False and "num_kv_heads" not in config
  bad = _parse("--config.model.predictor.backbone=mamba3", "--config.model.predictor.backbone_config.num_kv_heads=2")
  assert bad.returncode == 2
  assert "--config.model.predictor.backbone_config.num_kv_heads: model.predictor.backbone_config has no key " \
         "'num_kv_heads'" in bad.stderr


@pytest.mark.parametrize("backbone", ["mamba3", "hybrid"])
def test_matched_configs_keep_width_depth_vocabulary_and_count_flops_by_direction(backbone):
  llama_config = vljepa.paper_config().predictor.backbone_config
  matched = predictor_backbones.matched_config(backbone, llama_config)
  assert (matched.hidden_size, matched.num_layers, matched.vocab_size, matched.intermediate_size) == (
      2048, 8, 128256, 8192)
  assert matched.num_heads * matched.head_dim == 2 * 2048  # expand 2
  back = predictor_backbones.matched_config("llama", matched)
  assert (back.hidden_size, back.num_layers, back.vocab_size) == (2048, 8, 128256)
  # Bidirectional costs two scans; the projections and the MLP are counted once.
  spec = predictor_backbones.get(backbone)
  one_way = spec.forward_flops(matched.replace(causal=True), 300)
  both = spec.forward_flops(matched.replace(causal=False), 300)
  assert one_way < both < 2 * one_way


def test_hybrid_interleaves_attention_layers_and_refuses_a_stack_without_any():
  from vljepa_jax.models import hybrid  # pylint: disable=g-import-not-at-top
  config = predictor_backbones.matched_config("hybrid", vljepa.tiny_config().predictor.backbone_config)
  assert config.num_layers == 2 and config.attention_every == 2  # the last layer of a shallow stack attends
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, config.hidden_size)), jnp.float32)
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2], jnp.int32)
  module = hybrid.Hybrid(config)
  variables = params_lib.unbox(jax.eval_shape(
      lambda: module.init(jax.random.key(0), inputs_embeds=x, attention_mask=mask, causal=False)))
  layers = variables["params"]
  assert "mixer" in layers["layers_0"] and "attention" in layers["layers_1"]
  with pytest.raises(ValueError, match=r"attention_every=3: expected an int in \[1, num_layers=2\]"):
    config.replace(attention_every=3)


def test_flops_of_a_frame_chunked_x_encoder():
  """With x_encoder_chunk_frames the ViT attends within chunks: the clip costs its chunks' sum."""
  cfg = vljepa.tiny_config()
  vit = cfg.x_encoder
  shape = dict(crop_size=4 * vit.patch_size, query_length=8, target_length=12)
  per_tubelet = 16  # (crop / patch)^2 tokens
  d, mlp = vit.hidden_size, vit.mlp_dim

  def vit_flops(tokens, clips):
    patch = 2 * tokens * clips * vit.tubelet_size * vit.patch_size ** 2 * vit.in_channels * d
    layer = 2 * tokens * 4 * d * d + 4 * tokens * tokens * d + 4 * tokens * d * mlp
    return patch + clips * vit.num_layers * layer

  whole = flops.forward_flops(cfg, num_frames=8, **shape)["x_encoder"]
  chunked = flops.forward_flops(cfg.replace(x_encoder_chunk_frames=2), num_frames=8, **shape)["x_encoder"]
  assert whole == vit_flops(4 * per_tubelet, 1)
  assert chunked == vit_flops(per_tubelet, 4)
  assert flops.forward_flops(cfg.replace(x_encoder_chunk_frames=8), num_frames=8, **shape)["x_encoder"] == whole


def test_a_vjepa2_1_image_is_counted_with_its_tubelet_1_embedding():
  """V-JEPA 2.1 embeds a single frame with a (1, p, p) kernel; V-JEPA 2 duplicates it into a (2, p, p) tubelet.
  The token count, and so every block, is the same: only the patch embedding's FLOPs halve."""
  cfg = vljepa.tiny_config()
  vit = cfg.x_encoder
  shape = dict(crop_size=4 * vit.patch_size, query_length=8, target_length=12)
  tokens = 16  # (crop / patch)^2, one tubelet
  v2 = flops.forward_flops(cfg, num_frames=1, **shape)["x_encoder"]
  v2_1 = flops.forward_flops(cfg.replace(x_encoder=vit.replace(image_patch_embed=True)), num_frames=1,
                             **shape)["x_encoder"]
  assert v2 - v2_1 == 2 * tokens * (2 - 1) * vit.patch_size ** 2 * vit.in_channels * vit.hidden_size
  video = flops.forward_flops(cfg.replace(x_encoder=vit.replace(image_patch_embed=True)), num_frames=2, **shape)
  assert video["x_encoder"] == v2  # two frames are one video tubelet either way
