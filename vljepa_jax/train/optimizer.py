"""The VL-JEPA optimizer: AdamW with per-parameter learning-rate multipliers set by path rules.

VL-JEPA trains the predictor and heads at the base learning rate, the Y-encoder (EmbeddingGemma)
at a fraction of it (x0.05 in the paper, 0 to 1 in its ablations), and keeps the X-encoder
(V-JEPA 2) and the predictor's Llama token-embedding table frozen. Which parameter gets which
multiplier is configuration, not code: an ordered list of `(regex, multiplier)` rules matched
against '/'-joined parameter paths, e.g.

    lr_rules = (("x_encoder/.*", 0.0), ("predictor/llama/embed_tokens/.*", 0.0), ("y_encoder/.*", 0.05))

(`config_base.PAPER_LR_RULES`; its `PREDICTOR_TOKEN_EMBEDDING` rule is resolved by the trainer to
the table of the run's predictor backbone, `predictor/llama/embed_tokens` for Llama.)

Parameters with the same multiplier form one group with its own AdamW. A multiplier of 0 means
frozen: that group gets `optax.set_to_zero()`, so frozen parameters carry no Adam moments (the
frozen X-encoder is a large share of the model; its moments would double its memory for nothing)
and never move.

Everything returned here is usable under `jax.jit`. The optimizer state of every trainable group
holds moments shaped like, and at the same tree paths as, the parameters (other groups' leaves are
empty `MaskedNode`s), so the parameter sharding rules place the state too.
"""
from __future__ import annotations

import difflib
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")
FROZEN_LABEL = "frozen"
_EXAMPLE_PATHS = 5  # How many near-miss paths an unmatched-rule error lists.


def param_path(path: Sequence[Any]) -> str:
  """A `jax.tree_util` key path as a string, e.g. "predictor/llama/layers_0/mlp/wi_gate/kernel".

  Dict keys are what Flax parameter trees use; attribute names (NamedTuple optimizer states) and
  sequence indices are joined the same way so optimizer-state paths print readably as well.
  """
  return "/".join(_key_name(key) for key in path)


def _key_name(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def _compile_rules(rules: Sequence[tuple[str, float]]) -> list[tuple[re.Pattern[str], float]]:
  """Validates the rules up front so a config typo fails before any compilation."""
  compiled = []
  for pattern, multiplier in rules:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"lr rule {pattern!r} is not a valid regex: {e}") from e
    multiplier = float(multiplier)
    if not math.isfinite(multiplier) or multiplier < 0:
      raise ValueError(f"lr rule {pattern!r} has multiplier {multiplier}; it must be finite and >= 0 "
                       "(0 freezes the matched parameters)")
    compiled.append((regex, multiplier))
  return compiled


def lr_multipliers(params: Any, rules: Sequence[tuple[str, float]]) -> Any:
  """Each parameter's learning-rate multiplier, as a tree shaped like `params`.

  Args:
    params: a parameter tree (nested dicts of arrays, or anything with `.shape`).
    rules: `(regex, multiplier)` pairs. A regex must match the whole `param_path`; the first
      matching rule wins, so put specific rules before general ones. Parameters no rule matches
      get 1.0. A multiplier of 0.0 freezes the parameter.

  Returns:
    A tree of Python floats with the structure of `params`.

  Raises:
    ValueError: a regex is invalid, a multiplier is negative or not finite, or a rule matches no
      parameter at all (almost always a misspelt path in the config; the error lists the paths
      closest to the rule).
  """
  compiled = _compile_rules(rules)
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [param_path(path) for path, _ in leaves_with_paths]

  for regex, _ in compiled:
    if not any(regex.fullmatch(path) for path in paths):
      examples = difflib.get_close_matches(regex.pattern, paths, n=_EXAMPLE_PATHS, cutoff=0.0)
      raise ValueError(f"lr rule {regex.pattern!r} matches no parameter; closest parameter paths: "
                       f"{examples or '(the parameter tree is empty)'}")

  def multiplier_for(path: str) -> float:
    for regex, multiplier in compiled:
      if regex.fullmatch(path):
        return multiplier
    return 1.0

  return jax.tree_util.tree_unflatten(treedef, [multiplier_for(path) for path in paths])


