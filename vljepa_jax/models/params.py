"""Parameter-tree helpers: shapes without memory, logical partition specs, fitting specs, counting."""
from __future__ import annotations

import math
from typing import Any

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import numpy as np


def abstract_variables(model: nn.Module, *inputs: Any, method: Any = None) -> Any:
  """`model.init` traced with `jax.eval_shape`: boxed (logically partitioned) shapes, no memory."""
  rngs = {"params": jax.random.key(0)}
  # Inputs go through eval_shape as arguments, so they may be arrays or ShapeDtypeStructs.
  return jax.eval_shape(lambda *xs: model.init(rngs, *xs, method=method), *inputs)


def abstract_params(model: nn.Module, *inputs: Any, method: Any = None) -> Any:
  """The `params` collection as a plain tree of `jax.ShapeDtypeStruct`."""
  return unbox(abstract_variables(model, *inputs, method=method)["params"])


def logical_partition_specs(model: nn.Module, *inputs: Any, method: Any = None) -> Any:
  """`PartitionSpec`s of logical axis names, one per parameter (mapped to a mesh by rules)."""
  return nn.get_partition_spec(abstract_variables(model, *inputs, method=method))["params"]


def fit_to_shape(spec: P, shape: tuple[int, ...], mesh: Any, what: str) -> P:
  """`spec` with every dimension replicated whose size its mesh axes do not divide (logged).

  `mesh` is a `Mesh` or `AbstractMesh`; `what` names the array in the log line.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      fitted.append(None)
      continue
    size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    if dim % size:
      logging.info("replicating a dimension of %s: size %d does not split over %s (%d)", what, dim, axes, size)
      fitted.append(None)
    else:
      fitted.append(axes)
  return P(*fitted)


def unbox(tree: Any) -> Any:
  """Strips `nn.LogicallyPartitioned` boxes: plain arrays, as `apply` and checkpoints use them."""
  return nn.meta.unbox(tree)


def count_params(tree: Any) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
