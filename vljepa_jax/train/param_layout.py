"""A stage's parameters before they exist: shapes, dtypes and shardings, the objective's included.

    layout = param_layout(config, setup, mesh)     a tree of `ShapeDtypeStruct`s with shardings

What the trainer creates its state in and restores checkpoints into, and what evaluation sweeps
restore saved parameters into, so both lay them out the same way.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vljepa_jax.data import pipeline
from vljepa_jax.models import params as params_lib
from vljepa_jax.objectives import base as objectives_base
from vljepa_jax.objectives import registry as objectives_registry
from vljepa_jax.train import model_setup
from vljepa_jax.train import sharding


def example_inputs(data: pipeline.DataConfig) -> list[jax.ShapeDtypeStruct]:
  """Shapes of one example, for tracing `init` (parameters do not depend on the batch size)."""
  video = jax.ShapeDtypeStruct((1, data.num_frames, data.crop_size, data.crop_size, 3), jnp.float32)
  query = jax.ShapeDtypeStruct((1, data.query_length), jnp.int32)
  target = jax.ShapeDtypeStruct((1, data.target_length), jnp.int32)
  return [video, query, query, target, target]


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """`abstract`'s shapes and dtypes, each carrying the matching leaf of `shardings`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def param_layout(config: ml_collections.ConfigDict, setup: model_setup.ModelSetup, mesh: jax.sharding.Mesh,
                 objective: objectives_base.Objective | None = None) -> Any:
  """The stage's parameters as `ShapeDtypeStruct`s carrying their shardings.

  The model's, plus the parameters of the stage's objective (`objective`, else the one
  `config.objective` names) at `params["objective"]`, replicated: they are a few scalars.
  """
  rules = sharding.logical_rules(config.sharding_rules)
  inputs = example_inputs(pipeline.DataConfig.from_dict(config.data))
  abstract = params_lib.abstract_params(setup.model, *inputs)
  specs = params_lib.logical_partition_specs(setup.model, *inputs)
  objective = objective or objectives_registry.make_objective(config, mesh=mesh)
  objective_params = jax.eval_shape(objective.init_params)
  abstract = objectives_base.with_objective_params(abstract, objective_params)
  specs = objectives_base.with_objective_params(
      specs, jax.tree.map(lambda _: jax.sharding.PartitionSpec(), objective_params))
  return with_shardings(abstract, sharding.param_shardings(specs, abstract, mesh, rules))
