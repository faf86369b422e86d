"""The training run end to end: config errors, resume exactness after SIGKILL, SIGTERM saves,
corrupt-checkpoint fallback, the non-finite stop, stages, logs, and a 2-process run.

The reference for every resumed or multi-process run is an uninterrupted single-process run of
the same config: losses must match it bit for bit (resume: the same compiled step on the same
machine) or to 1e-5 (other process layouts compile other programs).

The signal tests signal a run far longer than the reference only once a given step is logged, so
the run is still going whenever the signal lands; the constant learning rate makes `total_steps`
no part of the step, so the long run computes the reference's steps.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import tiny_train_config
from vljepa_jax.train import checkpointing
from vljepa_jax.train import stages
from vljepa_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_train_config.py")
LONG = 10**6  # steps of a run that only a signal ends


def _main(workdir, *overrides, env=None, config=CONFIG, **popen):
  cmd = [sys.executable, "-m", "vljepa_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **popen)


def _run_main(workdir, *overrides, env=None, config=CONFIG, timeout=300):
  proc = _main(workdir, *overrides, env=env, config=config)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _metrics(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _losses(workdir, stage="train"):
  return {m["step"]: m["loss"] for m in _metrics(os.path.join(workdir, stage, "metrics.jsonl"))}


def _wait_for_step(path, step, proc, timeout=240):
  start = time.time()
  while time.time() - start < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc {proc.returncode}) before step {step}: {proc.stdout.read()}")
    if os.path.exists(path) and any(m["step"] >= step for m in _safe_metrics(path)):
      return
    time.sleep(0.05)
  raise AssertionError(f"step {step} not reached in {timeout}s")


def _safe_metrics(path):
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return out


def _uninterrupted_losses(workdir, *overrides):
  rc, out = _run_main(workdir, *overrides)
  assert rc == 0, out
  return _losses(workdir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 8-step run: the losses every other layout must reproduce."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  return workdir, _uninterrupted_losses(workdir)


def test_unknown_or_mistyped_config_keys_fail_before_compiling(tmp_path):
  rc, out = _run_main(str(tmp_path), "--config.optimizer.learnig_rate=0.1")
  assert rc != 0 and "learnig_rate" in out
  rc, out = _run_main(str(tmp_path), "--config.total_steps=many")
  assert rc != 0 and "total_steps" in out
  assert not os.path.exists(tmp_path / "train"), "nothing may be built for a bad config"


def test_a_bad_schedule_fails_naming_the_stage_and_where_its_values_come_from(tmp_path):
  config = tiny_train_config.get_config_with("two_stage", **{"optimizer.schedule": "warmup_constant",
                                                            "stages.image.optimizer": {"warmup_steps": 9}})
  with pytest.raises(ValueError, match=r"stage 'image': warmup_steps \(9\) > total_steps \(4\) \(config.optimizer.\* "
                                       r"and config.total_steps, or config.stages.image.\*\)"):
    trainer.run(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "image" / "checkpoints")


def test_stage_overrides_merge_and_reject_unknown_keys():
  config = tiny_train_config.get_config("two_stage")
  (image_name, image), (video_name, video) = stages.resolve(config)
  assert (image_name, video_name) == ("image", "video")
  assert image.total_steps == 4 and image.data.num_frames == 1 and image.data.sources.shapes.kind == "image"
  assert video.total_steps == 8 and video.data.num_frames == 2 and video.data.sources.shapes.kind == "video"
  assert image.data.sources.shapes.size == 256  # untouched keys of a merged dict survive
  bad = ml_collections.ConfigDict(config.to_dict())
  bad.stages.image.data.num_frame = 3
  with pytest.raises(ValueError, match=r"config.stages.image.data.num_frame"):
    stages.resolve(bad)
  bad = ml_collections.ConfigDict(config.to_dict())
  bad.stage_order = ("image", "audio")
  with pytest.raises(ValueError, match="audio"):
    stages.resolve(bad)


def test_run_writes_logs_checkpoints_and_learns(reference):
  workdir, losses = reference
  metrics = _metrics(os.path.join(workdir, "train", "metrics.jsonl"))
  assert [m["step"] for m in metrics] == list(range(1, 9))
  for m in metrics:
    for key in ("loss", "learning_rate", "grad_norm", "samples_per_second", "data/samples", "nonfinite_total"):
      assert key in m, key
    assert m["learning_rate"] == pytest.approx(1e-3)
  assert metrics[-1]["data/samples"] == 64
  assert losses[8] < losses[1]  # eight steps on 8 clips of the same 256 do lower the loss
  assert sorted(os.listdir(os.path.join(workdir, "train", "checkpoints"))) == ["4", "6", "8"]  # keep = 3
  events = os.listdir(os.path.join(workdir, "train", "tensorboard"))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents.")
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "train", "tensorboard"))
  acc.Reload()
  scalars = acc.Scalars("loss")
  assert [s.step for s in scalars] == list(range(1, 9))
  np.testing.assert_allclose([s.value for s in scalars], [losses[s] for s in range(1, 9)], rtol=1e-6)


def test_sigkill_then_rerun_reproduces_the_losses_bit_for_bit(reference, tmp_path):
  _, expected = reference
  workdir = str(tmp_path)
  proc = _main(workdir, f"--config.total_steps={LONG}", f"--config.keep_checkpoints={LONG}")
  _wait_for_step(os.path.join(workdir, "train", "metrics.jsonl"), 5, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # A kill that landed after step 8 left checkpoints (whole or torn) at or past the reference's end: without
  # them the resume starts from the checkpoint an earlier kill would have left (all are kept), within the reference.
  ckpt_dir = os.path.join(workdir, "train", "checkpoints")
  for name in os.listdir(ckpt_dir):
    step = name.split(".")[0]
    if step.isdigit() and int(step) >= 8:
      shutil.rmtree(os.path.join(ckpt_dir, name))
  rc, out = _run_main(workdir)  # to the reference's 8 steps
  assert rc == 0, out
  assert "resuming at step" in out
  assert _losses(workdir) == expected  # exact float equality, every step


def test_sigterm_saves_a_checkpoint_and_exits_143(reference, tmp_path):
  _, expected = reference
  workdir = str(tmp_path / "run")
  # No periodic checkpoints: the only one there can be is SIGTERM's.
  proc = _main(workdir, f"--config.total_steps={LONG}", f"--config.checkpoint_every={LONG}")
  _wait_for_step(os.path.join(workdir, "train", "metrics.jsonl"), 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == trainer.PREEMPTED_EXIT_CODE, out
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "train", "checkpoints")) if s.isdigit()]
  last = max(_losses(workdir))
  assert saved == [last] and last >= 3, (saved, last)  # the step in flight finished, was logged and saved
  assert f"saved a checkpoint at step {last}" in out
  final = max(8, last + 1)
  rc, out = _run_main(workdir, f"--config.total_steps={final}")
  assert rc == 0, out
  assert f"resuming at step {last}" in out
  if final > 8:  # the signal landed after step 7: the reference does not reach the resumed steps
    expected = _uninterrupted_losses(str(tmp_path / "reference"), f"--config.total_steps={final}")
  assert _losses(workdir) == expected


def _corrupt(step_dir):
  """Garbles every array file of a checkpoint's state (what a bad disk or partial copy leaves)."""
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        size = os.path.getsize(path)
        f.write(b"\xff" * max(size, 1))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
  ref_dir, expected = reference
  workdir = str(tmp_path)
  subprocess.run(["cp", "-r", ref_dir + "/.", workdir], check=True)
  ckpt_dir = os.path.join(workdir, "train", "checkpoints")
  _corrupt(os.path.join(ckpt_dir, "8"))
  rc, out = _run_main(workdir, "--config.total_steps=10")
  assert rc == 0, out
  assert "checkpoint step 8 is unreadable" in out and "resuming at step 6" in out
  assert any(name.startswith(checkpointing.CORRUPT_PREFIX + "8.") for name in os.listdir(ckpt_dir))
  losses = _losses(workdir)
  assert [losses[s] for s in range(1, 9)] == [expected[s] for s in range(1, 9)]  # 7 and 8 recomputed equal
  assert sorted(losses) == list(range(1, 11))


