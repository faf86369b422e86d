"""Llama: conversion through the CLI and parity with Hugging Face `transformers` (torch, fp32).

The reference is HF's own `LlamaModel` (eager attention) on a tiny random model with GQA
and llama3 RoPE scaling; the bidirectional case feeds HF a hand-built 4D additive mask.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from vljepa_jax import convert as convert_lib
from vljepa_jax.models import llama
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import rope

jax.config.update("jax_default_matmul_precision", "highest")

ATOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# head_dim 16, theta 1e4: wavelengths 2*pi*10^(i/2) = 6.3, 20, 63, 199, 628, ... With an
# original context of 256 (bands at 256/4 = 64 and 256/1) all three llama3 bands occur.
THETA, HEAD_DIM, ORIGINAL_MAX = 10000.0, 16, 256
ROPE_PARAMS = dict(rope_type="llama3", rope_theta=THETA, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=ORIGINAL_MAX)

# Real Llama-3.2-1B config.json values (old-style `rope_scaling` + `rope_theta`).
LLAMA3_2_1B_JSON = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "max_position_embeddings": 131072, "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 128000, "eos_token_id": 128001,
}


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "vljepa_jax.convert", *args], cwd=REPO, capture_output=True,
                        text=True)


def _convert(*args: str) -> None:
  r = _cli("--model", "llama", *args)
  assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def hf_model():
  """A 4-layer LlamaForCausalLM (tied head) whose weights make attention and RoPE matter."""
  config = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
      num_key_value_heads=2, head_dim=HEAD_DIM, rms_norm_eps=1e-5, max_position_embeddings=512,
      initializer_range=0.2, tie_word_embeddings=True, rope_parameters=dict(ROPE_PARAMS),
      attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # norms at their init (ones) would hide a missing or misplaced scale
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def batch():
  """Right-padded ids and mask: row 0 full, row 1 with 7 real tokens of 12."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 128, size=(2, 12)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = 0
  return ids, mask


@pytest.fixture(scope="module")
def full(hf_model, tmp_path_factory):
  """The whole model converted through the CLI from a LlamaForCausalLM folder (`model.` keys)."""
  root = tmp_path_factory.mktemp("llama_full")
  hf_model.save_pretrained(root / "hf")
  _convert("--input", str(root / "hf"), "--output", str(root / "out"))
  return convert_lib.load(str(root / "out"))


@pytest.fixture(scope="module")
def bare_folder(hf_model, tmp_path_factory):
  """The same weights saved as a bare LlamaModel (no `model.` prefix)."""
  path = tmp_path_factory.mktemp("llama_bare") / "hf"
  hf_model.model.save_pretrained(path)
  return path


def _hf(hf_model, ids, mask, **kw):
  with torch.no_grad():
    return hf_model.model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kw)


def test_tiny_config_exercises_all_llama3_bands():
  inv_freq = THETA ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
  wavelen = 2 * math.pi / inv_freq
  high, low = ORIGINAL_MAX / ROPE_PARAMS["high_freq_factor"], ORIGINAL_MAX / ROPE_PARAMS["low_freq_factor"]
  assert (wavelen < high).any(), "no kept band"
  assert (wavelen > low).any(), "no divided band"
  assert ((wavelen >= high) & (wavelen <= low)).any(), "no blended band"


def test_causal_parity_with_hf(hf_model, full, batch):
  model, params = full
  ids, mask = batch
  assert model.config.causal and model.config.num_kv_heads == 2 and model.config.rope_scaling_factor == 8.0
  ref = _hf(hf_model, ids, mask).last_hidden_state.numpy()
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
  err = np.abs(ours - ref).max()
  print(f"causal max abs err {err:.2e}")
  assert err <= ATOL
  # The scaled bands matter at this length: plain RoPE on the same weights is far off.
  plain = llama.Llama(model.config.replace(rope_scaling_factor=None))
  plain_err = np.abs(np.asarray(plain.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))) - ref).max()
  assert plain_err > 100 * ATOL


def test_bidirectional_parity_with_hf_full_mask(hf_model, full, batch):
  """`causal=False` via the predictor's path (embed, then inputs_embeds) against HF given a
  4D additive mask that hides only padded keys."""
  model, params = full
  ids, mask = batch
  additive = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
  additive = np.broadcast_to(additive, (2, 1, 12, 12)).copy()
  ref = _hf(hf_model, ids, additive).last_hidden_state.numpy()
  v = {"params": params}
  embeds = model.apply(v, jnp.asarray(ids), method="embed")
  ours = np.asarray(model.apply(v, inputs_embeds=embeds, attention_mask=jnp.asarray(mask), causal=False))
  err = np.abs(ours - ref).max()
  print(f"bidirectional max abs err {err:.2e}")
  assert err <= ATOL
  causal_ref = _hf(hf_model, ids, mask).last_hidden_state.numpy()
  assert np.abs(ours - causal_ref).max() > 100 * ATOL  # the two modes really differ
  # Rematerialised layers (training) compute the same function with the same parameters.
  for policy in (True, "dots", "dots_no_batch"):
    remat = llama.Llama(model.config.replace(remat=policy))
    remat_out = remat.apply(v, inputs_embeds=embeds, attention_mask=jnp.asarray(mask), causal=False)
    assert np.abs(np.asarray(remat_out) - ref).max() <= ATOL
  # ... and the same gradients: rematerialisation may change only what is stored, never the result.
  def grads(config):
    f = lambda p: jnp.sum(llama.Llama(config).apply({"params": p}, inputs_embeds=embeds,
                                                    attention_mask=jnp.asarray(mask), causal=False) ** 2)
    return jax.grad(f)(params)
  plain = grads(model.config)
  # Another program (the recomputation is fused differently): summed over 32 tokens, an element
  # near zero can differ by 1e-6 of the largest ones (jax 0.12: 4.6e-5 at 0.099, next to 33.6).
  # A real remat bug (a stale or missing activation) is off by the gradient's own scale.
  for policy in ("full", "dots"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max()),
                 grads(model.config.replace(remat=policy)), plain)
  with pytest.raises(ValueError, match="remat='everything'"):
    llama.Llama(model.config.replace(remat="everything")).apply(v, inputs_embeds=embeds)


