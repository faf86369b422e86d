"""Running `config.evals` on trained parameters: after training, every N steps, or over saved checkpoints.

    evaluators = Evaluation(config, setup, mesh)            built (and later compiled) once
    evaluators.run(params, step=..., stage=..., ...)        every task, recorded in eval_results.json
    sweep(config, workdir, steps=None)                      every saved checkpoint of every stage

A sweep (`python -m vljepa_jax.main --mode=eval`) walks the checkpoints of each stage in
`config.stage_order` in step order, restores only their parameters (laid out with the training
shardings, so nothing recompiles between checkpoints), runs the tasks the results file does not
hold yet for that step, and writes the markdown/CSV tables and PNG plots. Steps are global: a
stage's steps are offset by the total steps of the stages before it.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vljepa_jax.eval import evaluator as evaluator_lib
from vljepa_jax.eval import likelihood
from vljepa_jax.eval import predictions as predictions_lib
from vljepa_jax.eval import results as results_lib
from vljepa_jax.models import token_vlm
from vljepa_jax.train import checkpointing
from vljepa_jax.train import model_setup
from vljepa_jax.train import param_layout as param_layout_lib
from vljepa_jax.train import sharding
from vljepa_jax.train import stages as stages_lib

# The stage name results are recorded under when a sweep evaluates `init.checkpoint` (nothing trained in the workdir).
INIT_STAGE = "init"
# Data settings the evaluators inherit from the training stage unless their own `data` overrides them.
INHERITED_DATA = ("num_frames", "crop_size", "short_side", "frame_sampling", "query_length", "target_length",
                  "video_dtype", "default_query", "num_threads")


def prediction_functions(model: Any, *, mesh: jax.sharding.Mesh | None, rules: Any, batch_size: int) -> Any:
  """What the evaluators call on `model` (`eval/predictions.py`): VL-JEPA's embeddings, or the token
  baseline's likelihoods (`eval/likelihood.py`)."""
  if isinstance(model, token_vlm.TokenVLM):
    return likelihood.LikelihoodPredictions(model, mesh=mesh, rules=rules, pair_batch_size=batch_size)
  return predictions_lib.EmbeddingPredictions(model, mesh=mesh, rules=rules, text_batch_size=batch_size)


