"""The train step: sharded == single-device, GradCache accumulation == full batch, NaN skipping,
one compilation. The single-device run with the dense loss is the reference for the others."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vljepa_jax import losses
from vljepa_jax.data import global_batch
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models import token_vlm
from vljepa_jax.models import vljepa
from vljepa_jax.objectives import contrastive
from vljepa_jax.objectives import tokens
from vljepa_jax.train import optimizer
from vljepa_jax.train import sharding
from vljepa_jax.train import train_step as train_step_lib


def _model():
  config = vljepa.tiny_config()
  return vljepa.VLJEPA(config.replace(x_encoder=config.x_encoder.replace(patch_size=8)))


def _batch(seed, n=16):
  rng = np.random.default_rng(seed)
  return {"video": rng.integers(0, 256, (n, 2, 32, 32, 3), dtype=np.uint8),
          "query_ids": rng.integers(0, 256, (n, 8)).astype(np.int32),
          "query_mask": (np.arange(8)[None] < rng.integers(2, 9, (n, 1))).astype(np.int32),
          "target_ids": rng.integers(0, 1000, (n, 8)).astype(np.int32),
          "target_mask": (np.arange(8)[None] < rng.integers(3, 9, (n, 1))).astype(np.int32)}


@functools.lru_cache(maxsize=None)
def _initial_params(model):
  inputs = train_step_lib.model_inputs({k: jnp.asarray(v) for k, v in _batch(0).items()})
  return params_lib.unbox(jax.jit(model.init)(jax.random.key(0), **inputs)["params"])


def _init(model, tx):
  # A copy per state: train steps donate (delete) the state they are given.
  return train_step_lib.TrainState.create(jax.tree.map(jnp.copy, _initial_params(model)), tx)


def _contrastive(mesh=None):
  return contrastive.Contrastive(losses.make_loss("infonce", temperature=0.1, mesh=mesh))


def _run_single_device(model, tx, batches, make_objective=_contrastive, **kwargs):
  step = jax.jit(train_step_lib.make_train_step(model, tx, make_objective(), **kwargs))
  state, history = _init(model, tx), []
  for batch in batches:
    state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    history.append(float(metrics["loss"]))
  return state, history


def _kernel_shard_maps(jaxpr) -> list:
  """`shard_map` equations (recursively) whose body calls a Pallas kernel."""
  found = []
  for eqn in jaxpr.eqns:
    subs = [v for v in eqn.params.values() if isinstance(v, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr))]
    subs += [x for v in eqn.params.values() if isinstance(v, (tuple, list)) for x in v
             if isinstance(x, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr))]
    for sub in subs:
      sub = getattr(sub, "jaxpr", sub)
      if eqn.primitive.name == "shard_map" and "pallas_call" in str(sub):
        found.append(eqn)
      found += _kernel_shard_maps(sub)
  return found


def _sharded_optimizer(model, lr_rules=(("x_encoder/.*", 0.0), ("y_encoder/.*", 0.05))):
  return optimizer.make_optimizer(_init(model, optax.sgd(0.0)).params, learning_rate=0.05, lr_rules=lr_rules,
                                  b1=0.9, b2=0.0, eps=1.0)[0]


def _run_sharded(model, tx, batches, reference_state, reference_losses, attention_impl="xla",
                 make_objective=_contrastive):
  """The step on a data x fsdp x tensor mesh; its losses and parameters must equal the single-device run's."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.logical_rules("fsdp_tp")
  inputs = train_step_lib.model_inputs({k: jnp.asarray(v) for k, v in batches[0].items()})
  abstract = params_lib.abstract_params(model, *inputs.values())
  specs = params_lib.logical_partition_specs(model, *inputs.values())
  param_shardings = sharding.param_shardings(specs, abstract, mesh, rules)
  abstract_state = jax.eval_shape(lambda p: train_step_lib.TrainState.create(p, tx), abstract)
  state_shardings = sharding.train_state_shardings(tx, abstract_state, param_shardings, mesh)
  state = jax.jit(lambda p: train_step_lib.TrainState.create(p, tx), out_shardings=state_shardings)(
      jax.device_put(_init(model, tx).params, param_shardings))
  sharded_model = type(model)(model.config.replace(attention_impl=attention_impl))
  step_fn = train_step_lib.make_train_step(sharded_model, tx, make_objective(mesh), rules=rules)
  step = train_step_lib.jit_train_step(step_fn, mesh=mesh, state_shardings=state_shardings,
                                       batch_shardings=global_batch.batch_sharding(mesh))
  if attention_impl == "pallas":
    with jax.set_mesh(mesh):
      jaxpr = jax.make_jaxpr(step_fn)(state, global_batch.to_global_batch(batches[0], mesh)).jaxpr
    kernel_maps = _kernel_shard_maps(jaxpr)
    # ViT, predictor and Y-encoder layers, forward and backward; batch over data x fsdp, heads over tensor.
    assert len(kernel_maps) >= 6
    for eqn in kernel_maps:
      q_spec = eqn.params["in_specs"][0]
      assert tuple(q_spec) == (("data", "fsdp"), None, "tensor", None), q_spec
  sharded_losses = []
  for batch in batches:
    state, metrics = step(state, global_batch.to_global_batch(batch, mesh))
    sharded_losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(sharded_losses, reference_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               state.params, reference_state.params)
  return state


