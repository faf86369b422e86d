"""Device meshes and the logical-axis rules that place parameters on them.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `vocab`, ...; see
`models/layers.py`). A rule set maps those names onto the mesh axes `data`, `fsdp` and `tensor`,
so FSDP or tensor parallelism is a config choice (`config.sharding_rules = "fsdp_tp"`), not a
change to model code.

Convention: meshes are built with `AxisType.Auto` axes. Inside `jax.jit` GSPMD propagates
shardings from the explicit in/out shardings (the pjit way); collectives that must be exact and
predictable (the sharded InfoNCE) are written with `jax.shard_map`. `jax.make_mesh` defaults to
`Explicit` axes since jax 0.9, which would turn every sharded contraction into a type error, so
use `make_mesh` here rather than `jax.make_mesh` directly.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from vljepa_jax.models import params as params_lib

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_ACTIVATIONS = (("activation_batch", BATCH_AXES), ("activation_length", None), ("activation_embed", None))
_REPLICATED = ("embed", "vision_embed", "shared_embed", "mlp", "heads", "kv_heads", "head_dim", "vocab",
               "norm", "position", "token_type", "conv_t", "conv_h", "conv_w", "conv_in")

# Logical name -> mesh axis (None = replicated). Names a rule set does not list are replicated.
RULE_SETS: dict[str, tuple[tuple[str, Any], ...]] = {
    # Pure data parallelism: parameters replicated, batch split.
    "data_parallel": _ACTIVATIONS + tuple((name, None) for name in _REPLICATED),
    # ZeRO-3 style: every weight matrix split along its model dimension over `fsdp`.
    "fsdp": _ACTIVATIONS + (("embed", "fsdp"), ("vision_embed", "fsdp"), ("vocab", None), ("mlp", None),
                            ("heads", None), ("kv_heads", None), ("shared_embed", None)),
    # FSDP plus Megatron-style tensor parallelism: heads, MLP width and vocabulary over `tensor`.
    "fsdp_tp": _ACTIVATIONS + (("embed", "fsdp"), ("vision_embed", "fsdp"), ("vocab", "tensor"),
                               ("mlp", "tensor"), ("heads", "tensor"), ("kv_heads", "tensor"),
                               ("shared_embed", None)),
}


def logical_rules(name: str) -> tuple[tuple[str, Any], ...]:
  if name not in RULE_SETS:
    raise ValueError(f"unknown sharding rules {name!r}; expected one of {sorted(RULE_SETS)}")
  return RULE_SETS[name]


def mesh_shape(sizes: Mapping[str, int] | Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
  """Axis sizes with at most one -1 ("the rest") resolved; the product must be `num_devices`."""
  sizes = dict(sizes)
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; expected some of {MESH_AXES}")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"only one mesh axis may be -1, got {free}")
  if any(size < 1 for name, size in sizes.items() if name not in free):
    raise ValueError(f"mesh axis sizes must be >= 1 or -1, got {sizes}")
  fixed = math.prod(size for name, size in sizes.items() if name not in free)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes}: {num_devices} devices do not divide by the fixed axes' {fixed}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices; there are {num_devices}")
  return {name: sizes.get(name, 1) for name in MESH_AXES}


def make_mesh(sizes: Mapping[str, int] | Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A `data` x `fsdp` x `tensor` mesh (Auto axes) over all devices, e.g. {"data": -1, "tensor": 2}."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  return jax.make_mesh(tuple(shape.values()), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def param_shardings(logical_specs: Any, abstract_params: Any, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]]) -> Any:
  """`NamedSharding` per parameter from its logical spec, the rules and its shape."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  is_spec = lambda x: isinstance(x, P)

  def to_sharding(path, spec, leaf):
    fitted = params_lib.fit_to_shape(spec, tuple(leaf.shape), mesh, jax.tree_util.keystr(path))
    return jax.sharding.NamedSharding(mesh, fitted)

  return jax.tree_util.tree_map_with_path(to_sharding, mesh_specs, abstract_params, is_leaf=is_spec)


def train_state_shardings(tx: Any, abstract_state: Any, params_shardings: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shardings of a `TrainState`: optimizer moments follow their parameters, scalars replicate."""
  replicated = jax.sharding.NamedSharding(mesh, P())
  # Groups of a multi_transform hold MaskedNode placeholders for other groups' (e.g. frozen)
  # parameters: they have no state, so they keep no sharding.
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_state = optax.tree_map_params(
      tx, lambda leaf, sharding: leaf if is_masked(leaf) else sharding, abstract_state.opt_state,
      params_shardings, transform_non_params=lambda _: replicated, is_leaf=is_masked)
  return abstract_state.replace(step=replicated, params=params_shardings, opt_state=opt_state,
                                nonfinite_streak=replicated, nonfinite_total=replicated, rng=replicated)


def bytes_per_device(tree: Any, shardings: Any) -> int:
  """Largest per-device footprint of `tree` (arrays or ShapeDtypeStructs) under `shardings`."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
  return total
