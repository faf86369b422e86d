"""Training objectives chosen by name: a new one registers from outside the package and trains
through the real stage; unknown names fail listing the known ones; the contrastive objective's
learnable temperature lives at `params["objective"]`.

References: NumPy losses and gradients on the embeddings the model gives for the same batch and
parameters, and Adam's first update (the learning rate times the sign of that gradient).
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_train_config
from vljepa_jax import losses
from vljepa_jax.data import global_batch
from vljepa_jax.objectives import base
from vljepa_jax.objectives import on_embeddings
from vljepa_jax.objectives import registry
from vljepa_jax.train import model_setup
from vljepa_jax.train import param_layout
from vljepa_jax.train import sharding
from vljepa_jax.train import stages
from vljepa_jax.train import train_step
from vljepa_jax.train import trainer

INITIAL_SCALE = 0.5


class ScaledCosine(on_embeddings.EmbeddingObjective):
  """A toy objective with its own parameter: mean over rows of (scale * cos(pred_i, target_i) - 1)^2."""

  def init_params(self):
    return {"scale": jnp.asarray(INITIAL_SCALE, jnp.float32)}

  def embedding_loss(self, pred, target, objective_params):
    cos = jnp.sum(losses.l2_normalize(pred) * losses.l2_normalize(target), axis=-1)
    return jnp.mean(jnp.square(objective_params["scale"] * cos - 1.0))

  def metrics(self, params):
    return {"scale": params[base.OBJECTIVE_PARAMS]["scale"]}


def _stage(tmp_path, **overrides):
  config = tiny_train_config.get_config_with(**overrides)
  stage_config = stages.resolve(config)[0][1]
  setup = model_setup.build(stage_config, str(tmp_path))
  mesh = sharding.make_mesh(dict(stage_config.mesh))
  return trainer.Stage(stage_config, "train", setup, mesh, str(tmp_path / "train"))


def _first_step(stage):
  """(params before, host inputs, NumPy (pred, target) of those params, state after, metrics) of one step."""
  state = stage.init_state(None)
  before = jax.device_get(state.params)
  batch = next(stage.make_iterator())
  inputs = {k: batch[k] for k in train_step.MODEL_INPUTS}
  model_params = {k: v for k, v in before.items() if k != base.OBJECTIVE_PARAMS}
  pred, target = stage.setup.model.apply({"params": model_params},
                                         **train_step.model_inputs({k: jnp.asarray(v) for k, v in inputs.items()}))
  state, metrics = stage.step_fn(state, global_batch.to_global_batch(inputs, stage.mesh))
  return before, np.asarray(pred, np.float64), np.asarray(target, np.float64), jax.device_get(state.params), metrics


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_registered_objective_is_chosen_by_name_and_trains_its_own_parameter(tmp_path, monkeypatch):
  monkeypatch.setitem(registry.OBJECTIVES, "scaled_cosine", f"{__name__}:ScaledCosine")
  # Two microbatches: the objective's parameter gets its gradient through GradCache's accumulation too.
  stage = _stage(tmp_path, objective="scaled_cosine", num_microbatches=2)
  assert type(stage.objective).__name__ == "ScaledCosine"
  before, pred, target, after, metrics = _first_step(stage)
  assert before[base.OBJECTIVE_PARAMS] == {"scale": INITIAL_SCALE}

  cos = np.sum(_unit(pred) * _unit(target), axis=1)
  expected_loss = np.mean((INITIAL_SCALE * cos - 1.0) ** 2)
  scale_grad = np.mean(2.0 * (INITIAL_SCALE * cos - 1.0) * cos)
  assert float(metrics["loss"]) == pytest.approx(expected_loss, rel=1e-5)
  # Adam's first update moves every parameter by the learning rate against its gradient's sign.
  assert abs(scale_grad) > 1e-4
  new_scale = after[base.OBJECTIVE_PARAMS]["scale"]
  lr = stage.config.optimizer.learning_rate
  assert float(new_scale) == pytest.approx(INITIAL_SCALE - lr * np.sign(scale_grad), abs=1e-6)
  assert float(metrics["scale"]) == float(new_scale)
  # The towers train too (the config's LR rules, the default): the loss reaches them.
  assert not np.array_equal(after["y_head"]["kernel"], before["y_head"]["kernel"])


def test_an_unknown_objective_fails_before_anything_is_built_listing_the_registered_ones(tmp_path):
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.objective = "contrastiv"
  known = sorted(registry.OBJECTIVES)
  assert {"contrastive", "y_decoder"} <= set(known)
  with pytest.raises(ValueError, match=re.escape(f"config.objective='contrastiv'; expected one of {known}")):
    trainer.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_learnable_temperature_is_the_contrastive_objectives_parameter(tmp_path):
  """Where it lives, trains and is restored from; its value and gradient are tests/test_losses.py's."""
  stage = _stage(tmp_path, **{"loss.learnable_temperature": True, "loss.temperature": 0.2})
  objective_params = {losses.LOG_TEMPERATURE: jax.ShapeDtypeStruct((), jnp.float32)}
  assert stage.abstract_params[base.OBJECTIVE_PARAMS] == objective_params
  assert set(stage.abstract_params) == {"x_encoder", "predictor", "y_encoder", "y_head", base.OBJECTIVE_PARAMS}
  assert stage.param_shardings[base.OBJECTIVE_PARAMS][losses.LOG_TEMPERATURE].is_fully_replicated
  assert not stage.frozen[base.OBJECTIVE_PARAMS][losses.LOG_TEMPERATURE]
  # Evaluation sweeps restore checkpoints into the same layout.
  layout = param_layout.param_layout(stage.config, stage.setup, stage.mesh)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), layout) == jax.tree.map(lambda a: (a.shape, a.dtype),
                                                                          stage.abstract_params)
  assert stage.objective.init_params()[losses.LOG_TEMPERATURE] == pytest.approx(np.log(0.2))
  metrics = stage.objective.metrics({base.OBJECTIVE_PARAMS: {losses.LOG_TEMPERATURE: jnp.log(jnp.float32(0.3))}})
  assert float(metrics["temperature"]) == pytest.approx(0.3, rel=1e-6)
  # Without it the contrastive objective owns no parameters, and the tree is the model's alone.
  plain = _stage(tmp_path / "plain")
  assert base.OBJECTIVE_PARAMS not in plain.abstract_params and plain.objective.metrics({}) == {}


def test_siglip_learns_its_bias_beside_the_temperature_and_a_stray_bias_fails(tmp_path):
  """`loss.name=siglip`: temperature and bias are the objective's parameters, logged as metrics; a bias
  set for another loss fails when the stage is built, before anything compiles."""
  stage = _stage(tmp_path, **{"loss.name": "siglip", "loss.learnable_temperature": True, "loss.bias": -5.0})
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  assert stage.abstract_params[base.OBJECTIVE_PARAMS] == {losses.LOG_TEMPERATURE: scalar, losses.BIAS: scalar}
  assert float(stage.objective.init_params()[losses.BIAS]) == -5.0
  metrics = stage.objective.metrics({base.OBJECTIVE_PARAMS: {losses.LOG_TEMPERATURE: jnp.log(jnp.float32(0.3)),
                                                             losses.BIAS: jnp.float32(-4.0)}})
  assert float(metrics["temperature"]) == pytest.approx(0.3, rel=1e-6) and float(metrics["bias"]) == -4.0
  with pytest.raises(ValueError, match="a loss bias .* applies to the 'siglip' loss only, not 'infonce'"):
    _stage(tmp_path / "stray", **{"loss.bias": -5.0})
