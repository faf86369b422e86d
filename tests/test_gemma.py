"""EmbeddingGemma / Gemma 3 text: parity with HF `Gemma3TextModel` past the sliding window, the
Sentence-Transformers head, dtype-dependent embedding scale, bad input, full-size shapes."""
import copy
import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from conftest import run_cli
from vljepa_jax import convert
from vljepa_jax.models import gemma
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import text_encoder

S, F = "sliding_attention", "full_attention"
LAYER_TYPES = [S, S, F, S, F]
RAW_WINDOW = 16  # what config.json stores; bidirectional HF uses |i - j| < 16 // 2 + 1 = 9
LENGTHS = (40, 29, 13)  # all longer than the window; right padding to 40
VOCAB, HIDDEN, DENSE = 128, 48, 64


def _hf_config(**overrides):
  kw = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=len(LAYER_TYPES),
            num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=24,
            sliding_window=RAW_WINDOW, layer_types=LAYER_TYPES, use_bidirectional_attention=True,
            max_position_embeddings=64, attn_implementation="eager")
  return transformers.Gemma3TextConfig(**{**kw, **overrides})


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, VOCAB, size=(len(LENGTHS), max(LENGTHS)))
  mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
  return ids * mask, mask


def _hf_hidden(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.float().numpy()


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
  """A random bidirectional Gemma 3 (HF init leaves norms at 0, so everything is re-drawn)."""
  torch.manual_seed(0)
  model = transformers.Gemma3TextModel(_hf_config()).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn(p.shape) * (0.5 if name.endswith("norm.weight") else 0.2))
  src = tmp_path_factory.mktemp("gemma_src")
  model.save_pretrained(src)
  out = tmp_path_factory.mktemp("gemma_out") / "converted"
  run_cli("vljepa_jax.convert", "--model", "embeddinggemma", "--input", str(src), "--output", str(out))
  return model, str(src), str(out)


def _with_backbone(config, **overrides):
  return config.replace(backbone_config=config.backbone_config.replace(**overrides))


def test_matches_transformers_beyond_the_window(tiny_gemma):
  hf_model, _, out = tiny_gemma
  model, params = convert.load(out)
  cfg = model.config
  assert cfg.backbone_config.sliding_window == hf_model.config.sliding_window == 9
  assert cfg.dense_dims == () and not cfg.normalize  # plain HF folder: no sentence head
  ids, mask = _batch()
  ref = _hf_hidden(hf_model, ids, mask)
  ours = np.asarray(model.apply({"params": params}, ids, mask))
  err = np.abs(ours - ref)
  real = mask.astype(bool)
  print(f"gemma bidirectional last_hidden_state max abs err: real {err[real].max():.2e}, all {err.max():.2e}")
  assert err[real].max() <= 1e-4
  # Pad rows are well defined in HF too (pad queries attend to real keys, or uniformly
  # when the window holds none), and we reproduce them.
  assert np.isfinite(ref).all() and err.max() <= 1e-4
  # The window is load-bearing: full attention on sliding layers, or an off-by-one
  # bound (inclusive 9, or 8), each miss the reference by far more than the tolerance.
  for window in (None, 8, 10):
    other = text_encoder.TextEncoder(_with_backbone(cfg, sliding_window=window))
    off = np.abs(np.asarray(other.apply({"params": params}, ids, mask)) - ref)[real].max()
    assert off > 1e-2, (window, off)


def test_causal_sliding_config_matches_transformers(tiny_gemma):
  """`use_bidirectional_attention: false` (plain Gemma 3): causal, window i - j < 16 unhalved."""
  hf_model, _, out = tiny_gemma
  causal_hf = transformers.Gemma3TextModel(_hf_config(use_bidirectional_attention=False)).eval()
  causal_hf.load_state_dict(hf_model.state_dict())
  hf_dict = json.loads(causal_hf.config.to_json_string())
  backbone = gemma.config_from_hf(hf_dict)
  assert not backbone.bidirectional and backbone.sliding_window == causal_hf.config.sliding_window == RAW_WINDOW
  model, params = convert.load(out)
  ids, mask = _batch()
  ours = text_encoder.TextEncoder(model.config.replace(backbone_config=backbone)).apply({"params": params}, ids, mask)
  err = np.abs(np.asarray(ours) - _hf_hidden(causal_hf, ids, mask))[mask.astype(bool)].max()
  print(f"gemma causal last_hidden_state max abs err (real tokens): {err:.2e}")
  assert err <= 1e-4


