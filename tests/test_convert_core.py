"""The conversion engine itself: error collection, atomic output, config round trips."""
import os

import numpy as np
import pytest

from vljepa_jax.convert import checkpoint
from vljepa_jax.convert import mapping
from vljepa_jax.models import bert
from vljepa_jax.models import text_encoder


class _Shape:
  def __init__(self, *shape):
    self.shape = shape


EXPECTED = {"a": {"kernel": _Shape(3, 2, 4), "bias": _Shape(2, 4)}, "norm": {"scale": _Shape(3)}}
RULES = [
    mapping.Rule(r"a\.weight", "a/kernel", mapping.linear(1)),
    mapping.Rule(r"a\.bias", "a/bias", mapping.reshape),
    mapping.Rule(r"norm\.weight", "norm/scale"),
]


def test_linear_transform_transposes_then_reshapes():
  w = np.arange(24, dtype=np.float32).reshape(8, 3)  # torch [out, in]
  state = {"a.weight": w, "a.bias": np.arange(8.0), "norm.weight": np.ones(3)}
  params = mapping.apply_rules(state, RULES, EXPECTED)
  np.testing.assert_array_equal(params["a"]["kernel"], w.T.reshape(3, 2, 4))
  np.testing.assert_array_equal(params["a"]["bias"], np.arange(8.0).reshape(2, 4))
  assert params["norm"]["scale"].dtype == np.float32


def test_every_problem_is_reported_at_once():
  state = {"a.weight": np.zeros((8, 5)), "extra.weight": np.zeros(2), "norm.weight": np.ones(4)}
  with pytest.raises(mapping.ConversionError) as e:
    mapping.apply_rules(state, RULES, EXPECTED, source="ckpt.bin")
  msg = str(e.value)
  assert "ckpt.bin" in msg
  assert "a.weight -> a/kernel" in msg and "(8, 5)" in msg and "(3, 2, 4)" in msg  # wrong shape, both named
  assert "norm.weight -> norm/scale" in msg
  assert "extra.weight (2,)" in msg  # unexpected
  assert "a/bias (2, 4)" in msg  # missing


def test_ignored_tensors_are_dropped_silently():
  state = {"a.weight": np.zeros((8, 3)), "a.bias": np.zeros(8), "norm.weight": np.ones(3), "buf": np.zeros(1)}
  mapping.apply_rules(state, RULES, EXPECTED, ignore=[r"buf"])


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
  out = tmp_path / "model"
  with pytest.raises(RuntimeError):
    with checkpoint.atomic_directory(str(out)) as tmp:
      open(os.path.join(tmp, "partial"), "w").close()
      raise RuntimeError("interrupted")
  assert os.listdir(tmp_path) == []


def test_atomic_directory_refuses_then_replaces_existing(tmp_path):
  out = tmp_path / "model"
  out.mkdir()
  (out / "old").write_text("keep me")
  with pytest.raises(mapping.ConversionError, match="already exists"):
    with checkpoint.atomic_directory(str(out)):
      pass
  assert (out / "old").read_text() == "keep me"
  with checkpoint.atomic_directory(str(out), overwrite=True) as tmp:
    open(os.path.join(tmp, "new"), "w").close()
  assert sorted(os.listdir(out)) == ["new"] and sorted(os.listdir(tmp_path)) == ["model"]


def test_nested_config_round_trip_and_checked_overrides():
  cfg = text_encoder.TextEncoderConfig(backbone_config=bert.PRESETS["tiny"], dense_dims=(8, 4))
  again = text_encoder.TextEncoderConfig.from_dict(cfg.to_dict())
  assert again == cfg and hash(again) == hash(cfg)
  assert cfg.with_dtypes("bfloat16", "float32").backbone_config.dtype == "bfloat16"
  with pytest.raises(ValueError, match="hidden_sizee"):
    bert.PRESETS["tiny"].replace(hidden_sizee=3)


def test_restore_puts_leaves_without_a_sharding_on_the_default_device(tmp_path):
  """Plain `ShapeDtypeStruct`s (no sharding) come back equal to what was saved, on `jax.devices()[0]`."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  saved = {"layer": {"kernel": rng.standard_normal((3, 4)).astype(np.float32)}, "scale": np.arange(5, dtype=np.float32)}
  checkpoint.save(str(tmp_path), family="bert", config={}, params=saved, source="test")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), saved)
  assert all(getattr(leaf, "sharding", None) is None for leaf in jax.tree.leaves(abstract))  # the premise
  restored = checkpoint.restore_params(str(tmp_path), abstract)
  jax.tree.map(np.testing.assert_array_equal, restored, saved)
  assert {d for leaf in jax.tree.leaves(restored) for d in leaf.devices()} == {jax.devices()[0]}