@pytest.mark.parametrize("attention_impl", ["xla", "pallas"])
def test_sharded_steps_equal_single_device_steps(attention_impl):
  """The sharded step on a data x fsdp x tensor mesh equals the single-device reference step with
  plain XLA attention; with `pallas`, the flash kernel runs per shard inside `jax.shard_map`."""
  # SGD with momentum rather than Adam: Adam divides by sqrt(v), so a gradient that is ~0 in both
  # runs can flip sign between them and move a parameter by a full step; losses would still agree
  # but an element-wise parameter comparison would not say anything about the sharding.
  model = _model()
  tx = _sharded_optimizer(model)
  batches = [_batch(s) for s in range(1, 4)]
  reference_state, reference_losses = _run_single_device(model, tx, batches)

  state = _run_sharded(model, tx, batches, reference_state, reference_losses, attention_impl)
  kernel = state.params["predictor"]["llama"]["layers_0"]["mlp"]["wi_gate"]["kernel"]
  assert tuple(kernel.sharding.spec) == ("fsdp", "tensor")
  moments = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state)
             if "'wi_gate'" in jax.tree_util.keystr(path) and "'layers_0'" in jax.tree_util.keystr(path)
             and "'predictor'" in jax.tree_util.keystr(path)]
  assert len(moments) == 2  # Adam's mu and nu, sharded like their parameter
  assert all(tuple(m.sharding.spec) == ("fsdp", "tensor") for m in moments)
  frozen = state.params["x_encoder"]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), frozen,
               _init(model, optax.sgd(0.0)).params["x_encoder"])


def test_a_mamba3_predictor_trains_sharded_as_on_one_device():
  """A VL-JEPA whose predictor is Mamba-3 trains on 8 devices as on 1 (one layer: compiling the scan dominates)."""
  config = _model().config
  matched = predictor_backbones.matched_config("mamba3", config.predictor.backbone_config).replace(num_layers=1)
  model = vljepa.VLJEPA(config.replace(predictor=config.predictor.replace(backbone="mamba3", backbone_config=matched)))
  tx = _sharded_optimizer(model)
  batches = [_batch(s) for s in range(1, 3)]
  reference_state, reference_losses = _run_single_device(model, tx, batches)
  assert reference_losses[1] != reference_losses[0]  # the first step moved the predictor
  _run_sharded(model, tx, batches, reference_state, reference_losses)


