"""Meshes from config, logical-axis rules, parameters born sharded, sharded forward == unsharded."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vljepa_jax.data import global_batch
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vljepa
from vljepa_jax.train import sharding


def test_mesh_shape_resolves_the_rest_and_rejects_bad_shapes():
  assert sharding.mesh_shape({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert sharding.mesh_shape([("fsdp", 8)], 8) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ValueError, match="only one mesh axis may be -1"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="do not divide"):
    sharding.mesh_shape({"data": -1, "tensor": 3}, 8)
  with pytest.raises(ValueError, match="has 4 devices; there are 8"):
    sharding.mesh_shape({"data": 4}, 8)
  with pytest.raises(ValueError, match="unknown mesh axes \\['model'\\]"):
    sharding.mesh_shape({"model": 8}, 8)
  with pytest.raises(ValueError, match="unknown sharding rules"):
    sharding.logical_rules("zero3")
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def _inputs(batch=8):
  rng = np.random.default_rng(0)
  return {"video": jnp.asarray(rng.normal(size=(batch, 2, 32, 32, 3)), jnp.float32),
          "query_ids": jnp.asarray(rng.integers(0, 256, (batch, 8)), jnp.int32),
          "query_mask": jnp.asarray(np.arange(8)[None] < rng.integers(2, 9, (batch, 1)), jnp.int32),
          "target_ids": jnp.asarray(rng.integers(0, 1000, (batch, 8)), jnp.int32),
          "target_mask": jnp.ones((batch, 8), jnp.int32)}


@pytest.mark.parametrize("rules", ["data_parallel", "fsdp", "fsdp_tp"])
def test_params_born_sharded_and_forward_matches_unsharded(rules):
  model = vljepa.VLJEPA(vljepa.tiny_config())
  inputs = _inputs()
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract = params_lib.abstract_params(model, *inputs.values())
  specs = params_lib.logical_partition_specs(model, *inputs.values())
  shardings = sharding.param_shardings(specs, abstract, mesh, sharding.logical_rules(rules))

  def init(key):
    return params_lib.unbox(model.init(key, *inputs.values())["params"])

  params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  reference = init(jax.random.key(0))
  # Same RNG, same values; jit may fuse the initialisers' scaling differently (1 ulp).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9),
               params, reference)

  mlp = params["predictor"]["llama"]["layers_0"]["mlp"]["wi_gate"]["kernel"]
  want = {"data_parallel": (None, None), "fsdp": ("fsdp", None), "fsdp_tp": ("fsdp", "tensor")}[rules]
  assert tuple(mlp.sharding.spec) == want
  # Per-device bytes from the actual shards, against the helper's estimate and the full size.
  on_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(params))
  assert on_device == sharding.bytes_per_device(abstract, shardings)
  full = sum(x.nbytes for x in jax.tree.leaves(reference))
  if rules == "data_parallel":
    assert on_device == full
  else:
    assert on_device < full / (1.5 if rules == "fsdp" else 2.5)

  batch = global_batch.to_global_batch({k: np.asarray(v) for k, v in inputs.items()}, mesh)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, **b))
  with nn.logical_axis_rules(sharding.logical_rules(rules)):
    sharded_pred, sharded_target = apply(params, batch)
  pred, target = model.apply({"params": reference}, **inputs)
  np.testing.assert_allclose(np.asarray(sharded_pred), np.asarray(pred), atol=1e-5)
  np.testing.assert_allclose(np.asarray(sharded_target), np.asarray(target), atol=1e-5)
