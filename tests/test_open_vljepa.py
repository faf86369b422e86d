"""open-vljepa `best.pt` -> VLJEPA: Ŝ_Y and S_Y against a PyTorch forward written the way open-vljepa
computes them, on a small checkpoint in best.pt's exact layout; clean failures; the --x_encoder option."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from torch import nn

from conftest import run_cli
from vljepa_jax import convert
from vljepa_jax.convert import checkpoint
from vljepa_jax.convert import open_vljepa
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vit

VISION, EMBED, KEEP = 1024, 48, 2  # V-JEPA 2 ViT-L token width; shared space; kept Llama layers
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _redraw(module, seed):
  """HF init leaves norms at 1 (Llama) or 0 (Gemma): draw everything so every weight matters."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      scale = 0.5 if "norm" in name else 0.1
      p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if "norm" in name and "layers" not in name else 0))


def _build_reference():
  """open-vljepa's module tree at small sizes: predictor (last KEEP layers of a Llama) and y_encoder."""
  torch.manual_seed(0)
  base = transformers.LlamaModel(transformers.LlamaConfig(
      vocab_size=96, hidden_size=128, intermediate_size=192, num_hidden_layers=KEEP + 1, num_attention_heads=2,
      num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE),
      max_position_embeddings=8192, attn_implementation="sdpa")).eval()
  gemma = transformers.Gemma3TextModel(transformers.Gemma3TextConfig(
      vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=2,
      num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
      use_bidirectional_attention=True, max_position_embeddings=512, attn_implementation="eager")).eval()
  _redraw(base, 1)
  _redraw(gemma, 2)
  predictor = nn.Module()
  predictor.embed_tokens, predictor.norm, predictor.rotary_emb = base.embed_tokens, base.norm, base.rotary_emb
  predictor.layers = nn.ModuleList(list(base.layers[-KEEP:]))
  predictor.vis_proj, predictor.out_proj = nn.Linear(VISION, 128), nn.Linear(128, EMBED)
  y_encoder = nn.Module()
  y_encoder.model, y_encoder.projector = gemma, nn.Linear(64, EMBED)
  root = nn.Module()
  root.predictor, root.y_encoder = predictor, y_encoder
  return root.eval()


def _masked_mean(h, mask):
  m = mask.unsqueeze(-1).to(h.dtype)
  return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def _reference_s_hat(p, visual, q_ids, q_mask):
  """open-vljepa's Predictor.forward: [vis_proj(v); embed(q)], key-padding 4-D mask, positions 0..L-1."""
  h = torch.cat([p.vis_proj(visual), p.embed_tokens(q_ids)], dim=1)
  batch, length = h.shape[:2]
  keep = torch.cat([torch.ones(batch, visual.shape[1]), q_mask.float()], dim=1)
  mask = ((1.0 - keep) * torch.finfo(h.dtype).min)[:, None, None, :].expand(batch, 1, length, length).contiguous()
  positions = torch.arange(length)[None].expand(batch, -1)
  rope = p.rotary_emb(h, positions)
  for layer in p.layers:
    out = layer(h, attention_mask=mask, position_ids=positions, past_key_values=None, use_cache=False,
                position_embeddings=rope)
    h = out[0] if isinstance(out, tuple) else out
  return p.out_proj(_masked_mean(p.norm(h), keep))


def _reference_s_y(y, t_ids, t_mask):
  h = y.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
  return y.projector(_masked_mean(h, t_mask))


def _train_config(**predictor):
  return {"encoder": {"model_name": "facebook/vjepa2-vitl-fpc64-256", "output_dim": None},
          "y_encoder": {"model_name": "tiny/gemma3", "proj_dim": EMBED},
          "predictor": {"llama_name": "tiny/llama", "n_keep_layers": KEEP, "proj_dim": EMBED,
                        "disable_causal_mask": True, **predictor},
          "data": {"num_frames": 8, "max_query_len": 64, "max_caption_len": 64}}


