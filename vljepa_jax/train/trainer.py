"""The training run: stages of sharded, checkpointed, resumable VL-JEPA training, then evaluation.

    run(config, workdir)   every stage in `config.stage_order`, then `config.evals`

Per stage (`<workdir>/<stage>/`):
  1. The mesh and logical-axis rules come from the config; parameters and optimizer state are
     created already sharded (`jax.jit(init, out_shardings=...)` over `jax.eval_shape`), then
     pretrained towers (`config.init`) or the previous stage's parameters are placed over them.
  2. If the stage has checkpoints, the newest readable one is restored with the data iterator's
     position, so re-running the same command continues exactly where it stopped.
  3. The loop feeds global batches to the jitted, donated train step. The host only waits on the
     device at log steps (to fetch metrics) and at checkpoint steps.
  4. SIGTERM (preemption) finishes the current step, saves, and exits with status 143. Too many
     consecutive non-finite steps stop the run with `NonFiniteError`, leaving the checkpoints as
     they were.

Only process 0 writes logs; every process takes part in checkpointing, as Orbax requires.
"""
from __future__ import annotations

import os
import re
import signal
import time
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vljepa_jax import host_memory
from vljepa_jax.data import global_batch
from vljepa_jax.data import pipeline
from vljepa_jax.eval import results as results_lib
from vljepa_jax.models import params as params_lib
from vljepa_jax.objectives import base as objectives_base
from vljepa_jax.objectives import registry as objectives_registry
from vljepa_jax.train import checkpointing
from vljepa_jax.train import config_base
from vljepa_jax.train import evaluation as evaluation_lib
from vljepa_jax.train import feature_check
from vljepa_jax.train import metrics_log
from vljepa_jax.train import model_setup
from vljepa_jax.train import optimizer as optimizer_lib
from vljepa_jax.train import param_layout as param_layout_lib
from vljepa_jax.train import sharding
from vljepa_jax.train import stages as stages_lib
from vljepa_jax.train import train_step as train_step_lib
from vljepa_jax.train import wandb_log

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a job that was told to stop


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


class Preempted(SystemExit):
  """Raised after a SIGTERM once the checkpoint is written; exits with `PREEMPTED_EXIT_CODE`."""

  def __init__(self):
    super().__init__(PREEMPTED_EXIT_CODE)


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop polls, so the step in flight finishes and gets saved."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int, log_every: int) -> bool:
    """Whether to save and exit after `step`.

    With several processes all must save the same step together, so they agree at log steps (one
    tiny all-gather, where the host syncs for metrics anyway) instead of each acting on its own.
    """
    if jax.process_count() == 1:
      return self.raised
    if step % log_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.raised))))


X_ENCODER = "x_encoder"  # the X-encoder's subtree in the parameters


def stage_lr_rules(config: ml_collections.ConfigDict, abstract_params: Any, objective: Any = None
                   ) -> tuple[tuple[str, float], ...]:
  """The optimizer's LR rules of a stage: `config.optimizer.lr_rules` for the run's predictor backbone, as the
  stage's objective adapts them."""
  objective = objective or objectives_registry.make_objective(config)
  configured = config_base.resolve_lr_rules(config.optimizer.lr_rules, config.model.predictor.backbone)
  if config.model.get("freeze_x_encoder", False):
    configured = frozen_x_encoder_rules(configured, abstract_params)
  return objective.lr_rules(configured, abstract_params)


