"""The shared attention function and norms against loop-free NumPy references written from the math."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax.models import attention as attention_lib
from vljepa_jax.models import layers


def reference_attention(q, k, v, kv_mask, causal, window, scale, q_offset=0):
  """Per (batch, head) softmax attention with an explicit boolean mask, in float64.

  Query row r sits at position r + q_offset; key j at position j.
  """
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, lq, hq, d = q.shape
  lk, hk = k.shape[1], k.shape[2]
  out = np.zeros((b, lq, hq, d))
  for bi in range(b):
    for h in range(hq):
      kh = h // (hq // hk)  # query head h reads kv head h // group_size
      s = q[bi, :, h] @ k[bi, :, kh].T * scale
      allowed = np.ones((lq, lk), bool)
      if kv_mask is not None:
        allowed &= kv_mask[bi][None, :].astype(bool)
      i, j = np.arange(lq)[:, None] + q_offset, np.arange(lk)[None, :]
      if causal:
        allowed &= j <= i
      if window is not None:
        allowed &= np.abs(i - j) < window
      s = np.where(allowed, s, -1e30)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[bi, :, h] = p @ v[bi, :, kh]
  return out


@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (4, 2), (8, 1)])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 3)])
def test_attention_matches_numpy(q_heads, kv_heads, causal, window):
  rng = np.random.default_rng(q_heads * 10 + kv_heads)
  b, l, d = 2, 7, 8
  q = rng.normal(size=(b, l, q_heads, d)).astype(np.float32)
  k = rng.normal(size=(b, l, kv_heads, d)).astype(np.float32)
  v = rng.normal(size=(b, l, kv_heads, d)).astype(np.float32)
  kv_mask = np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)  # right padding in row 1
  out = attention_lib.attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window, scale=0.3)
  ref = reference_attention(q, k, v, kv_mask, causal, window, 0.3)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


@pytest.mark.parametrize("q_offset", [0, 2, 6])
@pytest.mark.parametrize("window", [None, 3])
def test_query_offset_places_queries_among_the_keys(q_offset, window):
  """A chunk of 3 queries at positions q_offset.. over 9 keys (a KV cache): causal and window masks
  are measured from the absolute position; the offset may be a traced value."""
  rng = np.random.default_rng(q_offset)
  q = rng.normal(size=(2, 3, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, 9, 2, 8)).astype(np.float32)
  v = rng.normal(size=(2, 9, 2, 8)).astype(np.float32)
  ref = reference_attention(q, k, v, None, True, window, 0.3, q_offset=q_offset)
  out = attention_lib.attention(q, k, v, causal=True, window=window, scale=0.3, q_offset=q_offset)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
  traced = jax.jit(lambda offset: attention_lib.attention(q, k, v, causal=True, window=window, scale=0.3,
                                                          q_offset=offset))(jnp.int32(q_offset))
  np.testing.assert_allclose(np.asarray(traced), ref, atol=1e-5)


def test_fully_masked_row_is_finite_and_uniform():
  q = jnp.ones((1, 2, 1, 4))
  k = jnp.ones((1, 3, 1, 4))
  v = jnp.arange(12.0).reshape(1, 3, 1, 4)
  out = attention_lib.attention(q, k, v, kv_mask=jnp.zeros((1, 3), jnp.int32))
  np.testing.assert_allclose(np.asarray(out)[0, 0, 0], np.asarray(v)[0, :, 0].mean(0), rtol=1e-6)


def test_bad_shapes_name_the_problem():
  q = jnp.ones((1, 2, 3, 4))
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    attention_lib.attention(q, jnp.ones((1, 2, 2, 4)), jnp.ones((1, 2, 2, 4)))
  with pytest.raises(ValueError, match="not available"):
    attention_lib.attention(q, q, q, impl="nonexistent")


@pytest.mark.parametrize("offset_scale", [False, True])
def test_rms_norm_conventions(offset_scale):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 16)).astype(np.float32)
  w = rng.normal(size=(16,)).astype(np.float32)
  norm = layers.RMSNorm(epsilon=1e-6, offset_scale=offset_scale)
  out = norm.apply({"params": {"scale": w}}, x)
  x64 = x.astype(np.float64)
  ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * ((1 + w) if offset_scale else w)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


def test_masked_mean_ignores_padding():
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  mask = np.array([[1, 1, 0], [0, 0, 0]])
  out = np.asarray(layers.masked_mean(jnp.asarray(x), jnp.asarray(mask)))
  np.testing.assert_allclose(out[0], x[0, :2].mean(0))
  np.testing.assert_array_equal(out[1], np.zeros(4))  # all-padding row: zeros, not NaN


def _logits_batches(fn, *args, platform: str | None = None) -> list[int]:
  """Batch sizes of the `bhqd,bhkd->bhqk` logits products in `fn`'s jaxpr."""
  def trace():
    return jax.make_jaxpr(fn)(*args)
  if platform is None:
    closed = trace()
  else:
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform=platform)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
      closed = trace()
  return [eqn.invars[0].aval.shape[0] for eqn in closed.jaxpr.eqns
          if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1] == args[1].shape[1]
          and eqn.params["dimension_numbers"][0] == ((3,), (3,))]


