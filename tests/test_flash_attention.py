"""The Pallas flash-attention kernel (interpret mode on CPU) against float64 NumPy attention.

The reference computes the output and the closed-form softmax-attention gradients from the math,
with an explicit (Lq, Lk) visibility matrix; rows that see no key are zero in output and gradient.
GPU (Triton) and TPU (Mosaic) lowerings are checked from this CPU machine.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax import kernels
from vljepa_jax.kernels import flash


def numpy_attention(q, k, v, d_out, *, q_seg=None, kv_seg=None, causal=False, window=None, scale=None):
  """Output and (dq, dk, dv) of softmax attention for upstream gradient `d_out`, in float64."""
  q, k, v, d_out = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
  b, lq, hq, d = q.shape
  lk, hk = k.shape[1], k.shape[2]
  group = hq // hk
  scale = d ** -0.5 if scale is None else scale
  kr, vr = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # query head h <- kv head h // group
  i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
  visible = np.ones((b, 1, lq, lk), bool)
  if causal:
    visible &= j <= i
  if window is not None:
    visible &= np.abs(i - j) < window
  if q_seg is not None:
    visible &= np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :]
  s = np.einsum("bqhd,bkhd->bhqk", q, kr) * scale
  s = np.where(visible, s, -np.inf)
  m = s.max(-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  p = np.exp(s - m)  # exactly 0 where hidden
  total = p.sum(-1, keepdims=True)
  p = p / np.where(total == 0, 1.0, total)
  out = np.einsum("bhqk,bkhd->bqhd", p, vr)
  dp = np.einsum("bqhd,bkhd->bhqk", d_out, vr)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, kr) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q).reshape(b, lk, hk, group, d).sum(3) * scale
  dv = np.einsum("bhqk,bqhd->bkhd", p, d_out).reshape(b, lk, hk, group, d).sum(3)
  return out, (dq, dk, dv)


def _inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, q_len, q_heads, head_dim))
  k = rng.normal(size=(batch, kv_len, kv_heads, head_dim))
  v = rng.normal(size=(batch, kv_len, kv_heads, head_dim))
  d_out = rng.normal(size=(batch, q_len, q_heads, head_dim))
  # Round through the dtype first so the reference sees exactly the kernel's inputs.
  return [np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)) for x in (q, k, v, d_out)]


def _padding_segments(seed, batch, q_len, kv_len, *, empty_row: bool):
  """Queries are segment 1; keys 1 for tokens, 0 for right padding. Optionally an all-padding example."""
  rng = np.random.default_rng(seed + 1)
  lengths = rng.integers(1, kv_len + 1, size=batch)
  if empty_row:
    lengths[-1] = 0
  kv_seg = (np.arange(kv_len)[None] < lengths[:, None]).astype(np.int32)
  return np.ones((batch, q_len), np.int32), kv_seg


def _packed_segments(seed, batch, q_len, kv_len):
  """Several packed documents per row (ids 0..3), independently for queries and keys."""
  rng = np.random.default_rng(seed + 2)
  return (np.sort(rng.integers(0, 4, (batch, q_len)), axis=1).astype(np.int32),
          np.sort(rng.integers(0, 4, (batch, kv_len)), axis=1).astype(np.int32))


def _run(q, k, v, d_out, dtype, **kwargs):
  cast = lambda x: jnp.asarray(x, dtype)

  def loss(q, k, v):
    out = kernels.flash_attention(q, k, v, **kwargs)
    return jnp.sum(out.astype(jnp.float32) * d_out), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(cast(q), cast(k), cast(v))
  return out, grads


# (seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, causal, window, segments, blocks, platform layout)
CASES = [
    (0, 2, 64, 64, 4, 4, 32, False, None, None, (32, 32), "cpu"),
    (1, 1, 37, 37, 4, 1, 16, False, None, "padding", (16, 16), "cpu"),  # GQA 4, odd length
    (2, 2, 100, 100, 8, 1, 32, True, None, None, (32, 16), "cpu"),  # GQA 8, causal, blocks differ
    (3, 2, 77, 53, 4, 4, 64, False, None, "padding", (32, 32), "cpu"),  # Lq != Lk, padded keys
    (4, 1, 130, 130, 2, 2, 32, True, None, "packed", (32, 64), "cpu"),
    (5, 2, 90, 90, 4, 2, 32, False, 17, "padding", (16, 32), "cpu"),  # sliding window + padding
    (6, 1, 96, 96, 4, 1, 32, True, 20, None, (32, 32), "cpu"),  # causal + window: skipped blocks
    (7, 3, 50, 50, 4, 2, 32, False, None, "empty", (16, 16), "cpu"),  # an all-padding example
    (8, 2, 64, 75, 4, 1, 32, True, None, "packed", (32, 32), "cpu"),
    (9, 1, 200, 200, 2, 2, 64, False, None, None, (None, None), "cpu"),  # default blocks, one q block
    # The TPU layout (heads-major, transposed by the wrapper), run in interpret mode.
    (10, 2, 45, 45, 8, 1, 32, True, None, "padding", (16, 16), "tpu"),
    (11, 1, 64, 64, 4, 2, 32, False, 9, "empty", (32, 32), "tpu"),
    (12, 2, 33, 70, 4, 4, 16, False, None, "packed", (16, 32), "tpu"),
    # The GPU path zero-pads head_dim 20 to 32 (Triton tiles are powers of two), run in interpret mode.
    (13, 2, 50, 50, 4, 2, 20, True, None, "padding", (16, 32), "gpu"),
]


def _case_inputs(case, dtype):
  seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, causal, window, segments, blocks, platform = case
  q, k, v, d_out = _inputs(seed, batch, q_len, kv_len, q_heads, kv_heads, head_dim, dtype)
  seg = {}
  if segments == "packed":
    seg = dict(zip(("q_segment_ids", "kv_segment_ids"), _packed_segments(seed, batch, q_len, kv_len)))
  elif segments in ("padding", "empty"):
    seg = dict(zip(("q_segment_ids", "kv_segment_ids"),
                   _padding_segments(seed, batch, q_len, kv_len, empty_row=segments == "empty")))
  kwargs = dict(causal=causal, window=window, block_q=blocks[0], block_k=blocks[1], platform=platform,
                interpret=True, **seg)
  expected = numpy_attention(q, k, v, d_out, q_seg=seg.get("q_segment_ids"), kv_seg=seg.get("kv_segment_ids"),
                             causal=causal, window=window)
  return (q, k, v, d_out), kwargs, expected


@pytest.mark.parametrize("case", CASES, ids=[f"case{c[0]}" for c in CASES])
def test_forward_and_gradients_fp32(case):
  (q, k, v, d_out), kwargs, (expected, expected_grads) = _case_inputs(case, jnp.float32)
  out, grads = _run(q, k, v, d_out, jnp.float32, **kwargs)
  assert out.dtype == jnp.float32 and out.shape == q.shape
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)
  for name, got, want in zip(("dq", "dk", "dv"), grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[5], CASES[10]], ids=["gqa4_pad", "gqa8_causal",
                                                                                 "window", "tpu_layout"])
def test_forward_and_gradients_bf16(case):
  (q, k, v, d_out), kwargs, (expected, expected_grads) = _case_inputs(case, jnp.bfloat16)
  out, grads = _run(q, k, v, d_out, jnp.bfloat16, **kwargs)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  # atol 5e-2 as JAX's own kernel tests use, plus bf16's spacing (2^-7 relative): a gradient of
  # magnitude 16 is stored to the nearest 0.125, whatever the accumulation precision.
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=5e-2, rtol=2 ** -7)
  for name, got, want in zip(("dq", "dk", "dv"), grads, expected_grads):
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=5e-2, rtol=2 ** -7, err_msg=name)


def test_rows_that_see_no_key_are_zero_not_nan():
  q, k, v, d_out = _inputs(20, 2, 24, 24, 2, 2, 16, jnp.float32)
  q_seg = np.ones((2, 24), np.int32)
  q_seg[0, 5:9] = 7  # no key has segment 7
  kv_seg = np.ones((2, 24), np.int32)
  kv_seg[1] = 0  # example 1: every key is padding
  out, grads = _run(q, k, v, d_out, jnp.float32, q_segment_ids=q_seg, kv_segment_ids=kv_seg)
  out = np.asarray(out)
  assert np.isfinite(out).all() and all(np.isfinite(np.asarray(g)).all() for g in grads)
  np.testing.assert_array_equal(out[0, 5:9], 0.0)
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(np.asarray(grads[0])[1], 0.0)
  assert np.abs(out[0, :5]).sum() > 0


def test_scale_argument():
  q, k, v, d_out = _inputs(21, 1, 40, 40, 2, 1, 16, jnp.float32)
  out, grads = _run(q, k, v, d_out, jnp.float32, sm_scale=0.37, causal=True)
  expected, expected_grads = numpy_attention(q, k, v, d_out, causal=True, scale=0.37)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads[1]), expected_grads[1], atol=1e-5)


def _lower(platform, lowering_platform, dtype, **kwargs):
  shape = jax.ShapeDtypeStruct

  def loss_and_grads(q, k, v, q_seg, kv_seg):
    def loss(q, k, v):
      out = kernels.flash_attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, platform=platform,
                                    interpret=False, **kwargs)
      return out.astype(jnp.float32).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  args = (shape((2, 300, 8, 64), dtype), shape((2, 300, 2, 64), dtype), shape((2, 300, 2, 64), dtype),
          shape((2, 300), jnp.int32), shape((2, 300), jnp.int32))
  # Lowering reads the target's hardware description (Triton: compute capability; Mosaic: TPU
  # generation) from the context mesh's abstract device when no such device is attached.
  device = jax.sharding.AbstractDevice(**TARGETS[platform])
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
    return jax.jit(loss_and_grads).trace(*args).lower(lowering_platforms=(lowering_platform,)).as_text()


TARGETS = {"gpu": dict(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu"),
           "tpu": dict(device_kind="TPU v5 lite", num_cores=1, platform="tpu")}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 64)])
def test_lowers_for_gpu_triton_and_tpu_mosaic(dtype, causal, window):
  gpu = _lower("gpu", "cuda", dtype, causal=causal, window=window)
  # Forward, dQ and dK/dV: three Triton kernels inside XLA:GPU custom calls.
  assert gpu.count("__gpu$xla.gpu.triton") == 3, gpu[:2000]
  assert "flash_attention_dkv" in gpu
  tpu = _lower("tpu", "tpu", dtype, causal=causal, window=window)
  assert tpu.count("tpu_custom_call") == 3, tpu[:2000]


def test_bad_inputs_name_the_problem():
  q = jnp.zeros((1, 8, 4, 16))
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    kernels.flash_attention(q, jnp.zeros((1, 8, 3, 16)), jnp.zeros((1, 8, 3, 16)))
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    kernels.flash_attention(q, q, q, q_segment_ids=jnp.zeros((1, 8), jnp.int32))
  with pytest.raises(ValueError, match=r"segment ids must be \(batch, length\)"):
    kernels.flash_attention(q, q, q, q_segment_ids=jnp.zeros((1, 7), jnp.int32),
                            kv_segment_ids=jnp.zeros((1, 8), jnp.int32))
  with pytest.raises(ValueError, match="powers of two"):
    kernels.flash_attention(q, q, q, block_q=24)
  with pytest.raises(ValueError, match="interpret mode"):
    kernels.flash_attention(q, q, q, interpret=False)
  with pytest.raises(ValueError, match="block_k must be a multiple of 128"):
    kernels.flash_attention(jnp.zeros((1, 300, 4, 16)), jnp.zeros((1, 300, 4, 16)), jnp.zeros((1, 300, 4, 16)),
                            q_segment_ids=jnp.zeros((1, 300), jnp.int32), kv_segment_ids=jnp.zeros((1, 300), jnp.int32),
                            block_k=64, platform="tpu", interpret=False)
  with pytest.raises(ValueError, match="platform"):
    kernels.flash_attention(q, q, q, platform="metal")
  assert flash.MASK_VALUE < -1e38