def test_non_finite_steps_stop_the_run_and_keep_the_last_good_params(tmp_path, monkeypatch):
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.total_steps = 4
  workdir = str(tmp_path)
  trainer.run(config, workdir)
  setup = trainer.model_setup.build(config, workdir)
  mesh = trainer.sharding.make_mesh(dict(config.mesh))
  stage_config = stages.resolve(config)[0][1]
  stage = trainer.Stage(stage_config, "train", setup, mesh, os.path.join(workdir, "train"))
  with checkpointing.Checkpointer(os.path.join(workdir, "train", "checkpoints")) as ckpt:
    good, _ = ckpt.restore(4, stage.abstract_state, None)
  good = jax.device_get(good.params)

  monkeypatch.setattr("vljepa_jax.losses.Loss.__call__", lambda self, p, t, lp=None: (p * np.nan).sum() + t.sum())
  with config.unlocked():
    config.total_steps = 20
    config.max_nonfinite_steps = 3
  with pytest.raises(trainer.NonFiniteError, match="3 consecutive steps"):
    trainer.run(config, workdir)
  metrics = _metrics(os.path.join(workdir, "train", "metrics.jsonl"))
  assert metrics[-1]["step"] == 7 and metrics[-1]["nonfinite_streak"] == 3 and not metrics[-1]["finite"]
  with checkpointing.Checkpointer(os.path.join(workdir, "train", "checkpoints")) as ckpt:
    latest = ckpt.latest_step()
    state, _ = ckpt.restore(latest, stage.abstract_state, None)
  assert latest == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), good)


