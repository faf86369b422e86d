"""Building blocks shared by every tower: projections, norms, MLPs, self-attention, pooling.

Every parameter is created with logical axis names (`nn.with_logical_partitioning`), so a
mesh layout is chosen by logical-axis rules in config, never in model code. The names:

  embed     model width            mlp       feed-forward hidden width
  heads     query heads            kv_heads  key/value heads
  head_dim  per-head width         vocab     token-embedding rows
  norm      norm scales / biases   conv_*    patch-embedding kernel dims
  prefix    the Y-decoder's prefix tokens (one condition projected to several)

Activations carry `activation_batch / activation_length / activation_embed` constraints at
block boundaries (no-ops until rules and a mesh are active).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import attention as attention_lib
from vljepa_jax.models import projection

Dtype = Any
Initializer = Callable[..., jax.Array]
# (q, k) -> (q, k): how a tower injects positions into self-attention (RoPE variants).
PositionFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

default_kernel_init = nn.initializers.normal(stddev=0.02)

# Rematerialisation of a transformer block (`remat` in every tower's config): what the backward pass
# may keep from the forward instead of recomputing it. False / "none": keep everything; True /
# "full": keep only the block's inputs; "dots": keep matmul outputs, recompute the elementwise rest;
# "dots_no_batch": keep only matmuls without batch dimensions (weights x activations).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_block(block: type[nn.Module], remat: bool | str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """`block`, rematerialised as `remat` says (see `REMAT_POLICIES`)."""
  if remat in (False, "none"):
    return block
  name = "full" if remat is True else remat
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: expected False/'none', True/'full' or one of {sorted(REMAT_POLICIES)}")
  return nn.remat(block, static_argnums=static_argnums, policy=REMAT_POLICIES[name])
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


def constrain_activations(x: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


class DenseGeneral(nn.Module):
  """`y = x . kernel + bias` over the `axis` dims of x; kernel `(in..., out...)` with logical axis names.

  Flax's `nn.DenseGeneral` initialises a flattened 2-D kernel and reshapes it, so a logical
  partitioning box names a 2-D value with the N-D names; under an ambient mesh (the sharded train
  step) its apply-time shape check then applies an N-D constraint to a 2-D array and fails. This
  module creates the kernel at its real shape. Parameter names and layouts match Flax's, so
  converted checkpoints load unchanged.
  """
  features: int | Sequence[int]
  kernel_axes: Sequence[str]
  axis: int | Sequence[int] = -1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axes = tuple(a % x.ndim for a in axes)
    if len(self.kernel_axes) != len(axes) + len(features):
      raise ValueError(f"{self.name}: kernel_axes {tuple(self.kernel_axes)} must name {len(axes)} input and "
                       f"{len(features)} output dims")
    kernel_shape = tuple(x.shape[a] for a in axes) + features
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
                        kernel_shape, self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             tuple(self.kernel_axes[-len(features):])),
                        features, self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if axes == tuple(range(x.ndim - len(axes), x.ndim)):  # trailing dims: the projection of every tower
      y = projection.project(x, kernel, len(axes))
    else:
      y = jax.lax.dot_general(x, kernel, ((axes, tuple(range(len(axes)))), ((), ())))
    return y if bias is None else y + bias


def dense(
    features: int | Sequence[int],
    kernel_axes: Sequence[str],
    *,
    axis: int | Sequence[int] = -1,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Initializer = default_kernel_init,
    name: str | None = None,
) -> DenseGeneral:
  """A `DenseGeneral` whose kernel and bias carry logical axis names.

  `kernel_axes` names every kernel dim: the contracted input dims first, then the output
  dims. The bias gets the output dims' names. Kernels are stored `(in..., out...)`, the
  transpose of `torch.nn.Linear.weight`.
  """
  return DenseGeneral(features=features, kernel_axes=tuple(kernel_axes), axis=axis, use_bias=use_bias,
                      dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, name=name)


def layer_norm(epsilon: float = 1e-6, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
  """LayerNorm with named params; Flax computes its statistics in float32 whatever `dtype` is."""
  return nn.LayerNorm(
      epsilon=epsilon,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
      name=name,
  )


class RMSNorm(nn.Module):
  """RMSNorm with the two conventions the pretrained checkpoints depend on.

  `offset_scale=False` (Llama): normalise in float32, cast to the input dtype, then
  multiply by `scale` (HF `LlamaRMSNorm`).
  `offset_scale=True` (Gemma): the stored weight is an offset from one; everything,
  including the `(1 + w)` multiply, happens in float32 before the cast (HF `Gemma3RMSNorm`).
  """

  epsilon: float = 1e-6
  offset_scale: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.offset_scale else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],),
                       self.param_dtype)
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.epsilon)
    if self.offset_scale:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    return (scale.astype(self.dtype) * normed.astype(x.dtype)).astype(self.dtype)


def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact GELU, `x/2 * (1 + erf(x/sqrt(2)))`: PyTorch's (and so Hugging Face's "gelu") formula.

  Not `jax.nn.gelu(approximate=False)`, which writes it with `erfc(-x/sqrt(2))`: XLA:CPU expands
  erfc into two branches (a polynomial and an exp-based tail) and two loop fusions. On the 2-core
  AMD EPYC the erfc form took 1.5-3x as long forward and 1.3-1.6x with its gradient, on jax 0.10
  and 0.12 (`python benchmarks/xla_cpu_repro.py --parts=gelu`; MiniLM's `[768, 1536]`: 1,343 ->
  449 us forward on two cores; issue 13, ninth pass). Both are within 1.1e-6 of the float64 GELU
  over [-10, 10].

  Computed in float32 whatever x's dtype, as PyTorch does for bf16: in bf16, `1 + erf` would
  cancel to 0 or to bf16's spacing near 1 (0.004) for x below about -2.5. For float32 inputs the
  casts are no-ops.
  """
  xf = x.astype(jnp.float32)
  return (xf * (0.5 * (1.0 + jax.lax.erf(xf * jnp.float32(0.5 ** 0.5))))).astype(x.dtype)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_exact,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in _ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


