"""The VL-JEPA optimizer against hand-written NumPy references (schedules, AdamW, clipping).

The references below are written from the formulas, not from optax, and the per-parameter
multipliers they use are spelled out by hand, so a wrong rule match, a wrong group, decay on a
bias, a missing bias correction or clipping over frozen gradients all show up as a mismatch.
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from vljepa_jax.convert import mapping
from vljepa_jax.train import optimizer

RULES = (("x_encoder/.*", 0.0), ("predictor/llama/embed_tokens/.*", 0.0), ("y_encoder/.*", 0.05))

# Path -> (shape, multiplier under RULES), written out by hand as the reference grouping.
PARAMS_SPEC = {
    "x_encoder/patch_embed/kernel": ((6, 4), 0.0),
    "x_encoder/norm/scale": ((4,), 0.0),
    "predictor/llama/embed_tokens/embedding": ((10, 4), 0.0),
    "predictor/llama/layers_0/mlp/wi/kernel": ((4, 8), 1.0),
    "predictor/llama/layers_0/input_norm/scale": ((4,), 1.0),
    "y_encoder/layers_0/attn/query/kernel": ((5, 5), 0.05),
    "y_encoder/norm/scale": ((5,), 0.05),
    "y_head/kernel": ((5, 3), 1.0),
    "y_head/bias": ((3,), 1.0),
}
FROZEN = {path for path, (_, mult) in PARAMS_SPEC.items() if mult == 0.0}
TRAINABLE = set(PARAMS_SPEC) - FROZEN


def flatten(tree):
  return {optimizer.param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def random_flat(rng, scale=1.0):
  return {path: (scale * rng.normal(size=shape)).astype(np.float32) for path, (shape, _) in PARAMS_SPEC.items()}


# ---------------------------------------------------------------------------------------------
# NumPy references.


def numpy_schedule(step, *, learning_rate, schedule="constant", warmup_steps=0, total_steps=None,
                   end_learning_rate_factor=0.0):
  if schedule == "constant":
    return learning_rate
  if step < warmup_steps:
    return learning_rate * step / warmup_steps
  if schedule == "warmup_constant":
    return learning_rate
  if step >= total_steps:
    return learning_rate * end_learning_rate_factor
  t = (step - warmup_steps) / (total_steps - warmup_steps)
  return learning_rate * (end_learning_rate_factor + (1 - end_learning_rate_factor) * (1 + math.cos(math.pi * t)) / 2)


def numpy_adamw(params, grads_per_step, *, lr_fn, b1, b2, eps, weight_decay, clip_norm=None,
                multipliers=None):
  """float64 AdamW with per-parameter lr multipliers; frozen (0) parameters untouched.

  Clipping scales every gradient by min(1, clip_norm / norm) where norm is taken over the
  parameters with a multiplier > 0 only.
  """
  multipliers = multipliers or {path: mult for path, (_, mult) in PARAMS_SPEC.items()}
  params = {k: v.astype(np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  for step, grads in enumerate(grads_per_step):
    trainable = [k for k in params if multipliers[k] > 0]
    grads = {k: grads[k].astype(np.float64) for k in trainable}
    if clip_norm is not None:
      norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
      grads = {k: g * min(1.0, clip_norm / norm) for k, g in grads.items()}
    t = step + 1
    for k in trainable:
      mu[k] = b1 * mu[k] + (1 - b1) * grads[k]
      nu[k] = b2 * nu[k] + (1 - b2) * grads[k] ** 2
      mu_hat, nu_hat = mu[k] / (1 - b1 ** t), nu[k] / (1 - b2 ** t)
      direction = mu_hat / (np.sqrt(nu_hat) + eps)
      if params[k].ndim >= 2:
        direction = direction + weight_decay * params[k]
      params[k] = params[k] - lr_fn(step) * multipliers[k] * direction
  return params


def run_optimizer(tx, params_flat, grads_per_step):
  """Applies `tx` for len(grads_per_step) jitted steps; returns (final params flat, final state)."""
  params = jax.tree.map(jnp.asarray, mapping.unflatten(params_flat))
  state = jax.jit(tx.init)(params)

  @jax.jit
  def train_step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in grads_per_step:
    params, state = train_step(params, state, jax.tree.map(jnp.asarray, mapping.unflatten(grads)))
  return {k: np.asarray(v) for k, v in flatten(params).items()}, state


# ---------------------------------------------------------------------------------------------
# param_path and lr_multipliers.


def test_param_path_joins_dict_keys_and_state_keys():
  tree = {"predictor": {"llama": {"layers_0": {"mlp": {"wi_gate": {"kernel": 1}}}}}, "y_head": {"bias": 2}}
  paths = [optimizer.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths == ["predictor/llama/layers_0/mlp/wi_gate/kernel", "y_head/bias"]
  state = (optax.ScaleByAdamState(count=0, mu={"w": 1}, nu={"w": 2}),)
  paths = [optimizer.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert paths == ["0/count", "0/mu/w", "0/nu/w"]


def test_lr_multipliers_follow_the_rules():
  params = mapping.unflatten(random_flat(np.random.default_rng(0)))
  got = flatten(optimizer.lr_multipliers(params, RULES))
  assert got == {path: mult for path, (_, mult) in PARAMS_SPEC.items()}
  assert all(type(v) is float for v in got.values())


def test_lr_multipliers_first_match_wins_and_default_is_one():
  params = mapping.unflatten(random_flat(np.random.default_rng(0)))
  rules = [("y_encoder/norm/.*", 0.1), ("y_encoder/.*", 0.05), ("y_encoder/norm/scale", 0.7), (".*/kernel", 2.0)]
  got = flatten(optimizer.lr_multipliers(params, rules))
  assert got["y_encoder/norm/scale"] == 0.1  # the first rule, not the later exact one
  assert got["y_encoder/layers_0/attn/query/kernel"] == 0.05  # "y_encoder/.*" precedes ".*/kernel"
  assert got["y_head/kernel"] == 2.0
  assert got["y_head/bias"] == 1.0 and got["x_encoder/norm/scale"] == 1.0
  assert flatten(optimizer.lr_multipliers(params, ())) == {path: 1.0 for path in PARAMS_SPEC}
  # Matching is against the whole path: the bare "kernel" alternative never equals one.
  got = flatten(optimizer.lr_multipliers(params, [("y_head/.*|kernel", 2.0)]))
  assert got == {path: 2.0 if path.startswith("y_head/") else 1.0 for path in PARAMS_SPEC}


def test_lr_multipliers_errors_name_the_rule():
  params = mapping.unflatten(random_flat(np.random.default_rng(0)))
  with pytest.raises(ValueError, match=r"'y_encoder/\.\*'.*-0.5"):
    optimizer.lr_multipliers(params, [("y_encoder/.*", -0.5)])
  with pytest.raises(ValueError, match=r"'y_encoder/\('.*not a valid regex"):
    optimizer.lr_multipliers(params, [("y_encoder/(", 0.5)])
  # A misspelt path: the message names the rule and shows the closest real paths.
  with pytest.raises(ValueError, match=r"'predictor/lama/embed_tokens/\.\*' matches no parameter.*"
                                       r"predictor/llama/embed_tokens/embedding"):
    optimizer.lr_multipliers(params, [("x_encoder/.*", 0.0), ("predictor/lama/embed_tokens/.*", 0.0)])
  # Rules must match the whole path: a bare "kernel" would match with re.search, not fullmatch.
  with pytest.raises(ValueError, match="'kernel' matches no parameter"):
    optimizer.lr_multipliers(params, [("kernel", 0.5)])


# ---------------------------------------------------------------------------------------------
# Schedules.


@pytest.mark.parametrize("kwargs", [
    dict(learning_rate=3e-4),
    dict(learning_rate=3e-4, schedule="warmup_constant", warmup_steps=10),
    dict(learning_rate=3e-4, schedule="warmup_constant", warmup_steps=0, total_steps=50),
    dict(learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=10, total_steps=50),
    dict(learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=7, total_steps=40, end_learning_rate_factor=0.1),
    dict(learning_rate=2e-4, schedule="warmup_cosine", warmup_steps=0, total_steps=25, end_learning_rate_factor=0.05),
    dict(learning_rate=2e-4, schedule="warmup_cosine", warmup_steps=5, total_steps=5, end_learning_rate_factor=0.5),
])
def test_schedule_matches_numpy(kwargs):
  sched = optimizer.make_schedule(**kwargs)
  jitted = jax.jit(sched)
  steps = sorted({0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 17, 20, 24, 25, 26, 30, 39, 40, 41, 49, 50, 51, 100, 10_000})
  want = np.array([numpy_schedule(s, **kwargs) for s in steps])
  got = np.array([float(jitted(jnp.int32(s))) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * kwargs["learning_rate"])
  assert [optimizer.learning_rate_at(s, **kwargs) for s in steps[:4]] == pytest.approx(want[:4], rel=1e-6, abs=1e-12)


def test_schedule_key_points():
  kwargs = dict(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=4, total_steps=12,
                end_learning_rate_factor=0.2)
  lr = lambda step: optimizer.learning_rate_at(step, **kwargs)
  assert lr(0) == 0.0 and lr(2) == pytest.approx(0.5) and lr(4) == pytest.approx(1.0)
  assert lr(8) == pytest.approx(0.6)  # half way: (1 + 0.2) / 2
  assert lr(12) == pytest.approx(0.2) and lr(1000) == pytest.approx(0.2)


def test_schedule_errors():
  with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine'"):
    optimizer.make_schedule(learning_rate=1.0, schedule="cosine")
  with pytest.raises(ValueError, match=r"warmup_steps \(20\) > total_steps \(10\)"):
    optimizer.make_schedule(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=20, total_steps=10)
  with pytest.raises(ValueError, match="needs total_steps"):
    optimizer.make_schedule(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=2)
  with pytest.raises(ValueError, match="'constant' has no warmup"):
    optimizer.make_schedule(learning_rate=1.0, warmup_steps=5)
  with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
    optimizer.make_schedule(learning_rate=1.0, schedule="warmup_constant", warmup_steps=-1)


# ---------------------------------------------------------------------------------------------
# make_optimizer.

ADAMW = dict(learning_rate=0.1, schedule="warmup_cosine", warmup_steps=2, total_steps=4, end_learning_rate_factor=0.1,
             b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.3)


def test_frozen_params_are_bit_identical_and_have_no_state():
  rng = np.random.default_rng(1)
  params = random_flat(rng)
  tx, _ = optimizer.make_optimizer(mapping.unflatten(params), lr_rules=RULES, **ADAMW)
  final, state = run_optimizer(tx, params, [random_flat(rng) for _ in range(5)])

  for path in FROZEN:
    np.testing.assert_array_equal(final[path], params[path])
  for path in TRAINABLE:
    assert not np.allclose(final[path], params[path]), path

  # Every non-scalar state leaf is an Adam moment (mu or nu) of one trainable parameter.
  moments = {path: leaf for path, leaf in flatten(state).items() if np.ndim(leaf) > 0}
  for kind in ("mu", "nu"):
    owners = sorted(path.split(f"/{kind}/", 1)[1] for path in moments if f"/{kind}/" in path)
    assert owners == sorted(TRAINABLE)
  assert len(moments) == 2 * len(TRAINABLE)
  trainable_size = sum(math.prod(PARAMS_SPEC[p][0]) for p in TRAINABLE)
  assert sum(leaf.size for leaf in moments.values()) == 2 * trainable_size


def test_trainable_params_match_numpy_adamw():
  rng = np.random.default_rng(2)
  params = random_flat(rng)
  grads = [random_flat(rng) for _ in range(5)]
  tx, _ = optimizer.make_optimizer(mapping.unflatten(params), lr_rules=RULES, **ADAMW)
  final, _ = run_optimizer(tx, params, grads)

  schedule_kwargs = {k: ADAMW[k] for k in ("learning_rate", "schedule", "warmup_steps", "total_steps",
                                           "end_learning_rate_factor")}
  want = numpy_adamw(params, grads, lr_fn=lambda step: numpy_schedule(step, **schedule_kwargs),
                     b1=ADAMW["b1"], b2=ADAMW["b2"], eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
  for path in TRAINABLE:
    np.testing.assert_allclose(final[path], want[path], rtol=1e-6, err_msg=path)
    # The displacement too, which is far more sensitive than the parameter itself.
    np.testing.assert_allclose(final[path] - params[path], want[path] - params[path], rtol=2e-4, atol=1e-7,
                               err_msg=path)


def test_y_encoder_update_is_multiplier_times_full_update():
  rng = np.random.default_rng(3)
  params = mapping.unflatten(random_flat(rng))
  grads = mapping.unflatten(random_flat(rng))
  kwargs = dict(learning_rate=0.1, weight_decay=0.3)
  tx_scaled, _ = optimizer.make_optimizer(params, lr_rules=RULES, **kwargs)
  tx_full, _ = optimizer.make_optimizer(params, lr_rules=RULES[:2], **kwargs)

  def first_update(tx):
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    return {k: np.asarray(v) for k, v in flatten(updates).items()}

  scaled, full = first_update(tx_scaled), first_update(tx_full)
  for path in PARAMS_SPEC:
    factor = 0.05 if path.startswith("y_encoder/") else 1.0
    assert np.abs(full[path]).max() > 0 or path in FROZEN
    np.testing.assert_allclose(scaled[path], factor * full[path], rtol=1e-6, err_msg=path)


def test_clipping_uses_trainable_gradients_only():
  rng = np.random.default_rng(4)
  params = random_flat(rng)
  # Large trainable gradients, far larger frozen ones. eps=1 makes Adam sensitive to the
  # gradient scale, so clipping by the wrong norm changes the result.
  grads = []
  for _ in range(3):
    step_grads = random_flat(rng, scale=1e3)
    for path in FROZEN:
      step_grads[path] *= 1e3
    grads.append(step_grads)
  adam = dict(b1=0.9, b2=0.99, eps=1.0, weight_decay=0.1)
  tx, _ = optimizer.make_optimizer(mapping.unflatten(params), learning_rate=0.1, lr_rules=RULES, grad_clip_norm=1.0, **adam)
  final, _ = run_optimizer(tx, params, grads)

  reference = lambda **extra: numpy_adamw(params, grads, lr_fn=lambda _: 0.1, **adam, **extra)
  want = reference(clip_norm=1.0)
  for path in TRAINABLE:
    np.testing.assert_allclose(final[path], want[path], rtol=1e-6, err_msg=path)
    np.testing.assert_allclose(final[path] - params[path], want[path] - params[path], rtol=2e-4, atol=1e-7,
                               err_msg=path)
  for path in FROZEN:
    np.testing.assert_array_equal(final[path], params[path])

  # The comparison discriminates: clipping over all gradients, or not clipping, lands elsewhere.
  clipped_all = reference(clip_norm=1.0, multipliers={p: 1.0 for p in PARAMS_SPEC})
  unclipped = reference()
  path = "y_head/kernel"
  assert np.abs(clipped_all[path] - want[path]).max() > 1e-3
  assert np.abs(unclipped[path] - want[path]).max() > 1e-3

  # Non-finite frozen gradients are zeroed before the norm and cannot poison the trainable ones.
  for step_grads in grads:
    step_grads["x_encoder/patch_embed/kernel"][:] = np.nan
    step_grads["predictor/llama/embed_tokens/embedding"][0, 0] = np.inf
  poisoned, _ = run_optimizer(tx, params, grads)
  for path in PARAMS_SPEC:
    np.testing.assert_array_equal(poisoned[path], final[path])


@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 30.0])
def test_clip_by_global_norm_scales_by_min_of_one_and_threshold_over_norm(scale):
  """Against NumPy: below the threshold (and for all-zero gradients) nothing changes; above it every
  gradient is scaled by threshold / global norm."""
  rng = np.random.default_rng(0)
  grads = {"a": rng.standard_normal((7, 5)).astype(np.float32) * scale,
           "b": {"c": rng.standard_normal(11).astype(np.float32) * scale}}
  norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in jax.tree.leaves(grads)))
  factor = 1.0 if norm == 0 else min(1.0, 2.0 / norm)
  clipped, _ = jax.jit(optimizer.clip_by_global_norm(2.0).update)(grads, optax.EmptyState())
  for got, g in zip(jax.tree.leaves(clipped), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(got), g * factor, rtol=1e-6, atol=0)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(clipped))


def test_group_sizes_and_labels():
  params = mapping.unflatten(random_flat(np.random.default_rng(5)))
  _, sizes = optimizer.make_optimizer(params, learning_rate=1.0, lr_rules=RULES)
  assert sizes == {"frozen": 6 * 4 + 4 + 10 * 4, "lr_x1": 4 * 8 + 4 + 5 * 3 + 3, "lr_x0.05": 5 * 5 + 5}
  assert list(sizes) == ["lr_x1", "lr_x0.05", "frozen"]  # log order: fastest group first, frozen last
  rules = [("y_encoder/.*", 0.01), ("y_head/.*", 0.1)]
  _, sizes = optimizer.make_optimizer(params, learning_rate=1.0, lr_rules=rules)
  assert sizes == {"lr_x1": 24 + 4 + 40 + 32 + 4, "lr_x0.01": 30, "lr_x0.1": 18}
  assert sum(sizes.values()) == sum(math.prod(shape) for shape, _ in PARAMS_SPEC.values())


def test_optimizer_state_follows_parameter_sharding():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = NamedSharding(mesh, P())
  flat = random_flat(np.random.default_rng(6))
  flat["predictor/llama/layers_0/mlp/wi/kernel"] = np.ones((16, 8), np.float32)
  shardings = jax.tree.map(lambda _: replicated, mapping.unflatten(flat))
  shardings["predictor"]["llama"]["layers_0"]["mlp"]["wi"]["kernel"] = NamedSharding(mesh, P("data", None))
  params = jax.device_put(mapping.unflatten(flat), shardings)
  tx, _ = optimizer.make_optimizer(params, learning_rate=0.1, lr_rules=RULES, grad_clip_norm=1.0)

  # The moments mirror the parameter tree (other groups' entries are empty MaskedNodes), so the
  # parameter shardings map onto the state with optax.tree_map_params.
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  state_shardings = optax.tree_map_params(
      tx, lambda leaf, sharding: leaf if is_masked(leaf) else sharding, jax.eval_shape(tx.init, params), shardings,
      transform_non_params=lambda _: replicated, is_leaf=is_masked)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)

  sharded = {path: leaf.sharding.spec for path, leaf in flatten(state).items()
             if path.endswith("/predictor/llama/layers_0/mlp/wi/kernel")}
  assert sorted(sharded) == [f"2/inner_states/lr_x1/inner_state/0/{kind}/predictor/llama/layers_0/mlp/wi/kernel"
                             for kind in ("mu", "nu")]
  assert all(spec == P("data", None) for spec in sharded.values())
  mu = state[2].inner_states["lr_x1"].inner_state[0].mu["predictor"]["llama"]["layers_0"]["mlp"]["wi"]["kernel"]
  assert mu.sharding.spec == P("data", None)
  assert mu.addressable_shards[0].data.shape == (2, 8)
