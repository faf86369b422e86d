"""experiments/ablations/run.py: the configs its cells train, the language-model slices it exports, its table.

The training itself is the trainer's (tests/test_trainer.py) and each axis is the config file's
(tests/test_configs.py); here, what the runner adds to them.
"""
import importlib.util
import os

import jax
import numpy as np
import pytest

from vljepa_jax import convert
from vljepa_jax.models import llama
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import token_vlm
from vljepa_jax.models import vljepa
from vljepa_jax.train import model_setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run():
  spec = importlib.util.spec_from_file_location("ablations_run", os.path.join(REPO, "experiments", "ablations",
                                                                              "run.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


PRETRAINED = {"image_stage": "/w/image/image", "x_encoder": "/w/image/x_encoder",
              "slices": {(4, 8): "/w/lm/layers_4_8", (0, 2): "/w/lm/layers_0_2"}}


@pytest.mark.parametrize("arg, predictor, x_encoder, checkpoint", [
    ("", "/w/lm/layers_4_8", "/w/image/x_encoder", ""),
    ("layers=0:2", "/w/lm/layers_0_2", "/w/image/x_encoder", ""),
    ("llama_init=off", "", "/w/image/x_encoder", ""),
    ("pretrain=on", "", "", "/w/image/image"),
])
def test_each_cell_is_the_ablation_config_with_what_the_runner_trained(run, arg, predictor, x_encoder, checkpoint):
  size = run.SIZES["tiny"]
  config = run.cell_config(arg, size, 7, PRETRAINED, ["--config.optimizer.weight_decay=0.1"])
  assert (config.init.predictor, config.init.x_encoder, config.init.checkpoint) == (predictor, x_encoder, checkpoint)
  assert (config.seed, config.batch_size, config.total_steps) == (7, size["batch_size"], size["steps"])
  assert config.optimizer.weight_decay == 0.1  # --config overrides reach every cell
  assert {spec.data.sources.shapes.size for spec in config.evals.values()} == {size["eval_clips"]}
  reference = run.ablation.get_config(run.ablation_arg(arg))
  assert config.model == reference.model and config.optimizer.lr_rules == reference.optimizer.lr_rules
  assert config.loss == reference.loss


def test_an_exported_slice_is_those_layers_of_the_decoder_and_fits_the_depth_ablation(run, tmp_path):
  decoder = llama.PRESETS["tiny"].replace(num_layers=4, causal=True)
  model = token_vlm.TokenVLM(token_vlm.TokenVLMConfig(x_encoder=vljepa.tiny_config().x_encoder, decoder=decoder))
  rng = np.random.default_rng(0)
  shapes = params_lib.abstract_params(llama.Llama(decoder), jax.ShapeDtypeStruct((1, 4), np.int32))
  params = {"decoder": jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), shapes)}
  folder = run.export_slice(model, params, 12, 1, 3, str(tmp_path / "slice"))
  family, config = convert.load_config(folder)
  _, loaded = convert.load(folder)
  assert family == "llama" and config.num_layers == 2 and tuple(config.source_layers) == (1, 3)
  assert sorted(k for k in loaded if k.startswith("layers_")) == ["layers_0", "layers_1"]
  for i, source in ((0, 1), (1, 2)):
    jax.tree.map(np.testing.assert_array_equal, loaded[f"layers_{i}"], params["decoder"][f"layers_{source}"])
  np.testing.assert_array_equal(loaded["embed_tokens"]["embedding"], params["decoder"]["embed_tokens"]["embedding"])
  np.testing.assert_array_equal(loaded["final_norm"]["scale"], params["decoder"]["final_norm"]["scale"])
  # The ablation config declares its source layers, and a slice of other layers is refused.
  model_setup.check_predictor_layers(config, config, folder, "vljepa")
  with pytest.raises(ValueError, match=r"holds source layers 1:3, but config.model.predictor declares 0:2"):
    model_setup.check_predictor_layers(decoder.slice_layers(0, 2), config, folder, "vljepa")


def test_deltas_are_to_each_groups_first_row_and_the_table_sets_ours_beside_the_papers(run):
  rows = [{"group": "b", "setting": "base", "arg": "", "ours": {"cls": 0.5, "ret": 0.2, "vqa": 0.4},
           "paper": {"cls": 27.3, "ret": 30.2, "vqa": 42.5}},
          {"group": "b", "setting": "x1", "arg": "y_lr=1", "ours": {"cls": 0.25, "ret": 0.3, "vqa": 0.4},
           "paper": {"cls": 23.7, "ret": 28.8, "vqa": 40.7}},
          {"group": "c", "setting": "InfoNCE", "arg": "loss=infonce", "ours": {"cls": 0.1, "ret": 0.1, "vqa": 0.1},
           "paper": {"cls": 23.3, "ret": 30.3, "vqa": 44.3}},
          {"group": "c", "setting": "SigLIP", "arg": "loss=siglip", "ours": {"cls": 0.2, "ret": 0.0, "vqa": 0.3},
           "paper": None}]
  out = run.with_deltas(rows)
  assert out[0]["ours_delta"] == {"cls": 0.0, "ret": 0.0, "vqa": 0.0}
  assert out[1]["ours_delta"] == {"cls": -0.25, "ret": pytest.approx(0.1), "vqa": 0.0}
  assert out[1]["paper_delta"] == {"cls": pytest.approx(-3.6), "ret": pytest.approx(-1.4), "vqa": pytest.approx(-1.8)}
  assert out[3]["ours_delta"] == {"cls": pytest.approx(0.1), "ret": pytest.approx(-0.1), "vqa": pytest.approx(0.2)}
  assert out[3]["paper_delta"] is None
  record = {"rows": out, "size": "tiny", "steps": 30, "batch_size": 16, "seed": 0, "eval_clips": 64,
            "devices": "cpu", "command": "python experiments/ablations/run.py", "seconds": 1.0}
  lines = run.table(record).splitlines()
  assert "| (b) Y-encoder LR multiplier | x1 | 0.250 | 0.300 | 0.400 | -0.250 | +0.100 | +0.000 | 23.7 / 28.8 / 40.7 " \
         "| -3.6 / -1.4 / -1.8 |" in lines
  assert "| (c) loss | SigLIP | 0.200 | 0.000 | 0.300 | +0.100 | -0.100 | +0.200 | — |  |" in lines