def test_the_token_baseline_trains_sharded_as_on_one_device():
  """The token-space baseline (`objective="tokens"`) trains on a data x fsdp x tensor mesh as on 1 device."""
  config = _model().config
  llama = config.predictor.backbone_config.replace(vocab_size=1000)  # the batch's target ids reach 999
  model = token_vlm.TokenVLM(token_vlm.TokenVLMConfig.from_vljepa(
      config.replace(predictor=config.predictor.replace(backbone_config=llama))))
  tx = _sharded_optimizer(model, lr_rules=(("x_encoder/.*", 0.0),))
  batches = [_batch(s) for s in range(1, 3)]
  objective = lambda mesh=None: tokens.Tokens()
  reference_state, reference_losses = _run_single_device(model, tx, batches, make_objective=objective)
  assert reference_losses[1] < reference_losses[0]
  _run_sharded(model, tx, batches, reference_state, reference_losses, make_objective=objective)


def test_gradcache_microbatches_equal_the_full_batch_gradient():
  model, tx = _model(), optax.sgd(1.0)  # params move by exactly -grad
  start = _init(model, tx).params
  full_state, full_losses = _run_single_device(model, tx, [_batch(5)])
  micro_state, micro_losses = _run_single_device(model, tx, [_batch(5)], num_microbatches=4)
  np.testing.assert_allclose(micro_losses, full_losses, rtol=1e-6)
  full_grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), start, full_state.params)
  micro_grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), start, micro_state.params)
  assert optax.tree.norm(full_grads) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), micro_grads, full_grads)
  with pytest.raises(ValueError, match="does not split into 3 microbatches"):
    _run_single_device(model, tx, [_batch(5)], num_microbatches=3)


def test_non_finite_steps_are_skipped_and_counted():
  model, tx = _model(), optax.adam(1e-3)
  step = jax.jit(train_step_lib.make_train_step(model, tx, contrastive.Contrastive(losses.make_loss("infonce"))))
  state = _init(model, tx)
  before = jax.tree.map(np.asarray, state.params)
  bad = {k: jnp.asarray(v) for k, v in _batch(1).items()}
  bad["video"] = jnp.full(bad["video"].shape, jnp.nan, jnp.float32)
  state, metrics = step(state, bad)
  assert not bool(metrics["finite"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)
  assert (int(state.step), int(state.nonfinite_streak), int(state.nonfinite_total)) == (1, 1, 1)
  state, metrics = step(state, {k: jnp.asarray(v) for k, v in _batch(2).items()})
  assert bool(metrics["finite"])
  assert (int(state.step), int(state.nonfinite_streak), int(state.nonfinite_total)) == (2, 0, 1)
  changed = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), state.params, before)
  assert any(jax.tree.leaves(changed["predictor"]))


def test_train_step_compiles_once_and_donates_the_state():
  model, tx = _model(), optax.adam(1e-3)
  traces = []
  inner = train_step_lib.make_train_step(model, tx, contrastive.Contrastive(losses.make_loss("infonce")))

  def counted(state, batch):
    traces.append(1)
    return inner(state, batch)

  step = train_step_lib.jit_train_step(counted)
  state = _init(model, tx)
  for seed in range(3):
    old = state
    state, _ = step(state, {k: jnp.asarray(v) for k, v in _batch(seed).items()})
  assert len(traces) == 1
  assert old.params["y_head"]["kernel"].is_deleted()  # donated


def test_frozen_towers_are_stop_gradient_and_the_rest_trains_as_without_the_mask():
  # The frozen mask must not change what trainable parameters do, only skip work for frozen ones.
  model, tx = _model(), optax.sgd(0.1)
  params = _init(model, tx).params
  frozen = jax.tree.map(lambda _: False, params)
  frozen["y_encoder"] = jax.tree.map(lambda _: True, params["y_encoder"])
  labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
  masked_tx = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()}, labels)
  batch = {k: jnp.asarray(v) for k, v in _batch(7).items()}
  runs = []
  objective = contrastive.Contrastive(losses.make_loss("infonce"))
  for mask in (None, frozen):
    step = jax.jit(train_step_lib.make_train_step(model, masked_tx, objective, frozen=mask))
    state, metrics = step(train_step_lib.TrainState.create(jax.tree.map(jnp.copy, params), masked_tx), batch)
    runs.append((jax.device_get(state.params), float(metrics["loss"])))
  (plain, plain_loss), (masked, masked_loss) = runs
  # Two different compiled programs (one skips the frozen backward): equal up to the last bits.
  np.testing.assert_allclose(masked_loss, plain_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), masked, plain)
  jax.tree.map(np.testing.assert_array_equal, masked["y_encoder"], jax.device_get(params["y_encoder"]))
  assert not np.array_equal(masked["y_head"]["kernel"], np.asarray(params["y_head"]["kernel"]))
  # And the frozen tower's backward pass is gone from the compiled step: fewer FLOPs.
  cost = lambda mask: jax.jit(train_step_lib.make_train_step(model, masked_tx, objective, frozen=mask)).lower(
      train_step_lib.TrainState.create(params, masked_tx), batch).compile().cost_analysis()
  flops = [c[0]["flops"] if isinstance(c, (list, tuple)) else c["flops"] for c in (cost(None), cost(frozen))]
  assert flops[1] < 0.95 * flops[0], flops


