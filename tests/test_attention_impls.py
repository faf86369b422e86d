"""The attention dispatch: every implementation against float64 NumPy, and models built on each.

`impl="pallas"` and `impl="splash"` run their Pallas kernels in interpret mode on CPU. cuDNN
cannot run here; its argument translation is checked through the same `jax.nn.dot_product_attention`
call with `implementation="xla"`.
"""
from absl import logging as absl_logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax.models import attention as attention_lib
from vljepa_jax.models import vljepa
from vljepa_jax.models import y_decoder as y_decoder_lib
from vljepa_jax.train import sharding
from vljepa_jax.train import train_step as train_step_lib

from test_attention import reference_attention
from test_flash_attention import TARGETS
from test_flash_attention import numpy_attention


def _qkv(seed, batch=2, length=45, q_heads=4, kv_heads=2, head_dim=16):
  rng = np.random.default_rng(seed)
  shapes = [(batch, length, q_heads, head_dim)] + [(batch, length, kv_heads, head_dim)] * 2
  return [rng.normal(size=s).astype(np.float32) for s in shapes]


def _right_padding(batch, length, seed=0):
  lengths = np.random.default_rng(seed).integers(1, length + 1, size=batch)
  lengths[0] = length
  return (np.arange(length)[None] < lengths[:, None]).astype(np.int32)


@pytest.mark.parametrize("impl", ["pallas", "splash"])
@pytest.mark.parametrize("masking", ["none", "padding", "causal", "window+padding", "causal+window"])
def test_kernel_impls_match_numpy_forward_and_gradients(impl, masking):
  q, k, v = _qkv(1)
  kv_mask = _right_padding(2, 45) if "padding" in masking else None
  causal = "causal" in masking
  window = 11 if "window" in masking else None
  d_out = np.random.default_rng(2).normal(size=q.shape)

  def loss(q, k, v):
    out = attention_lib.attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window, scale=0.3, impl=impl)
    return jnp.sum(out * d_out), out

  # Queries that see no key at all (padding beyond the window): pallas returns zeros, splash some
  # finite average; both references agree everywhere else. Their upstream gradient is zero here,
  # as it is for every padded row a model drops.
  i, j = np.arange(45)[:, None], np.arange(45)[None, :]
  sees = np.ones((2, 45, 45), bool) if kv_mask is None else np.broadcast_to(kv_mask[:, None, :] == 1, (2, 45, 45))
  sees = sees & ((j <= i) if causal else True) & ((np.abs(i - j) < window) if window else True)
  has_key = sees.any(-1)  # (batch, q_len)
  d_out = d_out * has_key[:, :, None, None]
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  q_seg = None if kv_mask is None else np.ones((2, 45), np.int32)
  expected, expected_grads = numpy_attention(q, k, v, d_out, q_seg=q_seg, kv_seg=kv_mask, causal=causal,
                                             window=window, scale=0.3)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(np.asarray(out)[has_key], expected[has_key], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out)[has_key],
                             reference_attention(q, k, v, kv_mask, causal, window, 0.3)[has_key], atol=1e-5)
  if impl == "pallas":
    np.testing.assert_array_equal(np.asarray(out)[~has_key], 0.0)
  for name, got, want in zip(("dq", "dk", "dv"), grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 5), (True, 5)])
def test_cudnn_argument_translation(causal, window):
  """Key lengths from a right-padding mask and the window as (left, right) sizes mean what the
  reference masks mean; `implementation="cudnn"` receives exactly these arguments on a GPU."""
  q, k, v = (x.astype(np.float32) for x in _qkv(3, length=20))
  kv_mask = _right_padding(2, 20, seed=3)
  out = attention_lib.dot_product_attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window, scale=0.3,
                                            implementation="xla")
  np.testing.assert_allclose(np.asarray(out), reference_attention(q, k, v, kv_mask, causal, window, 0.3), atol=1e-5)


def test_auto_resolves_per_backend_and_logs_once(monkeypatch):
  messages = []
  monkeypatch.setattr(absl_logging, "info", lambda msg, *args: messages.append(msg % args))
  monkeypatch.setattr(attention_lib, "_logged", set())
  resolve = attention_lib.resolve_impl
  assert resolve("auto", dtype=jnp.float32, head_dim=64) == "xla"  # this CPU process
  assert resolve("auto", dtype=jnp.bfloat16, head_dim=64, backend="tpu") == "splash"
  assert resolve("auto", dtype=jnp.bfloat16, head_dim=64, backend="gpu") == "cudnn"
  assert resolve("auto", dtype=jnp.float32, head_dim=64, backend="gpu") == "pallas"  # cuDNN: no fp32
  assert resolve("auto", dtype=jnp.bfloat16, head_dim=36, backend="gpu") == "pallas"  # not a multiple of 8
  assert resolve("pallas") == "pallas"
  resolve("auto", dtype=jnp.float32, head_dim=64)  # already logged
  assert resolve("auto", dtype=jnp.bfloat16, backend="gpu") == "cudnn"  # start-up: no head_dim yet
  assert len(messages) == 6, messages
  assert messages[1] == "attention_impl='auto' -> 'splash' on tpu (bfloat16, head_dim 64)"
  assert messages[5] == "attention_impl='auto' -> 'cudnn' on gpu (bfloat16)"
  with pytest.raises(ValueError, match="not available"):
    resolve("flash")