def make_schedule(*, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                  total_steps: int | None = None, end_learning_rate_factor: float = 0.0) -> optax.Schedule:
  """The base learning rate as a function of the (0-based) optimizer step.

  Args:
    learning_rate: the peak learning rate.
    schedule: "constant"; "warmup_constant" (linear warmup, then constant); or "warmup_cosine"
      (linear warmup, then a half-cosine down to `learning_rate * end_learning_rate_factor` at
      `total_steps`, flat after that).
    warmup_steps: the warmup rises linearly from 0 at step 0 to `learning_rate` at this step.
      Must be 0 for "constant" (a configured warmup silently ignored would be a bug).
    total_steps: where the cosine ends; required by "warmup_cosine", optional elsewhere (only
      checked against `warmup_steps`).
    end_learning_rate_factor: the cosine's final learning rate as a fraction of the peak; only
      "warmup_cosine" uses it.

  Returns:
    A jit-compatible `step -> learning rate` function (float32).
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {SCHEDULES}")
  if learning_rate < 0:
    raise ValueError(f"learning_rate must be >= 0, got {learning_rate}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if schedule == "constant" and warmup_steps:
    raise ValueError(f"schedule 'constant' has no warmup but warmup_steps={warmup_steps}; "
                     "use 'warmup_constant' or 'warmup_cosine'")
  if schedule == "warmup_cosine" and total_steps is None:
    raise ValueError("schedule 'warmup_cosine' needs total_steps (where the decay ends)")
  if total_steps is not None and warmup_steps > total_steps:
    raise ValueError(f"warmup_steps ({warmup_steps}) > total_steps ({total_steps})")
  if schedule == "warmup_cosine" and not 0.0 <= end_learning_rate_factor <= 1.0:
    raise ValueError(f"end_learning_rate_factor must be in [0, 1], got {end_learning_rate_factor}")

  if schedule == "constant":
    return lambda step: jnp.full((), learning_rate, jnp.float32)
  if schedule == "warmup_constant":
    return lambda step: learning_rate * _warmup_fraction(step, warmup_steps)
  return _warmup_cosine(learning_rate, warmup_steps, total_steps, end_learning_rate_factor)


def _warmup_fraction(step: jax.Array, warmup_steps: int) -> jax.Array:
  """Linear 0 -> 1 over `warmup_steps`, then 1."""
  step = jnp.asarray(step, jnp.float32)
  if warmup_steps == 0:
    return jnp.ones_like(step)
  return jnp.minimum(step / warmup_steps, 1.0)


def _warmup_cosine(learning_rate: float, warmup_steps: int, total_steps: int,
                   end_factor: float) -> optax.Schedule:
  decay_steps = total_steps - warmup_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if decay_steps == 0:
      # A zero-length decay is over as soon as warmup is: the end value holds from total_steps on.
      progress = jnp.ones_like(step)
    else:
      progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    cosine = end_factor + (1.0 - end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    in_warmup = step < warmup_steps
    return learning_rate * jnp.where(in_warmup, _warmup_fraction(step, warmup_steps), cosine)

  return schedule


def learning_rate_at(step: int, **schedule_kwargs: Any) -> float:
  """The base learning rate at `step` as a Python float, for logging. Takes `make_schedule`'s args."""
  return float(make_schedule(**schedule_kwargs)(step))


def _group_label(multiplier: float) -> str:
  """The group label: "frozen", "lr_x1", "lr_x0.05", ...; repr where %g would merge two values."""
  if multiplier == 0.0:
    return FROZEN_LABEL
  short = f"{multiplier:g}"
  return f"lr_x{short}" if float(short) == multiplier else f"lr_x{multiplier!r}"