class Evaluation:
  """The configured evaluators, built once; `run` evaluates one set of parameters and records it."""

  def __init__(self, config: ml_collections.ConfigDict, setup: model_setup.ModelSetup, mesh: jax.sharding.Mesh,
               workdir: str | None = None):
    self.workdir = workdir
    rules = sharding.logical_rules(config.sharding_rules)
    self.predictions = prediction_functions(setup.model, mesh=mesh, rules=rules, batch_size=config.eval_batch_size)
    context = evaluator_lib.EvalContext(
        query_tokenizer=setup.query_tokenizer, target_tokenizer=setup.target_tokenizer,
        data_defaults={k: config.data[k] for k in INHERITED_DATA}, mesh=mesh, workdir=workdir)
    self.evaluators = evaluator_lib.make_evaluators({name: dict(config.evals[name]) for name in config.evals},
                                                    self.predictions, context)

  def __bool__(self) -> bool:
    return bool(self.evaluators)

  def run(self, params: Any, *, step: int | None = None, stage: str = "", stage_step: int = 0,
          skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Every evaluator not in `skip` on `params`; with a workdir and a step each result is recorded as it comes."""
    record = self.workdir is not None and step is not None and jax.process_index() == 0
    out = {}
    for name, ev in self.evaluators.items():
      if name in skip:
        continue
      start = time.time()
      out[name] = ev.run(params)
      logging.info("eval %s at step %s: %s (%.1fs)", name, step, out[name], time.time() - start)
      if record:
        results_lib.record(self.workdir, step, stage=stage, stage_step=stage_step, task=name, metrics=out[name])
    return out


  def run_missing(self, params: Any, *, step: int, stage: str, stage_step: int) -> dict[str, dict[str, Any]]:
    """The tasks `eval_results.json` does not hold yet at `step`; every process agrees on which.

    Process 0 reads the file and broadcasts, so hosts without a shared workdir still run the same
    collectives.
    """
    done = results_lib.done_tasks(results_lib.load(self.workdir), step) if jax.process_index() == 0 else set()
    names = list(self.evaluators)
    flags = np.array([name in done for name in names], np.int32)
    if jax.process_count() > 1:
      flags = np.asarray(multihost_utils.broadcast_one_to_all(flags))
    return self.run(params, step=step, stage=stage, stage_step=stage_step,
                    skip={name for name, flag in zip(names, flags) if flag})


def checkpoint_steps(stage_workdir: str) -> list[int]:
  directory = os.path.join(stage_workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def sweep(config: ml_collections.ConfigDict, workdir: str, steps: Sequence[int] | None = None,
          *, plots: bool = True) -> results_lib.Results:
  """Evaluates the saved checkpoints of every stage (or those at the given global `steps`)."""
  stages = stages_lib.resolve(config)
  offsets = stages_lib.stage_offsets(config)
  final_config = stages[-1][1]
  if not final_config.evals:
    raise ValueError("config.evals is empty: nothing to evaluate")
  todo = []  # (global step, stage, stage step, stage config, the stage's workdir)
  for name, stage_config in stages:
    for stage_step in checkpoint_steps(os.path.join(workdir, name)):
      global_step = offsets[name] + stage_step
      if steps is None or global_step in steps:
        todo.append((global_step, name, stage_step, stage_config, os.path.join(workdir, name)))
  init = final_config.init.checkpoint
  if not todo and steps is None and init:
    init = model_setup.local_init_checkpoint(init, workdir)  # a Hub repo id: converted once
    # Nothing trained here: evaluate the run `init.checkpoint` names (its newest checkpoint), at step 0.
    directory = checkpointing.checkpoints_dir(os.path.abspath(init))
    if os.path.isfile(os.path.join(init, checkpointing.CONVERTED_METADATA)):  # a converted whole model
      init_steps = [0]
    else:
      init_steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
    if not init_steps:
      raise FileNotFoundError(f"config.init.checkpoint={init!r}: no training checkpoints there (expected a stage "
                              "workdir such as <workdir>/video32, or its checkpoints/ folder)")
    todo.append((0, INIT_STAGE, init_steps[-1], final_config, init))
  if steps is not None:
    missing = sorted(set(steps) - {t[0] for t in todo})
    if missing:
      available = sorted(offsets[n] + s for n, _ in stages for s in checkpoint_steps(os.path.join(workdir, n)))
      raise ValueError(f"no checkpoint at global step(s) {missing} in {workdir}; available: {available}")
  if not todo:
    raise FileNotFoundError(f"no checkpoints under {workdir}/<stage>/checkpoints for stages "
                            f"{[n for n, _ in stages]}; train first, point --workdir at a training run, or "
                            "name a trained or converted run with --config.init.checkpoint")
  mesh = sharding.make_mesh(dict(config.mesh))
  setup = model_setup.build(config, cache_dir=workdir)
  evaluation = Evaluation(final_config, setup, mesh, workdir)
  is_logger = jax.process_index() == 0
  layouts = {}
  for i, (global_step, name, stage_step, stage_config, stage_dir) in enumerate(todo):
    done = results_lib.done_tasks(results_lib.load(workdir), global_step)
    remaining = [t for t in evaluation.evaluators if t not in done]
    if is_logger:
      status = "done, skipped" if not remaining else f"evaluating {', '.join(remaining)}"
      print(f"[sweep {i + 1}/{len(todo)}] step {global_step} ({name}:{stage_step}): {status}", flush=True)
    if not remaining:  # a shared workdir is assumed here: every process reads the same file
      continue
    if name not in layouts:
      layouts[name] = param_layout_lib.param_layout(stage_config, setup, mesh)
    # A converted whole model may leave towers out (open-vljepa's X-encoder): config.init.<tower> supplies them.
    params, _ = checkpointing.restore_params(stage_dir, layouts[name], step=stage_step,
                                             supplied=setup.supplied_parts)
    params = model_setup.load_absent_towers(setup.checkpoints, params, layouts[name])
    evaluation.run_missing(params, step=global_step, stage=name, stage_step=stage_step)
  results = results_lib.load(workdir)
  if is_logger:
    paths = results_lib.write_reports(workdir, results, plots=plots)
    print("\n" + results_lib.markdown(results), flush=True)
    print("wrote " + ", ".join(paths), flush=True)
  return results
