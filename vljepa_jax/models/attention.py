"""The one attention function every model calls.

Layout is `(batch, length, heads, head_dim)` throughout. Grouped-query attention is
expressed by giving k and v fewer heads than q (a divisor); the query heads are grouped
instead of repeating k/v, so nothing the size of the repeated keys is materialised.

Masking semantics (identical to Hugging Face's eager attention, which the parity tests
rely on): `kv_mask` hides padded *keys* only; padded queries still attend to the real
keys and their outputs are simply ignored downstream. A row with every key masked gets a
uniform distribution (the mask value is finite), never NaN.

Decoding with a KV cache attends a chunk of new queries to every cached key; `q_offset`
gives the queries' absolute position so that the causal (and window) masks are measured from
there, and keys not yet written (beyond the queries' positions) are hidden by the causal mask.

`impl` (a model config's `attention_impl`) selects the implementation:
- `"xla"`: the reference below, materialising the (Lq, Lk) logits. Runs everywhere. On a CPU,
  outside a mesh of several devices and where the products are large, it runs as one independent
  attention per core over slices of the batch (`cpu_batch_slices`): up to jaxlib 0.10, XLA:CPU's
  batched matmuls run on one thread each.
- `"pallas"`: `kernels.flash_attention` (O(L) memory; Triton on GPU, Mosaic on TPU, interpret
  mode on CPU). `kv_mask` becomes segment ids (queries 1, keys 1/0), so every query attends to the
  real keys exactly as here.
- `"cudnn"`: `jax.nn.dot_product_attention(implementation="cudnn")`, CUDA GPUs with bf16/fp16.
  `kv_mask` becomes per-example key lengths, so it must be right padding (a prefix of ones), which
  is what every tokenizer and model in this library produces.
- `"splash"`: JAX's TPU splash attention (`kernels.splash`).
- `"auto"`: cudnn on GPU when its dtype and head_dim constraints hold, else pallas; splash on TPU;
  xla on CPU. The choice is logged once per configuration.
The kernels differ from the reference in one place only: a query that sees no key at all (an
all-padding row) gets zeros instead of a uniform average. Such rows are padding, which every
caller drops. Decoding with a KV cache (`q_offset` other than the literal 0: one new query at a
time against a cache) always runs the reference, which is what a single query row needs.

Under a mesh (`jax.set_mesh`, as the train step and evaluators run), the Pallas and splash kernels
run inside `jax.shard_map`: the batch is split as the logical rules place `activation_batch`
(data x fsdp) and heads as they place `heads`/`kv_heads` (tensor under "fsdp_tp"), so each device
attends its own examples and heads with no communication. cuDNN attention partitions itself.
"""
from __future__ import annotations

import os
from typing import Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vljepa_jax.kernels import flash as flash_lib
from vljepa_jax.kernels import splash as splash_lib
from vljepa_jax.models import params as params_lib

# Finite rather than -inf so fully masked rows stay finite (JAX kernels use the same value).
_MASK_VALUE = flash_lib.MASK_VALUE

IMPLEMENTATIONS = ("xla", "pallas", "cudnn", "splash", "auto")
_logged: set[tuple] = set()