def _decay_mask(params: Any) -> Any:
  """Weight decay only for matrices and higher (kernels, embeddings), never for biases or norm scales.

  Decay would shrink norm scales towards 0, fighting the normalisation, and regularises nothing
  by shrinking biases; excluding 1-D parameters is the usual AdamW convention.
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def _scaled(base_schedule: optax.Schedule, multiplier: float) -> optax.Schedule:
  # A named closure rather than a lambda in the loop, which would capture the loop variable late.
  return lambda step: base_schedule(step) * multiplier


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm`, with the clipping factor computed once as a scalar.

  optax scales each element as `where(norm < max_norm, g, g / norm * max_norm)`: a select and a
  divide per element. XLA does not duplicate such "expensive" elementwise work into several
  consumers, so on the CPU every clipped gradient was written out once more, to be read back by
  both Adam moment updates (a pass per parameter; `benchmarks/README.md`, issue 13, eighth pass).
  `g * min(1, max_norm / norm)` is one multiply per element, which XLA fuses into each consumer.
  The result differs from optax's by rounding only (`g * (c / n)` against `(g / n) * c`).
  """
  def update_fn(updates, state, params=None):
    del params
    g_norm = optax.tree.norm(updates)
    scale = jnp.minimum(1.0, max_norm / g_norm)  # a zero norm gives inf here, so a factor of 1
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(params: Any, *, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                   total_steps: int | None = None, end_learning_rate_factor: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                   grad_clip_norm: float | None = None,
                   lr_rules: Sequence[tuple[str, float]] = ()) -> tuple[optax.GradientTransformation, dict[str, int]]:
  """AdamW with a per-group learning-rate multiplier; multiplier-0 groups are frozen and stateless.

  Order of operations in `update`:
    1. Gradients of frozen parameters are zeroed, so they cannot count towards the clipping norm
       (nor spread a NaN from a frozen tower into the trainable ones).
    2. If `grad_clip_norm` is set, all gradients are clipped jointly by their global norm, which
       after step 1 is the norm of the trainable gradients. Clipping sees the raw gradients, before
       any learning-rate multiplier, so a group's multiplier does not change how much it clips.
    3. Each group with multiplier m > 0 runs its own AdamW with learning rate schedule(step) * m.
       Weight decay (decoupled: the update gains -lr * weight_decay * param) applies only to
       parameters with ndim >= 2; biases and norm scales are not decayed. Frozen groups get
       `optax.set_to_zero()`: no state, zero update.

  Args:
    params: the parameter tree (arrays or `jax.ShapeDtypeStruct`s); only its paths, shapes and
      ndims are read, to build the groups.
    learning_rate, schedule, warmup_steps, total_steps, end_learning_rate_factor: see
      `make_schedule`.
    b1, b2, eps: Adam's moment decay rates and denominator epsilon.
    weight_decay: decoupled weight decay coefficient.
    grad_clip_norm: global-norm clipping threshold, or None for no clipping.
    lr_rules: `(regex, multiplier)` rules; see `lr_multipliers`.

  Returns:
    `(tx, group_sizes)`: the optax transformation, and `{label: number of scalar parameters}`
    for each group ("lr_x1", "lr_x0.05", "frozen", ...) for the start-of-run log.
  """
  base_schedule = make_schedule(learning_rate=learning_rate, schedule=schedule, warmup_steps=warmup_steps,
                                total_steps=total_steps, end_learning_rate_factor=end_learning_rate_factor)
  multipliers = lr_multipliers(params, lr_rules)
  labels = jax.tree.map(_group_label, multipliers)

  group_sizes: dict[str, int] = {}
  group_multiplier: dict[str, float] = {}
  for label, multiplier, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(multipliers),
                                     jax.tree.leaves(params)):
    group_sizes[label] = group_sizes.get(label, 0) + math.prod(leaf.shape)
    group_multiplier[label] = multiplier
  # Log order: fastest-learning group first, frozen last.
  group_sizes = dict(sorted(group_sizes.items(), key=lambda item: -group_multiplier[item[0]]))

  transforms = {}
  for label, multiplier in group_multiplier.items():
    if multiplier == 0.0:
      transforms[label] = optax.set_to_zero()
    else:
      transforms[label] = optax.adamw(_scaled(base_schedule, multiplier), b1=b1, b2=b2, eps=eps,
                                      weight_decay=weight_decay, mask=_decay_mask)
  steps = []
  if grad_clip_norm is not None:
    if grad_clip_norm <= 0:
      raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm}")
    if FROZEN_LABEL in group_sizes:
      frozen = jax.tree.map(lambda label: label == FROZEN_LABEL, labels)
      steps.append(optax.masked(optax.set_to_zero(), frozen))
    steps.append(clip_by_global_norm(grad_clip_norm))
  steps.append(optax.multi_transform(transforms, labels))
  return optax.chain(*steps), group_sizes
