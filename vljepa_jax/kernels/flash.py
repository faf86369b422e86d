"""Flash attention in Pallas: one kernel source for GPU (Triton), TPU (Mosaic) and CPU (interpret).

FlashAttention-2 (Dao, 2023) without materialising softmax(QKᵀ): the forward streams key/value
blocks past a block of queries with an online softmax and saves only the output and the
log-sum-exp (LSE) of each query row; the backward recomputes the probabilities from the LSE in two
kernels, one per query block (dQ) and one per key block (dK, dV), wired with `jax.custom_vjp`.
Memory is O(L) in the sequence length instead of O(L²).

Conventions
- Layout `(batch, length, heads, head_dim)`, as everywhere in this library. Grouped-query attention:
  k and v may have fewer heads than q (a divisor); query head h reads key/value head
  `h // (q_heads // kv_heads)` (Hugging Face's `repeat_kv` order) through the block index map, so the
  repeated keys are never materialised. The dK/dV kernel sums over the group of query heads itself.
- Segment ids `(batch, length)` int32: a query attends only to keys with the same segment id. Padding
  is a segment of its own: give padded keys an id no real query has (e.g. 0 for padding, 1 for
  tokens), and packed sequences distinct ids. Without segment ids every query sees every key.
- `causal`: query i sees keys j <= i, both counted from position 0 (top-left aligned when the two
  lengths differ). `window`: keys with |i - j| >= window are hidden (Gemma 3's bidirectional sliding
  window uses 257 to see ±256). Blocks that the causal or window mask hides entirely are skipped.
- A query row with no visible key returns zeros (and zero gradients), never NaN or a uniform average.
- Logits, softmax and accumulators are float32 whatever the input dtype (fp32 or bf16); the second
  matmul takes the probabilities in v's dtype, as cuDNN and FlashAttention do.
- Lengths need not be multiples of the block sizes: inputs are padded to whole blocks and the padded
  keys are masked by position.

Backends
- `interpret=None` runs the kernel in Pallas interpret mode on CPU and compiled elsewhere.
- GPU compiles through Triton (`jax.experimental.pallas.triton.CompilerParams`; Mosaic GPU, the
  default GPU lowering since JAX 0.9, needs warp-specialised kernels and cannot run this one).
  jax 0.11 and 0.12 deprecate Pallas' Triton backend: lowering for a GPU warns
  (`DeprecationWarning`) and still works; requirements.txt stops below jax 0.13. A Mosaic GPU
  port of this kernel needs a GPU to be tested on.
- TPU compiles through Mosaic. Its blocks must be (8, 128)-aligned in their last two dims or span
  the array, so on TPU the wrapper transposes to `(batch, heads, length, head_dim)` and every block
  is a (length-tile, head_dim) slab; on GPU the heads dimension is indexed in place, no transpose.
- `platform` picks the target explicitly; by default it is the context mesh's abstract device, else
  the default backend. So a CPU machine can lower the GPU and TPU kernels, alone or inside a whole
  model under `jax.sharding.use_abstract_mesh` (`jax.jit(f).trace(...).lower(lowering_platforms=
  ("cuda",))`), and catch a broken lowering in CI.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np

# Finite rather than -inf: inf - inf would turn fully masked rows into NaN (JAX's kernels use the same).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
PLATFORMS = ("cpu", "gpu", "tpu")
# Default (block_q, block_k) per platform. GPU: the tiles of JAX's Triton flash attention, 128 x 64
# (untuned here: benchmarks/attention.py --blocks sweeps them on a GPU). TPU: 128-multiples, which
# Mosaic's lane tiling needs for the key segment ids. CPU interpret mode: large tiles, few steps.
DEFAULT_BLOCKS = {"gpu": (128, 64), "tpu": (128, 128), "cpu": (128, 128)}
_MIN_BLOCK = 16  # Triton's smallest dot tile; also a multiple of TPU's 8 sublanes


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Everything static about one call: shapes, tiles, masking and where it runs."""
  q_len: int
  kv_len: int
  q_heads: int
  kv_heads: int
  head_dim: int
  block_q: int
  block_k: int
  causal: bool
  window: int | None
  scale: float
  segments: bool
  fp32: bool
  platform: str
  interpret: bool

  @property
  def groups(self) -> int:
    return self.q_heads // self.kv_heads

  @property
  def q_padded(self) -> int:
    return round_up(self.q_len, self.block_q)

  @property
  def kv_padded(self) -> int:
    return round_up(self.kv_len, self.block_k)

  @property
  def heads_major(self) -> bool:
    """TPU layout: `(B, H, L, D)` so that blocks are (length-tile, head_dim) slabs."""
    return self.platform == "tpu"

  @property
  def precision(self):
    # fp32 inputs get true fp32 matmuls (Triton would otherwise use TF32); bf16 needs no hint.
    return lax.Precision.HIGHEST if self.fp32 else None


