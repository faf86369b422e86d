"""Where training metrics go: `metrics.jsonl`, TensorBoard, optionally Weights & Biases, and the terminal.

Only process 0 writes; the other processes get a logger that does nothing, so the train loop
calls it unconditionally. `metrics.jsonl` is appended to and flushed after every logged step, so
it survives a crash and a resumed run continues it (entries past the restored step, written
after the last checkpoint by the run that died, are dropped on resume so steps never repeat).

TensorBoard event files go to `<workdir>/tensorboard`, one file per start; TensorBoard drops the
steps an interrupted run logged past the checkpoint a resumed one starts from (`tensorboard.py`).
The optional W&B run is `wandb_log`'s.

On a terminal a tqdm progress bar with the rate and ETA is redrawn and messages print above it;
elsewhere (a log file, a cluster job) each logged step is one plain line instead.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping, TextIO

import tqdm

from vljepa_jax.train import tensorboard
from vljepa_jax.train import wandb_log

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# The metrics shown on the terminal, in this order.
SHOWN_METRICS = ("loss", "learning_rate", "grad_norm", "samples_per_second")


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


class _Terminal:
  """A tqdm bar with messages printed above it on a terminal; plain lines (no bar) anywhere else."""

  def __init__(self, stream: TextIO, *, stage: str, total_steps: int, start_step: int):
    self._stream = stream
    self._stage = stage
    self._total = total_steps
    self.is_tty = hasattr(stream, "isatty") and stream.isatty()
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=f"[{stage}]", unit="step", file=stream,
                          dynamic_ncols=True) if self.is_tty else None

  def progress(self, step: int, shown: str | None = None) -> None:
    if self._bar is None:
      return
    if shown is not None:
      self._bar.set_postfix_str(shown, refresh=False)
    self._bar.update(step - self._bar.n)

  def log_line(self, step: int, shown: str) -> None:
    if self._bar is None:
      print(f"[{self._stage}] step {step}/{self._total} {shown}", file=self._stream, flush=True)
    else:
      self.progress(step, shown)
      self._bar.refresh()

  def message(self, text: str) -> None:
    if self._bar is None:
      print(text, file=self._stream, flush=True)
    else:
      self._bar.write(text, file=self._stream)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class MetricsLogger:
  """`log(step, metrics)` to JSONL, TensorBoard, W&B and the terminal; `progress(step)` for the bar.

  `wandb_config` is `config.wandb` (no W&B run when its `project` is empty) and `run_config` the
  stage's config, recorded with the W&B run.
  """

  def __init__(self, workdir: str, *, total_steps: int, stage: str, enabled: bool = True,
               resume_step: int = 0, stream: TextIO | None = None,
               wandb_config: Mapping[str, Any] | None = None, run_config: Mapping[str, Any] | None = None):
    if wandb_config is not None:
      wandb_log.check_config(wandb_config)  # on every process, so that all of them stop together
    self.enabled = enabled
    if not enabled:
      return
    self._terminal = _Terminal(stream or sys.stdout, stage=stage, total_steps=total_steps,
                               start_step=resume_step)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    truncate_jsonl(path, resume_step)
    self._jsonl = open(path, "a")
    self._tb = tensorboard.ScalarWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                        purge_step=resume_step + 1 if resume_step else None)
    self._wandb = None
    if wandb_config is not None and wandb_config.get("project"):
      self._wandb = wandb_log.WandbRun(wandb_config, workdir=workdir, stage=stage, resume_step=resume_step,
                                       run_config=run_config)

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    step = int(step)
    values = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
    record = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    # TensorBoard and W&B take NaN and inf as they are (JSON cannot, so the JSONL has them as strings).
    scalars = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    self._tb.write(step, scalars)
    if self._wandb is not None:
      self._wandb.log(step, scalars)
    self._terminal.log_line(step, " ".join(f"{k}={_format_value(record[k])}" for k in SHOWN_METRICS if k in record))

  def progress(self, step: int) -> None:
    """Moves the terminal bar (a no-op off a terminal, where `log` prints lines instead)."""
    if self.enabled:
      self._terminal.progress(step)

  def message(self, text: str) -> None:
    """A line of its own (above the progress bar on a terminal)."""
    if self.enabled:
      self._terminal.message(text)

  def close(self) -> None:
    """Flushes and closes everything; a second call does nothing."""
    if not self.enabled:
      return
    self.enabled = False
    self._terminal.close()
    self._jsonl.close()
    self._tb.close()
    if self._wandb is not None:
      self._wandb.close()


def _json_value(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible as strings
  return value
