"""The losses against float64 NumPy references (value and gradient); the sharded forms against the dense."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax import losses


def numpy_infonce(pred, target, temperature):
  p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
  t = target / np.linalg.norm(target, axis=1, keepdims=True)
  logits = p @ t.T / temperature

  def cross_entropy(l):
    l = l - l.max(axis=1, keepdims=True)
    log_softmax = l - np.log(np.exp(l).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_softmax))

  return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


@pytest.mark.parametrize("n,d,temperature", [(8, 16, 0.07), (33, 5, 1.0), (2, 1536, 0.05)])
def test_value_matches_numpy(n, d, temperature):
  rng = np.random.default_rng(n)
  pred, target = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  got = losses.bidirectional_infonce(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), temperature)
  np.testing.assert_allclose(float(got), numpy_infonce(pred, target, temperature), rtol=2e-5)


def test_gradient_matches_finite_differences_of_numpy():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  grad = jax.grad(losses.bidirectional_infonce)(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), 0.1)
  eps = 1e-6
  numeric = np.zeros_like(pred)
  for idx in np.ndindex(pred.shape):
    up, down = pred.copy(), pred.copy()
    up[idx] += eps
    down[idx] -= eps
    numeric[idx] = (numpy_infonce(up, target, 0.1) - numpy_infonce(down, target, 0.1)) / (2 * eps)
  np.testing.assert_allclose(np.asarray(grad), numeric, atol=2e-4)


def test_bf16_inputs_are_computed_in_fp32_and_shapes_checked():
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
  got = losses.bidirectional_infonce(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(target, jnp.bfloat16), 0.07)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), numpy_infonce(pred, target, 0.07), rtol=2e-2)
  with pytest.raises(ValueError, match="must both be"):
    losses.bidirectional_infonce(jnp.zeros((4, 3)), jnp.zeros((5, 3)), 0.1)


def _mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


@pytest.mark.parametrize("mesh_shape,names,n,chunk", [
    ((8,), ("data",), 32, 8),           # 4 rows per device, 4 column chunks
    ((4, 2), ("data", "fsdp"), 48, 20),  # chunk 20 does not divide 48: the largest divisor (16) is used
    ((2, 2, 2), ("data", "fsdp", "tensor"), 16, 2048),  # tensor axis replicated; one chunk
])
def test_sharded_equals_numpy_and_unsharded_value_and_gradients(mesh_shape, names, n, chunk):
  assert jax.device_count() >= 8
  mesh = _mesh(mesh_shape, names)
  rng = np.random.default_rng(n)
  pred, target = rng.normal(size=(n, 12)), rng.normal(size=(n, 12))
  p32, t32 = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
  sharded = jax.jit(lambda p, t, tau: losses.bidirectional_infonce(p, t, tau, mesh=mesh, chunk_size=chunk))
  np.testing.assert_allclose(float(sharded(p32, t32, 0.07)), numpy_infonce(pred, target, 0.07), rtol=2e-5)
  grads = jax.grad(sharded, argnums=(0, 1, 2))(p32, t32, jnp.float32(0.07))
  reference = jax.grad(losses.bidirectional_infonce, argnums=(0, 1, 2))(p32, t32, jnp.float32(0.07))
  for got, want in zip(grads, reference):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_sharded_loss_rejects_a_batch_that_does_not_split():
  mesh = _mesh((8,), ("data",))
  with pytest.raises(ValueError, match="does not split over the 8 devices"):
    losses.bidirectional_infonce(jnp.zeros((12, 4)), jnp.zeros((12, 4)), 0.1, mesh=mesh)
  with pytest.raises(ValueError, match="none of the batch axes"):
    losses.bidirectional_infonce(jnp.zeros((8, 4)), jnp.zeros((8, 4)), 0.1, mesh=_mesh((8,), ("tensor",)))


def test_regression_losses_match_numpy():
  rng = np.random.default_rng(3)
  pred, target = rng.normal(size=(10, 7)), rng.normal(size=(10, 7))
  p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
  t = target / np.linalg.norm(target, axis=1, keepdims=True)
  want = {"cosine": np.mean(1 - np.sum(p * t, axis=1)), "l1": np.mean(np.abs(p - t).sum(axis=1)),
          "l2": np.mean(np.square(p - t).sum(axis=1)), "infonce": numpy_infonce(pred, target, 0.5)}
  for name, value in want.items():
    got = losses.make_loss(name, temperature=0.5)(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(float(got), value, rtol=1e-5, err_msg=name)
  with pytest.raises(ValueError, match="unknown loss 'mse'"):
    losses.make_loss("mse")


def test_learnable_temperature_value_and_gradient_match_numpy():
  rng = np.random.default_rng(3)
  pred, target = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
  loss = losses.make_loss("infonce", temperature=0.2, learnable_temperature=True)
  params = loss.init_params()
  np.testing.assert_allclose(float(params["log_temperature"]), np.log(0.2), rtol=1e-6)
  f = lambda lp: loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), lp)
  value, grad = jax.value_and_grad(f)(params)
  np.testing.assert_allclose(float(value), numpy_infonce(pred, target, 0.2), rtol=2e-5)
  eps = 1e-6
  numeric = (numpy_infonce(pred, target, np.exp(np.log(0.2) + eps))
             - numpy_infonce(pred, target, np.exp(np.log(0.2) - eps))) / (2 * eps)
  np.testing.assert_allclose(float(grad["log_temperature"]), numeric, rtol=1e-3)
  # Below the floor the temperature is clipped: the loss stops depending on it.
  low = {"log_temperature": jnp.log(jnp.asarray(1e-4, jnp.float32))}
  np.testing.assert_allclose(float(f(low)), numpy_infonce(pred, target, losses.MIN_TEMPERATURE), rtol=2e-5)
  assert float(jax.grad(f)(low)["log_temperature"]) == 0.0
  assert losses.make_loss("infonce").init_params() == {}
  with pytest.raises(ValueError, match="learnable_temperature applies to the 'infonce' and 'siglip' losses only"):
    losses.make_loss("l2", learnable_temperature=True)


def numpy_siglip(pred, target, temperature, bias):
  """SigLIP's loss as its paper writes it: -1/|B| sum_i sum_j log(1 / (1 + exp(z_ij (-t x_i.y_j - b))))."""
  p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
  t = target / np.linalg.norm(target, axis=1, keepdims=True)
  z = 2 * np.eye(len(pred)) - 1
  return -np.sum(np.log(1 / (1 + np.exp(z * (-(p @ t.T) / temperature - bias))))) / len(pred)


