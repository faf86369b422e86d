r"""The optimizer update alone, as the train step runs it, against optax's plain formulation and torch's fused AdamW.

  python benchmarks/optimizer_update.py                                        # configs/demo.py:video
  python benchmarks/optimizer_update.py --config=configs/small.py --dtype=float32 --calls=5

The config's last stage supplies the optimizer (groups, clipping, decay mask) and the trainable
parameters (random values; gradients are 1% of them, frozen ones zero as in the step). Each JAX
variant is jitted with parameters and state donated, and every variant, torch included, is timed in
alternating rounds (medians):

  library    `train_step.optimizer_update` with `optimizer.make_optimizer`, plus the step's grad and
             param norms: exactly the update the step compiles
  optax      the same update written with `optax.clip_by_global_norm`, `optax.apply_updates` and
             `optax.tree.norm` (the step before issue 13's eighth pass)
  no norms   the library's update without `update_norm` and `param_norm`: what the two metrics cost
  torch      `clip_grad_norm_(foreach=True)` (where the config clips) + fused AdamW over the same
             trainable tensors

It also prints, for each JAX variant, the parameter-sized copies its compiled program makes outside
the update (a copy of a donated parameter each step; `train_step.apply_updates_and_norm`).
"""
import os
import re
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string("config", "configs/demo.py:video", "Config (last stage) whose optimizer is timed.")
_CALLS = flags.DEFINE_integer("calls", 10, "Calls per variant per round.")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position


def _entry_copies(compiled, shapes: set[str]) -> int:
  """Copies, in the program's entry computation, of arrays shaped like one of `shapes` (e.g. "f32[128,256]")."""
  hlo = compiled.as_text()
  entry = hlo[hlo.index("\nENTRY "):]
  return sum(shape in shapes for shape in re.findall(r"= (f32\[[\d,]*\])\{[\d,]*\} copy\(", entry))


def jax_variants(stage):
  """name -> (jitted update(params, opt_state, trainable grads) -> (params, opt_state, metrics), tx).

  Only the trainable gradients are arguments: the frozen ones are zeros made inside the program,
  as in the step, where `stop_gradient` makes them constants XLA folds away.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import train_step  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top

  opt = stage.config.optimizer
  lr_rules = trainer.stage_lr_rules(stage.config, stage.abstract_params, stage.objective)
  make = lambda clip: optimizer_lib.make_optimizer(
      stage.abstract_params, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, grad_clip_norm=clip,
      lr_rules=lr_rules, **stage.schedule_kwargs)[0]
  frozen = stage.frozen
  tx = make(opt.grad_clip_norm or None)
  if opt.grad_clip_norm:  # make_optimizer's chain, with optax's clipping in place of the library's
    frozen_grads = optax.masked(optax.set_to_zero(), frozen)
    tx_optax = optax.chain(frozen_grads, optax.clip_by_global_norm(opt.grad_clip_norm), make(None))
  else:
    tx_optax = tx
  trainable = lambda tree: [x for x, f in zip(jax.tree.leaves(tree), jax.tree.leaves(frozen)) if not f]
  treedef = jax.tree.structure(frozen)

  def all_grads(trainable_grads, params):
    given = iter(trainable_grads)
    return jax.tree.unflatten(treedef, [jnp.zeros_like(p) if f else next(given)
                                        for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(frozen))])

  def library(params, opt_state, trainable_grads):
    grads = all_grads(trainable_grads, params)
    grad_norm = optax.tree.norm(grads)
    params, opt_state, update_norm = train_step.optimizer_update(tx, params, opt_state, grads,
                                                                 jnp.isfinite(grad_norm), frozen)
    return params, opt_state, (grad_norm, update_norm, optax.tree.norm(trainable(params)))

  def plain(tx_, norms):
    def update_fn(params, opt_state, trainable_grads):
      grads = all_grads(trainable_grads, params)
      grad_norm = optax.tree.norm(grads)

      def update(operand):
        p, s, g = operand
        u, s = tx_.update(g, s, p)
        return optax.apply_updates(p, u), s, optax.tree.norm(trainable(u)) if norms else jnp.zeros(())

      def skip(operand):
        p, s, _ = operand
        return p, s, jnp.zeros(())

      params, opt_state, update_norm = jax.lax.cond(jnp.isfinite(grad_norm), update, skip, (params, opt_state, grads))
      param_norm = optax.tree.norm(trainable(params)) if norms else jnp.zeros(())
      return params, opt_state, (grad_norm, update_norm, param_norm)
    return update_fn

  donated = lambda fn: jax.jit(fn, donate_argnums=(0, 1))
  return {"library": (donated(library), tx), "optax": (donated(plain(tx_optax, True)), tx_optax),
          "no norms": (donated(plain(tx, False)), tx)}


def main(argv):
  del argv
  host_memory_note = train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  config = train_step_benchmark._override(harness.load_config(_CONFIG.value))  # pylint: disable=protected-access
  print(harness.machine_line() + host_memory_note)
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  with tempfile.TemporaryDirectory() as workdir:
    stage, _ = train_step_benchmark._stage(config, workdir)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  values = [rng.standard_normal(a.shape).astype(np.float32) * 0.02 for a in jax.tree.leaves(stage.abstract_params)]
  frozen = jax.tree.leaves(stage.frozen)
  treedef = jax.tree.structure(stage.abstract_params)
  params = lambda: jax.tree.unflatten(treedef, [jnp.asarray(v) for v in values])
  trainable = [v for v, f in zip(values, frozen) if not f]
  grads = [jnp.asarray(v * 0.01) for v in trainable]
  print(f"config {_CONFIG.value}: {sum(v.size for v in trainable):,} trainable parameters in {len(trainable)} "
        f"tensors ({sum(v.size for v in values):,} in all)")
  shapes = {f"f32[{','.join(map(str, v.shape))}]" for v in trainable if v.ndim}

  calls = {}
  for name, (fn, tx) in jax_variants(stage).items():
    holder = {"state": (params(), tx.init(params()))}
    print(f"  {name}: {_entry_copies(fn.lower(*holder['state'], grads).compile(), shapes)} parameter-sized "
          "copies outside the update")

    def call(fn=fn, holder=holder):
      p, s, metrics = fn(*holder["state"], grads)
      holder["state"] = (p, s)
      jax.block_until_ready(metrics)
    calls[name] = call

  torch_params = [torch.nn.Parameter(torch.tensor(v)) for v in trainable]
  for p in torch_params:
    p.grad = p.detach() * 0.01
  torch_adamw = torch.optim.AdamW(torch_params, lr=1e-4, weight_decay=config.optimizer.weight_decay, fused=True)

  def torch_call():
    if config.optimizer.grad_clip_norm:  # as the JAX side: 0 means no clipping
      torch.nn.utils.clip_grad_norm_(torch_params, config.optimizer.grad_clip_norm, foreach=True)
    torch_adamw.step()
  calls["torch fused AdamW"] = torch_call

  for call in calls.values():
    for _ in range(2):
      call()
  times = {name: [] for name in calls}
  for _ in range(flags.FLAGS.rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      for _ in range(_CALLS.value):
        call()
      times[name].append((time.perf_counter() - start) / _CALLS.value)
      time.sleep(0.2)
  print("| variant | ms per update (median of rounds) | rounds |")
  print("|---|---|---|")
  for name, ts in times.items():
    print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {', '.join(f'{t * 1e3:.1f}' for t in ts)} |")


if __name__ == "__main__":
  app.run(main)
