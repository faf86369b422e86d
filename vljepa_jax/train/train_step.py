"""The VL-JEPA train step: one jitted, sharded, donated function from (state, batch) to state.

  loss, grads = objective.loss_and_grads(model, params, batch)    e.g. InfoNCE of (Ŝ_Y, S_Y)
  grads       -> optimizer (frozen groups get no update) -> new params

The objective (`vljepa_jax/objectives/`, chosen by `config.objective`) owns the loss, how a batch
splits into microbatches without changing it, its own parameters (`params["objective"]`) and the
metrics it adds; the step is the same for every objective.

A non-finite loss or gradient norm leaves params and optimizer state untouched, counts the step
in `nonfinite_streak` / `nonfinite_total` (the trainer stops after too long a streak), and still
advances `step`, so the data stream and the checkpoint schedule move on.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vljepa_jax import trace_guard
from vljepa_jax.data import global_batch
from vljepa_jax.objectives import base as objectives_base

TEXT_INPUTS = ("query_ids", "query_mask", "target_ids", "target_mask")
# The model's arguments; its `video` is a clip or, from a feature cache, the X-encoder's tokens.
MODEL_INPUTS = ("video",) + TEXT_INPUTS
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  nonfinite_streak: jax.Array  # int32: consecutive skipped steps
  nonfinite_total: jax.Array  # int32: all skipped steps
  # Raw key data (uint32), so checkpoints hold a plain array. Randomness a step needs comes from
  # `step_rng`, a pure function of this and the step: a resumed run draws the same numbers.
  rng: jax.Array

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array | None = None) -> "TrainState":
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated leaf by leaf
    rng = jax.random.key(0) if rng is None else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.key_data(rng)
    return cls(step=zero(), params=params, opt_state=tx.init(params), nonfinite_streak=zero(),
               nonfinite_total=zero(), rng=rng)

  def step_rng(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def batch_inputs(batch: Batch) -> dict[str, Any]:
  """The fields of a pipeline batch the step reads: its visual field (`video`, or `visual_tokens`
  from a feature cache) and the tokenised texts."""
  fields = (global_batch.visual_field(batch),) + TEXT_INPUTS
  missing = [k for k in fields if k not in batch]
  if missing:
    raise KeyError(f"batch lacks {missing}; the pipeline needs query and target tokenizers")
  return {k: batch[k] for k in fields}


def model_inputs(batch: Batch) -> dict[str, jax.Array]:
  """The model's keyword arguments from a pipeline batch (uint8 video is normalised here; cached
  X-encoder tokens go in as the model's `video`, which then skips the X-encoder)."""
  inputs = batch_inputs(batch)
  visual = global_batch.prepare_visual(inputs.pop(global_batch.visual_field(inputs)))
  return {"video": visual, **inputs}  # in MODEL_INPUTS order: objectives may pass them positionally


def apply_updates_and_norm(params: Any, updates: Any, measured: list[bool]) -> tuple[Any, jax.Array]:
  """`optax.apply_updates(params, updates)`, and the global norm of the updates of the `measured` leaves.

  Each measured parameter's new value is made to depend on its update's sum of squares (it adds
  `0 * sum`, exactly zero for a finite sum; an update so large that the sum overflows would turn
  the parameter into NaN, which the next step's finiteness check reports). Why: with weight decay
  the update reads the parameter, so the old value has two readers, the norm and the new value,
  which XLA does not order. Not knowing that the norm has read the old value before the new one is
  written over it in place (the state is donated), XLA gave every such parameter a fresh buffer
  and copied it back after the update: 69 copies per step on the demo, 212 on `small`. The update
  alone, with `optimizer.clip_by_global_norm` (`benchmarks/optimizer_update.py`): 19.2 → 17.3 ms
  on the demo, 161.6 → 138.3 ms on `small` (`benchmarks/README.md`, issue 13, eighth pass).
  """
  leaves, treedef = jax.tree.flatten(params)
  update_leaves = treedef.flatten_up_to(updates)
  if len(measured) != len(leaves):
    raise ValueError(f"measured has {len(measured)} entries for {len(leaves)} parameter leaves")
  new_leaves, sum_of_squares = [], []
  for p, u, m in zip(leaves, update_leaves, measured):
    if m:
      square_sum = jnp.sum(jnp.square(u))
      sum_of_squares.append(square_sum)
      u = u + (square_sum * 0).astype(u.dtype)
    new_leaves.append(jnp.asarray(p + u).astype(p.dtype))
  norm = jnp.sqrt(sum(sum_of_squares)) if sum_of_squares else jnp.zeros((), jnp.float32)
  return jax.tree.unflatten(treedef, new_leaves), norm


