"""The frozen X-encoder's feature cache: written once, read back as a source, refused when stale.

The reference for every cached value is the uncached path: the same records through the pipeline
as video, through the model's own X-encoder.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

import tiny_train_config
from conftest import REPO, run_cli
from vljepa_jax.train import feature_cache_writer
from vljepa_jax.data import feature_cache
from vljepa_jax.data import global_batch
from vljepa_jax.data import pipeline
from vljepa_jax.train import feature_check
from vljepa_jax.train import model_setup
from vljepa_jax.train import sharding
from vljepa_jax.train import trainer

FROZEN = {"model.freeze_x_encoder": True}


def _config(**overrides):
  return tiny_train_config.get_config_with(**{**FROZEN, **overrides})


def _features(config, path):
  """`config` reading the cache at `path` instead of its shapes source."""
  with config.unlocked():
    config.data.sources = {"cache": {"type": "features", "path": str(path)}}
  return config


def _stage(config, workdir):
  mesh = sharding.make_mesh(dict(config.mesh))
  setup = model_setup.build(config, cache_dir=str(workdir))
  return trainer.Stage(config, "train", setup, mesh, str(workdir))


def _first_batch(stage, shuffle=False):
  data = pipeline.DataConfig.from_dict({**stage.config.data.to_dict(), "shuffle": shuffle})
  return next(pipeline.make_iterator(data, global_batch_size=stage.config.batch_size,
                                     query_tokenizer=stage.setup.query_tokenizer,
                                     target_tokenizer=stage.setup.target_tokenizer))


@pytest.fixture(scope="module")
def float32_cache(tmp_path_factory):
  path = tmp_path_factory.mktemp("cache") / "features"
  metadata = feature_cache_writer.write_cache(_config(), str(path), batch_size=16, dtype="float32")
  return path, metadata


def test_the_cached_step_gives_the_uncached_loss(float32_cache, tmp_path):
  path, metadata = float32_cache
  assert metadata["num_records"] == 256 and metadata["token_shape"] == [4, 80]  # (2/2)*(16/8)^2 tokens, width 80
  plain = _stage(_config(), tmp_path / "plain")
  cached = _stage(_features(_config(), path), tmp_path / "cached")
  params = plain.init_params()
  video_batch, token_batch = _first_batch(plain), _first_batch(cached)
  assert "video" not in token_batch and token_batch["visual_tokens"].shape == (8, 4, 80)
  np.testing.assert_array_equal(token_batch["source_index"], video_batch["source_index"])
  for key in ("query_ids", "target_ids", "label"):
    np.testing.assert_array_equal(token_batch[key], video_batch[key])
  put = lambda batch: global_batch.to_global_batch(batch, plain.mesh)
  forward, _ = plain.phase_fns()
  cached_forward, cached_backward = cached.phase_fns()
  reference = float(forward(params, put(video_batch)))
  assert abs(float(cached_forward(params, put(token_batch))) - reference) <= 1e-5
  # Gradients of the trained towers agree too (the X-encoder is frozen: none flows into it).
  _, grads = plain.phase_fns()[1](params, put(video_batch))
  _, cached_grads = cached_backward(params, put(token_batch))
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(cached_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  # The loss does read the tokens: other clips' tokens give another loss.
  swapped = dict(token_batch, visual_tokens=token_batch["visual_tokens"][::-1].copy())
  assert abs(float(cached_forward(params, put(swapped))) - reference) > 1e-3


def test_bfloat16_tokens_are_the_x_encoders_output_rounded(tmp_path):
  path = tmp_path / "bf16"
  metadata = feature_cache_writer.write_cache(_config(), str(path), batch_size=16)
  assert metadata["dtype"] == "bfloat16"
  plain = _stage(_config(), tmp_path / "plain")
  params = plain.init_params()
  source = feature_cache.FeatureSource(path)
  batch = _first_batch(plain)
  tokens = np.asarray(feature_check.XEncoder(plain.setup.model, plain.mesh)(
      params, global_batch.to_global_batch({"video": batch["video"]}, plain.mesh)["video"]))
  for row, index in enumerate(batch["source_index"]):
    cached = source[int(index)]["visual_tokens"]
    assert cached.dtype == ml_dtypes.bfloat16
    np.testing.assert_allclose(cached.astype(np.float32), tokens[row], rtol=2.0 ** -8, atol=1e-6)


def test_records_keep_their_texts_labels_and_the_sources_class_names(float32_cache):
  path, metadata = float32_cache
  source = feature_cache.FeatureSource(path)
  data = pipeline.DataConfig.from_dict(_config().data)
  shapes = pipeline.make_source(data.sources[0], data)  # the source that was cached, as the pipeline opens it
  assert source.label_names == shapes.label_names and len(source) == len(shapes)
  for index in (0, 17, 255):
    record, original = source[index], shapes[index]
    for key in ("caption", "captions", "query", "answer", "answer_candidates", "label", "id"):
      assert record.get(key) == (original[key].item() if hasattr(original.get(key), "item") else original.get(key))


def test_a_stale_or_foreign_cache_is_refused(float32_cache, tmp_path):
  path, metadata = float32_cache
  stage = _stage(_config(), tmp_path / "plain")
  model, mesh = stage.setup.model, stage.mesh
  data = pipeline.DataConfig.from_dict(_features(_config(), path).data)
  assert feature_check.check_feature_sources(data, model, stage.init_params(), mesh) == 1  # its own X-encoder
  other = _stage(_config(seed=1), tmp_path / "other")  # same architecture, other weights
  with pytest.raises(feature_cache.CacheError, match="other weights than this run's"):
    feature_check.check_feature_sources(data, model, other.init_params(), mesh)
  wider = _config(**{"model.x_encoder.mlp_dim": 96})
  wide_stage = _stage(wider, tmp_path / "wide")
  with pytest.raises(feature_cache.CacheError, match=r"model.x_encoder.mlp_dim cached 160, run 96"):
    feature_check.check_feature_sources(data, wide_stage.setup.model, wide_stage.init_params(), mesh)
  # Preprocessing: refused when the pipeline opens the source, before any compilation.
  frames = pipeline.DataConfig.from_dict({**_features(_config(), path).data.to_dict(), "num_frames": 4})
  with pytest.raises(feature_cache.CacheError, match="data.num_frames cached 2, run 4"):
    pipeline.make_iterator(frames, global_batch_size=8)
  with pytest.raises(ValueError, match="mixes 'features' sources"):
    pipeline.DataConfig.from_dict({"sources": [{"type": "features", "path": str(path)}, {"type": "shapes"}]})
  trained = dict(_config().model.to_dict(), freeze_x_encoder=False)
  with pytest.raises(ValueError, match="cannot come from a cache"):
    stage.setup.model.clone(config=type(model.config).from_dict(trained)).apply(
        {"params": stage.init_params()}, np.zeros((1, 4, 80), np.float32), method="encode_visual")
  # An unfinished cache (no features.json) is not one.
  os.makedirs(tmp_path / "partial")
  with pytest.raises(feature_cache.CacheError, match="not a complete feature cache"):
    feature_cache.FeatureSource(tmp_path / "partial")


def test_training_reads_the_cache_and_the_command_line_writes_it(float32_cache, tmp_path):
  path, _ = float32_cache
  out = tmp_path / "cli"
  # config.cpu_devices takes effect here as in training (XLA_FLAGS cleared: a forced device count would win).
  proc = run_cli("vljepa_jax.data.cache_features", "--config=tests/tiny_train_config.py",
                 "--config.model.freeze_x_encoder=True", "--config.cpu_devices=2", f"--output={out}", "--batch_size=32",
                 "--dtype=float32", env={**os.environ, "XLA_FLAGS": ""})
  assert f"cached 256 records (0 skipped), tokens (4, 80) float32 -> {out} (2 devices)" in proc.stdout, proc.stdout
  with open(out / feature_cache.METADATA_FILE) as f, open(path / feature_cache.METADATA_FILE) as g:
    cli, direct = json.load(f), json.load(g)
  assert feature_cache.probe_distance(cli["probe"], direct["probe"]) < 1e-5 and not os.path.exists(f"{out}.tmp")
  proc = run_cli("vljepa_jax.data.cache_features", "--config=tests/tiny_train_config.py",
                 "--config.model.freeze_x_encoder=True", f"--output={out}", check=False)
  assert proc.returncode == 1 and "exists; pass --overwrite" in proc.stderr
  proc = run_cli("vljepa_jax.data.cache_features", "--config=tests/tiny_train_config.py", f"--output={tmp_path / 'x'}",
                 check=False)
  assert proc.returncode == 1 and "trains its X-encoder" in proc.stderr and not os.path.exists(tmp_path / "x")
  # A run on the cache trains (the stage checks the cache against its X-encoder first).
  config = _features(_config(total_steps=3, checkpoint_every=3), out)
  trainer.run(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "train" / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
  assert len(losses) == 3 and all(np.isfinite(losses))


def test_two_processes_write_one_cache_equal_to_a_single_processes(float32_cache, tmp_path):
  """Two `jax.distributed` CPU processes x 2 devices, each encoding and writing its own records."""
  path, single = float32_cache
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  out = tmp_path / "two"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
  procs = [subprocess.Popen([sys.executable, "-m", "vljepa_jax.data.cache_features", "--config=tests/tiny_train_config.py",
                             "--config.model.freeze_x_encoder=True", f"--output={out}", "--batch_size=16",
                             "--dtype=float32", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for proc in procs:
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
  two = feature_cache.FeatureSource(out)
  assert two.metadata["shards"] == ["features-00000-of-00002.array_record", "features-00001-of-00002.array_record"]
  assert two.metadata["num_records"] == single["num_records"] == 256
  reference = feature_cache.FeatureSource(path)
  by_id = {reference[i]["id"]: reference[i] for i in range(len(reference))}
  seen = set()
  for i in range(len(two)):
    record = two[i]
    seen.add(record["id"])
    expected = by_id[record["id"]]
    assert record["caption"] == expected["caption"]
    # Another mesh (4 devices over 2 processes) is another program: equal up to float rounding.
    np.testing.assert_allclose(record["visual_tokens"], expected["visual_tokens"], rtol=1e-5, atol=1e-5)
  assert seen == set(by_id)  # disjoint shards that cover the source


def test_a_frozen_x_encoder_gets_no_update_and_a_rule_that_trains_it_is_refused(tmp_path):
  """`freeze_x_encoder` alone stops the gradient; weight decay must not move the weights either."""
  stage = _stage(_config(**{"optimizer.weight_decay": 0.1}), tmp_path / "decay")
  state = stage.init_state(None)
  before = jax.tree.map(np.asarray, state.params["x_encoder"])
  batch = global_batch.to_global_batch(trainer.train_step_lib.batch_inputs(_first_batch(stage, shuffle=True)),
                                       stage.mesh)
  for _ in range(2):
    state, metrics = stage.step_fn(state, batch)
  assert bool(metrics["finite"]) and float(metrics["update_norm"]) > 0  # the other towers moved
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params["x_encoder"])):
    np.testing.assert_array_equal(np.asarray(b), a)  # the same program on the same machine: bit-equal
  with pytest.raises(ValueError, match=r"freeze_x_encoder=True, but optimizer.lr_rules gives the X-encoder a learning "
                                       r"rate: rule \('x_encoder/layers_0/.*', 0.5\)"):
    _stage(_config(**{"optimizer.lr_rules": (("x_encoder/layers_0/.*", 0.5),)}), tmp_path / "conflict")