def _save(path, state, config=None):
  torch.save({"epoch": 3, "model_state_dict": state, "loss": 1.25, "config": config or _train_config()}, path)


def _inputs():
  rng = np.random.default_rng(0)
  visual = rng.normal(size=(2, 6, VISION)).astype(np.float32)
  q_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  q_ids = rng.integers(0, 96, size=q_mask.shape) * q_mask + 4 * (1 - q_mask)  # any pad id: it is masked
  t_mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], np.int32)
  t_ids = rng.integers(1, 80, size=t_mask.shape) * t_mask
  return visual, q_ids.astype(np.int32), q_mask, t_ids.astype(np.int32), t_mask


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = _build_reference()
  state = root.state_dict()
  assert sorted(state) == sorted(open_vljepa.expected_keys(KEEP, 6))  # exactly best.pt's layout
  folder = tmp_path_factory.mktemp("open_vljepa")
  _save(folder / "best.pt", state)
  out = folder / "converted"
  run_cli("vljepa_jax.convert", "--model", "open_vljepa", "--input", str(folder / "best.pt"), "--output", str(out))
  return root, state, folder, str(out)


def test_s_hat_and_s_y_match_open_vljepa(reference):
  root, _, _, out = reference
  visual, q_ids, q_mask, t_ids, t_mask = _inputs()
  with torch.no_grad():
    want_hat = _reference_s_hat(root.predictor, torch.tensor(visual), torch.tensor(q_ids).long(),
                                torch.tensor(q_mask)).numpy()
    want_y = _reference_s_y(root.y_encoder, torch.tensor(t_ids).long(), torch.tensor(t_mask)).numpy()
  assert np.abs(want_hat).mean() > 0.05 and np.abs(want_y).mean() > 0.05  # not vanishing: the tolerance means something
  model, params = convert.load(out)
  assert "x_encoder" not in params and json.load(open(os.path.join(out, "model.json")))["omitted"] == ["x_encoder"]
  cfg = model.config
  assert not cfg.predictor.causal and cfg.predictor.pool == "all" and cfg.predictor.backbone_config.num_layers == KEEP
  assert cfg.y_encoder.dense_dims == () and not cfg.y_encoder.normalize
  got_hat = np.asarray(model.apply({"params": params}, visual, q_ids, q_mask, method="encode_visual_query"))
  got_y = np.asarray(model.apply({"params": params}, t_ids, t_mask, method="encode_text"))
  np.testing.assert_allclose(got_hat, want_hat, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got_y, want_y, atol=1e-4, rtol=1e-4)


def test_bf16_checkpoint_converts(reference, tmp_path):
  """Training saves the Llama / Gemma tensors in bf16 and the new linears in fp32: both are read."""
  _, state, _, _ = reference
  mixed = {k: (v.to(torch.bfloat16) if ".model." in k or ".layers." in k else v) for k, v in state.items()}
  _save(tmp_path / "best.pt", mixed)
  convert.convert("open_vljepa", str(tmp_path / "best.pt"), str(tmp_path / "out"))
  _, params = convert.load(str(tmp_path / "out"))
  want = mixed["predictor.layers.1.mlp.down_proj.weight"].float().numpy().T
  np.testing.assert_array_equal(np.asarray(params["predictor"]["llama"]["layers_1"]["mlp"]["wo"]["kernel"]), want)


