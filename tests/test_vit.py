"""V-JEPA 2 ViT: parity with Hugging Face `VJEPA2Model` (torch, eager, fp32) through the CLI.

References are independent of our code: HF transformers for the model and both checkpoint
layouts (a native `.pt` is rebuilt from the HF model's weights with Meta's names and fused
qkv), and a loop-based NumPy transcription of Meta's RoPE formulas for `apply_rope_3d`.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model

import vljepa_jax.convert as convert_lib
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import rope
from vljepa_jax.models import vit

jax.config.update("jax_default_matmul_precision", "highest")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP, FRAMES, PATCH, WIDTH, LAYERS = 64, 4, 16, 80, 2  # 4x4 patches; head_dim 20 -> RoPE 6/6/6 + 2
ATOL = 1e-4


def _hf_config(**overrides) -> VJEPA2Config:
  # Inputs are fed at crop_size: HF takes the RoPE grid from the config, Meta (and we) from the input.
  return VJEPA2Config(crop_size=CROP, frames_per_clip=FRAMES, tubelet_size=2, patch_size=PATCH,
                      hidden_size=WIDTH, num_attention_heads=4, num_hidden_layers=LAYERS, mlp_ratio=2.0,
                      pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                      pred_num_mask_tokens=2, num_pooler_layers=1, attn_implementation="eager", **overrides)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """HF init leaves biases at 0 and LayerNorms at identity; perturb everything so they count.

  q/k weights get a larger scale so attention logits are O(1): with near-uniform attention
  the RoPE positions (and a wrong RoPE layout) would barely show in the output.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.2 if name.endswith(("attention.query.weight", "attention.key.weight")) else 0.05
      p.add_(scale * torch.randn(p.shape, generator=gen))
  return model.eval()


def _hf_forward(model: VJEPA2Model, video_btchw: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(pixel_values_videos=torch.from_numpy(video_btchw), skip_predictor=True)
  return out.last_hidden_state.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, video):
  # Modules with equal configs hash equal, so every checkpoint of the tiny model shares one compile.
  return model.apply({"params": params}, video)


def _ours(model, params, video_btchw: np.ndarray) -> np.ndarray:
  return np.asarray(_apply(model, params, jnp.asarray(video_btchw.transpose(0, 1, 3, 4, 2))))


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "vljepa_jax.convert", *args], cwd=REPO, capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _convert_cli(*args: str) -> None:
  proc = _cli(*args)
  assert proc.returncode == 0, f"conversion failed:\n{proc.stdout}\n{proc.stderr}"