def test_two_stages_chain_and_a_finished_run_is_not_repeated(tmp_path):
  workdir = str(tmp_path)
  rc, out = _run_main(workdir, "--config.stages.video.total_steps=3", config=CONFIG + ":two_stage")
  assert rc == 0, out
  assert _metrics(os.path.join(workdir, "image", "metrics.jsonl"))[-1]["step"] == 4
  assert _metrics(os.path.join(workdir, "video", "metrics.jsonl"))[-1]["step"] == 3
  rc, out = _run_main(workdir, "--config.stages.video.total_steps=3", config=CONFIG + ":two_stage")
  assert rc == 0, out
  assert "[image] already complete at step 4/4" in out and "[video] already complete at step 3/3" in out


def test_compiles_the_train_step_once(tmp_path):
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.total_steps = 5
  setup = trainer.model_setup.build(config, str(tmp_path))
  mesh = trainer.sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  stage = trainer.Stage(stages.resolve(config)[0][1], "train", setup, mesh, str(tmp_path / "train"))
  stage.train()
  # The step is jitted under a one-trace guard (`trace_guard`): 5 steps traced it once, or `train` would have
  # raised. And the guard is there: a batch of another size, which must retrace the step, trips it.
  batch = next(stage.make_iterator())
  half = {k: jax.ShapeDtypeStruct((4,) + batch[k].shape[1:], batch[k].dtype)
          for k in trainer.train_step_lib.MODEL_INPUTS}
  with jax.set_mesh(mesh), pytest.raises(AssertionError, match="traced > 1 times"):
    jax.eval_shape(stage.step_fn.jitted, stage.abstract_state, half)