def _write_st_modules(folder, dense_weights, *, bias=False):
  """The Sentence-Transformers layout EmbeddingGemma ships: Transformer at the root, mean
  Pooling, two Dense layers (`linear.weight` in model.safetensors), Normalize."""
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  os.makedirs(folder / "1_Pooling")
  pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
             "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
             "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
  (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
  for i, w in enumerate(dense_weights):
    name = f"{i + 2}_Dense"
    os.makedirs(folder / name)
    cfg = {"in_features": w.shape[1], "out_features": w.shape[0], "bias": bias,
           "activation_function": "torch.nn.modules.linear.Identity"}
    (folder / name / "config.json").write_text(json.dumps(cfg))
    tensors = {"linear.weight": w.contiguous()}
    if bias:
      tensors["linear.bias"] = torch.zeros(w.shape[0])
    save_file(tensors, str(folder / name / "model.safetensors"))
    modules.append({"idx": i + 2, "name": str(i + 2), "path": name, "type": "sentence_transformers.models.Dense"})
  modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                  "type": "sentence_transformers.models.Normalize"})
  (folder / "modules.json").write_text(json.dumps(modules))


def _dense_weights():
  g = torch.Generator().manual_seed(1)
  return [torch.randn(DENSE, HIDDEN, generator=g) * 0.2, torch.randn(HIDDEN, DENSE, generator=g) * 0.2]


def test_sentence_transformers_folder_embeddings(tiny_gemma, tmp_path):
  hf_model, src, _ = tiny_gemma
  folder = tmp_path / "st"
  shutil.copytree(src, folder)
  w2, w3 = _dense_weights()
  _write_st_modules(folder, [w2, w3])
  out = convert.convert("embeddinggemma", str(folder), str(tmp_path / "converted"))
  model, params = convert.load(out)
  assert model.config.dense_dims == (DENSE, HIDDEN) and model.config.normalize

  ids, mask = _batch()
  hidden = torch.tensor(_hf_hidden(hf_model, ids, mask))
  m = torch.tensor(mask, dtype=torch.float32)[..., None]
  pooled = (hidden * m).sum(1) / m.sum(1)
  ref = torch.nn.functional.normalize(pooled @ w2.T @ w3.T, dim=-1).numpy()
  ours = np.asarray(model.apply({"params": params}, ids, mask, method="embed"))
  err = np.abs(ours - ref).max()
  print(f"gemma sentence-transformers embedding max abs err: {err:.2e}")
  assert ours.shape == (len(LENGTHS), HIDDEN) and err <= 1e-4


def test_prefixed_keys_convert_identically(tiny_gemma, tmp_path):
  """Copies saved from wrapper classes carry `model.` (or `language_model.model.`)."""
  hf_model, src, _ = tiny_gemma
  _, want = convert.convert_state("embeddinggemma", src)
  for prefix in ("model.", "language_model.model."):
    folder = tmp_path / prefix.replace(".", "_")
    folder.mkdir()
    shutil.copy(os.path.join(src, "config.json"), folder / "config.json")
    save_file({prefix + k: v.contiguous() for k, v in hf_model.state_dict().items()}, str(folder / "model.safetensors"))
    _, got = convert.convert_state("embeddinggemma", str(folder))
    flat_got, flat_want = flax.traverse_util.flatten_dict(got), flax.traverse_util.flatten_dict(want)
    assert flat_got.keys() == flat_want.keys()
    assert all(np.array_equal(flat_got[k], flat_want[k]) for k in flat_want)


def test_embedding_scale_is_rounded_to_the_weight_dtype(tiny_gemma):
  for jdtype, tdtype in ((jnp.bfloat16, torch.bfloat16), (jnp.float16, torch.float16), (jnp.float32, torch.float32)):
    assert float(gemma.embedding_scale(768, jdtype)) == torch.tensor(768 ** 0.5).to(tdtype).item()
  assert float(gemma.embedding_scale(768, jnp.bfloat16)) == 27.75  # models.md §3, vs 27.7128 in fp32

  # The module applies it: bf16 embeddings equal HF's bf16 `embed_tokens` exactly
  # (sqrt(48) = 6.928 becomes 6.9375 in bf16).
  hf_model, _, out = tiny_gemma
  model, params = convert.load(out)
  backbone = gemma.Gemma3Encoder(model.config.backbone_config.with_dtypes("bfloat16", "bfloat16"))
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params["backbone"])
  ids, _ = _batch()
  ours = np.asarray(backbone.apply({"params": bf16}, ids, method="embed").astype(jnp.float32))
  with torch.no_grad():
    ref = copy.deepcopy(hf_model).to(torch.bfloat16).embed_tokens(torch.tensor(ids)).float().numpy()
  np.testing.assert_array_equal(ours, ref)
  table = np.asarray(bf16["embed_tokens"]["embedding"][ids].astype(jnp.float32))
  unrounded = np.asarray(jnp.asarray(table * np.float32(HIDDEN ** 0.5)).astype(jnp.bfloat16).astype(jnp.float32))
  assert not np.array_equal(unrounded, ref)  # so the check above can tell the two apart


