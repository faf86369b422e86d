"""The activation x weight contraction of every projection, with a backward pass laid out for XLA:CPU.

`project(x, kernel, num_contracted)` is `x . kernel` over x's trailing `num_contracted` dims and
the kernel's leading ones: what `layers.DenseGeneral` computes. Its value is the plain
`dot_general`; on the CPU its gradient is computed differently from JAX's transpose rule.

Why. The weight gradient `dW = xᵀ · dy` contracts the token dimension, which is the leading (row)
dimension of both row-major operands. XLA:CPU's GEMMs (YNNPACK) want the contracted dimension
contiguous in the left operand, so XLA canonicalises the dot by transposing one operand and, to
save a pass, fuses that transpose into whatever elementwise fusion produces the operand: the
SwiGLU/GELU backward ops then write their results column by column. Those strided stores ran ~10x
slower than the same fusion written row-major (`[2816, 256]` at ~5 ms per layer of the demo
predictor; `benchmarks/README.md`, "Against PyTorch"). PyTorch's GEMM takes a transposed operand by
stride instead.

What. On the CPU, the backward pass transposes the smaller of the two operands (the saved input
or the incoming gradient) itself, then multiplies in the layout the GEMM wants; where that leaves
the weight gradient transposed, `(out, in)`, the product is fenced too, so the weight-sized
transpose after it stays a copy instead of being folded back into a product YNNPACK refuses. The
optimisation barriers stop XLA's simplifier from folding a transpose into the dot. They do not
keep it apart from an elementwise producer: XLA:CPU removes barriers before fusion, so a norm's
recomputed output and its transpose are one loop fusion, 1.6-4x slower than the transpose of a
buffer in memory (`benchmarks/xla_cpu_repro.py --parts=transpose`). That is still one pass over
the smaller operand; making the producer's result a buffer first (behind a `lax.cond`) left the
demo step no faster (`benchmarks/README.md`, issue 13, eleventh pass). The input gradient is
the usual `dy · Wᵀ`. Four SwiGLU blocks at the demo predictor's shapes, forward +
backward: 77–79 ms with JAX's rule, 53–55 ms with this one, PyTorch 56–60 ms (2-core AMD EPYC, two
runs).

GPUs and TPUs keep JAX's own rule: there XLA picks operand layouts for the MXU / tensor cores
itself, and a forced transpose would only add a pass over HBM. The platform is the one being
compiled for (`flash.target_platform`).
"""
from __future__ import annotations

import functools
import math

import jax

from vljepa_jax.kernels import flash as flash_lib


def _dimension_numbers(x_ndim: int, num_contracted: int):
  return ((tuple(range(x_ndim - num_contracted, x_ndim)), tuple(range(num_contracted))), ((), ()))


def _dot(x: jax.Array, kernel: jax.Array, num_contracted: int) -> jax.Array:
  return jax.lax.dot_general(x, kernel, _dimension_numbers(x.ndim, num_contracted))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_project(x: jax.Array, kernel: jax.Array, num_contracted: int) -> jax.Array:
  return _dot(x, kernel, num_contracted)


def _cpu_project_fwd(x, kernel, num_contracted):
  return _dot(x, kernel, num_contracted), (x, kernel)


def _cpu_project_bwd(num_contracted, residuals, dy):
  x, kernel = residuals
  num_out = kernel.ndim - num_contracted
  # dx = dy . kernelᵀ over the output dims: (..., out...) x (in..., out...) -> (..., in...).
  dx = jax.lax.dot_general(dy, kernel, ((tuple(range(dy.ndim - num_out, dy.ndim)),
                                         tuple(range(num_contracted, kernel.ndim))), ((), ())))
  fan_in = math.prod(kernel.shape[:num_contracted])
  fan_out = math.prod(kernel.shape[num_contracted:])
  x2 = x.reshape(-1, fan_in)
  dy2 = dy.reshape(-1, fan_out)
  if fan_in <= fan_out:
    x_t = jax.lax.optimization_barrier(jax.lax.optimization_barrier(x2).T)
    dkernel = x_t @ dy2  # (in, out)
  else:
    dy_t = jax.lax.optimization_barrier(jax.lax.optimization_barrier(dy2).T)
    # (out, in) -> (in, out): a weight-sized transpose. The barrier keeps it a copy: left free, XLA's
    # simplifier folds it into the product as `x2ᵀ · dy_tᵀ`, whose left operand is contracted over
    # its rows, which YNNPACK refuses; Eigen ran it at 10-40% fewer GFLOP/s (`xla_cpu_repro.py
    # --parts=wgrad`).
    dkernel = jax.lax.optimization_barrier(dy_t @ x2).T
  return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_cpu_project.defvjp(_cpu_project_fwd, _cpu_project_bwd)


def project(x: jax.Array, kernel: jax.Array, num_contracted: int = 1) -> jax.Array:
  """`x (..., in...) . kernel (in..., out...)` over x's trailing `num_contracted` dims -> `(..., out...)`."""
  if flash_lib.target_platform() == "cpu":
    return _cpu_project(x, kernel, num_contracted)
  return _dot(x, kernel, num_contracted)