@pytest.mark.parametrize("n,d,temperature,bias", [(8, 16, 0.1, -10.0), (5, 3, 1.0, 0.5), (2, 64, 0.07, -3.0)])
def test_siglip_value_matches_numpy(n, d, temperature, bias):
  rng = np.random.default_rng(n + 10)
  pred, target = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  got = losses.make_loss("siglip", temperature=temperature, bias=bias)(jnp.asarray(pred, jnp.float32),
                                                                      jnp.asarray(target, jnp.float32))
  np.testing.assert_allclose(float(got), numpy_siglip(pred, target, temperature, bias), rtol=2e-5)


def test_siglip_learns_temperature_and_bias_with_numpy_gradients():
  rng = np.random.default_rng(4)
  pred, target = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  loss = losses.make_loss("siglip", temperature=0.1, learnable_temperature=True)
  params = loss.init_params()
  assert set(params) == {"log_temperature", "bias"}
  assert float(params["bias"]) == losses.SIGLIP_BIAS == -10.0  # SigLIP's initial bias
  f = lambda lp, x: loss(x, jnp.asarray(target, jnp.float32), lp)
  value, (grad_params, grad_pred) = jax.value_and_grad(f, argnums=(0, 1))(params, jnp.asarray(pred, jnp.float32))
  np.testing.assert_allclose(float(value), numpy_siglip(pred, target, 0.1, -10.0), rtol=2e-5)
  eps = 1e-6
  central = lambda g: (g(eps) - g(-eps)) / (2 * eps)
  np.testing.assert_allclose(
      float(grad_params["log_temperature"]),
      central(lambda e: numpy_siglip(pred, target, np.exp(np.log(0.1) + e), -10.0)), rtol=1e-3)
  np.testing.assert_allclose(float(grad_params["bias"]),
                             central(lambda e: numpy_siglip(pred, target, 0.1, -10.0 + e)), rtol=1e-3)
  numeric = np.zeros_like(pred)
  for idx in np.ndindex(pred.shape):
    def shifted(e, idx=idx):
      moved = pred.copy()
      moved[idx] += e
      return numpy_siglip(moved, target, 0.1, -10.0)
    numeric[idx] = central(shifted)
  np.testing.assert_allclose(np.asarray(grad_pred), numeric, atol=2e-4)
  with pytest.raises(ValueError, match="a loss bias .* applies to the 'siglip' loss only, not 'infonce'"):
    losses.make_loss("infonce", bias=-10.0)


@pytest.mark.parametrize("mesh_shape,names,n,chunk", [
    ((8,), ("data",), 32, 8),
    ((4, 2), ("data", "fsdp"), 48, 20),  # rows numbered across both axes; chunk 16
])
def test_sharded_siglip_equals_numpy_and_dense_value_and_gradients(mesh_shape, names, n, chunk):
  assert jax.device_count() >= 8
  mesh = _mesh(mesh_shape, names)
  rng = np.random.default_rng(n + 1)
  pred, target = rng.normal(size=(n, 12)), rng.normal(size=(n, 12))
  p32, t32 = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
  sharded = jax.jit(lambda p, t, tau, b: losses.sigmoid_pairwise(p, t, tau, b, mesh=mesh, chunk_size=chunk))
  np.testing.assert_allclose(float(sharded(p32, t32, 0.1, -2.0)), numpy_siglip(pred, target, 0.1, -2.0), rtol=2e-5)
  args = (p32, t32, jnp.float32(0.1), jnp.float32(-2.0))
  grads = jax.grad(sharded, argnums=(0, 1, 2, 3))(*args)
  reference = jax.grad(losses.sigmoid_pairwise, argnums=(0, 1, 2, 3))(*args)
  for got, want in zip(grads, reference):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