def _cudnn_supports(dtype: jnp.dtype, head_dim: int | None) -> bool:
  """cuDNN flash attention: fp16/bf16, head_dim a multiple of 8, <= 256 on Hopper (128 before)."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return False
  if head_dim is None:
    return True
  capability = getattr(jax.devices()[0], "compute_capability", "0")
  return head_dim % 8 == 0 and head_dim <= (256 if float(capability) >= 9.0 else 128)


def resolve_impl(impl: str, *, dtype: jnp.dtype = jnp.bfloat16, head_dim: int | None = None,
                 backend: str | None = None) -> str:
  """The implementation `impl` means on `backend` (default: this process's) for these inputs.

  `"auto"` is logged once per (backend, choice, dtype, head_dim); head_dim None leaves the
  head_dim constraints out (the start-up message, before any layer is traced).
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention impl {impl!r} is not available; expected one of {IMPLEMENTATIONS}")
  if impl != "auto":
    return impl
  backend = backend or flash_lib.target_platform()
  if backend == "gpu":
    resolved = "cudnn" if _cudnn_supports(dtype, head_dim) else "pallas"
  elif backend == "tpu":
    resolved = "splash"
  else:
    resolved = "xla"
  key = (backend, resolved, jnp.dtype(dtype).name, head_dim)
  if key not in _logged:
    _logged.add(key)
    logging.info("attention_impl='auto' -> %r on %s (%s%s)", resolved, backend, jnp.dtype(dtype).name,
                 "" if head_dim is None else f", head_dim {head_dim}")
  return resolved


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    kv_mask: jax.Array | None = None,
    causal: bool = False,
    window: int | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array | None:
  """Boolean mask `(batch or 1, q_len, kv_len)`: True where a query may attend to a key.

  Args:
    kv_mask: `(batch, kv_len)`, True (or 1) for real tokens, False (0) for padding.
    causal: a query at position i sees keys at positions <= i.
    window: bidirectional sliding window with an exclusive bound: keys with
      `|i - j| >= window` are hidden (Gemma 3's bidirectional layers use 257 to see ±256).
    q_offset: position of query 0 among the keys (a Python int or a traced int32 scalar): query
      row r sits at position `r + q_offset`. Keys are always at positions 0..kv_len-1.
  Returns None when nothing is masked.
  """
  mask = None
  if causal or window is not None:
    i = jnp.arange(q_len)[:, None] + q_offset
    j = jnp.arange(kv_len)[None, :]
    allowed = jnp.ones((q_len, kv_len), dtype=bool)
    if causal:
      allowed &= j <= i
    if window is not None:
      allowed &= jnp.abs(i - j) < window
    mask = allowed[None]
  if kv_mask is not None:
    keys = kv_mask.astype(bool)[:, None, :]
    mask = keys if mask is None else (mask & keys)
  return mask


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_mask: jax.Array | None = None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    q_offset: int | jax.Array = 0,
    impl: str = "xla",
) -> jax.Array:
  """Softmax attention. q: `(B, Lq, Hq, D)`; k, v: `(B, Lk, Hkv, D)` with `Hq % Hkv == 0`.

  `q_offset` places the queries at positions `q_offset..q_offset+Lq-1` for the causal and
  window masks (see `attention_mask`); 0, the default, is ordinary self-attention.
  `impl` picks the implementation (module docstring).

  Returns `(B, Lq, Hq, D)` in q's dtype. Logits and softmax are computed in float32.
  """
  impl = resolve_impl(impl, dtype=q.dtype, head_dim=q.shape[-1])
  decoding = not (isinstance(q_offset, int) and q_offset == 0)
  if impl != "xla" and not decoding:
    return _kernel_attention(impl, q, k, v, kv_mask=kv_mask, causal=causal, window=window,
                             scale=q.shape[-1] ** -0.5 if scale is None else scale)
  batch, q_len, q_heads, head_dim = q.shape
  slices = 1 if decoding else cpu_batch_slices(batch, batch * q_heads * q_len * k.shape[1] * head_dim)
  if slices == 1:
    return reference_attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window, scale=scale,
                               q_offset=q_offset)
  masks = [None] * slices if kv_mask is None else jnp.array_split(kv_mask, slices)
  outs = [reference_attention(qs, ks, vs, kv_mask=ms, causal=causal, window=window, scale=scale)
          for qs, ks, vs, ms in zip(*(jnp.array_split(a, slices) for a in (q, k, v)), masks)]
  return jnp.concatenate(outs)


# More slices than this only add instructions (and compile time) for cores no measurement has covered.
_MAX_CPU_SLICES = 8
# Multiply-adds of the logits product below which attention runs unsliced: such a product takes a
# few ms on one core, and slicing the demo's (8-16 M) gained nothing and cost 3 s of its step's
# compile time (7 -> 10 s); small's (0.8-1.2 G) gain.
_MIN_SLICED_WORK = 10**8
# XLA:CPU runs a batched matmul on one thread up to jaxlib 0.10 and on all cores from 0.11: the same
# 192 x 256x64x256 product at 25-28 GFLOP/s with CPU/wall 1.00 on jax 0.10.2, 49 GFLOP/s with CPU/wall
# 1.8-2.0 on 0.11.2 and 0.12.0 (2-core AMD EPYC; `/tmp`-style timing of the jitted einsum). From 0.11
# slicing only adds work: `small`'s step at batch 16 on jax 0.12, sliced / whole 1.020
# (`benchmarks/cpu_attention_slices.py`).
_SINGLE_THREADED_BATCHED_MATMUL = jax.__version_info__ < (0, 11)