def optimizer_update(tx: optax.GradientTransformation, params: Any, opt_state: Any, grads: Any, finite: jax.Array,
                     frozen: Any = None) -> tuple[Any, Any, jax.Array]:
  """The step's update: `(params, opt_state, update_norm)` after `tx`, or unchanged (norm 0) unless `finite`.

  A branch, not `where(finite, new, old)` over every parameter and moment: the skipped update is
  never computed, and the taken one costs no extra pass over the state (which on CPU was a tenth
  of the demo's step). `update_norm` covers the parameters that are not `frozen`.
  """
  measured = [True] * len(jax.tree.leaves(params)) if frozen is None else [not f for f in jax.tree.leaves(frozen)]

  def update(operand):
    params, opt_state, grads = operand
    updates, opt_state = tx.update(grads, opt_state, params)
    params, update_norm = apply_updates_and_norm(params, updates, measured)
    return params, opt_state, update_norm

  def skip(operand):
    params, opt_state, _ = operand
    return params, opt_state, jnp.zeros((), jnp.float32)

  return jax.lax.cond(finite, update, skip, (params, opt_state, grads))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, objective: objectives_base.Objective, *,
                    num_microbatches: int = 1, rules: Any = None, frozen: Any = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The un-jitted step; `jit_train_step` compiles it with shardings and donation.

  `objective`: what is minimised (`objectives.registry.make_objective`); with `num_microbatches > 1`
  it accumulates over microbatches in its own loss-preserving way (GradCache for contrastive).

  `rules` (logical-axis rules) are active while the step is traced, so the models' activation
  sharding constraints resolve against the mesh `jit_train_step` makes ambient.

  `frozen`: a tree of bools shaped like the params (True = never updated, e.g. the optimizer's
  multiplier-0 groups). Frozen parameters enter the model through `stop_gradient`, so XLA drops
  the backward pass of a tower that is frozen end to end instead of computing gradients the
  optimizer would throw away (a frozen Y-encoder then costs only its forward pass).
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  if not isinstance(objective, objectives_base.Objective):
    raise TypeError(f"objective must be an objectives.base.Objective (e.g. contrastive.Contrastive(loss_fn)), "
                    f"got {type(objective).__name__}")

  def trainable_leaves(tree):
    if frozen is None:
      return jax.tree.leaves(tree)
    return [leaf for leaf, f in zip(jax.tree.leaves(tree), jax.tree.leaves(frozen)) if not f]

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    with nn.logical_axis_rules(rules or ()):
      loss, grads = objective.loss_and_grads(model, state.params, model_inputs(batch), frozen=frozen,
                                             num_microbatches=num_microbatches)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state, update_norm = optimizer_update(tx, state.params, state.opt_state, grads, finite, frozen)
    streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, nonfinite_streak=streak,
                           nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32), rng=state.rng)
    # Norms of what training moves: frozen parameters never change, and reading a frozen tower every
    # step (the demo's Y-encoder is 4x its trainable parameters) would cost a pass over it.
    metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(trainable_leaves(params)),
               "update_norm": update_norm, "finite": finite, **objective.metrics(new_state.params)}
    return new_state, metrics

  return step


def jit_train_step(step: Callable, *, mesh: jax.sharding.Mesh | None = None, state_shardings: Any = None,
                   batch_shardings: Any = None) -> Callable:
  """`jax.jit` with explicit shardings (replicated metrics) and the state donated.

  Calls run under `jax.set_mesh(mesh)` (it cannot be entered inside `jit`), which the models'
  logical activation constraints need to resolve.
  """
  step = trace_guard.at_most(1, step)  # one trace per call of this function: a retrace (a recompile) raises
  if state_shardings is None:
    jitted = jax.jit(step, donate_argnums=(0,))
  else:
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None),
                     donate_argnums=(0,))
  if mesh is None:
    return jitted

  def call(state, batch):
    with jax.set_mesh(mesh):
      return jitted(state, batch)

  call.jitted = jitted  # for inspection (compile counts, lowering)
  return call
