"""The tiny model the evaluator tests share (not a test module itself): tests/tiny_train_config.py's
model with random parameters, and the data defaults the trainer would hand the evaluators."""
import jax
import jax.numpy as jnp

import tiny_train_config
from vljepa_jax.data import pipeline
from vljepa_jax.models import params as params_lib
from vljepa_jax.train import evaluation
from vljepa_jax.train import model_setup


def build(workdir: str, arg: str = ""):
  """(config, ModelSetup, params, evaluator data defaults) for `tiny_train_config.get_config(arg)`."""
  config = tiny_train_config.get_config(arg)
  built = model_setup.build(config, workdir)
  data = pipeline.DataConfig.from_dict(config.data)
  video = jnp.zeros((1, data.num_frames, data.crop_size, data.crop_size, 3))
  ids = jnp.zeros((1, 8), jnp.int32)
  params = params_lib.unbox(built.model.init(jax.random.key(3), video, ids, ids, ids, ids)["params"])
  defaults = {k: config.data[k] for k in evaluation.INHERITED_DATA}
  return config, built, params, defaults