def test_config_from_embeddinggemma_json_matches_transformers():
  """A config.json shaped like google/embeddinggemma-300m's (legacy RoPE keys, raw window 512)."""
  raw = {"model_type": "gemma3_text", "architectures": ["Gemma3TextModel"], "vocab_size": 262144, "hidden_size": 768,
         "intermediate_size": 1152, "num_hidden_layers": 24, "num_attention_heads": 3, "num_key_value_heads": 1,
         "head_dim": 256, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
         "sliding_window": 512, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
         "use_bidirectional_attention": True, "attention_bias": False, "attn_logit_softcapping": None,
         "max_position_embeddings": 2048, "pad_token_id": 0}
  hf = transformers.Gemma3TextConfig.from_dict(raw)
  ours = gemma.config_from_hf(raw)
  assert ours.sliding_window == hf.sliding_window == 257
  assert list(ours.layer_types) == hf.layer_types
  assert [i for i, t in enumerate(ours.layer_types) if t == F] == [5, 11, 17, 23]
  assert ours.rope_theta_full == hf.rope_parameters[F]["rope_theta"]
  assert ours.rope_theta_sliding == hf.rope_parameters[S]["rope_theta"]
  assert ours == gemma.PRESETS["embeddinggemma_300m"]
  # The transformers-5 format (rope_parameters, window written back un-halved) gives the same.
  assert gemma.config_from_hf(json.loads(hf.to_json_string())) == ours
  assert gemma.Gemma3Config.from_dict(json.loads(json.dumps(ours.to_dict()))) == ours
  with pytest.raises(ValueError, match="linear"):
    gemma.config_from_hf({**raw, "rope_scaling": {"rope_type": "linear", "factor": 8.0}})


def test_wrong_family_fails_cleanly(tmp_path):
  bert = transformers.BertModel(transformers.BertConfig(
      vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
  src = tmp_path / "bert"
  bert.save_pretrained(src)
  out = tmp_path / "as_gemma"
  proc = run_cli("vljepa_jax.convert", "--model", "embeddinggemma", "--input", str(src), "--output", str(out),
                 check=False)
  assert proc.returncode != 0
  assert "not a Gemma 3" in proc.stderr and "embeddings.LayerNorm" in proc.stderr, proc.stderr
  assert not out.exists() and os.listdir(tmp_path) == ["bert"]


def test_unsupported_dense_fails_cleanly(tiny_gemma, tmp_path):
  _, src, _ = tiny_gemma
  folder = tmp_path / "st_bias"
  shutil.copytree(src, folder)
  _write_st_modules(folder, _dense_weights(), bias=True)
  out = tmp_path / "out"
  with pytest.raises(convert.ConversionError, match=r"2_Dense.*bias=True"):
    convert.convert("embeddinggemma", str(folder), str(out))
  assert not out.exists()


def test_embeddinggemma_300m_shapes_counts_and_axes():
  cfg = text_encoder.TextEncoderConfig(backbone="gemma3", backbone_config=gemma.PRESETS["embeddinggemma_300m"],
                                       dense_dims=(3072, 768))
  model = text_encoder.TextEncoder(cfg)
  inputs = (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  shapes = params_lib.abstract_params(model, *inputs)
  backbone = params_lib.count_params(shapes["backbone"])
  total = params_lib.count_params(shapes)
  assert abs(backbone / 302.9e6 - 1) < 0.01, backbone
  assert abs(total / 307.6e6 - 1) < 0.01, total
  assert shapes["backbone"]["layers_0"]["attention"]["key"]["kernel"].shape == (768, 1, 256)
  specs = flax.traverse_util.flatten_dict(params_lib.logical_partition_specs(model, *inputs))
  flat = flax.traverse_util.flatten_dict(shapes)
  assert specs.keys() == flat.keys()
  for path, leaf in flat.items():
    spec = tuple(specs[path])
    assert len(spec) == len(leaf.shape) and all(isinstance(n, str) for n in spec), (path, spec)
