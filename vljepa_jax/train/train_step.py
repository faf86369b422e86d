"""The VL-JEPA train step: one jitted, sharded, donated function from (state, batch) to state.

  pred, target = VLJEPA(video, query, target text)      Ŝ_Y and S_Y for the whole global batch
  loss         = loss_fn(pred, target)                  InfoNCE couples every row with every other
  grads        -> optimizer (frozen groups get no update) -> new params

Gradient accumulation cannot simply average microbatch gradients here: a contrastive loss over
microbatches would see only the negatives inside each one. With `num_microbatches > 1` the step
follows GradCache (Gao et al., arXiv 2101.06983) instead: embed every microbatch without keeping
activations, take the loss and its gradient with respect to the embeddings of the *whole* batch,
then re-run each microbatch and pull that embedding gradient back through the towers. The result
equals the full-batch gradient; peak activation memory is one microbatch's.

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

from vljepa_jax.data import global_batch

MODEL_INPUTS = ("video", "query_ids", "query_mask", "target_ids", "target_mask")
# The loss's own trainable parameters (a learnable temperature) sit beside the model's under this key.
LOSS_PARAMS = "loss"
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


def model_inputs(batch: Batch) -> dict[str, jax.Array]:
  """The model's keyword arguments from a pipeline batch (uint8 video is normalised here)."""
  missing = [k for k in MODEL_INPUTS if k not in batch]
  if missing:
    raise KeyError(f"batch lacks {missing}; the pipeline needs query and target tokenizers")
  inputs = {k: batch[k] for k in MODEL_INPUTS}
  inputs["video"] = global_batch.normalize_video(inputs["video"])
  return inputs


def model_params(params: Any) -> Any:
  """The model's part of the trained parameters (everything but `params["loss"]`)."""
  return {k: v for k, v in params.items() if k != LOSS_PARAMS}


def _split_microbatches(batch: Batch, num_microbatches: int) -> dict[str, jax.Array]:
  """(N, ...) -> (M, N/M, ...), microbatch m taking every M-th row.

  Strided rather than contiguous rows, so each microbatch draws equally from every device's
  shard of a batch-sharded array instead of living on a few devices.
  """
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch {x.shape[0]} does not split into {num_microbatches} microbatches")
    return jnp.moveaxis(x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:]), 1, 0)
  return {k: split(v) for k, v in batch.items()}


def _flatten_microbatches(x: jax.Array) -> jax.Array:
  return x.reshape((-1,) + x.shape[2:])


def _model_variables(params: Any, frozen: Any) -> dict[str, Any]:
  """The model's variables from the train state's params; frozen ones enter through `stop_gradient`."""
  if frozen is not None:
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
  return {"params": model_params(params)}