def test_layer_slice_from_bare_llama_model(hf_model, bare_folder, batch, tmp_path):
  out = tmp_path / "slice"
  _convert("--input", str(bare_folder), "--output", str(out), "--layers", "2:4")
  model, params = convert_lib.load(str(out))
  assert model.config.source_layers == (2, 4) and model.config.num_layers == 2
  ids, mask = batch
  ref = _hf(hf_model, ids, mask, output_hidden_states=True)
  hidden_in = jnp.asarray(ref.hidden_states[2].numpy())  # the input of source layer 2
  ours = np.asarray(model.apply({"params": params}, inputs_embeds=hidden_in, attention_mask=jnp.asarray(mask)))
  err = np.abs(ours - ref.last_hidden_state.numpy()).max()
  print(f"slice 2:4 max abs err {err:.2e}")
  assert err <= ATOL
  np.testing.assert_array_equal(np.asarray(params["embed_tokens"]["embedding"]),
                                hf_model.model.embed_tokens.weight.detach().numpy())


def test_layer_slice_beyond_checkpoint_fails(bare_folder, tmp_path):
  out = tmp_path / "bad_slice"
  with pytest.raises(convert_lib.ConversionError, match=r"3:9.*4 layers"):
    convert_lib.convert("llama", str(bare_folder), str(out), convert_lib.ConvertOptions(layers=(3, 9)))
  assert not out.exists()


def test_wrong_family_checkpoint_fails_cleanly(tmp_path):
  bert = transformers.BertModel(transformers.BertConfig(
      vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
  bert.save_pretrained(tmp_path / "bert")
  out = tmp_path / "out"
  r = _cli("--model", "llama", "--input", str(tmp_path / "bert"), "--output", str(out))
  assert r.returncode != 0
  assert "not a Llama checkpoint" in r.stderr and "embeddings.word_embeddings.weight" in r.stderr, r.stderr
  assert not out.exists()
  assert sorted(os.listdir(tmp_path)) == ["bert"]  # no temporary directory left either


@pytest.mark.parametrize("head_dim, hf_kwargs, ours", [
    (64, dict(hidden_size=2048, num_attention_heads=32, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192), max_position_embeddings=131072), llama.PRESETS["llama3_2_1b"]),
    (HEAD_DIM, dict(hidden_size=64, num_attention_heads=4, rope_parameters=dict(ROPE_PARAMS)),
     llama.PRESETS["tiny"]),
])
def test_inverse_frequencies_match_hf_llama3(head_dim, hf_kwargs, ours):
  hf_config = transformers.LlamaConfig(head_dim=head_dim, **hf_kwargs)
  ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
  got = rope.inverse_frequencies(ours.head_dim, ours.rope_theta, ours.llama3_scaling)
  np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6)


def test_config_from_real_llama3_2_1b_json():
  assert llama.config_from_hf(LLAMA3_2_1B_JSON) == llama.PRESETS["llama3_2_1b"]
  last8 = llama.config_from_hf(LLAMA3_2_1B_JSON).slice_layers(8, 16)
  assert last8 == llama.PRESETS["llama3_2_1b_last8"]
  assert llama.LlamaConfig.from_dict(last8.to_dict()) == last8 and hash(last8) == hash(llama.PRESETS["llama3_2_1b_last8"])


@pytest.mark.parametrize("override, message", [
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "yarn"),
])
def test_config_from_hf_refuses_unsupported(override, message):
  with pytest.raises(ValueError, match=message):
    llama.config_from_hf({**LLAMA3_2_1B_JSON, **override})


def test_init_from_inputs_embeds_creates_embedding_table():
  """Conversion maps onto the init tree, so the table must exist whichever input init saw."""
  cfg = llama.PRESETS["tiny"]
  model = llama.Llama(cfg)
  tree = jax.eval_shape(lambda: model.init(
      jax.random.key(0), inputs_embeds=jnp.zeros((1, 4, cfg.hidden_size)), causal=False))
  from_embeds = jax.tree.map(lambda x: x.shape, nn.meta.unbox(tree["params"]))
  from_ids = jax.tree.map(lambda x: x.shape, params_lib.abstract_params(model, jnp.zeros((1, 4), jnp.int32)))
  assert from_embeds["embed_tokens"]["embedding"] == (cfg.vocab_size, cfg.hidden_size)
  assert from_embeds == from_ids


def test_full_size_last8_shapes_and_logical_axes():
  model = llama.Llama(llama.PRESETS["llama3_2_1b_last8"])
  inputs = (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  shapes = params_lib.abstract_params(model, *inputs)
  assert shapes["embed_tokens"]["embedding"].shape == (128256, 2048)
  n = params_lib.count_params({k: v for k, v in shapes.items() if k != "embed_tokens"})
  assert abs(n - 486.6e6) / 486.6e6 < 0.01, n
  specs = traverse_util.flatten_dict(params_lib.logical_partition_specs(model, *inputs))
  flat_shapes = traverse_util.flatten_dict(shapes)
  assert specs.keys() == flat_shapes.keys()
  for path, spec in specs.items():
    assert len(spec) == len(flat_shapes[path].shape) and None not in spec, (path, spec)