def frozen_x_encoder_rules(rules: Sequence[tuple[str, float]], abstract_params: Any) -> tuple[tuple[str, float], ...]:
  """`rules` with the X-encoder at multiplier 0, as `model.freeze_x_encoder=True` means.

  Freezing only stops the X-encoder's gradient; without a zero learning rate AdamW's decoupled
  weight decay would still shrink its weights every step, so a "frozen" X-encoder would drift
  (and a feature cache written from it would go stale). A rule that gives it a non-zero rate
  contradicts the flag and fails, naming the rule.
  """
  frozen_rule = (f"{X_ENCODER}/.*", 0.0)
  # The optimizer's own first-match resolution, with the X-encoder's unmatched leaves at 0: any other
  # multiplier there is one a configured rule gives it.
  paths = [optimizer_lib.param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]]
  trained = []
  if any(p.startswith(f"{X_ENCODER}/") for p in paths):  # (a tree without one has nothing to check)
    multipliers = optimizer_lib.lr_multipliers(abstract_params, tuple(rules) + (frozen_rule,))
    trained = [p for p, m in zip(paths, jax.tree.leaves(multipliers)) if p.startswith(f"{X_ENCODER}/") and m != 0.0]
  if trained:
    pattern, multiplier = next((p, m) for p, m in rules if re.fullmatch(p, trained[0]))
    raise ValueError(f"model.freeze_x_encoder=True, but optimizer.lr_rules gives the X-encoder a learning rate: rule "
                     f"({pattern!r}, {multiplier}) matches {trained[0]!r}; drop the rule or set "
                     "model.freeze_x_encoder=False")
  return (frozen_rule,) + tuple((p, m) for p, m in rules if p != frozen_rule[0])


# A CPU step with at least this much temporary memory is waited for before the next is dispatched.
WAIT_TEMP_BYTES = 2**30


def on_cpu(mesh: jax.sharding.Mesh) -> bool:
  return all(device.platform == "cpu" for device in mesh.devices.flat)


def init_compiler_options(mesh: jax.sharding.Mesh) -> dict[str, int] | None:
  """XLA options for the random-init program: LLVM's optimisation level 1 (of 3) on a CPU.

  Threefry, JAX's default random bits, is unrolled into long straight-line code that XLA:CPU's LLVM
  spends most of the program's compile time optimising, for a program that runs once. At level 1
  the demo's init compiled in 8.1 s against 12.1 s and `small`'s in 14.2 s against 20.5 s, ran
  within 0.15 s of the default program, and gave bit-identical parameters (`benchmarks/
  init_compile.py`, 2-core AMD EPYC, jax 0.10.2; `tests/test_model_setup.py` checks the parameters
  against the default program's). Accelerators keep their defaults.
  """
  return {"xla_backend_optimization_level": 1} if on_cpu(mesh) else None


def waits_for_each_step(mesh: jax.sharding.Mesh, temp_bytes: int) -> bool:
  """Whether the loop waits for each step to finish before dispatching the next: on CPU devices, for
  a step with at least `WAIT_TEMP_BYTES` of temporaries (`temp_bytes`, from its compiled executable).

  XLA:CPU starts a queued step as soon as the running one's outputs are ready, before the running
  one has freed its temporaries, so a loop that runs ahead holds two steps' temporaries:
  `configs/small.py` in float32 at batch 32 (8.9 GiB of them) held 19.3 GiB of host memory
  instead of 10.7, and the step that first grew the heap took 21 s instead of 15 s (1.1 M page
  faults). Waiting costs the overlap of the next dispatch with the step: the demo's video step
  (242 MiB of temporaries) took 307 ms waited for against 294 ms run ahead. A step with a GiB of
  temporaries runs for seconds on a CPU, where that overlap is under 1% and the memory is not
  (`benchmarks/README.md`, "Fifth pass"). Accelerators keep running ahead.
  """
  return on_cpu(mesh) and temp_bytes >= WAIT_TEMP_BYTES


def temp_bytes_of(compiled: Any) -> int:
  """A compiled executable's temporaries in bytes (0 where the backend does not say)."""
  return getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0) or 0


def wait_temp_bytes(mesh: jax.sharding.Mesh, temp_bytes: int) -> int:
  """`run_step`'s `wait_temp_bytes` for a step with `temp_bytes` of temporaries: positive where the loop
  waits for it (`waits_for_each_step`), else 0."""
  return max(temp_bytes, 1) if waits_for_each_step(mesh, temp_bytes) else 0