def test_unavailable_kernels_fail_by_name():
  q = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match="cudnn.*needs a CUDA GPU"):
    attention_lib.attention(q, q, q, impl="cudnn")
  with pytest.raises(ValueError, match="attention_impl='bogus'"):
    vljepa.tiny_config().replace(attention_impl="bogus")


def test_decoding_with_a_cache_offset_uses_the_reference():
  q, k, v = _qkv(4, length=12)
  q1 = q[:, :3]
  expected = reference_attention(q1, k, v, None, True, None, 0.25, q_offset=5)
  out = jax.jit(lambda offset: attention_lib.attention(q1, k, v, causal=True, scale=0.25, q_offset=offset,
                                                       impl="pallas"))(jnp.int32(5))
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)


def _model_inputs(seed=0, n=3):
  rng = np.random.default_rng(seed)
  lengths = np.array([8, 5, 2])[:n]
  return {"video": jnp.asarray(rng.integers(0, 256, (n, 2, 32, 32, 3)), jnp.uint8),
          "query_ids": jnp.asarray(rng.integers(0, 256, (n, 8)), jnp.int32),
          "query_mask": jnp.asarray(np.arange(8)[None] < lengths[:, None], jnp.int32),
          "target_ids": jnp.asarray(rng.integers(0, 256, (n, 8)), jnp.int32),
          "target_mask": jnp.asarray(np.arange(8)[None] < lengths[::-1][:, None], jnp.int32)}


@pytest.mark.parametrize("y_backbone", ["bert", "gemma3"])  # gemma3: sliding-window layers
def test_model_forward_and_gradients_with_pallas_equal_xla(y_backbone):
  config = vljepa.tiny_config(y_backbone)
  config = config.replace(x_encoder=config.x_encoder.replace(patch_size=8))
  inputs = train_step_lib.model_inputs(_model_inputs())
  params = jax.jit(vljepa.VLJEPA(config.replace(attention_impl="xla")).init)(jax.random.key(0), **inputs)

  def embeddings_and_grads(impl):
    model = vljepa.VLJEPA(config.replace(attention_impl=impl))

    def loss(params):
      pred, target = model.apply(params, **inputs)
      return jnp.sum(pred * target) + jnp.sum(pred ** 2), (pred, target)

    (_, outs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return outs, grads

  (pred, target), grads = embeddings_and_grads("pallas")
  (ref_pred, ref_target), ref_grads = embeddings_and_grads("xla")
  np.testing.assert_allclose(np.asarray(pred), np.asarray(ref_pred), atol=1e-5)
  np.testing.assert_allclose(np.asarray(target), np.asarray(ref_target), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), grads, ref_grads)


def test_causal_decoder_with_pallas_equals_xla():
  """The Y-decoder's teacher-forced forward: a causal Llama over a prefix plus tokens."""
  config = y_decoder_lib.PRESETS["tiny"]
  rng = np.random.default_rng(5)
  condition = jnp.asarray(rng.normal(size=(2, config.embed_dim)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 256, (2, 11)), jnp.int32)
  params = y_decoder_lib.YDecoder(config).init(jax.random.key(1), condition, tokens)

  def logits_and_grads(impl):
    decoder = y_decoder_lib.YDecoder(config.with_field_everywhere("attention_impl", impl))
    loss = lambda p: jnp.mean(jax.nn.log_softmax(decoder.apply(p, condition, tokens))[..., 0])
    return decoder.apply(params, condition, tokens), jax.grad(loss)(params)

  logits, grads = logits_and_grads("pallas")
  ref_logits, ref_grads = logits_and_grads("xla")
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), grads, ref_grads)


@pytest.mark.parametrize("platform,lowering_platform,marker", [("gpu", "cuda", "__gpu$xla.gpu.triton"),
                                                               ("tpu", "tpu", "tpu_custom_call")])
def test_sharded_model_gradient_lowers_for_gpu_and_tpu(platform, lowering_platform, marker):
  """The whole model's gradient with attention_impl='pallas' on a data x fsdp x tensor mesh, lowered
  for an H100 / a TPU from this CPU machine: every attention layer's kernels are compiled ones."""
  config = vljepa.tiny_config()
  model = vljepa.VLJEPA(config.replace(x_encoder=config.x_encoder.replace(patch_size=8), attention_impl="pallas"))
  inputs = train_step_lib.model_inputs(_model_inputs(n=3))
  inputs = {k: jax.ShapeDtypeStruct((8,) + v.shape[1:], v.dtype) for k, v in inputs.items()}
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), **{k: jnp.zeros(v.shape, v.dtype)
                                                                     for k, v in inputs.items()}))

  def grads(params, inputs):
    with nn.logical_axis_rules(sharding.logical_rules("fsdp_tp")):
      return jax.grad(lambda p: sum(jnp.sum(x) for x in model.apply(p, **inputs)))(params)

  device = jax.sharding.AbstractDevice(**TARGETS[platform])
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                                   abstract_device=device)
  with jax.sharding.use_abstract_mesh(mesh):
    text = jax.jit(grads).trace(params, inputs).lower(lowering_platforms=(lowering_platform,)).as_text()
  # 6 attention layers (ViT, predictor, Y-encoder: 2 each) forward; dQ and dK/dV for the 4 outside
  # the frozen X-encoder.
  assert text.count(marker) == 6 + 4 * 2, text.count(marker)
