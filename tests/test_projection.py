"""`projection.project`: the projection contraction and its XLA:CPU backward, against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax.models import projection


def _numpy_value_and_grads(x, kernel, cotangent, num_contracted):
  """y = x . kernel over x's trailing dims, and the gradients of sum(y * cotangent), in float64."""
  x64, k64, c64 = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
  fan_in = int(np.prod(kernel.shape[:num_contracted]))
  x2 = x64.reshape(-1, fan_in)
  k2 = k64.reshape(fan_in, -1)
  c2 = c64.reshape(x2.shape[0], -1)
  y = (x2 @ k2).reshape(cotangent.shape)
  return y, (c2 @ k2.T).reshape(x.shape), (x2.T @ c2).reshape(kernel.shape)


@pytest.mark.parametrize("x_shape,kernel_shape,num_contracted", [
    ((3, 7, 16), (16, 48), 1),        # widening (an MLP's wi): the backward transposes the input
    ((3, 7, 48), (48, 16), 1),        # narrowing (an MLP's wo): it transposes the incoming gradient
    ((2, 5, 4, 8), (4, 8, 24), 2),    # attention's out projection over (heads, head_dim)
    ((6, 32), (32, 2, 8), 1),         # head-shaped q/k/v kernels
])
def test_value_and_gradients_match_numpy(x_shape, kernel_shape, num_contracted):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(np.float32)
  kernel = rng.standard_normal(kernel_shape).astype(np.float32)
  out_shape = x_shape[:len(x_shape) - num_contracted] + kernel_shape[num_contracted:]
  cotangent = rng.standard_normal(out_shape).astype(np.float32)
  want_y, want_dx, want_dk = _numpy_value_and_grads(x, kernel, cotangent, num_contracted)

  def loss(x, kernel):
    return jnp.sum(projection.project(x, kernel, num_contracted) * cotangent)

  y = jax.jit(projection.project, static_argnums=2)(x, kernel, num_contracted)
  dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-5)


def test_bf16_gradients_keep_their_dtypes():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 9, 32)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((32, 64)) * 0.1, jnp.bfloat16)
  dx, dk = jax.grad(lambda x, k: projection.project(x, k).astype(jnp.float32).sum(), argnums=(0, 1))(x, kernel)
  assert dx.dtype == dk.dtype == jnp.bfloat16
  _, want_dx, want_dk = _numpy_value_and_grads(np.asarray(x, np.float32), np.asarray(kernel, np.float32),
                                               np.ones((4, 9, 64), np.float32), 1)
  np.testing.assert_allclose(np.asarray(dx, np.float32), want_dx, rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(np.asarray(dk, np.float32), want_dk, rtol=2e-2, atol=5e-1)


def _grad_jaxpr(platform: str | None) -> str:
  def loss(x, kernel):
    return projection.project(x, kernel).sum()
  args = (jax.ShapeDtypeStruct((4, 8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 32), jnp.float32))
  if platform is None:
    return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(*args))
  device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform=platform)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
    return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(*args))


def test_cpu_backward_transposes_explicitly_and_accelerators_keep_jax_rule():
  # On the CPU the weight gradient multiplies an explicitly transposed, materialised operand
  # (fenced by optimization barriers); compiled for a GPU the projection is a plain dot_general.
  assert "optimization_barrier" in _grad_jaxpr(None)
  assert "optimization_barrier" not in _grad_jaxpr("gpu")


@pytest.mark.parametrize("fan_in,fan_out", [(48, 16), (16, 48)])
def test_cpu_weight_gradient_contracts_rows_of_no_left_operand(fan_in, fan_out):
  # XLA:CPU's GEMMs (YNNPACK) want the left operand contracted over its last dim; a product
  # contracted over the left operand's rows goes to Eigen's slower kernel. The weight gradient
  # xᵀ·dy contracts the tokens, the rows of both operands: the custom backward transposes one of
  # them itself and, for a narrowing projection, fences the product so that XLA does not fold the
  # weight-sized transpose after it back into a rows-contracted product.
  if jax.default_backend() != "cpu":
    pytest.skip("inspects XLA:CPU's compiled program")

  def loss(x, kernel):
    return jnp.sum(projection.project(x, kernel) ** 2)

  args = (jnp.ones((4, 64, fan_in), jnp.float32), jnp.ones((fan_in, fan_out), jnp.float32))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().as_text()
  products = [line for line in hlo.splitlines() if " dot(" in line]
  assert len(products) >= 3, products  # forward, input gradient, weight gradient
  assert not [line for line in products if "lhs_contracting_dims={0}" in line], products
