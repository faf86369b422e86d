"""The Mamba-3 parity experiment (`experiments/mamba3_state_tracking/run.py`) on a tiny setting.

The data generator's labels are checked against NumPy's running sum; one variant trains for a few
steps and its record is checked against the results.json schema the experiment promises.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "experiments", "mamba3_state_tracking", "run.py")


@pytest.fixture(scope="module")
def experiment():
  name = "mamba3_state_tracking_run"
  spec = importlib.util.spec_from_file_location(name, SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up while the class is built
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.modules.pop(name, None)


def tiny_settings(experiment, **overrides):
  kw = dict(seed=3, train_length=7, curriculum_start=2, eval_multiples=(1, 2), steps=3, batch_size=4,
            warmup_steps=1, eval_batch_size=8, log_every=2, hidden_size=8, num_heads=2, head_dim=4, state_size=8,
            chunk_size=8)
  kw.update(overrides)
  return experiment.Settings(**kw)


def test_parity_labels_are_the_running_parity(experiment):
  tokens, labels = experiment.parity_batch(jax.random.key(0), 16, 50)
  tokens, labels = np.asarray(tokens), np.asarray(labels)
  assert tokens.shape == labels.shape == (16, 51)
  assert (tokens[:, 0] == experiment.BOS).all() and (labels[:, 0] == 0).all()
  bits = tokens[:, 1:]
  assert set(np.unique(bits)) == {0, 1}
  assert 0.35 < bits.mean() < 0.65  # fair coin flips, not a constant
  np.testing.assert_array_equal(labels[:, 1:], np.cumsum(bits, axis=1) % 2)
  other, _ = experiment.parity_batch(jax.random.key(1), 16, 50)
  assert (np.asarray(other) != tokens).any()  # the key decides the bits


def test_curriculum_ramps_to_the_train_length(experiment):
  settings = tiny_settings(experiment, steps=10, curriculum_fraction=0.5, train_length=10, curriculum_start=2)
  lengths = [experiment.curriculum_length(settings, step) for step in range(10)]
  assert lengths == [2, 4, 5, 7, 8, 10, 10, 10, 10, 10]  # 2 + step / 5 * 8, rounded


def test_variants_switch_the_ablations(experiment):
  settings = tiny_settings(experiment)
  switches = {name: (c.trapezoid, c.rotation) for name in experiment.VARIANTS
              for c in [experiment.model_config(settings, name)]}
  assert switches == {"mamba3": (True, True), "mamba3_no_rotation": (True, False), "mamba2_like": (False, False)}
  with pytest.raises(ValueError, match="unknown variant 'mamba4'"):
    experiment.model_config(settings, "mamba4")
  with pytest.raises(ValueError, match="curriculum_start"):
    tiny_settings(experiment, curriculum_start=9)


def test_results_schema(experiment, tmp_path):
  settings = tiny_settings(experiment)
  logged = []
  record = experiment.run(settings, ("mamba3",), "python run.py --tiny", log=logged.append)
  paths = experiment.write(record, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(record))
  assert isinstance(saved["command"], str) and saved["command"] == "python run.py --tiny"
  assert isinstance(saved["seconds"], float) and saved["seconds"] > 0
  assert set(saved["variants"]) == {"mamba3"}
  entry = saved["variants"]["mamba3"]
  assert entry["train_length"] == 7 and isinstance(entry["train_length"], int)
  assert set(entry["accuracy"]) == {"7", "14"}
  assert all(isinstance(a, float) and 0 <= a <= 1 for a in entry["accuracy"].values())
  # The per-position accuracy is of the longest evaluation batch, whose last position is its final parity.
  assert len(entry["per_position_accuracy"]) == 14
  assert entry["per_position_accuracy"][-1] == entry["accuracy"]["14"]
  assert entry["curve"]["step"] == [2, 3] and len(entry["curve"]["loss"]) == 2
  assert any("step     2" in line for line in logged)
  with open(tmp_path / "learning_curves.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = (tmp_path / "results.md").read_text()
  assert "| mamba3 |" in table and "| len 7 | len 14 |" in table
  assert [os.path.basename(p) for p in paths] == ["results.json", "results.md", "learning_curves.png"]