class Mlp(nn.Module):
  """Feed-forward block: `wo(act(wi(x)))`, or gated `wo(act(wi_gate(x)) * wi_up(x))`."""

  hidden_dim: int
  activation: str = "gelu"
  gated: bool = False
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = activation(self.activation)
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.gated:
      h = act(dense(self.hidden_dim, ("embed", "mlp"), name="wi_gate", **kw)(x))
      h = h * dense(self.hidden_dim, ("embed", "mlp"), name="wi_up", **kw)(x)
    else:
      h = act(dense(self.hidden_dim, ("embed", "mlp"), name="wi", **kw)(x))
    return dense(x.shape[-1], ("mlp", "embed"), name="wo", **kw)(h)


class SelfAttention(nn.Module):
  """Multi-head self-attention with optional GQA, q/k norms and a position function.

  Projections are stored head-shaped: q `(embed, heads, head_dim)`, k/v
  `(embed, kv_heads, head_dim)`, out `(heads, head_dim, embed)`, so tensor parallelism is a
  rule on `heads` / `kv_heads`.

  Incremental decoding (`cache_index` given): the keys and values of `x` are also written into
  the mutable "cache" collection (`cached_key`, `cached_value`: `(B, capacity, kv_heads, head_dim)`,
  the Linen decoding pattern) at position `cache_index`, and the queries attend to the whole
  cache, causally from absolute position `cache_index` (unwritten slots lie beyond every query,
  so the causal mask hides them). The first call passes `cache_length` (the capacity) and
  creates the cache; later calls pass None and append. The caller owns the index (so it can
  offset RoPE too), keeps `cache_index + len(x) <= capacity`, and applies `positions` for the
  absolute positions. Shapes are static, so each chunk length compiles once. A `kv_mask` on the
  prefill call (a padded prompt) is kept in the cache (`cached_mask`) and applied to every later
  query; later calls may pass None (their tokens are real).
  """

  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  use_bias: bool = True  # q/k/v bias
  out_bias: bool = True
  qk_norm_eps: float | None = None  # Gemma 3: RMSNorm over head_dim on q and k, before RoPE
  scale: float | None = None  # default head_dim ** -0.5
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      *,
      kv_mask: jax.Array | None = None,
      causal: bool = False,
      window: int | None = None,
      positions: PositionFn | None = None,
      cache_index: jax.Array | None = None,
      cache_length: int | None = None,
  ) -> jax.Array:
    kv_heads = self.num_kv_heads or self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q = dense((self.num_heads, self.head_dim), ("embed", "heads", "head_dim"),
              use_bias=self.use_bias, name="query", **kw)(x)
    k = dense((kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"),
              use_bias=self.use_bias, name="key", **kw)(x)
    v = dense((kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"),
              use_bias=self.use_bias, name="value", **kw)(x)
    if self.qk_norm_eps is not None:
      q = RMSNorm(self.qk_norm_eps, offset_scale=True, name="query_norm", **kw)(q)
      k = RMSNorm(self.qk_norm_eps, offset_scale=True, name="key_norm", **kw)(k)
    if positions is not None:
      q, k = positions(q, k)
    q_offset = 0
    if cache_index is not None:
      if not causal:
        raise ValueError(f"{self.name}: decoding with a KV cache needs causal=True")
      exists = self.has_variable("cache", "cached_key")
      masked = self.has_variable("cache", "cached_mask")
      if exists and kv_mask is not None and not masked:
        raise ValueError(f"{self.name}: a kv_mask while decoding needs one on the prefill call too (the cache "
                         "keeps which of its keys are padding)")
      if exists and cache_length is not None:
        raise ValueError(f"{self.name}: a KV cache already exists; pass cache_length only on the first (prefill) "
                         "call, with variables that hold no 'cache' collection")
      if not exists and cache_length is None:
        raise ValueError(f"{self.name}: there is no KV cache to decode into; the first (prefill) call must pass "
                         "cache_length")
      if not exists and x.shape[1] > cache_length:
        raise ValueError(f"{self.name}: {x.shape[1]} positions do not fit a cache of cache_length={cache_length}")
      shape = (x.shape[0], cache_length, kv_heads, self.head_dim)
      cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
      start = (0, cache_index, 0, 0)
      cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype), start)
      cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v.astype(cached_value.value.dtype), start)
      k, v, q_offset = cached_key.value, cached_value.value, cache_index
      if kv_mask is not None or masked:
        # A padded prompt: its padding stays hidden from every later query. Only created when the
        # prefill passes a mask, so unpadded decoding (the Y-decoder's) carries none.
        cached_mask = self.variable("cache", "cached_mask", jnp.zeros, shape[:2], jnp.int32)
        written = jnp.ones(x.shape[:2], jnp.int32) if kv_mask is None else kv_mask.astype(jnp.int32)
        cached_mask.value = jax.lax.dynamic_update_slice(cached_mask.value, written, (0, cache_index))
        kv_mask = cached_mask.value
    out = attention_lib.attention(q, k, v, kv_mask=kv_mask, causal=causal, window=window,
                                  scale=self.scale, q_offset=q_offset, impl=self.attention_impl)
    return dense(x.shape[-1], ("heads", "head_dim", "embed"), axis=(-2, -1),
                 use_bias=self.out_bias, name="out", **kw)(out)


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean over the length axis of `(B, L, D)`, counting only positions where mask is 1.

  Accumulates in float32. An all-padding row returns zeros rather than NaN.
  """
  xf = x.astype(jnp.float32)
  if mask is None:
    return jnp.mean(xf, axis=1)
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(xf * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
