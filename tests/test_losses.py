"""bidirectional_infonce against a float64 NumPy reference (value and gradient)."""
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