def _native_state_dict(model: VJEPA2Model, prefix: str) -> dict[str, torch.Tensor]:
  """Meta's encoder layout, written from HF's names: fused qkv, `blocks.`, wrapper prefixes."""
  sd = model.state_dict()
  out = {
      "pos_embed": torch.randn(1, (FRAMES // 2) * (CROP // PATCH) ** 2, WIDTH),  # unused sincos table
      "patch_embed.proj.weight": sd["encoder.embeddings.patch_embeddings.proj.weight"],
      "patch_embed.proj.bias": sd["encoder.embeddings.patch_embeddings.proj.bias"],
      "norm.weight": sd["encoder.layernorm.weight"],
      "norm.bias": sd["encoder.layernorm.bias"],
  }
  for i in range(LAYERS):
    src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
    for w in ("weight", "bias"):
      out[f"{dst}attn.qkv.{w}"] = torch.cat([sd[f"{src}attention.{p}.{w}"] for p in ("query", "key", "value")])
      out[f"{dst}attn.proj.{w}"] = sd[f"{src}attention.proj.{w}"]
      for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
        out[f"{dst}{n}.{w}"] = sd[f"{src}{n}.{w}"]
  return {prefix + k: v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def inputs() -> dict[int, np.ndarray]:
  """(B, T, C, H, W) float32: a single image (T=1) and a 4-frame video, keyed by T."""
  rng = np.random.default_rng(0)
  return {t: rng.standard_normal((2, t, 3, CROP, CROP)).astype(np.float32) for t in (1, FRAMES)}


@pytest.fixture(scope="module")
def hf_models() -> tuple[VJEPA2Model, VJEPA2Model]:
  torch.manual_seed(0)
  a = _randomize(VJEPA2Model(_hf_config()), seed=1)
  b = _randomize(VJEPA2Model(_hf_config()), seed=2)
  return a, b


@pytest.fixture(scope="module")
def hf_dir(hf_models, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("hf") / "vjepa2-tiny")
  hf_models[0].save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def converted_hf(hf_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("conv") / "from_hf")
  _convert_cli("--model", "vjepa2", "--input", hf_dir, "--output", out)
  return (out, *convert_lib.load(out))


@pytest.fixture(scope="module")
def native_pt(hf_models, tmp_path_factory) -> str:
  """target_encoder = model a (DDP + hub prefixes), encoder = model b (DDP prefix only)."""
  path = str(tmp_path_factory.mktemp("native") / "vit_tiny.pt")
  torch.save({
      "encoder": _native_state_dict(hf_models[1], "module."),
      "target_encoder": _native_state_dict(hf_models[0], "module.backbone."),
      "predictor": {"module.backbone.predictor_embed.weight": torch.randn(32, WIDTH)},
      "epoch": 3,
  }, path)
  return path


# --- parity with Hugging Face -------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, FRAMES], ids=["image", "video"])
def test_hf_folder_matches_hf(converted_hf, hf_models, inputs, frames):
  _, model, params = converted_hf
  ours, ref = _ours(model, params, inputs[frames]), _hf_forward(hf_models[0], inputs[frames])
  assert ours.shape == ref.shape == (2, (CROP // PATCH) ** 2 * max(frames // 2, 1), WIDTH)
  err = np.max(np.abs(ours - ref))
  print(f"HF folder, T={frames}: max abs err {err:.2e}")
  assert err <= ATOL


def test_converted_config_is_the_tiny_preset(converted_hf):
  out, model, _ = converted_hf
  with open(os.path.join(out, "model.json")) as f:
    meta = json.load(f)
  assert meta["family"] == "vjepa2"
  assert vit.ViTConfig.from_dict(meta["config"]) == model.config == vit.PRESETS["tiny"]


def test_native_target_encoder_matches_hf(native_pt, hf_models, inputs, tmp_path):
  out = str(tmp_path / "from_pt")
  _convert_cli("--model", "vjepa2", "--input", native_pt, "--output", out, "--checkpoint_key", "target_encoder",
               "--variant", "tiny")
  model, params = convert_lib.load(out)
  err = np.max(np.abs(_ours(model, params, inputs[FRAMES]) - _hf_forward(hf_models[0], inputs[FRAMES])))
  print(f"native .pt target_encoder: max abs err {err:.2e}")
  assert err <= ATOL


def test_native_default_key_is_encoder(native_pt, hf_models, inputs):
  config, params = convert_lib.convert_state("vjepa2", native_pt, convert_lib.ConvertOptions(variant="tiny"))
  ours = _ours(vit.VisionTransformer(config), params, inputs[FRAMES])
  err = np.max(np.abs(ours - _hf_forward(hf_models[1], inputs[FRAMES])))
  print(f"native .pt encoder: max abs err {err:.2e}")
  assert err <= ATOL
  assert np.max(np.abs(ours - _hf_forward(hf_models[0], inputs[FRAMES]))) > 1e-2


def test_video_classification_checkpoint(tmp_path, inputs):
  """`vjepa2.` prefix, pooler and classifier of VJEPA2ForVideoClassification."""
  torch.manual_seed(3)
  clf = _randomize(VJEPA2ForVideoClassification(_hf_config(num_labels=3)), seed=3)
  clf.save_pretrained(str(tmp_path / "clf"))
  config, params = convert_lib.convert_state("vjepa2", str(tmp_path / "clf"))
  ours = _ours(vit.VisionTransformer(config), params, inputs[FRAMES])
  err = np.max(np.abs(ours - _hf_forward(clf.vjepa2, inputs[FRAMES])))
  print(f"VJEPA2ForVideoClassification folder: max abs err {err:.2e}")
  assert err <= ATOL


# --- RoPE layout -------------------------------------------------------------------------


def test_interleaved_layout_is_clearly_different(converted_hf, hf_models, inputs):
  """Guards against silently running V-JEPA 2 weights with the textbook (2.1) RoPE layout."""
  _, model, params = converted_hf
  wrong = vit.VisionTransformer(model.config.replace(rope_layout="interleaved"))
  ref = _hf_forward(hf_models[0], inputs[FRAMES])
  err = np.max(np.abs(_ours(wrong, params, inputs[FRAMES]) - ref))
  print(f"interleaved layout vs HF: max abs err {err:.2e}")
  assert err > 1000 * ATOL


def _numpy_rope_3d(x: np.ndarray, grid: tuple[int, int, int], layout: str) -> np.ndarray:
  """Meta's `rotate_queries_or_keys` per axis chunk, element by element (models.md section 1.2)."""
  tokens, head_dim = x.shape[1], x.shape[3]
  t_len, h_len, w_len = grid
  assert tokens == t_len * h_len * w_len
  d = 2 * ((head_dim // 3) // 2)
  omega = [10000.0 ** (-k / (d / 2)) for k in range(d // 2)]
  x = x.astype(np.float64)
  out = x.copy()
  for n in range(tokens):
    pos = (n // (h_len * w_len), (n % (h_len * w_len)) // w_len, n % w_len)
    for axis in range(3):
      base = axis * d
      for j in range(d):
        k = j % (d // 2) if layout == "tiled" else j // 2
        angle = pos[axis] * omega[k]
        # r(x)[2i] = -x[2i+1], r(x)[2i+1] = x[2i]; vectorised over batch and heads only.
        partner = -x[:, n, :, base + j + 1] if j % 2 == 0 else x[:, n, :, base + j - 1]
        out[:, n, :, base + j] = x[:, n, :, base + j] * np.cos(angle) + partner * np.sin(angle)
  return out


@pytest.mark.parametrize("layout", rope.ROPE_LAYOUTS)
@pytest.mark.parametrize("head_dim", [20, 64, 80])  # tiny; ViT-L/g (20-dim chunks); ViT-H (26)
def test_apply_rope_3d_matches_numpy(layout, head_dim):
  grid = (2, 3, 4)  # non-square: rows and columns must not be swapped
  x = np.random.default_rng(head_dim).standard_normal((1, 24, 2, head_dim)).astype(np.float32)
  got = np.asarray(rope.apply_rope_3d(jnp.asarray(x), grid, layout))
  np.testing.assert_allclose(got, _numpy_rope_3d(x, grid, layout), atol=1e-5)


# --- model API -----------------------------------------------------------------------------


def test_frame_count_and_frame_size_checks(converted_hf):
  _, model, params = converted_hf
  with pytest.raises(ValueError, match=r"T=3.*tubelet size 2"):
    model.apply({"params": params}, jnp.zeros((1, 3, CROP, CROP, 3)))
  with pytest.raises(ValueError, match="patch size 16"):
    model.apply({"params": params}, jnp.zeros((1, 2, CROP, CROP - 8, 3)))


def test_config_json_round_trip_and_hashable():
  for name, config in vit.PRESETS.items():
    again = vit.ViTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config), name
  with pytest.raises(ValueError, match="rope_layout"):
    vit.PRESETS["tiny"].replace(rope_layout="half")


def test_config_from_hf_rejects_other_activations():
  with pytest.raises(ValueError, match="hidden_act"):
    vit.config_from_hf({**_hf_config().to_dict(), "hidden_act": "silu"})


# --- bad checkpoints --------------------------------------------------------------------------


def test_wrong_family_fails_cleanly_through_cli(tmp_path):
  src = tmp_path / "bert"
  src.mkdir()
  rng = np.random.default_rng(0)
  bert = {"embeddings.word_embeddings.weight": (100, 32), "encoder.layer.0.attention.self.query.weight": (32, 32),
          "encoder.layer.0.intermediate.dense.weight": (64, 32), "pooler.dense.weight": (32, 32)}
  save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in bert.items()}, str(src / "model.safetensors"))
  out = tmp_path / "out"
  proc = _cli("--model", "vjepa2", "--input", str(src), "--output", str(out))
  assert proc.returncode != 0
  assert "not a V-JEPA 2" in proc.stderr
  assert "embeddings.word_embeddings.weight" in proc.stderr
  assert "encoder.layer.0.attention.self.query.weight" in proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["bert"]  # no output, no leftover temporary directory


def test_mis_shaped_tensor_is_named_with_shapes(hf_dir, tmp_path):
  from safetensors.numpy import load_file
  state = load_file(os.path.join(hf_dir, "model.safetensors"))
  state["encoder.layer.1.mlp.fc1.weight"] = state["encoder.layer.1.mlp.fc1.weight"][:100]
  (tmp_path / "bad").mkdir()
  save_file(state, str(tmp_path / "bad" / "model.safetensors"))
  with open(os.path.join(hf_dir, "config.json")) as f, open(tmp_path / "bad" / "config.json", "w") as g:
    g.write(f.read())
  with pytest.raises(convert_lib.ConversionError) as e:
    convert_lib.convert_state("vjepa2", str(tmp_path / "bad"))
  assert "encoder.layer.1.mlp.fc1.weight" in str(e.value)
  assert "(100, 80)" in str(e.value) and "(80, 160)" in str(e.value)


def test_native_errors(hf_models, tmp_path):
  def write(state):
    path = str(tmp_path / f"ckpt{len(os.listdir(tmp_path))}.pt")
    torch.save(state, path)
    return path

  good = _native_state_dict(hf_models[0], "module.")
  opts = convert_lib.ConvertOptions
  # Width 80 has no known head count: the user must name the preset.
  with pytest.raises(convert_lib.ConversionError, match=r"width 80 .*--variant"):
    convert_lib.convert_state("vjepa2", write({"encoder": good}))
  with pytest.raises(convert_lib.ConversionError, match="hidden_size is 80 in the checkpoint, 1024 in the preset"):
    convert_lib.convert_state("vjepa2", write({"encoder": good}), opts(variant="vit_large"))
  with pytest.raises(convert_lib.ConversionError, match="target_encoder"):
    convert_lib.convert_state("vjepa2", write({"encoder": good}), opts(checkpoint_key="target_encoder"))
  bad_qkv = {**good, "module.blocks.1.attn.qkv.weight": torch.zeros(241, WIDTH)}
  with pytest.raises(convert_lib.ConversionError, match=r"blocks\.1\.attn\.qkv\.weight \(241, 80\)"):
    convert_lib.convert_state("vjepa2", write({"encoder": bad_qkv}), opts(variant="tiny"))


# --- full size, shapes only ---------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [("vit_large", 303.9e6), ("vit_huge", 631.6e6), ("vit_giant", 1012e6)])
def test_full_size_param_counts(name, expected):
  config = vit.PRESETS[name]
  inputs = (jnp.zeros((1, 2, 16, 16, 3)),)
  count = params_lib.count_params(params_lib.abstract_params(vit.VisionTransformer(config), *inputs))
  assert abs(count - expected) / expected < 0.01, count


def test_every_param_has_logical_axis_names():
  config = vit.PRESETS["tiny"]  # same parameter structure as the full sizes
  model = vit.VisionTransformer(config)
  inputs = (jnp.zeros((1, 2, 16, 16, 3)),)
  shapes = params_lib.abstract_params(model, *inputs)
  specs = params_lib.logical_partition_specs(model, *inputs)
  flat_specs = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: x is None)[0])
  flat_shapes = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
  assert set(flat_specs) == set(flat_shapes)
  for path, shape in flat_shapes.items():
    spec = flat_specs[path]
    assert spec is not None and len(spec) == len(shape.shape), (jax.tree_util.keystr(path), spec)
    assert all(isinstance(a, str) for a in spec), (jax.tree_util.keystr(path), spec)
  assert tuple(specs["patch_embed"]["kernel"]) == vit.CONV_AXES