@pytest.mark.parametrize("big_step", [True, False])
def test_on_a_cpu_a_big_step_finishes_before_the_next_is_dispatched(tmp_path, monkeypatch, big_step):
  """XLA:CPU frees a step's temporaries only after the next queued step took its own: the loop waits
  for a step with large temporaries on CPU devices, and runs ahead of a small one."""
  if big_step:  # the tiny step's temporaries count as large
    monkeypatch.setattr(trainer, "WAIT_TEMP_BYTES", 0)
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.total_steps = 6
    config.log_every = config.checkpoint_every = 6  # neither waits for the steps in between
  setup = trainer.model_setup.build(config, str(tmp_path))
  mesh = trainer.sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  stage = trainer.Stage(stages.resolve(config)[0][1], "train", setup, mesh, str(tmp_path / "train"))
  # The tiny step can finish before its call returns; its metrics are passed through ~0.1 s of
  # asynchronously dispatched work, so a loop that does not wait finds them still pending.
  seed = jnp.full((512, 512), 0.01)

  @jax.jit
  def later(metrics):
    x = seed
    for _ in range(20):
      x = jnp.tanh(x @ x)
    return jax.tree.map(lambda m: m + 0 * x[0, 0].astype(m.dtype), metrics)

  step_fn, previous, ready_at_next_call = stage.step_fn, [], []

  def slowed(state, batch):
    if previous:
      ready_at_next_call.append(all(m.is_ready() for m in jax.tree.leaves(previous[-1])))
    state, metrics = step_fn(state, batch)
    previous.append(later(metrics))
    return state, previous[-1]

  slowed.jitted = step_fn.jitted  # what the trainer compiles to read the step's temporaries
  stage.step_fn = slowed
  # The loop also waits for each waited-for step's temporaries to be back in the heap.
  temp_bytes, released = [], []
  waits_for_each_step, wait_until_released = trainer.waits_for_each_step, trainer.host_memory.wait_until_released
  monkeypatch.setattr(trainer, "waits_for_each_step", lambda mesh, nbytes: temp_bytes.append(nbytes) or
                      waits_for_each_step(mesh, nbytes))
  monkeypatch.setattr(trainer.host_memory, "wait_until_released",
                      lambda *args: released.append(args[1]) or wait_until_released(*args))
  stage.train()
  assert ready_at_next_call == [True] * 5 if big_step else not all(ready_at_next_call), ready_at_next_call
  assert len(temp_bytes) == 1 and temp_bytes[0] > 0, temp_bytes
  assert released == ([max(temp_bytes[0], 1)] * 6 if big_step else []), (released, temp_bytes)


def test_two_processes_give_the_losses_of_one(reference, tmp_path):
  _, expected = reference
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  procs = [_main(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
                 "--config.mesh.data=2", "--config.mesh.fsdp=-1", env=env) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  got = _losses(workdir)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-5)
  assert "starting at step" not in outs[1]  # process 1 writes no logs


def test_init_checkpoint_starts_from_another_runs_parameters(reference, tmp_path):
  ref_dir, _ = reference
  config = tiny_train_config.get_config()
  with config.unlocked():
    config.init.checkpoint = os.path.join(ref_dir, "train")
  setup = trainer.model_setup.build(config, str(tmp_path))
  mesh = trainer.sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  stage = trainer.Stage(stages.resolve(config)[0][1], "train", setup, mesh, str(tmp_path / "train"))
  state = stage.init_state(None)
  with checkpointing.Checkpointer(os.path.join(ref_dir, "train", "checkpoints")) as ckpt:
    final, _ = ckpt.restore(8, stage.abstract_state, None)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(final.params))
  assert int(state.step) == 0  # parameters only: a fresh optimizer and step
  with config.unlocked():
    config.init.checkpoint = str(tmp_path / "nothing")
  stage = trainer.Stage(stages.resolve(config)[0][1], "train", setup, mesh, str(tmp_path / "train2"))
  with pytest.raises(FileNotFoundError, match="no training checkpoints"):
    stage.init_state(None)
