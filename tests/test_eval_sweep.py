"""Evaluation over training: the Y-decoder objective, evaluation during training, `--mode=eval`
sweeps over checkpoints (compile once, skip what is done, global steps across stages), and the
results file with its markdown/CSV/PNG reports.

References: NumPy cross-entropy of the decoder's logits; the optimizer's frozen groups read off the
parameters themselves; the sweep's metrics against evaluators run on parameters restored
separately; the reports against the JSON they are made from, read back with `csv` and Pillow.
"""
import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import tiny_train_config
import trace_checks
from vljepa_jax.eval import embedding
from vljepa_jax.eval import results as results_lib
from vljepa_jax.models import vljepa
from vljepa_jax.train import checkpointing
from vljepa_jax.train import evaluation
from vljepa_jax.train import model_setup
from vljepa_jax.train import param_layout
from vljepa_jax.train import sharding
from vljepa_jax.train import stages
from vljepa_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_train_config.py") + ":decoder"


def _run_main(workdir, *flags):
  cmd = [sys.executable, "-m", "vljepa_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *flags]
  proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                        timeout=600)
  return proc.returncode, proc.stdout + proc.stderr


def _config(**overrides):
  return tiny_train_config.get_config_with("decoder", **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Both stages (4 + 4 steps, checkpoints every 2), evaluated every 2 steps while training."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = _config(eval_every=2)
  trainer.run(config, workdir)
  return config, workdir


# --- the Y-decoder objective -----------------------------------------------------------------------


def _numpy_caption_loss(logits, tokens, mask):
  logits = np.asarray(logits, np.float64)[:, :-1]
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  targets, weights = np.asarray(tokens)[:, 1:], np.asarray(mask)[:, 1:].astype(np.float64)
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  return -(picked * weights).sum() / weights.sum()


def _expected_loss(model, params, inputs, condition):
  """The embedding the decoder reads, made unit length, then its logits and a NumPy loss."""
  variables = {"params": params}
  video = trainer.global_batch.normalize_video(jnp.asarray(inputs["video"]))
  if condition == "target":
    emb = model.apply(variables, inputs["target_ids"], inputs["target_mask"], method="encode_text")
  else:
    emb = model.apply(variables, video, inputs["query_ids"], inputs["query_mask"], method="encode_visual_query")
  emb = np.asarray(emb, np.float64)
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  decoder = vljepa.y_decoder_lib.YDecoder(model.config.y_decoder)
  logits = decoder.apply({"params": params["y_decoder"]}, jnp.asarray(emb, jnp.float32), inputs["target_ids"])
  return _numpy_caption_loss(logits, inputs["target_ids"], inputs["target_mask"])


def test_y_decoder_stage_trains_only_the_decoder_on_the_caption_loss(tmp_path):
  # The "predictor" condition runs every tower; "target" (the default) is what the microbatch test uses.
  condition = "predictor"
  config = stages.resolve(_config(y_decoder_condition=condition))[1][1]
  setup = model_setup.build(config, str(tmp_path))
  mesh = sharding.make_mesh(dict(config.mesh))
  stage = trainer.Stage(config, "decoder", setup, mesh, str(tmp_path / "decoder"))
  state = stage.init_state(None)
  before = jax.device_get(state.params)
  batch = next(stage.make_iterator())
  inputs = {k: batch[k] for k in ("video", "query_ids", "query_mask", "target_ids", "target_mask")}

  expected = _expected_loss(setup.model, before, inputs, condition)
  state, metrics = stage.step_fn(state, trainer.global_batch.to_global_batch(inputs, mesh))
  assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
  after = jax.device_get(state.params)
  for path, old in jax.tree_util.tree_leaves_with_path(before):
    new = after
    for key in path:
      new = new[key.key]
    moved = not np.array_equal(old, new)
    assert moved == (path[0].key == "y_decoder"), jax.tree_util.keystr(path)


def test_y_decoder_microbatches_equal_the_full_batch(tmp_path):
  results = {}
  for micro in (1, 2):
    config = stages.resolve(_config(num_microbatches=micro))[1][1]
    setup = model_setup.build(config, str(tmp_path))
    mesh = sharding.make_mesh(dict(config.mesh))
    stage = trainer.Stage(config, "decoder", setup, mesh, str(tmp_path / f"decoder{micro}"))
    state = stage.init_state(None)
    batch = next(stage.make_iterator())
    inputs = {k: batch[k] for k in ("video", "query_ids", "query_mask", "target_ids", "target_mask")}
    expected = _expected_loss(setup.model, jax.device_get(state.params), inputs, "target")
    state, metrics = stage.step_fn(state, trainer.global_batch.to_global_batch(inputs, mesh))
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    results[micro] = (float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(state.params["y_decoder"]))
  assert results[1][0] == pytest.approx(results[2][0], rel=1e-5)
  assert results[1][1] == pytest.approx(results[2][1], rel=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[1][2], results[2][2])


def test_contrastive_stage_keeps_the_decoder_frozen_and_decoder_stage_needs_one(tmp_path):
  config = stages.resolve(_config())[0][1]
  setup = model_setup.build(config, str(tmp_path))
  stage = trainer.Stage(config, "train", setup, sharding.make_mesh(dict(config.mesh)), str(tmp_path / "train"))
  assert stage.groups.get("frozen", 0) >= sum(x.size for x in jax.tree.leaves(stage.abstract_params["y_decoder"]))
  plain = tiny_train_config.get_config()
  with plain.unlocked():
    plain.objective = "y_decoder"
  with pytest.raises(ValueError, match="config.model.y_decoder is not set"):
    trainer.Stage(plain, "x", model_setup.build(plain, str(tmp_path)), sharding.make_mesh(dict(plain.mesh)),
                  str(tmp_path / "x"))


# --- evaluation during training and sweeps ---------------------------------------------------------


def test_training_records_evaluations_at_global_steps(trained):
  _, workdir = trained
  results = results_lib.load(workdir)
  # train: steps 2, 4 -> global 2, 4; decoder: steps 2, 4 -> global 6, 8.
  assert sorted(results) == [2, 4, 6, 8]
  assert [(results[s]["stage"], results[s]["stage_step"]) for s in (2, 4, 6, 8)] == [
      ("train", 2), ("train", 4), ("decoder", 2), ("decoder", 4)]
  for step in results:
    assert set(results[step]["tasks"]) == {"retrieval", "captioning"}
  # Contrastive steps move retrieval; decoder steps leave it exactly where stage 1 ended.
  assert results[6]["tasks"]["retrieval"] == results[4]["tasks"]["retrieval"] == results[8]["tasks"]["retrieval"]
  assert results[2]["tasks"]["retrieval"] != results[4]["tasks"]["retrieval"]
  for name in (results_lib.TABLE_FILE, results_lib.CSV_FILE):
    assert os.path.exists(os.path.join(workdir, name))


def test_sweep_matches_training_time_evaluation_and_compiles_once(trained, tmp_path, monkeypatch):
  config, trained_dir = trained
  workdir = str(tmp_path)
  subprocess.run(["cp", "-r", trained_dir + "/.", workdir], check=True)
  os.remove(os.path.join(workdir, results_lib.RESULTS_FILE))
  embedders = []
  original = embedding.Embedder.__init__

  def spy(self, *args, **kwargs):
    original(self, *args, **kwargs)
    trace_checks.guard_embedder(self)  # every checkpoint of both stages: one trace of each function
    embedders.append(self)

  monkeypatch.setattr(embedding.Embedder, "__init__", spy)
  swept = evaluation.sweep(config, workdir)
  expected = results_lib.load(trained_dir)
  assert sorted(swept) == sorted(expected)
  for step in expected:  # restored checkpoints give what the live parameters gave
    for task, metrics in expected[step]["tasks"].items():
      for name, value in metrics.items():
        if isinstance(value, float):
          assert swept[step]["tasks"][task][name] == pytest.approx(value, abs=1e-6), (step, task, name)
  (embedder,) = embedders
  trace_checks.assert_traced_once(embedder._visual_query)
  trace_checks.assert_traced_once(embedder._text)

  # The restored parameters really are the checkpoint's: the Y-decoder of decoder:2 differs from decoder:4.
  layout = param_layout.param_layout(stages.resolve(config)[1][1], model_setup.build(config, workdir),
                                    sharding.make_mesh(dict(config.mesh)))
  two, _ = checkpointing.restore_params(os.path.join(workdir, "decoder"), layout, step=2)
  four, _ = checkpointing.restore_params(os.path.join(workdir, "decoder"), layout, step=4)
  assert not np.array_equal(jax.device_get(two["y_decoder"]["lm_head"]["kernel"]),
                            jax.device_get(four["y_decoder"]["lm_head"]["kernel"]))


def test_interrupted_sweep_rerun_skips_what_is_done(trained, tmp_path):
  _, trained_dir = trained
  workdir = str(tmp_path)
  subprocess.run(["cp", "-r", trained_dir + "/.", workdir], check=True)
  results = results_lib.load(workdir)
  # As if the sweep had stopped half-way: step 6 lost its captioning result, step 8 is gone.
  marker = 12345.0
  results[2]["tasks"]["retrieval"]["t2v_R@1"] = marker
  del results[6]["tasks"]["captioning"]
  del results[8]
  results_lib.save(workdir, results)
  rc, out = _run_main(workdir, "--mode=eval")
  assert rc == 0, out
  assert "[sweep 1/4] step 2 (train:2): done, skipped" in out
  assert "[sweep 3/4] step 6 (decoder:2): evaluating captioning" in out
  line = next(l for l in out.splitlines() if l.startswith("[sweep 4/4]"))
  assert line.startswith("[sweep 4/4] step 8 (decoder:4): evaluating ")
  assert sorted(line.split("evaluating ")[1].split(", ")) == ["captioning", "retrieval"]
  after = results_lib.load(workdir)
  assert after[2]["tasks"]["retrieval"]["t2v_R@1"] == marker  # not re-evaluated
  reference = results_lib.load(trained_dir)
  assert after[6]["tasks"]["captioning"]["cider_d"] == pytest.approx(reference[6]["tasks"]["captioning"]["cider_d"])
  assert after[8]["tasks"]["retrieval"]["t2v_R@5"] == pytest.approx(reference[8]["tasks"]["retrieval"]["t2v_R@5"])
  for task in ("retrieval", "captioning"):
    png = os.path.join(workdir, results_lib.PLOTS_DIR, f"{task}.png")
    with Image.open(png) as image:
      assert image.format == "PNG" and image.size[0] > 100


def test_sweep_step_selection_and_errors(trained, tmp_path):
  config, trained_dir = trained
  workdir = str(tmp_path / "w")
  subprocess.run(["cp", "-r", trained_dir, workdir], check=True)
  os.remove(os.path.join(workdir, results_lib.RESULTS_FILE))
  evaluation.sweep(config, workdir, steps=[4, 8], plots=False)
  assert sorted(results_lib.load(workdir)) == [4, 8]
  with pytest.raises(ValueError, match=r"no checkpoint at global step\(s\) \[5\].*available: \[2, 4, 6, 8\]"):
    evaluation.sweep(config, workdir, steps=[5])
  rc, out = _run_main(str(tmp_path / "empty"), "--mode=eval")
  assert rc == 2 and "no checkpoints under" in out, out


# --- reports ---------------------------------------------------------------------------------------


def test_markdown_and_csv_reports_hold_every_recorded_value(tmp_path):
  workdir = str(tmp_path)
  rng = np.random.default_rng(0)
  recorded = {}
  for step, stage, stage_step in ((100, "image", 100), (250, "video", 150)):
    for task, metrics in (("zs", ("top1", "top5")), ("ret", ("t2v_R@1",))):
      values = {m: float(rng.random()) for m in metrics}
      values.update({results_lib.chance_key(m): 0.1 for m in metrics})
      values["num_samples"] = 7
      values["example_0"] = "'a text' (reference: 'a text')"
      results_lib.record(workdir, step, stage=stage, stage_step=stage_step, task=task, metrics=values)
      recorded[step, task] = values
  paths = results_lib.write_reports(workdir)
  with open(paths[1]) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [100, 250]
  for row in rows:
    step = int(row["step"])
    columns = {k for k in row if "/" in k}
    assert columns == {"zs/top1", "zs/top5", "ret/t2v_R@1"}  # no chance levels, counts or strings
    for column in columns:
      task, metric = column.split("/", 1)
      assert float(row[column]) == recorded[step, task][metric]
  table = open(paths[0]).read().splitlines()
  assert table[0].startswith("| step | stage |") and table[2].startswith("| chance |")
  assert "| 250 | video:150 |" in table[-1]
  with open(os.path.join(workdir, results_lib.RESULTS_FILE)) as f:
    assert set(json.load(f)) == {"100", "250"}
  with pytest.raises(ValueError, match="not an evaluation results file"):
    with open(os.path.join(workdir, results_lib.RESULTS_FILE), "w") as f:
      f.write("[1, 2")
    results_lib.load(workdir)


def test_chance_keys_match_what_the_evaluators_report():
  assert results_lib.chance_key("top1") == "chance_top1"
  assert results_lib.chance_key("t2v_R@10") == "t2v_chance_R@10"
  assert results_lib.chance_key("accuracy/count") == "chance_accuracy/count"
  table = results_lib.format_table({"t": {"top1": 0.5, "chance_top1": 0.1, "num_samples": 3}})
  assert "0.500" in table and "0.100" in table and "num_samples" not in table
