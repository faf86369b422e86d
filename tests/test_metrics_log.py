"""MetricsLogger: JSONL, TensorBoard event files and the terminal.

Event files are read back with TensorBoard's own loader (`tensorboard.backend.event_processing`),
an independent reader of what tensorboardX wrote; expected values are the logged Python numbers
rounded to float32, TensorBoard's scalar type.
"""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

from vljepa_jax.train import metrics_log

from tensorboard.backend.event_processing import event_accumulator  # the test extra installs tensorboard
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2


def _accumulator(logdir: str) -> event_accumulator.EventAccumulator:
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return acc


def _scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  acc = _accumulator(os.path.join(workdir, "tensorboard"))
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _jsonl(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _f32(x: float) -> float:
  return float(np.float32(x))


def _logger(workdir, stream=None, **kwargs) -> metrics_log.MetricsLogger:
  return metrics_log.MetricsLogger(str(workdir), total_steps=8, stage="train", stream=stream or io.StringIO(),
                                   **kwargs)


def _metrics(step: int, scale: float = 1.0) -> dict:
  return {"loss": np.float32(scale / step), "learning_rate": 1e-3 * step, "nonfinite_total": np.int64(step),
          "finite": True, "note": "text is not a scalar"}


def test_scalars_reach_tensorboard_and_jsonl(tmp_path):
  logger = _logger(tmp_path)
  for step in (2, 4, 6):
    logger.log(step, _metrics(step))
  logger.log(8, {"loss": float("nan"), "grad_norm": math.inf, "neg": -math.inf})
  logger.close()

  (event_file,) = os.listdir(tmp_path / "tensorboard")
  assert event_file.startswith("events.out.tfevents.")
  got = _scalars(str(tmp_path))
  assert sorted(got) == ["finite", "grad_norm", "learning_rate", "loss", "neg", "nonfinite_total"]
  assert got["learning_rate"] == [(s, _f32(1e-3 * s)) for s in (2, 4, 6)]
  assert got["nonfinite_total"] == [(s, float(s)) for s in (2, 4, 6)]
  assert got["finite"] == [(s, 1.0) for s in (2, 4, 6)]
  assert got["loss"][:3] == [(s, _f32(np.float32(1.0 / s))) for s in (2, 4, 6)]
  assert got["loss"][3][0] == 8 and math.isnan(got["loss"][3][1])
  assert got["grad_norm"] == [(8, math.inf)] and got["neg"] == [(8, -math.inf)]

  records = _jsonl(str(tmp_path))
  assert [r["step"] for r in records] == [2, 4, 6, 8]
  assert records[0] == {"step": 2, "loss": 0.5, "learning_rate": 2e-3, "nonfinite_total": 2, "finite": True,
                        "note": "text is not a scalar"}
  assert records[3] == {"step": 8, "loss": "nan", "grad_norm": "inf", "neg": "-inf"}


def test_each_step_is_readable_while_the_logger_is_open(tmp_path):
  logger = _logger(tmp_path)
  try:
    logger.log(1, {"loss": 1.5})
    assert _scalars(str(tmp_path)) == {"loss": [(1, 1.5)]}
    assert _jsonl(str(tmp_path)) == [{"step": 1, "loss": 1.5}]
    logger.log(2, {"loss": 2.5})
    assert _scalars(str(tmp_path)) == {"loss": [(1, 1.5), (2, 2.5)]}
  finally:
    logger.close()
  logger.close()  # a second close does nothing
  logger.log(3, {"loss": 3.5})  # nor does logging after it
  assert _scalars(str(tmp_path)) == {"loss": [(1, 1.5), (2, 2.5)]}


def test_resume_drops_the_steps_after_the_checkpoint(tmp_path):
  # The first run logs steps 1..7 and dies; its last checkpoint was step 4.
  logger = _logger(tmp_path)
  for step in range(1, 8):
    logger.log(step, {"loss": float(step)})
  logger.close()
  logger = _logger(tmp_path, resume_step=4)
  for step in range(5, 9):
    logger.log(step, {"loss": 10.0 * step})
  logger.close()

  expected = [(s, float(s)) for s in range(1, 5)] + [(s, 10.0 * s) for s in range(5, 9)]
  assert _scalars(str(tmp_path)) == {"loss": expected}
  assert [(r["step"], r["loss"]) for r in _jsonl(str(tmp_path))] == expected
  # TensorBoard drops the stale steps because the resumed file starts with a restart marker.
  first, second = sorted(os.listdir(tmp_path / "tensorboard"))
  starts = [e.step for e in event_file_loader.LegacyEventFileLoader(str(tmp_path / "tensorboard" / second)).Load()
            if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [5]
  assert first < second


def test_other_processes_write_nothing(tmp_path):
  stream = io.StringIO()
  logger = _logger(tmp_path / "work", stream=stream, enabled=False)
  logger.message("hello")
  logger.log(1, {"loss": 1.0})
  logger.progress(2)
  logger.close()
  assert not (tmp_path / "work").exists()
  assert stream.getvalue() == ""


def test_plain_lines_off_a_terminal(tmp_path):
  stream = io.StringIO()
  logger = _logger(tmp_path, stream=stream)
  logger.message("[train] starting at step 0/8")
  logger.progress(1)  # no bar, no output
  logger.log(2, {"loss": 0.123456, "learning_rate": 1e-3, "grad_norm": 2.0, "samples_per_second": 640.0,
                 "param_norm": 5.0})
  logger.progress(3)
  logger.message("[train] done")
  logger.close()
  assert stream.getvalue().splitlines() == [
      "[train] starting at step 0/8",
      "[train] step 2/8 loss=0.1235 learning_rate=0.001 grad_norm=2 samples_per_second=640",
      "[train] done"]


class _Terminal(io.StringIO):

  def isatty(self) -> bool:
    return True


def test_progress_bar_on_a_terminal(tmp_path):
  stream = _Terminal()
  logger = _logger(tmp_path, stream=stream, resume_step=2)
  logger.message("[train] resuming at step 2/8")
  logger.progress(3)
  logger.log(4, {"loss": 0.5})
  logger.message("[train] SIGTERM: saved a checkpoint at step 4")
  logger.close()
  out = stream.getvalue()
  screens = [s for s in out.split("\r") if s.strip()]
  # Messages are whole lines of their own; the bar is redrawn in place with the step and the metrics.
  assert "[train] resuming at step 2/8\n" in out and "[train] SIGTERM: saved a checkpoint at step 4\n" in out
  assert any(re.search(r"\[train\].*\b2/8\b", s) for s in screens)
  assert any(re.search(r"\[train\].*\b4/8\b.*loss=0\.5", s) for s in screens)
  assert "step 4/8" not in out  # no plain log line on a terminal
  assert out.endswith("\n")


def test_the_training_entry_points_do_not_import_torch():
  """tensorboardX imports torch whenever it is installed (the test extra installs it); the logger
  keeps it out of a training process, which would pay torch's start-up time and memory for nothing."""
  assert importlib.util.find_spec("torch") is not None  # else this would pass for the wrong reason
  code = ("import sys\n"
          "import vljepa_jax.main\n"
          "from vljepa_jax.train import evaluation, metrics_log, trainer\n"
          "print('torch' in sys.modules)\n"
          "import torch\n"  # and torch itself still imports afterwards
          "print(torch.ones(2).sum().item())\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["False", "2.0"], proc.stdout