def contrastive_loss(model: nn.Module, loss_fn: Callable, frozen: Any = None) -> Callable[[Any, Batch], jax.Array]:
  """`loss(params, inputs) -> scalar`: the contrastive objective on one batch of model inputs.

  What the train step differentiates when the batch is not split into microbatches; benchmarks
  and profiles time it alone (forward) and under `jax.value_and_grad` (forward + backward).
  """
  def loss(params, inputs):
    pred, target = model.apply(_model_variables(params, frozen), **inputs)
    return loss_fn(pred, target, params.get(LOSS_PARAMS))
  return loss


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None, *, num_microbatches: int = 1,
                    rules: Any = None, frozen: Any = None, objective: str = "contrastive",
                    decoder_condition: str = "target"
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The un-jitted step; `jit_train_step` compiles it with shardings and donation.

  `rules` (logical-axis rules) are active while the step is traced, so the models' activation
  sharding constraints resolve against the mesh `jit_train_step` makes ambient.

  `frozen`: a tree of bools shaped like the params (True = never updated, e.g. the optimizer's
  multiplier-0 groups). Frozen parameters enter the model through `stop_gradient`, so XLA drops
  the backward pass of a tower that is frozen end to end instead of computing gradients the
  optimizer would throw away (a frozen Y-encoder then costs only its forward pass).

  `objective="y_decoder"` trains the Y-decoder by teacher forcing instead (`loss_fn` is unused):
  the loss is the mean next-token cross-entropy of the target text given an embedding
  (`decoder_condition`: "target" = S_Y, "predictor" = Ŝ_Y; see `VLJEPA.y_decoder_loss`). It is a
  mean over tokens, so microbatches simply add their token-loss sums, gradients and token counts.
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  if objective not in ("contrastive", "y_decoder"):
    raise ValueError(f"objective must be 'contrastive' or 'y_decoder', got {objective!r}")
  if decoder_condition not in ("target", "predictor"):
    raise ValueError(f"decoder_condition must be 'target' or 'predictor', got {decoder_condition!r}")

  def embed(params, inputs):
    return model.apply(_model_variables(params, frozen), **inputs)

  def token_loss_and_grads(params, inputs):
    def loss_sum(p, mb):
      return model.apply(_model_variables(p, frozen), **mb, condition=decoder_condition, method="y_decoder_loss")

    def accumulate(carry, mb):
      grads, total, count = carry
      (mb_total, mb_count), mb_grads = jax.value_and_grad(loss_sum, has_aux=True)(params, mb)
      return (jax.tree.map(jnp.add, grads, mb_grads), total + mb_total, count + mb_count), None

    zero = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, total, count), _ = jax.lax.scan(accumulate, zero, _split_microbatches(inputs, num_microbatches))
    count = jnp.maximum(count, 1.0)
    return total / count, jax.tree.map(lambda g: g / count, grads)

  def loss_and_grads(params, inputs):
    if objective == "y_decoder":
      return token_loss_and_grads(params, inputs)
    if num_microbatches == 1:
      return jax.value_and_grad(contrastive_loss(model, loss_fn, frozen))(params, inputs)
    micro = _split_microbatches(inputs, num_microbatches)
    preds, targets = jax.lax.map(lambda mb: embed(params, mb), micro)  # (M, N/M, D) each
    # InfoNCE is invariant to permuting pred and target rows together, so microbatch-major order is fine.
    loss, (d_preds, d_targets, d_loss_params) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
        _flatten_microbatches(preds), _flatten_microbatches(targets), params.get(LOSS_PARAMS, {}))

    def pull_back(grads, xs):
      mb, d_pred, d_target = xs
      _, vjp = jax.vjp(lambda p: embed(p, mb), params)
      (mb_grads,) = vjp((d_pred.reshape(preds.shape[1:]), d_target.reshape(targets.shape[1:])))
      return jax.tree.map(jnp.add, grads, mb_grads), None

    d_preds = d_preds.reshape(preds.shape)
    d_targets = d_targets.reshape(targets.shape)
    grads, _ = jax.lax.scan(pull_back, jax.tree.map(jnp.zeros_like, params), (micro, d_preds, d_targets))
    if LOSS_PARAMS in params:
      grads = {**grads, LOSS_PARAMS: d_loss_params}
    return loss, grads

  def trainable_leaves(tree):
    if frozen is None:
      return jax.tree.leaves(tree)
    return [leaf for leaf, f in zip(jax.tree.leaves(tree), jax.tree.leaves(frozen)) if not f]

  def update(operand):
    params, opt_state, grads = operand
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(trainable_leaves(updates))

  def skip(operand):
    params, opt_state, _ = operand
    return params, opt_state, jnp.zeros((), jnp.float32)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    with nn.logical_axis_rules(rules or ()):
      loss, grads = loss_and_grads(state.params, model_inputs(batch))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A branch, not `where(finite, new, old)` over every parameter and moment: the skipped update
    # is never computed, and the taken one costs no extra pass over the state (which on CPU was a
    # tenth of the demo's step).
    params, opt_state, update_norm = jax.lax.cond(finite, update, skip, (state.params, state.opt_state, grads))
    streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, nonfinite_streak=streak,
                           nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32), rng=state.rng)
    # Norms of what training moves: frozen parameters never change, and reading a frozen tower every
    # step (the demo's Y-encoder is 4x its trainable parameters) would cost a pass over it.
    metrics = {"loss": loss, "grad_norm": grad_norm, "param_norm": optax.tree.norm(trainable_leaves(params)),
               "update_norm": update_norm, "finite": finite}
    if LOSS_PARAMS in new_state.params and hasattr(loss_fn, "current_temperature"):
      metrics["temperature"] = loss_fn.current_temperature(new_state.params[LOSS_PARAMS])
    return new_state, metrics

  return step


def jit_train_step(step: Callable, *, mesh: jax.sharding.Mesh | None = None, state_shardings: Any = None,
                   batch_shardings: Any = None) -> Callable:
  """`jax.jit` with explicit shardings (replicated metrics) and the state donated.

  Calls run under `jax.set_mesh(mesh)` (it cannot be entered inside `jit`), which the models'
  logical activation constraints need to resolve.
  """
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