def test_cpu_attention_runs_one_slice_of_the_batch_per_core(monkeypatch):
  """On a one-device CPU process the "xla" attention is one independent product per core (XLA:CPU's
  batched matmuls are single-threaded up to jaxlib 0.10), uneven slices included; the result is unchanged. Compiled for
  a GPU, under a mesh of several devices, or while decoding, it is one batched product."""
  monkeypatch.setattr(attention_lib.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
  monkeypatch.setattr(attention_lib, "_MIN_SLICED_WORK", 0)  # slice even these tiny shapes
  # Whatever jaxlib runs the test: the slicing itself must be right wherever it is switched on.
  monkeypatch.setattr(attention_lib, "_SINGLE_THREADED_BATCHED_MATMUL", True)
  rng = np.random.default_rng(7)
  b, l, d = 5, 6, 8
  q = rng.normal(size=(b, l, 4, d)).astype(np.float32)
  k = rng.normal(size=(b, l, 2, d)).astype(np.float32)
  v = rng.normal(size=(b, l, 2, d)).astype(np.float32)
  kv_mask = (np.arange(l)[None] < np.array([6, 3, 6, 1, 4])[:, None]).astype(np.int32)
  fn = lambda q, k, v, m: attention_lib.attention(q, k, v, kv_mask=m, causal=True, scale=0.3)
  assert attention_lib.cpu_batch_slices(b, 1) == 3
  assert _logits_batches(fn, q, k, v, kv_mask) == [2, 2, 1]
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(q, k, v, kv_mask)),
                             reference_attention(q, k, v, kv_mask, True, None, 0.3), atol=1e-5)
  assert _logits_batches(fn, q, k, v, kv_mask, platform="gpu") == [b]
  with jax.set_mesh(jax.make_mesh((1,), ("data",))):
    assert attention_lib.cpu_batch_slices(b, 1) == 3
  with jax.set_mesh(jax.make_mesh((2,), ("data",))):
    assert attention_lib.cpu_batch_slices(b, 1) == 1
  decode = lambda q, k, v, m: attention_lib.attention(q, k, v, kv_mask=m, causal=True, scale=0.3,
                                                      q_offset=jnp.int32(0))
  assert _logits_batches(decode, q, k, v, kv_mask) == [b]
  monkeypatch.setattr(attention_lib.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
  assert attention_lib.cpu_batch_slices(32, 1) == attention_lib._MAX_CPU_SLICES
  monkeypatch.undo()
  monkeypatch.setattr(attention_lib, "_SINGLE_THREADED_BATCHED_MATMUL", True)
  # Small products (the demo's attention: 8-16 M multiply-adds) stay whole; small's ViT (0.8 G) is sliced.
  assert attention_lib.cpu_batch_slices(64, 64 * 4 * 44 * 44 * 32) == 1
  assert attention_lib.cpu_batch_slices(32, 32 * 6 * 256 * 256 * 64) == min(32, len(os.sched_getaffinity(0)), 8)
  # From jaxlib 0.11 XLA:CPU's batched products use every core: nothing is sliced.
  monkeypatch.setattr(attention_lib, "_SINGLE_THREADED_BATCHED_MATMUL", False)
  assert attention_lib.cpu_batch_slices(32, 32 * 6 * 256 * 256 * 64) == 1
  monkeypatch.setattr(attention_lib, "_MIN_SLICED_WORK", 0)
  fresh = lambda q, k, v, m: attention_lib.attention(q, k, v, kv_mask=m, causal=True, scale=0.3)  # not traced yet
  assert _logits_batches(fresh, q, k, v, kv_mask) == [b]
