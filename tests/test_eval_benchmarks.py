"""configs/eval_benchmarks.py: official annotation files -> manifests -> one evaluation sweep of a trained run.

The benchmarks' files are written here in their official layouts (as in test_benchmark_importers),
imported with the command-line importer, and evaluated with the config's evaluators over a tiny
trained run named by `init.checkpoint`; every count and chance level checked below follows from
the files the test wrote.
"""
import importlib.util
import json
import os

import pytest

import tiny_train_config
from media_files import numbered_frames, write_image, write_video
from vljepa_jax.data import benchmarks as importers
from vljepa_jax.eval import results as results_lib
from vljepa_jax.train import evaluation
from vljepa_jax.train import model_setup
from vljepa_jax.train import sharding
from vljepa_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_module():
  spec = importlib.util.spec_from_file_location("eval_benchmarks_config",
                                                os.path.join(REPO, "configs", "eval_benchmarks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_config_builds_every_benchmark_on_the_paper_model_and_refuses_unknown_ones():
  module = _config_module()
  config = module.get_config(",".join(module.BENCHMARKS))
  assert sorted(config.evals) == sorted(module.BENCHMARKS) and config.init.checkpoint == "<trained run>/video32"
  assert config.model.predictor.embed_dim == 1536 and config.model.freeze_x_encoder
  types = {name: config.evals[name].type for name in config.evals}
  assert types == {"msrvtt": "retrieval", "activitynet_captions": "retrieval", "youcook2": "retrieval",
                   "coco_karpathy": "retrieval", "kinetics400": "classification", "ssv2": "classification",
                   "pope": "vqa"}
  assert config.evals.pope.data.num_frames == 1 and config.evals.coco_karpathy.data.num_frames == 1
  assert "num_frames" not in config.evals.msrvtt.data  # inherited: the video32 stage's 32 frames
  assert config.data.num_frames == 32 and config.evals.msrvtt.data.default_query == "Describe the video."
  assert config.evals.activitynet_captions.data.target_length == 512
  with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['imagenet'\]"):
    module.get_config("msrvtt,imagenet")
  with pytest.raises(ValueError, match="unknown benchmark"):
    module.get_config("")


def _write_benchmarks(root):
  """MSR-VTT 1k-A CSV (3 videos), Kinetics-400 val CSV (3 clips, 2 classes), a POPE file (4 questions)."""
  media = root / "media"
  for folder in ("msrvtt", "k400/abseiling", "coco"):
    os.makedirs(media / folder)
  frames = numbered_frames(4, 32)
  for i, name in enumerate(("video7010", "video7011", "video7012")):
    write_video(media / "msrvtt" / f"{name}.mp4", frames[::-1] if i % 2 else frames, fps=4)
  for clip in ("-3B32lodo2M_000059_000069", "abcdefghijk_000001_000011"):
    write_video(media / "k400" / "abseiling" / f"{clip}.mp4", frames, fps=4)
  write_video(media / "k400" / "_dbcJuKJQNs_000040_000050.mp4", frames[::-1], fps=4)
  for image_id in (310196, 548882):
    write_image(media / "coco" / f"COCO_val2014_{image_id:012d}.jpg", frames[image_id % 4], "JPEG")
  (root / "MSRVTT_JSFUSION_test.csv").write_text(
      "key,vid_key,video_id,sentence\n"
      "ret0,msr7010,video7010,a red circle moves left\n"
      "ret1,msr7011,video7011,a blue square grows\n"
      "ret2,msr7012,video7012,a green triangle rotates\n")
  (root / "val.csv").write_text(
      "label,youtube_id,time_start,time_end,split,is_cc\n"
      "abseiling,-3B32lodo2M,59,69,val,0\n"
      '"air drumming",_dbcJuKJQNs,40,50,val,0\n'
      "abseiling,abcdefghijk,1,11,val,0\n")
  questions = [(1, 310196, "Is there a snowboard in the image?", "yes"),
               (2, 310196, "Is there a dog in the image?", "no"),
               (3, 548882, "Is there a dining table in the image?", "yes"),
               (4, 548882, "Is there a car in the image?", "no")]
  (root / "coco_pope_random.json").write_text("".join(
      json.dumps({"question_id": q, "image": f"COCO_val2014_{i:012d}.jpg", "text": t, "label": a}) + "\n"
      for q, i, t, a in questions))
  manifests = root / "manifests"
  for argv in (["msrvtt", "--annotations", root / "MSRVTT_JSFUSION_test.csv", "--media-root", media / "msrvtt",
                "--output", manifests / "msrvtt.jsonl"],
               ["kinetics400", "--annotations", root / "val.csv", "--media-root", media / "k400",
                "--output", manifests / "kinetics400.jsonl", "--label-names-out", manifests / "kinetics400.txt"],
               ["pope", "--annotations", root / "coco_pope_random.json", "--media-root", media / "coco",
                "--output", manifests / "pope.jsonl"]):
    os.makedirs(manifests, exist_ok=True)
    assert importers.main([str(a) for a in argv]) == 0
  return media, manifests


def _suite_config(module, media, manifests, run):
  evals = module.benchmark_evals(("msrvtt", "kinetics400", "pope"), video_query="what happens?",
                                 image_query="what is in this image?")
  config = tiny_train_config.get_config_with(**{"evals": evals, "init.checkpoint": str(run)})
  with config.unlocked():
    for name, folder in (("msrvtt", "msrvtt"), ("kinetics400", "k400"), ("pope", "coco")):
      config.evals[name].data.sources.main.manifest = str(manifests / f"{name}.jsonl")
      config.evals[name].data.sources.main.media_root = str(media / folder)
      config.evals[name].batch_size = 8
    config.evals.kinetics400.class_names = str(manifests / "kinetics400.txt")
  return config


def test_a_trained_run_is_evaluated_on_imported_benchmarks_into_one_table(tmp_path):
  module = _config_module()
  media, manifests = _write_benchmarks(tmp_path)
  run = tmp_path / "run"
  trainer.run(tiny_train_config.get_config_with(total_steps=2, checkpoint_every=2), str(run))
  config = _suite_config(module, media, manifests, run / "train")
  results = evaluation.sweep(config, str(tmp_path / "eval"), plots=False)
  assert list(results) == [0] and results[0]["stage"] == evaluation.INIT_STAGE and results[0]["stage_step"] == 2
  tasks = results[0]["tasks"]
  assert sorted(tasks) == ["kinetics400", "msrvtt", "pope"]
  assert tasks["msrvtt"]["num_videos"] == 3 and tasks["msrvtt"]["t2v_chance_R@1"] == pytest.approx(1 / 3)
  assert {k for k in tasks["msrvtt"] if k.startswith("t2v_R@")} == {"t2v_R@1"}  # R@5, R@10 exceed 3 videos
  assert tasks["msrvtt"]["t2v_R@1"] in (0.0, 1 / 3, 2 / 3, 1.0)
  kinetics = tasks["kinetics400"]
  assert kinetics["num_samples"] == 3 and kinetics["chance_top1"] == pytest.approx(0.5)  # 2 classes in the file
  assert "top5" not in kinetics  # only 2 classes: top-5 is meaningless and left out
  pope = tasks["pope"]
  assert pope["num_samples"] == 4 and pope["num_samples/random"] == 4 and pope["chance_accuracy"] == 0.5
  assert pope["accuracy/random"] == pope["accuracy"] and pope["accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)
  table = (tmp_path / "eval" / "eval_results.md").read_text()
  assert all(name in table for name in ("msrvtt", "kinetics400", "pope"))
  assert results_lib.load(str(tmp_path / "eval"))[0]["tasks"] == tasks


def test_placeholders_and_a_bad_class_list_fail_when_the_evaluators_are_built(tmp_path):
  module = _config_module()
  config = tiny_train_config.get_config_with(**{"evals": module.benchmark_evals(
      ("msrvtt",), video_query="q", image_query="q")})
  mesh = sharding.make_mesh(dict(config.mesh))
  setup = model_setup.build(config, cache_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"evals.msrvtt: data source 0 \('manifest'\) cannot be opened"):
    evaluation.Evaluation(config, setup, mesh)
  classes = tiny_train_config.get_config_with(**{"evals": module.benchmark_evals(
      ("kinetics400",), video_query="q", image_query="q")})
  with pytest.raises(ValueError, match=r"evals.kinetics400.class_names='': expected 'source', a list of names, "
                                       r"or a file with one class name per line"):
    evaluation.Evaluation(classes, setup, mesh)
  (tmp_path / "dup.txt").write_text("abseiling\nabseiling\n")
  with classes.unlocked():
    classes.evals.kinetics400.class_names = str(tmp_path / "dup.txt")
  with pytest.raises(ValueError, match="expected distinct class names"):
    evaluation.Evaluation(classes, setup, mesh)