def cpu_batch_slices(batch: int, work: int) -> int:
  """How many independent slices of the batch the `"xla"` attention runs as: one per core on a CPU.

  `work` is the multiply-adds of the logits product (batch x heads x Lq x Lk x head_dim).

  XLA:CPU runs a batched matmul (the logits and the probabilities x values, forward and backward)
  on one thread, however many the machine has, while its 2-D GEMMs and elementwise loops use all
  of them (`benchmarks/xla_cpu_repro.py`: 60 GFLOP/s at small's ViT shapes on 1 core and on 2;
  torch.bmm 115-130 on 2). Independent products, one per slice of the batch, are run concurrently by
  XLA's thunk executor. `configs/small.py`'s float32 step on 2 cores: 2.3-3.8% faster
  (`benchmarks/cpu_attention_slices.py`; the demo's attention is too small to gain). Only outside
  a mesh of several devices (the main job's single-device mesh, or none): across devices the batch
  is sharded and each device already runs its own share, and slicing it would move data between
  them. GPUs and TPUs run one batched product (or a kernel) as is, and so does XLA:CPU from jaxlib
  0.11, whose batched matmuls use every core (`_SINGLE_THREADED_BATCHED_MATMUL`).
  """
  if (not _SINGLE_THREADED_BATCHED_MATMUL or work < _MIN_SLICED_WORK or flash_lib.target_platform() != "cpu"
      or jax.sharding.get_abstract_mesh().size > 1):
    return 1
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return max(1, min(batch, cores, _MAX_CPU_SLICES))


