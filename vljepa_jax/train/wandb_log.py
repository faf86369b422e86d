"""The optional Weights & Biases run of a training stage, set by `config.wandb`.

`config.wandb.project = ""` (the default) turns it off. Otherwise process 0 opens one W&B run per
stage and logs the same scalars at the same steps as TensorBoard:

  * group `config.wandb.group` ("" = the name of the run's workdir), run name `<group>/<stage>`,
    job type the stage name, and the stage's full config as the run's config;
  * `config.wandb.mode`: "online", "offline" or "disabled" ("" = wandb's own choice: the
    `WANDB_MODE` environment variable, else online); `config.wandb.entity` ("" = your default);
  * wandb's local files go to `<workdir>/<stage>/wandb`.

wandb is an optional dependency (`pip install 'vljepa-jax[wandb]'`); `check_config` raises when a
config needs it and it is missing, so that this fails before anything is built or compiled.

Resuming: the run's id is kept in `<workdir>/<stage>/wandb_run_id`, so a stage resumed from a
checkpoint continues the same W&B run, and a stage started from scratch gets a new one. W&B keeps a
run's steps strictly increasing: steps that the interrupted process had already logged past the
checkpoint it resumes from are not sent again (the resumed run recomputes the same losses from the
same checkpoint and data state; only the timing metrics differ).
"""
from __future__ import annotations

import importlib.util
import os
import uuid
from typing import Any, Mapping

RUN_ID_FILE = "wandb_run_id"
MODES = ("", "online", "offline", "disabled")
EXTRA = "pip install 'vljepa-jax[wandb]'"


def check_config(wandb_config: Mapping[str, Any]) -> None:
  """Raises on a bad `config.wandb`, or when it asks for W&B and wandb is not installed."""
  for key in ("project", "entity", "group", "mode"):
    value = wandb_config.get(key, "")
    if not isinstance(value, str):
      raise TypeError(f"config.wandb.{key} must be a string, got {value!r}")
  if wandb_config.get("mode", "") not in MODES:
    raise ValueError(f"config.wandb.mode={wandb_config['mode']!r}: expected one of {list(MODES)} "
                     "('' leaves it to wandb: WANDB_MODE, else online)")
  if wandb_config.get("project") and importlib.util.find_spec("wandb") is None:
    raise ImportError(f"config.wandb.project={wandb_config['project']!r} logs to Weights & Biases, but wandb is "
                      f"not installed: {EXTRA} (or set config.wandb.project='' to turn it off)")


def _run_id(workdir: str, resume_step: int) -> str:
  """The id of the interrupted run when resuming; otherwise a new one (remembered for a later resume)."""
  path = os.path.join(workdir, RUN_ID_FILE)
  if resume_step > 0 and os.path.exists(path):
    with open(path) as f:
      run_id = f.read().strip()
    if run_id:
      return run_id
  run_id = uuid.uuid4().hex[:16]
  with open(path, "w") as f:
    f.write(run_id + "\n")
  return run_id


class WandbRun:
  """One stage's W&B run: `log(step, scalars)` and `close()`."""

  def __init__(self, wandb_config: Mapping[str, Any], *, workdir: str, stage: str, resume_step: int,
               run_config: Mapping[str, Any] | None = None):
    check_config(wandb_config)
    import wandb  # pylint: disable=g-import-not-at-top  (optional dependency, checked above)
    workdir = os.path.abspath(workdir)
    group = wandb_config.get("group") or os.path.basename(os.path.dirname(workdir))
    self.run = wandb.init(
        project=wandb_config["project"], entity=wandb_config.get("entity") or None,
        mode=wandb_config.get("mode") or None, group=group, name=f"{group}/{stage}", job_type=stage,
        id=_run_id(workdir, resume_step), resume="allow", dir=workdir, config=dict(run_config or {}))
    # The first step this run has not logged yet (past steps of the interrupted run on a resume).
    self._next_step = self.run.step

  def log(self, step: int, scalars: Mapping[str, float]) -> None:
    if step < self._next_step or not scalars:
      return
    self.run.log(dict(scalars), step=step)
    self._next_step = step + 1

  def close(self) -> None:
    if self.run is not None:
      self.run.finish()
      self.run = None