def _decayed_adamw_step(model):
  """A jitted, donated step with AdamW, weight decay and clipping, the X- and Y-encoders frozen as the
  trainer freezes them (`freeze_x_encoder`, an LR multiplier of 0); the step, its state and the frozen mask."""
  params = _init(model, optax.sgd(0.0)).params
  rules = (("x_encoder/.*", 0.0), ("y_encoder/.*", 0.0))
  tx, _ = optimizer.make_optimizer(params, learning_rate=0.05, weight_decay=0.1, grad_clip_norm=0.5, lr_rules=rules)
  frozen = jax.tree.map(lambda m: m == 0.0, optimizer.lr_multipliers(params, rules))
  step = train_step_lib.jit_train_step(train_step_lib.make_train_step(model, tx, _contrastive(), frozen=frozen))
  return step, train_step_lib.TrainState.create(params, tx), frozen


def test_update_and_param_norms_are_those_of_the_trainable_parameters():
  """`update_norm` is the norm of what the step moved, `param_norm` of where it landed: trainable leaves only."""
  model = _model()
  step, state, frozen = _decayed_adamw_step(model)
  batch = {k: jnp.asarray(v) for k, v in _batch(3).items()}
  for _ in range(2):  # the second step has Adam moments and a learning rate past zero
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, batch)
  after = jax.tree.map(np.asarray, state.params)
  trainable = [(b.astype(np.float64), a.astype(np.float64))
               for b, a, f in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(frozen)) if not f]
  want_update = np.sqrt(sum(np.sum((a - b) ** 2) for b, a in trainable))
  want_param = np.sqrt(sum(np.sum(a ** 2) for _, a in trainable))
  assert want_update > 0
  # The step's update is p_new - p_old only up to float32 rounding of p_new (|p| >> |update|).
  np.testing.assert_allclose(float(metrics["update_norm"]), want_update, rtol=2e-3)
  np.testing.assert_allclose(float(metrics["param_norm"]), want_param, rtol=1e-5)
  # The frozen towers are left out: counting them would change param_norm by far more than the tolerance.
  everything = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in jax.tree.leaves(after)))
  assert abs(everything - want_param) > 1e-3 * want_param


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's compiled program")
def test_weight_decayed_parameters_are_updated_in_place():
  """No parameter is copied after the update: with weight decay the old value has two readers (the update
  norm and the new value), and unless the new value waits for the norm, XLA writes it to a fresh buffer
  and copies it back into the donated one, every step (`train_step.apply_updates_and_norm`)."""
  model = _model()
  step, state, frozen = _decayed_adamw_step(model)
  batch = {k: jnp.asarray(v) for k, v in _batch(3).items()}
  hlo = step.lower(state, batch).compile().as_text()  # without a mesh, jit_train_step returns the donating jit
  entry = hlo[hlo.index("\nENTRY "):]
  copied = re.findall(r"= (f32\[[\d,]+\])\{[\d,]*\} copy\(", entry)
  leaves = zip(jax.tree.leaves(state.params), jax.tree.leaves(frozen))
  decayed = {f"f32[{','.join(map(str, p.shape))}]" for p, f in leaves if not f and p.ndim >= 2}
  assert decayed and not [shape for shape in copied if shape in decayed], copied