def run_step(step_fn: Any, state: Any, inputs: Any, wait_temp_bytes: int = 0) -> tuple[Any, Any]:
  """One step of the training loop: `step_fn(state, inputs)`.

  With `wait_temp_bytes` (the step's temporaries, for a step `waits_for_each_step` says to wait
  for), returns only once the step has finished and its temporaries are back in the host heap:
  XLA:CPU frees them just after the outputs are ready, and a step dispatched in between would take
  a second block (`host_memory.wait_until_released`). Otherwise returns at once (the step runs
  ahead asynchronously).
  """
  if not wait_temp_bytes:
    return step_fn(state, inputs)
  in_use = host_memory.heap_in_use()
  state, metrics = step_fn(state, inputs)
  jax.block_until_ready(metrics)
  if not host_memory.wait_until_released(in_use, wait_temp_bytes):
    logging.warning("the step's %.1f GiB of temporaries were not back in the heap %.1f s after it finished; the next "
                    "step goes ahead", wait_temp_bytes / 2**30, host_memory.RELEASE_TIMEOUT_S)
  return state, metrics


class Stage:
  """One stage's model, optimizer, shardings and compiled step; `train()` runs its loop."""

  def __init__(self, config: ml_collections.ConfigDict, name: str, setup: model_setup.ModelSetup,
               mesh: jax.sharding.Mesh, workdir: str):
    self.config, self.name, self.setup, self.mesh, self.workdir = config, name, setup, mesh, workdir
    self.objective = objectives_registry.make_objective(config, mesh=mesh)
    self.rules = sharding.logical_rules(config.sharding_rules)
    self.data = pipeline.DataConfig.from_dict(config.data)
    model = setup.model
    layout = param_layout_lib.param_layout(config, setup, mesh, self.objective)
    self.abstract_params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), layout)
    self.param_shardings = jax.tree.map(lambda a: a.sharding, layout)
    opt = config.optimizer
    lr_rules = stage_lr_rules(config, self.abstract_params, self.objective)
    self.schedule_kwargs = dict(learning_rate=opt.learning_rate, schedule=opt.schedule, warmup_steps=opt.warmup_steps,
                                total_steps=config.total_steps, end_learning_rate_factor=opt.end_learning_rate_factor)
    try:
      self.tx, self.groups = optimizer_lib.make_optimizer(
          self.abstract_params, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
          grad_clip_norm=opt.grad_clip_norm or None, lr_rules=lr_rules, **self.schedule_kwargs)
    except ValueError as e:  # name where the values come from: a stage's overrides or the top level
      raise ValueError(f"stage {name!r}: {e} (config.optimizer.* and config.total_steps, or "
                       f"config.stages.{name}.*)") from None
    abstract_state = jax.eval_shape(lambda p: train_step_lib.TrainState.create(p, self.tx), self.abstract_params)
    self.state_shardings = sharding.train_state_shardings(self.tx, abstract_state, self.param_shardings, mesh)
    self.abstract_state = param_layout_lib.with_shardings(abstract_state, self.state_shardings)
    self.batch_sharding = global_batch.batch_sharding(mesh)
    frozen = jax.tree.map(lambda m: m == 0.0, optimizer_lib.lr_multipliers(self.abstract_params, lr_rules))
    self.frozen = frozen
    step = train_step_lib.make_train_step(model, self.tx, self.objective, num_microbatches=config.num_microbatches,
                                          rules=self.rules, frozen=frozen)
    self.step_fn = train_step_lib.jit_train_step(step, mesh=mesh, state_shardings=self.state_shardings,
                                                 batch_shardings=self.batch_sharding)

  def phase_fns(self):
    """`(forward, forward_backward)`: the objective's loss on the whole batch alone and with its gradients, jitted.

    `forward(params, batch) -> loss`, `forward_backward(params, batch) -> (loss, trainable grads)`, with the
    step's frozen parameters, logical rules and mesh; what benchmarks time to split a step into
    its phases.
    """
    loss = lambda params, inputs: self.objective.loss(self.setup.model, params, inputs, self.frozen)

    def in_context(fn):
      def call(params, batch):
        with nn.logical_axis_rules(self.rules):
          return fn(params, train_step_lib.model_inputs(batch))
      jitted = jax.jit(call)

      def run(params, batch):
        with jax.set_mesh(self.mesh):
          return jitted(params, batch)
      return run

    def loss_and_trainable_grads(params, inputs):
      # As in the step, frozen parameters get no gradient: leave their zeros out of the output.
      value, grads = jax.value_and_grad(loss)(params, inputs)
      return value, jax.tree.map(lambda g, f: None if f else g, grads, self.frozen)

    return in_context(loss), in_context(loss_and_trainable_grads)

  def init_state(self, init_params: Any | None) -> train_step_lib.TrainState:
    """A fresh state: random init, then pretrained towers or the previous stage's params on top."""
    params = self.init_params(init_params)
    rng = jax.random.key(self.config.seed)
    create = lambda p, key: train_step_lib.TrainState.create(p, self.tx, key)
    with jax.set_mesh(self.mesh):
      return jax.jit(create, out_shardings=self.state_shardings, donate_argnums=(0,))(
          params, jax.random.key_data(jax.random.fold_in(rng, 1)))

  def init_params(self, init_params: Any | None = None) -> Any:
    """The stage's starting parameters, laid out with its shardings: random init, then `init_params`
    (the previous stage's), `init.checkpoint`, or the pretrained towers of `init.*` on top."""
    layout = param_layout_lib.with_shardings(self.abstract_params, self.param_shardings)
    if init_params is None and self.config.init.checkpoint:
      # A Hub repo id was converted when the model was set up: this finds that folder.
      path = model_setup.local_init_checkpoint(self.config.init.checkpoint, self.setup.cache_dir)
      init_params, step = checkpointing.restore_params(path, layout, supplied=self.setup.supplied_parts)
      logging.info("[%s] parameters from %s (step %d)", self.name, path, step)
    if init_params is None:
      return model_setup.load_pretrained(self.setup.checkpoints, self.random_params(), self.param_shardings,
                                         self.setup.post_load)
    # Towers a converted whole model left out (open_vljepa's X-encoder) come from config.init.<tower>.
    init_params = model_setup.load_absent_towers(self.setup.checkpoints, init_params, layout)
    # Random values only for the parts `init_params` lacks (a tower this stage adds): a stage that
    # continues the previous one's whole model neither compiles nor runs the init program.
    random = self.random_params() if set(self.param_shardings) - set(init_params) else {}
    return jax.device_put({k: init_params[k] if k in init_params else random[k] for k in self.param_shardings},
                          self.param_shardings)

  def model_init(self) -> Any:
    """The model's random init as a function of a key: its unboxed parameters (the objective's not included)."""
    model = self.setup.model
    inputs = param_layout_lib.example_inputs(self.data)

    def init(rng):
      return params_lib.unbox(model.init(rng, *[jnp.zeros(x.shape, x.dtype) for x in inputs])["params"])

    return init

  def random_params(self) -> Any:
    """The model's random init (seed `config.seed`) and the objective's parameters, with the stage's shardings."""
    # The model's init is the same program whatever the objective (one compilation-cache entry); the
    # objective's few parameters are put beside its output.
    model_shardings = {k: v for k, v in self.param_shardings.items() if k != objectives_base.OBJECTIVE_PARAMS}
    with jax.set_mesh(self.mesh):
      params = jax.jit(self.model_init(), out_shardings=model_shardings,
                       compiler_options=init_compiler_options(self.mesh))(jax.random.key(self.config.seed))
    return jax.device_put(objectives_base.with_objective_params(params, self.objective.init_params()),
                          self.param_shardings)

  def make_iterator(self) -> pipeline.DataIterator:
    return pipeline.make_iterator(self.data, global_batch_size=self.config.batch_size,
                                  query_tokenizer=self.setup.query_tokenizer,
                                  target_tokenizer=self.setup.target_tokenizer)

  def train(self, init_params: Any | None = None, evaluation: evaluation_lib.Evaluation | None = None,
            step_offset: int = 0) -> Any:
    """Runs (or resumes, or skips if finished) the stage; returns its final params.

    With `evaluation` and `config.eval_every > 0` the evaluators run on the live parameters every
    `eval_every` steps and at the stage's last step, recorded at global step `step_offset + step`.
    """
    config = self.config
    total = config.total_steps
    log_every, checkpoint_every = config.log_every, config.checkpoint_every
    is_logger = jax.process_index() == 0
    os.makedirs(self.workdir, exist_ok=True)
    with checkpointing.Checkpointer(os.path.join(self.workdir, "checkpoints"), keep=config.keep_checkpoints,
                                    asynchronous=config.async_checkpointing) as ckpt:
      if (ckpt.latest_step() or 0) >= total:
        # A finished stage: only its parameters are needed (no data iterator, no optimizer state).
        try:
          params, step = checkpointing.restore_params(ckpt.directory, param_layout_lib.with_shardings(
              self.abstract_params, self.param_shardings), step=ckpt.latest_step())
          if is_logger:
            print(f"[{self.name}] already complete at step {step}/{total}", flush=True)
          return params
        except Exception as e:  # pylint: disable=broad-except
          logging.error("[%s] final checkpoint unreadable (%s); restoring the full state instead", self.name, e)
      iterator = self.make_iterator()
      restored = ckpt.restore_latest(self.abstract_state, iterator)
      if restored is None:
        iterator = self.make_iterator()  # a failed restore may have moved it
        state = self.init_state(init_params)
        start = 0
      else:
        state, meta = restored
        start = int(jax.device_get(state.step))
        logging.info("[%s] resumed from step %d (%s)", self.name, start, meta)
      if feature_check.check_feature_sources(self.data, self.setup.model, state.params, self.mesh, self.rules):
        logging.info("[%s] feature cache(s) match this run's X-encoder", self.name)
      logger = metrics_log.MetricsLogger(self.workdir, total_steps=total, stage=self.name, enabled=is_logger,
                                         resume_step=start, wandb_config=config.wandb, run_config=config.to_dict())
      if start >= total:  # the newest checkpoints were unreadable and an older one was finished too
        logger.message(f"[{self.name}] already complete at step {start}/{total}")
        logger.close()
        return state.params
      logger.message(self._describe(start))
      meta = {"stage": self.name, "total_steps": total}
      with _SigtermFlag() as sigterm:
        window_start, window_step = time.time(), start
        wait = None  # decided at the first step, from the compiled step
        for step in range(start, total):
          batch = next(iterator)
          inputs = global_batch.to_global_batch(train_step_lib.batch_inputs(batch), self.mesh)
          if wait is None:
            wait = self._wait_temp_bytes(state, inputs)
          state, metrics = run_step(self.step_fn, state, inputs, wait)
          done = step + 1
          if done % log_every == 0 or done == total:
            metrics = jax.block_until_ready(metrics)  # the window's time must include its compute
            record = self._metrics(metrics, state, iterator, done, time.time() - window_start, done - window_step)
            logger.log(done, record)
            window_start, window_step = time.time(), done
            self._check_finite(record)
          else:
            logger.progress(done)
          if done % checkpoint_every == 0 or done == total:
            self._check_finite({"nonfinite_streak": int(jax.device_get(state.nonfinite_streak))})
            ckpt.save(state, iterator, meta)
          if evaluation and config.eval_every and (done % config.eval_every == 0 or done == total):
            evaluation.run_missing(state.params, step=step_offset + done, stage=self.name, stage_step=done)
          if sigterm.should_stop(done, log_every):
            ckpt.save(state, iterator, meta)
            ckpt.wait()
            logger.message(f"[{self.name}] SIGTERM: saved a checkpoint at step {done}; exiting with "
                           f"status {PREEMPTED_EXIT_CODE} (re-run the same command to resume)")
            logger.close()
            raise Preempted()
      ckpt.wait()
      logger.close()
    return state.params

  def _wait_temp_bytes(self, state: Any, inputs: Any) -> int:
    """`run_step`'s `wait_temp_bytes` for this stage's step: its temporaries if the loop waits for it, else 0."""
    if not on_cpu(self.mesh):  # accelerators always run ahead: no need to look at the step
      return 0
    with jax.set_mesh(self.mesh):
      compiled = self.step_fn.jitted.lower(state, inputs).compile()  # the step's own compilation: the call reuses it
    temp_bytes = temp_bytes_of(compiled)
    wait = wait_temp_bytes(self.mesh, temp_bytes)
    if wait:
      logging.info("[%s] %.1f GiB of temporaries per step on CPU devices: each step finishes, and frees them, "
                   "before the next is dispatched (trainer.waits_for_each_step)", self.name, temp_bytes / 2**30)
    return wait

  def _describe(self, start: int) -> str:
    counts = ", ".join(f"{label} {n:,}" for label, n in self.groups.items())
    verb = "resuming at" if start else "starting at"
    return (f"[{self.name}] {verb} step {start}/{self.config.total_steps}, global batch {self.config.batch_size}, "
            f"mesh {dict(self.mesh.shape)}, parameter groups: {counts}")

  def _metrics(self, metrics: Any, state: Any, iterator: pipeline.DataIterator, step: int, seconds: float,
               steps: int) -> dict[str, Any]:
    fetched = jax.device_get({**metrics, "nonfinite_streak": state.nonfinite_streak,
                              "nonfinite_total": state.nonfinite_total})
    record = {k: (bool(v) if k == "finite" else v.item()) for k, v in fetched.items()}
    # The learning rate used by the step that just ran (optimizer step `step - 1`).
    record["learning_rate"] = optimizer_lib.learning_rate_at(step - 1, **self.schedule_kwargs)
    record["samples_per_second"] = steps * self.config.batch_size / max(seconds, 1e-9)
    stats = iterator.stats()
    record.update({f"data/{k}": v for k, v in stats.items()})
    return record

  def _check_finite(self, record: dict[str, Any]) -> None:
    streak = record["nonfinite_streak"]
    if streak >= self.config.max_nonfinite_steps:
      raise NonFiniteError(
          f"[{self.name}] {streak} consecutive steps had a non-finite loss or gradient norm (limit: "
          f"config.max_nonfinite_steps={self.config.max_nonfinite_steps}); their updates were skipped and the "
          f"checkpoints in {os.path.join(self.workdir, 'checkpoints')} are from before. Lower the learning rate, "
          "check the data, or raise the limit.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
  """All stages, then the evaluators; returns the final results (also in `<workdir>/eval_results.json`)."""
  stages = stages_lib.resolve(config)  # every stage's keys are checked before anything is built
  for _, stage_config in stages:
    pipeline.DataConfig.from_dict(stage_config.data)
    objectives_registry.make_objective(stage_config)
    wandb_log.check_config(stage_config.wandb)  # a missing extra fails here, not after the first compile
  mesh = sharding.make_mesh(dict(config.mesh))
  setup = model_setup.build(config, cache_dir=workdir)
  offsets = stages_lib.stage_offsets(config)
  last_name, final_config = stages[-1]
  # Built once for the whole run, so each evaluator compiles once however often it runs.
  evaluation = evaluation_lib.Evaluation(final_config, setup, mesh, workdir) if final_config.evals else None
  params = None
  for name, stage_config in stages:
    params = Stage(stage_config, name, setup, mesh, os.path.join(workdir, name)).train(
        init_params=params, evaluation=evaluation, step_offset=offsets[name])
  if not evaluation:
    return {}
  final_step = offsets[last_name] + int(final_config.total_steps)
  evaluation.run_missing(params, step=final_step, stage=last_name, stage_step=int(final_config.total_steps))
  if jax.process_index() != 0:
    return {}
  results = results_lib.load(workdir)
  tasks = results[final_step]["tasks"]
  paths = results_lib.write_reports(workdir, results)
  print(f"\nevaluation at step {final_step} ({last_name}:{final_config.total_steps}):\n"
        + results_lib.format_table(tasks), flush=True)
  print("\nwrote " + ", ".join([os.path.join(workdir, results_lib.RESULTS_FILE)] + paths), flush=True)
  return tasks