@pytest.mark.parametrize("case", ["wrong_family", "missing_key", "bad_shape"])
def test_bad_checkpoints_fail_cleanly(reference, tmp_path, case):
  _, state, _, _ = reference
  src = tmp_path / "best.pt"
  if case == "wrong_family":  # a plain Llama state dict
    torch.save({k[len("predictor."):]: v for k, v in state.items() if k.startswith("predictor.")}, src)
    needle = "is not an open-vljepa checkpoint"
  elif case == "missing_key":
    _save(src, {k: v for k, v in state.items() if k != "y_encoder.projector.bias"})
    needle = "y_encoder.projector.bias"
  else:
    _save(src, {**state, "predictor.layers.1.self_attn.k_proj.weight": torch.zeros(32, 128)})
    needle = "predictor.layers.1.self_attn.k_proj.weight"
  out = tmp_path / "out"
  proc = run_cli("vljepa_jax.convert", "--model", "open_vljepa", "--input", str(src), "--output", str(out),
                 check=False)
  assert proc.returncode == 1, proc.stderr
  assert needle in proc.stderr and proc.stderr.count("conversion failed") == 1, proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["best.pt"]


def test_named_models_must_have_their_shapes(reference, tmp_path):
  """A config naming Llama-3.2-1B holds it to that preset: a small stand-in is refused, by name."""
  _, state, _, _ = reference
  config = _train_config(llama_name="meta-llama/Llama-3.2-1B")
  _save(tmp_path / "best.pt", state, config)
  with pytest.raises(convert.ConversionError, match="meta-llama/Llama-3.2-1B.*hidden_size"):
    convert.convert("open_vljepa", str(tmp_path / "best.pt"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_x_encoder_option_completes_the_model(reference, tmp_path):
  _, _, folder, _ = reference
  vit_cfg = vit.ViTConfig(hidden_size=VISION, num_layers=1, num_heads=16, mlp_dim=64)
  encoder = vit.VisionTransformer(vit_cfg)
  video = np.random.default_rng(1).normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
  vit_params = params_lib.unbox(encoder.init(jax.random.key(0), video)["params"])
  with checkpoint.atomic_directory(str(tmp_path / "vitl")) as tmp:
    checkpoint.save(tmp, family="vjepa2", config=vit_cfg.to_dict(), params=vit_params, source="test")
  out = tmp_path / "full"
  convert.convert("open_vljepa", str(folder / "best.pt"), str(out),
                  convert.ConvertOptions(x_encoder=str(tmp_path / "vitl")))
  assert "omitted" not in json.load(open(out / "model.json"))
  model, params = convert.load(str(out))
  jax.tree.map(np.testing.assert_array_equal, params["x_encoder"], vit_params)
  _, q_ids, q_mask, _, _ = _inputs()
  tokens = encoder.apply({"params": vit_params}, video)
  from_video = model.apply({"params": params}, video, q_ids, q_mask, method="encode_visual_query")
  from_tokens = model.apply({"params": params}, tokens, q_ids, q_mask, method="encode_visual_query")
  np.testing.assert_allclose(np.asarray(from_video), np.asarray(from_tokens), atol=1e-5)
  with pytest.raises(convert.ConversionError, match="holds a 'open_vljepa' model"):
    convert.convert("open_vljepa", str(folder / "best.pt"), str(tmp_path / "bad"),
                    convert.ConvertOptions(x_encoder=str(out)))


def test_init_checkpoint_reads_a_converted_model(reference):
  """`config.init.checkpoint=DIR` (checkpointing.restore_params) takes a converted open-vljepa folder at step 0;
  the X-encoder it left out must be supplied by the caller (the trainer's config.init.x_encoder): without it
  the restore fails instead of leaving a random X-encoder."""
  from vljepa_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  _, _, _, out = reference
  model, params = convert.load(out)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          params_lib.abstract_params(model, *open_vljepa.example_inputs(model.config)))
  assert "x_encoder" in abstract
  with pytest.raises(ValueError, match=r"has no \['x_encoder'\] parameters \(left out at conversion\): pass "
                                       r"config.init.x_encoder=<converted folder>"):
    checkpointing.restore_params(out, abstract)
  restored, step = checkpointing.restore_params(out, abstract, supplied=("x_encoder",))
  assert step == 0 and set(restored) == {"predictor", "y_encoder", "y_head"}
  jax.tree.map(np.testing.assert_array_equal, restored, params)
