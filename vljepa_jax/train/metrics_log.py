"""Where training metrics go: `metrics.jsonl`, TensorBoard event files, and the terminal.

Only process 0 writes; the other processes get a logger that does nothing, so the train loop
calls it unconditionally. `metrics.jsonl` is appended to and flushed after every logged step, so
it survives a crash and a resumed run continues it (entries past the restored step, written
after the last checkpoint by the run that died, are dropped on resume so steps never repeat).

On a terminal a one-line progress bar with the rate and ETA is redrawn; elsewhere (a log file,
a cluster job) each logged step is one plain line instead.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

from vljepa_jax.train import tensorboard

METRICS_FILE = "metrics.jsonl"
_BAR_WIDTH = 24


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops entries with `step > last_step` (written after the checkpoint a run resumes from)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        kept.append(line)
    except (json.JSONDecodeError, KeyError, TypeError):
      pass  # a half-written last line of a killed run
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


class MetricsLogger:
  """`log(step, metrics)` to JSONL, TensorBoard and the terminal; `progress(step)` for the bar."""

  def __init__(self, workdir: str, *, total_steps: int, stage: str, enabled: bool = True,
               resume_step: int = 0, stream=None):
    self.enabled = enabled
    self._total = total_steps
    self._stage = stage
    self._stream = stream or sys.stdout
    self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._start_time = time.time()
    self._start_step = resume_step
    self._last_line = ""
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    truncate_jsonl(path, resume_step)
    self._jsonl = open(path, "a")
    self._tb = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
    record = {"step": int(step), **{k: _json_value(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    # TensorBoard takes NaN and inf as they are (JSON cannot, so the JSONL has them as strings).
    self._tb.scalars({k: float(v) for k, v in values.items() if isinstance(v, (int, float))}, int(step))
    self._tb.flush()
    shown = " ".join(f"{k}={_format_value(record[k])}" for k in ("loss", "learning_rate", "grad_norm",
                                                                  "samples_per_second") if k in record)
    self._last_line = shown
    if self._tty:
      self.progress(step)
    else:
      print(f"[{self._stage}] step {step}/{self._total} {shown}", file=self._stream, flush=True)

  def progress(self, step: int) -> None:
    """Redraws the terminal bar (a no-op off a terminal, where `log` prints lines instead)."""
    if not (self.enabled and self._tty):
      return
    done = step - self._start_step
    elapsed = time.time() - self._start_time
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = (self._total - step) / rate if rate == rate and rate > 0 else float("nan")
    filled = int(_BAR_WIDTH * step / max(self._total, 1))
    bar = "#" * filled + "." * (_BAR_WIDTH - filled)
    line = (f"\r[{self._stage}] [{bar}] {step}/{self._total} {rate:.2f} steps/s ETA {_format_duration(eta)} "
            f"{self._last_line}")
    print(line.ljust(120), end="", file=self._stream, flush=True)

  def message(self, text: str) -> None:
    """A line of its own (ends the progress bar's line first)."""
    if not self.enabled:
      return
    if self._tty:
      print(file=self._stream)
    print(text, file=self._stream, flush=True)

  def close(self) -> None:
    if not self.enabled:
      return
    if self._tty:
      print(file=self._stream, flush=True)
    self._jsonl.close()
    self._tb.close()


def _json_value(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible as strings
  return value