def target_platform() -> str:
  """"cpu", "gpu" or "tpu": what is being compiled for.

  The context mesh's abstract device when it names one (`jax.set_mesh` with real devices, or
  `jax.sharding.use_abstract_mesh` with an `AbstractDevice` to lower for a GPU or TPU from another
  machine), else this process's default backend.
  """
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  platform = jax.default_backend() if device is None else device.platform
  return "gpu" if platform in ("cuda", "rocm") else platform


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _block(requested: int | None, default: int, length: int) -> int:
  """Tile size: the request (or default), shrunk to the next power of two >= length for short inputs."""
  block = default if requested is None else requested
  if block < _MIN_BLOCK or block & (block - 1):
    raise ValueError(f"flash_attention block sizes must be powers of two >= {_MIN_BLOCK}, got {block}")
  return min(block, max(_MIN_BLOCK, pl.next_power_of_2(length)))


def _dot(a, b, *, precision, contract=(1, 0)):
  """`a @ b` (or with other contracting dims) accumulated in float32."""
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)


def _visible(plan: _Plan, row0, col0, rows: int, cols: int, q_seg=None, kv_seg=None):
  """Boolean `(rows, cols)` mask of the tile at (row0, col0), or None when nothing is hidden."""
  r = row0 + lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
  c = col0 + lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
  mask = None

  def both(m, cond):
    return cond if m is None else jnp.logical_and(m, cond)

  if plan.causal:
    mask = both(mask, c <= r)
  if plan.window is not None:
    mask = both(mask, jnp.logical_and(r - c < plan.window, c - r < plan.window))
  if plan.kv_padded != plan.kv_len:
    mask = both(mask, c < plan.kv_len)
  if q_seg is not None:
    mask = both(mask, q_seg == kv_seg)  # (rows, 1) == (1, cols)
  return mask


def _reach(plan: _Plan) -> tuple[int | None, int | None]:
  """How far before and after its own position a query's visible keys can lie (None: unbounded)."""
  width = None if plan.window is None else plan.window - 1
  return width, (0 if plan.causal else width)


def _block_span(first, last, before: int | None, after: int | None, block: int, num: int):
  """Blocks `[lo, hi)` of size `block` (of `num`) holding positions `first - before .. last + after`."""
  lo = 0 if before is None else lax.div(jnp.maximum(first - before, 0), block)
  hi = num if after is None else jnp.minimum(num, lax.div(last + after, block) + 1)
  return lo, hi


