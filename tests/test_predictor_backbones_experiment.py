"""experiments/predictor_backbones/run.py: the command it trains with and the tables it reads and writes.

The training itself is the trainer's (tests/test_trainer.py) and the backbone switch the flag
parser's (tests/test_backbones.py); here, a fake finished run stands in for each backbone.
"""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run():
  spec = importlib.util.spec_from_file_location(
      "predictor_backbones_run", os.path.join(REPO, "experiments", "predictor_backbones", "run.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_each_backbone_trains_the_demo_with_only_the_backbone_and_steps_changed(run):
  command = run.train_command("mamba3", 50, "/tmp/w")
  assert command[1:] == ["-m", "vljepa_jax.main", "--config=configs/demo.py:image,video", "--workdir=/tmp/w",
                         "--config.model.predictor.backbone=mamba3", "--config.stages.image.total_steps=50",
                         "--config.stages.video.total_steps=50"]


def test_reads_the_last_evaluation_and_the_median_throughput(run, tmp_path):
  results = {"100": {"stage": "image", "tasks": {"vqa": {"accuracy": 0.1}}},
             "400": {"stage": "video", "tasks": {"vqa": {"accuracy": 0.75}, "text_to_video": {"t2v_R@1": 0.5}}}}
  (tmp_path / "eval_results.json").write_text(json.dumps(results))
  (tmp_path / "video").mkdir()
  rows = [{"step": 25, "samples_per_second": 1.0}, {"step": 50, "samples_per_second": 30.0},
          {"step": 75, "samples_per_second": 10.0}, {"step": 100, "samples_per_second": 20.0}, {"step": 100}]
  (tmp_path / "video" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  assert run.final_metrics(str(tmp_path)) == results["400"]["tasks"]
  assert run.throughput(str(tmp_path)) == 20.0  # the first logged step (compilation) left out
  table = run.markdown({"backbones": {
      name: {"predictor_parameters": 1234567, "train_seconds": 61.2, "samples_per_second": 20.0,
             "metrics": run.final_metrics(str(tmp_path))} for name in ("llama", "mamba3")}})
  lines = table.splitlines()
  assert lines[0] == "| | llama | mamba3 |"
  assert "| predictor parameters | 1,234,567 | 1,234,567 |" in lines
  assert "| VQA accuracy | 0.750 | 0.750 |" in lines and "| t2v R@1 | 0.500 | 0.500 |" in lines
  assert "| inverse dynamics | nan | nan |" in lines  # a task the run did not evaluate


def test_predictor_parameters_count_the_matched_backbones(run):
  llama, mamba3 = run.predictor_parameters("llama"), run.predictor_parameters("mamba3")
  assert llama > 0 and mamba3 > 0 and llama != mamba3