def reference_attention(q, k, v, *, kv_mask=None, causal=False, window=None, scale=None, q_offset=0):
  """The `"xla"` implementation: explicit logits, float32 softmax, grouped heads without repeats.

  Laid out for XLA's batched matmuls, which want the batch dimensions leading: q, k and v are
  moved head-major once, `(B, Hkv, G*Lq, D)` for q (its G = Hq/Hkv heads of a group stacked along
  the rows, so grouped-query attention is one batched matmul per kv head without repeating k/v)
  and `(B, Hkv, Lk, D)` for k and v. Then the logits are a plain `bhqd,bhkd->bhqk` product and
  the output `bhqk,bhkd->bhqd`, both in the layout they produce. Written with the head axis in
  the middle (`bqhd`), XLA:CPU materialised transposed copies of the (Lq, Lk) logits and
  probabilities instead, in the forward and the backward pass.

  The mask is one additive bias (0 or a large negative, finite value), and the softmax divides
  the output `(..., Lq, D)` rather than the probabilities `(..., Lq, Lk)`: `exp(s - max) @ v / sum`
  equals `softmax(s) @ v` and saves a pass over the (Lq, Lk) block (as flash attention does).
  """
  _check_shapes(q, k, v)
  batch, q_len, q_heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  if scale is None:
    scale = head_dim ** -0.5
  groups = q_heads // kv_heads

  # Query head h uses key/value head h // groups (the Hugging Face `repeat_kv` order), so the G
  # heads of group j are contiguous in a head-major q.
  # The scale goes on q (Lq x D, fused into its head-major copy), not on the (Lq, Lk) logits:
  # multiplied into the logits, XLA:CPU fused it with the row max into the logits' matmul, and the
  # forward of `small`'s ViT attention took 56-66 ms instead of 31 ms (torch SDPA: 32 ms).
  qh = (jnp.swapaxes(q, 1, 2).astype(jnp.float32) * jnp.float32(scale)).astype(q.dtype)
  qh = qh.reshape(batch, kv_heads, groups * q_len, head_dim)
  kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32)
  logits = logits.reshape(batch, kv_heads, groups, q_len, kv_len)
  mask = attention_mask(q_len, kv_len, kv_mask=kv_mask, causal=causal, window=window, q_offset=q_offset)
  if mask is not None:
    # (B or 1, Lq or 1, Lk) -> broadcast over kv heads and groups. One bias, so masks combined
    # above never add two large negatives (which would overflow to -inf).
    logits = logits + jnp.where(mask, 0.0, _MASK_VALUE).astype(jnp.float32)[:, None, None]
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - row_max)
  denominator = jnp.sum(weights, axis=-1, keepdims=True)  # >= 1: the max term is exp(0)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.reshape(batch, kv_heads, groups * q_len, kv_len).astype(v.dtype), vh,
                   preferred_element_type=jnp.float32)
  out = out.reshape(batch, kv_heads, groups, q_len, head_dim) / denominator
  out = out.reshape(batch, q_heads, q_len, head_dim)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _check_shapes(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")


def _kernel_attention(impl: str, q, k, v, *, kv_mask, causal: bool, window: int | None, scale: float):
  _check_shapes(q, k, v)
  platform = flash_lib.target_platform()
  if impl == "cudnn":
    if platform != "gpu":
      raise ValueError(f"attention_impl='cudnn' needs a CUDA GPU; this process compiles for {platform!r} "
                       "(use 'auto', 'pallas' or 'xla')")
    if not _cudnn_supports(q.dtype, q.shape[-1]):
      raise ValueError(f"attention_impl='cudnn' needs bf16/fp16 inputs and a head_dim that is a multiple of 8 "
                       f"(<= 256 on Hopper, 128 before); got {q.dtype} and head_dim {q.shape[-1]}")
    return dot_product_attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window, scale=scale,
                                 implementation="cudnn")
  interpret = platform == "cpu"
  if impl == "splash":
    if platform not in ("tpu", "cpu"):
      raise ValueError(f"attention_impl='splash' is TPU attention; this process compiles for {platform!r}")

    def local(q, k, v, kv_mask=None):
      return splash_lib.splash_attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window, scale=scale,
                                         interpret=interpret)
  else:
    def local(q, k, v, kv_mask=None):
      segments = {}
      if kv_mask is not None:
        segments = dict(q_segment_ids=jnp.ones(q.shape[:2], jnp.int32), kv_segment_ids=kv_mask.astype(jnp.int32))
      return flash_lib.flash_attention(q, k, v, causal=causal, window=window, sm_scale=scale, **segments)
  return _per_shard(local, q, k, v, kv_mask)


def dot_product_attention(q, k, v, *, kv_mask, causal: bool, window: int | None, scale: float,
                          implementation: str):
  """`jax.nn.dot_product_attention` with this library's masks: `kv_mask` as key lengths (right padding)."""
  lengths = None if kv_mask is None else jnp.sum(kv_mask.astype(jnp.int32), axis=1)
  return jax.nn.dot_product_attention(
      q, k, v, scale=scale, is_causal=causal, key_value_seq_lengths=lengths,
      local_window_size=None if window is None else (window - 1, window - 1), implementation=implementation)


def _per_shard(local: Callable, q, k, v, kv_mask):
  """Runs `local` on each device's examples and heads under the context mesh, or directly without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return local(q, k, v, kv_mask)
  q_spec = params_lib.fit_to_shape(nn.logical_to_mesh_axes(("activation_batch", None, "heads", None)), q.shape,
                                   mesh, "attention queries")
  kv_spec = params_lib.fit_to_shape(nn.logical_to_mesh_axes(("activation_batch", None, "kv_heads", None)), k.shape,
                                    mesh, "attention keys")
  if q_spec != kv_spec:  # heads split the same way for q and k/v, or not at all, so shards keep whole groups
    q_spec = kv_spec = P(q_spec[0], None, None, None)
  args, specs = (q, k, v), (q_spec, kv_spec, kv_spec)
  if kv_mask is not None:
    args, specs = args + (kv_mask,), specs + (P(q_spec[0], None),)
  # check_vma=False: pallas_call's outputs carry no varying-axes type.
  return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)
