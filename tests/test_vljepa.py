"""VL-JEPA composition: predictor wiring vs a PyTorch reference, padding, freezing, full-size shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import converted_hf_llama
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import predictor as predictor_lib
from vljepa_jax.models import vljepa


def _batch(cfg, batch=2, frames=2, q_len=6, t_len=5, seed=0):
  rng = np.random.default_rng(seed)
  size = 2 * cfg.x_encoder.patch_size
  video = rng.normal(size=(batch, frames, size, size, 3)).astype(np.float32)
  q_ids = rng.integers(1, cfg.predictor.backbone_config.vocab_size, size=(batch, q_len)).astype(np.int32)
  q_mask = np.ones_like(q_ids)
  q_mask[1, 3:] = 0
  t_ids = rng.integers(1, cfg.y_encoder.backbone_config.vocab_size, size=(batch, t_len)).astype(np.int32)
  t_mask = np.ones_like(t_ids)
  t_mask[0, 2:] = 0
  return video, q_ids * q_mask, q_mask, t_ids * t_mask, t_mask


@pytest.fixture(scope="module")
def tiny():
  cfg = vljepa.tiny_config()
  model = vljepa.VLJEPA(cfg)
  batch = _batch(cfg)
  params = params_lib.unbox(jax.jit(model.init)(jax.random.key(0), *batch)["params"])
  return cfg, model, params, batch


def test_predictor_matches_pytorch_reference(tmp_path):
  """Ŝ_Y from our predictor == the paper's recipe computed in torch around HF `LlamaModel`:
  Linear(visual) ++ embed(query) -> LlamaModel with a bidirectional padding mask -> masked mean -> Linear."""
  hf, llama_params, llama_cfg = converted_hf_llama(str(tmp_path), num_layers=2)

  for pool in ("all", "query"):
    cfg = predictor_lib.PredictorConfig(backbone="llama", backbone_config=llama_cfg.replace(causal=False),
                                        vision_dim=12, embed_dim=8, pool=pool)
    model = predictor_lib.Predictor(cfg)
    rng = np.random.default_rng(1)
    visual = rng.normal(size=(2, 5, 12)).astype(np.float32)
    q_ids = rng.integers(0, 64, size=(2, 4))
    q_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    init = params_lib.unbox(model.init(jax.random.key(1), visual, q_ids, q_mask)["params"])
    params = dict(init, llama=llama_params)
    ours = np.asarray(model.apply({"params": params}, visual, q_ids, q_mask))

    proj_w, proj_b = (torch.tensor(np.asarray(params["vision_proj"][k])) for k in ("kernel", "bias"))
    head_w, head_b = (torch.tensor(np.asarray(params["head"][k])) for k in ("kernel", "bias"))
    with torch.no_grad():
      x = torch.cat([torch.tensor(visual) @ proj_w + proj_b, hf.embed_tokens(torch.tensor(q_ids))], dim=1)
      keep = torch.cat([torch.ones(2, 5), torch.tensor(q_mask, dtype=torch.float32)], dim=1)
      additive = (1.0 - keep[:, None, None, :]) * torch.finfo(torch.float32).min  # keys only, no causality
      additive = additive.expand(2, 1, 9, 9)
      hidden = hf(inputs_embeds=x, attention_mask=additive).last_hidden_state
      pool_mask = keep.clone()
      if pool == "query":
        pool_mask[:, :5] = 0
      pooled = (hidden * pool_mask[..., None]).sum(1) / pool_mask.sum(1, keepdim=True)
      ref = (pooled @ head_w + head_b).numpy()
    assert np.abs(ours - ref).max() <= 1e-4, pool


def test_padding_never_changes_the_prediction(tiny):
  cfg, model, params, (video, q_ids, q_mask, t_ids, t_mask) = tiny
  apply = jax.jit(model.apply)
  pred, target = apply({"params": params}, video, q_ids, q_mask, t_ids, t_mask)
  junk_q = np.where(q_mask == 0, 7, q_ids)  # different token ids behind the mask
  junk_t = np.where(t_mask == 0, 9, t_ids)
  pred2, target2 = apply({"params": params}, video, junk_q, q_mask, junk_t, t_mask)
  np.testing.assert_allclose(pred, pred2, atol=1e-6)
  np.testing.assert_allclose(target, target2, atol=1e-6)
  assert pred.shape == target.shape == (2, cfg.embed_dim) and pred.dtype == jnp.float32


def test_query_conditions_the_prediction(tiny):
  _, model, params, (video, q_ids, q_mask, _, _) = tiny
  encode = jax.jit(lambda *a: model.apply({"params": params}, *a, method="encode_visual_query"))
  a = encode(video, q_ids, q_mask)
  b = encode(video, (q_ids + 1) * q_mask, q_mask)
  assert np.abs(np.asarray(a - b)).max() > 1e-3


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_x_encoder_gets_no_gradient(tiny, frozen):
  cfg, _, params, batch = tiny
  model = vljepa.VLJEPA(cfg.replace(freeze_x_encoder=frozen))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, *batch)[0] ** 2)))(params)
  x_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["x_encoder"]))
  pred_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["predictor"]))
  assert pred_norm > 0
  assert (x_norm == 0) if frozen else (x_norm > 0)


def test_paper_model_shapes_and_counts():
  """The full model, shape-only: totals against the published per-tower figures (models.md §7)."""
  cfg = vljepa.paper_config()
  model = vljepa.VLJEPA(cfg)
  video = jax.ShapeDtypeStruct((1, 2, 256, 256, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  abstract = params_lib.abstract_params(model, video, ids, ids, ids, ids)
  count = {k: params_lib.count_params(v) for k, v in abstract.items()}
  embed_table = params_lib.count_params(abstract["predictor"]["llama"]["embed_tokens"])
  assert abs(count["x_encoder"] / 303.9e6 - 1) < 0.01
  assert abs((count["predictor"] - embed_table) / (486.6e6 + 2.10e6 + 3.15e6) - 1) < 0.01
  assert abs(embed_table / 262.7e6 - 1) < 0.01
  assert abs((count["y_encoder"] + count["y_head"]) / (302.9e6 + 1.18e6) - 1) < 0.01
  trainable = sum(count.values()) - count["x_encoder"] - embed_table
  assert abs(trainable / 796e6 - 1) < 0.01  # "≈ 796M trainable" with the embedding table frozen
  out = jax.eval_shape(lambda p, v, i: model.apply({"params": p}, v, i, i, i, i), abstract, video, ids)
  assert out[0].shape == out[1].shape == (1, 1536)


def test_every_parameter_has_distinct_logical_axes(tiny):
  cfg, model, _, batch = tiny
  specs = params_lib.logical_partition_specs(model, *batch)
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  shapes = jax.tree.leaves(params_lib.abstract_params(model, *batch))
  assert len(leaves) == len(shapes)
  for spec, shape in zip(leaves, shapes):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == len(shape.shape), (spec, shape)
    assert None not in spec and len(set(spec)) == len(spec), spec


def test_bf16_compute_over_fp32_params_tracks_fp32(tiny):
  """The training precision setting: bf16 activations, fp32 master weights."""
  cfg, model, params, batch = tiny
  bf16 = vljepa.VLJEPA(cfg.with_dtypes("bfloat16", "float32"))
  ref = jax.jit(model.apply)({"params": params}, *batch)
  out = jax.jit(bf16.apply)({"params": params}, *batch)
  for r, o in zip(ref, out):
    assert o.dtype == jnp.float32 and np.isfinite(np.asarray(o)).all()
    cos = np.sum(np.asarray(r) * np.asarray(o), -1) / np.linalg.norm(r, axis=-1) / np.linalg.norm(o, axis=-1)
    assert cos.min() > 0.99, cos


def _streaming_config(chunk=2):
  """The tiny model with a causal Mamba-3 predictor pooling the query and a frame-chunked X-encoder."""
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  cfg = vljepa.tiny_config()
  backbone = predictor_backbones.matched_config("mamba3", cfg.predictor.backbone_config).replace(chunk_size=4)
  predictor = cfg.predictor.replace(backbone="mamba3", backbone_config=backbone, causal=True, pool="query")
  return cfg.replace(predictor=predictor, x_encoder_chunk_frames=chunk)


def test_x_encoder_chunks_are_independent_clips_in_time_order():
  """With x_encoder_chunk_frames=k the tokens are the ViT's over each k-frame clip alone, in order:
  no token depends on a later frame."""
  from vljepa_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  cfg = _streaming_config(chunk=2)
  model = vljepa.VLJEPA(cfg)
  video, q_ids, q_mask, t_ids, t_mask = _batch(cfg, frames=6)
  params = params_lib.unbox(jax.jit(model.init)(jax.random.key(1), video, q_ids, q_mask, t_ids, t_mask)["params"])
  tokens = jax.jit(lambda p, v: model.apply({"params": p}, v, method="encode_visual"))(params, video)
  vit = vit_lib.VisionTransformer(cfg.x_encoder)
  per_clip = [vit.apply({"params": params["x_encoder"]}, video[:, t:t + 2]) for t in (0, 2, 4)]
  np.testing.assert_allclose(tokens, np.concatenate(per_clip, 1), rtol=0, atol=1e-5)
  later = video.copy()
  later[:, 4:] += 1.0
  changed = jax.jit(lambda p, v: model.apply({"params": p}, v, method="encode_visual"))(params, later)
  n = tokens.shape[1] // 3
  np.testing.assert_array_equal(changed[:, :2 * n], tokens[:, :2 * n])
  assert np.abs(np.asarray(changed[:, 2 * n:] - tokens[:, 2 * n:])).max() > 1e-3
  with pytest.raises(ValueError, match=r"T=5 frames, not a whole number of x_encoder_chunk_frames=2"):
    model.apply({"params": params}, video[:, :5], method="encode_visual")
  with pytest.raises(ValueError, match=r"x_encoder_chunk_frames=3: expected None or a positive multiple of the "
                                       r"X-encoder's tubelet_size \(2\)"):
    cfg.replace(x_encoder_chunk_frames=3)


def test_streaming_steps_equal_the_clip_so_far():
  """Ŝ_Y after stream steps over frames 1..t equals encode_visual_query over that clip."""
  cfg = _streaming_config(chunk=2)
  model = vljepa.VLJEPA(cfg)
  video, q_ids, q_mask, t_ids, t_mask = _batch(cfg, frames=8)
  params = params_lib.unbox(jax.jit(model.init)(jax.random.key(2), video, q_ids, q_mask, t_ids, t_mask)["params"])
  step = jax.jit(lambda p, f, s: model.apply({"params": p}, f, s, q_ids, q_mask, method="stream_step"))
  offline = jax.jit(lambda p, v: model.apply({"params": p}, v, q_ids, q_mask, method="encode_visual_query"))
  state = vljepa.initial_stream_state(cfg, 2)
  for t in range(0, 8, 2):
    s_hat, state = step(params, video[:, t:t + 2], state)
    want = offline(params, video[:, :t + 2])
    np.testing.assert_allclose(s_hat, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_a_predictor_that_cannot_stream_fails_by_name():
  cfg = _streaming_config()
  with pytest.raises(ValueError, match=r"backbone 'llama' carries no constant-size state"):
    vljepa.initial_stream_state(vljepa.tiny_config().replace(
        predictor=vljepa.tiny_config().predictor.replace(causal=True, pool="query")), 1)
  with pytest.raises(ValueError, match=r"predictor.causal=False: a bidirectional predictor reads the future"):
    vljepa.initial_stream_state(cfg.replace(predictor=cfg.predictor.replace(causal=False)), 1)
  with pytest.raises(ValueError, match=r"predictor.pool='all'"):
    vljepa.initial_stream_state(cfg.replace(predictor=cfg.predictor.replace(pool="all")), 1)