def _kv_block_range(plan: _Plan, q_block):
  """Key blocks that can hold a key visible to query block `q_block`; the rest are skipped."""
  before, after = _reach(plan)
  first = q_block * plan.block_q
  return _block_span(first, first + plan.block_q - 1, before, after, plan.block_k, plan.kv_padded // plan.block_k)


def _q_block_range(plan: _Plan, kv_block):
  """Query blocks that can see a key of key block `kv_block`: key c is seen by rows c - after .. c + before."""
  before, after = _reach(plan)
  first = kv_block * plan.block_k
  return _block_span(first, first + plan.block_k - 1, after, before, plan.block_q, plan.q_padded // plan.block_q)


# ----------------------------------------------------------------------------------------------
# Kernels. Refs arrive with batch and head squeezed away: q/o/do tiles are (block_q, D), k/v are
# the whole (kv_padded, D) of one head (sliced with pl.ds), lse/delta (block_q, 1). Segment ids
# come as (block, 1) for queries and (1, length) for keys, so comparing them broadcasts to a tile.
# ----------------------------------------------------------------------------------------------


def _forward_kernel(*refs, plan: _Plan):
  if plan.segments:
    q_seg_ref, kv_seg_ref, q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    q_seg = q_seg_ref[...]
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    q_seg = None
  bq, bk = plan.block_q, plan.block_k
  q_block = pl.program_id(2)
  q = q_ref[...]

  def step(j, carry):
    acc, m, l = carry
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = _dot(q, k, precision=plan.precision, contract=(1, 1)) * plan.scale
    kv_seg = kv_seg_ref[:, pl.ds(start, bk)] if plan.segments else None
    mask = _visible(plan, q_block * bq, start, bq, bk, q_seg, kv_seg)
    if mask is not None:
      s = jnp.where(mask, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    if mask is not None:
      p = jnp.where(mask, p, 0.0)  # a row with nothing visible yet must add nothing, not exp(0)
    alpha = jnp.exp(m - m_new)
    l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + _dot(p.astype(v.dtype), v, precision=plan.precision)
    return acc, m_new, l

  lo, hi = _kv_block_range(plan, q_block)
  init = (jnp.zeros((bq, plan.head_dim), jnp.float32), jnp.full((bq, 1), MASK_VALUE, jnp.float32),
          jnp.zeros((bq, 1), jnp.float32))
  acc, m, l = lax.fori_loop(lo, hi, step, init)
  empty = l == 0.0
  l_safe = jnp.where(empty, 1.0, l)
  o_ref[...] = (acc / l_safe).astype(o_ref.dtype)
  # Any finite value works for an empty row: the backward masks its probabilities to zero.
  lse_ref[...] = jnp.where(empty, 0.0, m + jnp.log(l_safe))


def _dq_kernel(*refs, plan: _Plan):
  if plan.segments:
    q_seg_ref, kv_seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
    q_seg = q_seg_ref[...]
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
    q_seg = None
  bq, bk = plan.block_q, plan.block_k
  q_block = pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

  def step(j, dq):
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s = _dot(q, k, precision=plan.precision, contract=(1, 1)) * plan.scale
    p = jnp.exp(s - lse)
    kv_seg = kv_seg_ref[:, pl.ds(start, bk)] if plan.segments else None
    mask = _visible(plan, q_block * bq, start, bq, bk, q_seg, kv_seg)
    if mask is not None:
      p = jnp.where(mask, p, 0.0)
    dp = _dot(do, v, precision=plan.precision, contract=(1, 1))
    ds = p * (dp - delta)
    return dq + _dot(ds.astype(k.dtype), k, precision=plan.precision)

  lo, hi = _kv_block_range(plan, q_block)
  dq = lax.fori_loop(lo, hi, step, jnp.zeros((bq, plan.head_dim), jnp.float32))
  dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, plan: _Plan):
  """dK, dV of one key block, summed over every query head of its group and every query block."""
  if plan.segments:
    q_seg_ref, kv_seg_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    kv_seg = kv_seg_ref[...]
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    kv_seg = None
  bq, bk = plan.block_q, plan.block_k
  kv_block = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  lo, hi = _q_block_range(plan, kv_block)

  # q/do hold the group's query heads: (G, Lq, D) on TPU, (Lq, G, D) elsewhere.
  def rows(ref, g, start):
    return ref[g, pl.ds(start, bq), :] if plan.heads_major else ref[pl.ds(start, bq), g, :]

  def group(g, carry):
    def step(i, carry):
      dk, dv = carry
      start = pl.multiple_of(i * bq, bq)
      q, do = rows(q_ref, g, start), rows(do_ref, g, start)
      lse, delta = lse_ref[g, pl.ds(start, bq), :], delta_ref[g, pl.ds(start, bq), :]
      s = _dot(q, k, precision=plan.precision, contract=(1, 1)) * plan.scale
      p = jnp.exp(s - lse)
      q_seg = q_seg_ref[pl.ds(start, bq), :] if plan.segments else None
      mask = _visible(plan, start, kv_block * bk, bq, bk, q_seg, kv_seg)
      if mask is not None:
        p = jnp.where(mask, p, 0.0)
      dv = dv + _dot(p.astype(do.dtype), do, precision=plan.precision, contract=(0, 0))
      dp = _dot(do, v, precision=plan.precision, contract=(1, 1))
      ds = p * (dp - delta)
      dk = dk + _dot(ds.astype(q.dtype), q, precision=plan.precision, contract=(0, 0))
      return dk, dv

    return lax.fori_loop(lo, hi, step, carry)

  zeros = jnp.zeros((bk, plan.head_dim), jnp.float32)
  dk, dv = lax.fori_loop(0, plan.groups, group, (zeros, zeros))
  dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------------------------
# pallas_call plumbing: block specs per layout and compiler parameters per platform.
# ----------------------------------------------------------------------------------------------

_S = pl.squeezed


def _compiler_params(plan: _Plan, kernel: str):
  if plan.interpret or plan.platform == "cpu":
    return None
  if plan.platform == "tpu":
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
  try:
    from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # removed upstream at some point after JAX 0.11
    raise NotImplementedError("attention_impl='pallas' on GPU needs Pallas' Triton backend, which this JAX no "
                              "longer ships; use attention_impl='cudnn'") from e
  warps = 4 if plan.head_dim <= 64 and kernel == "forward" else 8
  return pl_triton.CompilerParams(num_warps=warps, num_stages=2)


def _kv_head(plan: _Plan, h):
  # lax.div, not //: a traced floor division lowers through `sign`, which Mosaic cannot lower off-TPU.
  return h if plan.groups == 1 else lax.div(h, plan.groups)


def _tile(plan: _Plan, length_block: int, head_index):
  """Spec of a (length-tile, D) slab of a `(B, L, H, D)` (or TPU `(B, H, L, D)`) array."""
  if plan.heads_major:
    return pl.BlockSpec((_S, _S, length_block, plan.head_dim), lambda b, h, i: (b, head_index(h), i, 0))
  return pl.BlockSpec((_S, length_block, _S, plan.head_dim), lambda b, h, i: (b, i, head_index(h), 0))


def _whole(plan: _Plan, length: int, head_index, group: int | None = None):
  """Spec of the full length of one head, or of `group` consecutive heads (block index `head_index(h)`)."""
  heads = _S if group is None else group
  if plan.heads_major:
    return pl.BlockSpec((_S, heads, length, plan.head_dim), lambda b, h, i: (b, head_index(h), 0, 0))
  return pl.BlockSpec((_S, length, heads, plan.head_dim), lambda b, h, i: (b, 0, head_index(h), 0))


def _row_stats(length_block: int, heads: int = 1, whole: bool = False):
  """Spec of per-query-row float32 statistics `(B, H, L, 1)` (LSE, delta)."""
  if whole:
    return pl.BlockSpec((_S, heads, length_block, 1), lambda b, h, i: (b, h, 0, 0))
  return pl.BlockSpec((_S, _S, length_block, 1), lambda b, h, i: (b, h, i, 0))


def _segment_specs(plan: _Plan, q_block: int | None, kv_block: int | None):
  """Specs of q segment ids `(B, Lq, 1)` and kv segment ids `(B, 1, Lk)`: a tile or the whole length."""
  q_spec = (pl.BlockSpec((_S, plan.q_padded, 1), lambda b, h, i: (b, 0, 0)) if q_block is None else
            pl.BlockSpec((_S, q_block, 1), lambda b, h, i: (b, i, 0)))
  kv_spec = (pl.BlockSpec((_S, 1, plan.kv_padded), lambda b, h, i: (b, 0, 0)) if kv_block is None else
             pl.BlockSpec((_S, 1, kv_block), lambda b, h, i: (b, 0, i)))
  return [q_spec, kv_spec] if plan.segments else []


def _segments_in(plan: _Plan, segments):
  return list(segments) if plan.segments else []


def _call(plan: _Plan, kernel, name: str, grid, in_specs, out_specs, out_shape):
  return pl.pallas_call(functools.partial(kernel, plan=plan), grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=plan.interpret, name=name,
                        compiler_params=_compiler_params(plan, name))


def _forward(plan: _Plan, q, k, v, segments):
  batch = q.shape[0]
  q_rows = plan.q_padded
  to_kv = functools.partial(_kv_head, plan)
  same = lambda h: h
  out_shape = (jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((batch, plan.q_heads, q_rows, 1), jnp.float32))
  return _call(
      plan, _forward_kernel, "flash_attention_forward",
      grid=(batch, plan.q_heads, q_rows // plan.block_q),
      in_specs=_segment_specs(plan, plan.block_q, None) + [
          _tile(plan, plan.block_q, same), _whole(plan, plan.kv_padded, to_kv),
          _whole(plan, plan.kv_padded, to_kv)],
      out_specs=(_tile(plan, plan.block_q, same), _row_stats(plan.block_q)),
      out_shape=out_shape)(*_segments_in(plan, segments), q, k, v)


def _backward(plan: _Plan, q, k, v, o, lse, do, segments):
  batch = q.shape[0]
  # delta_i = rowsum(dO_i * O_i), the softmax-Jacobian term shared by every key (FA2, eq. in §3.1).
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
  delta = (delta if plan.heads_major else jnp.swapaxes(delta, 1, 2))[..., None]
  to_kv = functools.partial(_kv_head, plan)
  same = lambda h: h
  dq = _call(
      plan, _dq_kernel, "flash_attention_dq",
      grid=(batch, plan.q_heads, plan.q_padded // plan.block_q),
      in_specs=_segment_specs(plan, plan.block_q, None) + [
          _tile(plan, plan.block_q, same), _whole(plan, plan.kv_padded, to_kv),
          _whole(plan, plan.kv_padded, to_kv), _tile(plan, plan.block_q, same), _row_stats(plan.block_q),
          _row_stats(plan.block_q)],
      out_specs=_tile(plan, plan.block_q, same),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype))(*_segments_in(plan, segments), q, k, v, do, lse, delta)
  group_spec = _whole(plan, plan.q_padded, same, group=plan.groups)  # block index h = kv head -> its query heads
  stats_spec = _row_stats(plan.q_padded, plan.groups, whole=True)
  dk, dv = _call(
      plan, _dkv_kernel, "flash_attention_dkv",
      grid=(batch, plan.kv_heads, plan.kv_padded // plan.block_k),
      in_specs=_segment_specs(plan, None, plan.block_k) + [
          group_spec, _tile(plan, plan.block_k, same), _tile(plan, plan.block_k, same), group_spec, stats_spec,
          stats_spec],
      out_specs=(_tile(plan, plan.block_k, same), _tile(plan, plan.block_k, same)),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
  )(*_segments_in(plan, segments), q, k, v, do, lse, delta)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(plan: _Plan, q, k, v, segments):
  return _forward(plan, q, k, v, segments)[0]


def _flash_fwd(plan: _Plan, q, k, v, segments):
  o, lse = _forward(plan, q, k, v, segments)
  return o, (q, k, v, o, lse, segments)


def _flash_bwd(plan: _Plan, residuals, do):
  q, k, v, o, lse, segments = residuals
  dq, dk, dv = _backward(plan, q, k, v, o, lse, do, segments)
  return dq, dk, dv, None  # segment ids are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


def pad_to(x, sizes: dict[int, int]):
  """Zero-pads axis a of x up to sizes[a]."""
  widths = [(0, sizes.get(axis, n) - n) for axis, n in enumerate(x.shape)]
  return x if not any(w for _, w in widths) else jnp.pad(x, widths)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    causal: bool = False,
    window: int | None = None,
    sm_scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    interpret: bool | None = None,
    platform: str | None = None,
) -> jax.Array:
  """Softmax attention without the (Lq, Lk) matrix. q `(B, Lq, Hq, D)`, k/v `(B, Lk, Hkv, D)`.

  Args:
    q_segment_ids, kv_segment_ids: `(B, Lq)` / `(B, Lk)` integers; both or neither. A query sees only
      keys with its segment id (see the module docstring for padding).
    causal: query i sees keys j <= i.
    window: hide keys with |i - j| >= window (bidirectional sliding window).
    sm_scale: logit scale, default `D ** -0.5`.
    block_q, block_k: tile sizes (powers of two >= 16), shrunk for short sequences.
    interpret: run in Pallas interpret mode; None = on CPU only.
    platform: "gpu", "tpu" or "cpu" (interpret); None = `target_platform()`. Choose it (or an
      abstract mesh's device) to lower for another platform than the one this process runs on.
  Returns `(B, Lq, Hq, D)` in q's dtype; differentiable in q, k and v.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"flash_attention expects (batch, length, heads, head_dim) inputs, got q{q.shape} "
                     f"k{k.shape} v{v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
  batch, q_len, q_heads, head_dim = q.shape
  if k.shape[0] != batch or k.shape[3] != head_dim:
    raise ValueError(f"k/v {k.shape} do not match q {q.shape} in batch or head_dim")
  kv_len, kv_heads = k.shape[1], k.shape[2]
  if q_heads % kv_heads:
    raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
  if q_segment_ids is not None and (q_segment_ids.shape != (batch, q_len) or
                                    kv_segment_ids.shape != (batch, kv_len)):
    raise ValueError(f"segment ids must be (batch, length): expected {(batch, q_len)} and {(batch, kv_len)}, got "
                     f"{q_segment_ids.shape} and {kv_segment_ids.shape}")
  if window is not None and window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  platform = target_platform() if platform is None else ("gpu" if platform in ("cuda", "rocm") else platform)
  if platform not in PLATFORMS:
    raise ValueError(f"platform {platform!r}: expected one of {PLATFORMS}")
  if interpret is None:
    interpret = platform == "cpu"
  if platform == "cpu" and not interpret:
    raise ValueError("flash_attention on CPU runs only in interpret mode (interpret=True or None)")

  scale = float(head_dim ** -0.5 if sm_scale is None else sm_scale)
  # Triton works on power-of-two tiles only: zero columns change no dot product and give zero
  # output columns, which are sliced off (JAX's Triton attention does the same).
  padded_dim = max(_MIN_BLOCK, pl.next_power_of_2(head_dim)) if platform == "gpu" else head_dim
  plan = _Plan(q_len=q_len, kv_len=kv_len, q_heads=q_heads, kv_heads=kv_heads, head_dim=padded_dim,
               block_q=_block(block_q, DEFAULT_BLOCKS[platform][0], q_len),
               block_k=_block(block_k, DEFAULT_BLOCKS[platform][1], kv_len),
               causal=causal, window=window, scale=scale,
               segments=q_segment_ids is not None, fp32=q.dtype == jnp.float32, platform=platform,
               interpret=bool(interpret))
  if (plan.platform == "tpu" and not plan.interpret and plan.segments and plan.block_k < plan.kv_padded
      and plan.block_k % 128):
    raise ValueError(f"on TPU block_k must be a multiple of 128 or cover the whole key length "
                     f"({plan.kv_padded}) when segment ids are given (Mosaic's (8, 128) tiling), got {plan.block_k}")
  q, k, v = (pad_to(x, {1: length, 3: padded_dim}) for x, length in ((q, plan.q_padded), (k, plan.kv_padded),
                                                                   (v, plan.kv_padded)))
  if plan.heads_major:
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
  segments = None
  if plan.segments:
    segments = (pad_to(q_segment_ids.astype(jnp.int32), {1: plan.q_padded})[:, :, None],
                pad_to(kv_segment_ids.astype(jnp.int32), {1: plan.kv_padded})[:, None, :])
  out = _flash(plan, q, k, v, segments)
  if plan.heads_major:
    out = jnp.swapaxes(out, 1, 2)
  return out[:, :q_len, :, :head_dim]
