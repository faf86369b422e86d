r"""Train-step throughput, compile time, memory and FLOPs of experiment configs.

  python benchmarks/train_step.py                                # demo (video stage) and small
  python benchmarks/train_step.py --configs=configs/small.py --steps=50
  python benchmarks/train_step.py --aot_paper                   # lower + compile the paper config only

For each config it builds the last stage exactly as `python -m vljepa_jax.main` does
(`trainer.Stage`: sharded init, optimizer groups, the jitted donated step), takes one pipeline
batch, and times:
  * compile: lowering + XLA compilation of the train step (seconds);
  * steps/s and samples/s on that fixed device batch, after 3 warm-up steps;
  * peak host memory of the process (ru_maxrss) and XLA's per-device temp memory estimate;
  * analytic FLOPs per sample (`vljepa_jax.models.flops`; frozen towers count forward only), the
    FLOP/s they imply, and XLA's own cost-analysis FLOPs of the compiled step for comparison.

`--aot_paper` checks that the paper's full model (ViT-L + Llama-3.2-1B layers 8-15 +
EmbeddingGemma-300M) at the image stage's global batch of 24,000 lowers and compiles for a mesh of
`--aot_devices` virtual CPU devices (FSDP), without executing or allocating it.
"""
import os
import platform
import resource
import sys
import time

from absl import app
from absl import flags

_CONFIGS = flags.DEFINE_list("configs", ["configs/demo.py:video", "configs/small.py"], "Configs to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per config.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Virtual CPU devices for the timed configs (CPU only).")
_AOT = flags.DEFINE_bool("aot_paper", False, "Only lower + compile the paper config at batch 24,000.")
_AOT_DEVICES = flags.DEFINE_integer("aot_devices", 192, "Virtual devices for --aot_paper (the batch must divide by it).")
_AOT_BATCH = flags.DEFINE_integer("aot_batch", 24_000, "Global batch for --aot_paper.")


def _load_config(spec: str):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  module = config_flags.config_flags._LoadConfigModule(f"{path}_config", path)  # pylint: disable=protected-access
  return module.get_config(arg) if arg else module.get_config()


def _stage(config, workdir):
  from vljepa_jax.train import model_setup, sharding, stages, trainer  # pylint: disable=g-import-not-at-top
  name, stage_config = stages.resolve(config)[-1]
  setup = model_setup.build(config, cache_dir=workdir)
  mesh = sharding.make_mesh(dict(stage_config.mesh))
  return trainer.Stage(stage_config, name, setup, mesh, os.path.join(workdir, name)), stage_config


def _trainable(stage) -> dict:
  """Which towers get gradients: those not frozen by the model (X-encoder) or entirely by LR rules."""
  import jax  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import optimizer  # pylint: disable=g-import-not-at-top
  rules = tuple(map(tuple, stage.config.optimizer.lr_rules))
  multipliers = optimizer.lr_multipliers(stage.abstract_params, rules)
  trainable = {tower: any(m > 0 for m in jax.tree.leaves(multipliers[tower]))
               for tower in ("x_encoder", "predictor", "y_encoder")}
  trainable["x_encoder"] &= not stage.setup.model.config.freeze_x_encoder
  return trainable


def time_config(spec: str, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import flops  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import train_step  # pylint: disable=g-import-not-at-top

  config = _load_config(spec)
  with tempfile.TemporaryDirectory() as workdir:
    stage, stage_config = _stage(config, workdir)
    iterator = stage.make_iterator()
    host = next(iterator)
    batch = global_batch.to_global_batch({k: host[k] for k in train_step.MODEL_INPUTS}, stage.mesh)
    state = stage.init_state(None)
    start = time.perf_counter()
    with jax.set_mesh(stage.mesh):
      compiled = stage.step_fn.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    for _ in range(3):
      state, metrics = stage.step_fn(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = stage.step_fn(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
  data = stage.data
  arch = stage.setup.model.config
  per_sample = flops.train_flops_per_sample(arch, trainable=_trainable(stage), num_frames=data.num_frames,
                                            crop_size=data.crop_size, query_length=data.query_length,
                                            target_length=data.target_length)
  batch_size = stage_config.batch_size
  return {"config": spec, "batch": batch_size, "compile_s": compile_s, "steps_per_s": steps / seconds,
          "samples_per_s": steps * batch_size / seconds, "gflop_per_sample": per_sample / 1e9,
          "tflops": per_sample * batch_size * steps / seconds / 1e12,
          "xla_gflop_per_sample": (cost or {}).get("flops", float("nan")) / batch_size / 1e9,
          "temp_mib": getattr(memory, "temp_size_in_bytes", 0) / 2**20,
          "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def aot_paper(num_devices: int, batch_size: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vljepa_jax import losses  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import vljepa  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import config_base, optimizer, sharding, train_step  # pylint: disable=g-import-not-at-top

  arch = vljepa.paper_config().with_dtypes("bfloat16", "float32")
  arch = arch.replace(x_encoder=arch.x_encoder.replace(remat=True),
                      predictor=arch.predictor.replace(llama=arch.predictor.llama.replace(remat=True)),
                      y_encoder=arch.y_encoder.replace(
                          backbone_config=arch.y_encoder.backbone_config.replace(remat=True)))
  model = vljepa.VLJEPA(arch)
  mesh = sharding.make_mesh({"data": -1, "fsdp": 8, "tensor": 1})
  rules = sharding.logical_rules("fsdp")
  lq, lt = 64, 64
  example = [jax.ShapeDtypeStruct((1, 1, 256, 256, 3), jnp.float32), jax.ShapeDtypeStruct((1, lq), jnp.int32),
             jax.ShapeDtypeStruct((1, lq), jnp.int32), jax.ShapeDtypeStruct((1, lt), jnp.int32),
             jax.ShapeDtypeStruct((1, lt), jnp.int32)]
  abstract = params_lib.abstract_params(model, *example)
  specs = params_lib.logical_partition_specs(model, *example)
  param_shardings = sharding.param_shardings(specs, abstract, mesh, rules)
  tx, _ = optimizer.make_optimizer(abstract, learning_rate=5e-5, lr_rules=config_base.PAPER_LR_RULES)
  abstract_state = jax.eval_shape(lambda p: train_step.TrainState.create(p, tx), abstract)
  state_shardings = sharding.train_state_shardings(tx, abstract_state, param_shardings, mesh)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
                       state_shardings)
  bs = global_batch.batch_sharding(mesh)
  batch = {"video": jax.ShapeDtypeStruct((batch_size, 1, 256, 256, 3), jnp.uint8, sharding=bs),
           "query_ids": jax.ShapeDtypeStruct((batch_size, lq), jnp.int32, sharding=bs),
           "query_mask": jax.ShapeDtypeStruct((batch_size, lq), jnp.int32, sharding=bs),
           "target_ids": jax.ShapeDtypeStruct((batch_size, lt), jnp.int32, sharding=bs),
           "target_mask": jax.ShapeDtypeStruct((batch_size, lt), jnp.int32, sharding=bs)}
  loss = losses.make_loss("infonce", temperature=0.07, mesh=mesh, chunk_size=1000)
  frozen = jax.tree.map(lambda m: m == 0.0, optimizer.lr_multipliers(abstract, config_base.PAPER_LR_RULES))
  step = train_step.jit_train_step(train_step.make_train_step(model, tx, loss, rules=rules, frozen=frozen),
                                   mesh=mesh, state_shardings=state_shardings, batch_shardings=bs)
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    lowered = step.jitted.lower(state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
  memory = compiled.memory_analysis()
  print(f"paper config, batch {batch_size:,} on {num_devices} devices (mesh {dict(mesh.shape)}): lowered in "
        f"{lower_s:.1f}s, compiled in {time.perf_counter() - start - lower_s:.1f}s; XLA per-device "
        f"arguments {memory.argument_size_in_bytes / 2**30:.2f} GiB, temp {memory.temp_size_in_bytes / 2**30:.2f} GiB")


def main(argv):
  del argv
  devices = _AOT_DEVICES.value if _AOT.value else _DEVICES.value
  if devices > 1:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", devices)
  import jax  # pylint: disable=g-import-not-at-top
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind} x {jax.device_count()}, python {sys.version.split()[0]}, jax {jax.__version__}")
  if _AOT.value:
    aot_paper(devices, _AOT_BATCH.value)
    return
  header = ("config", "batch", "compile s", "steps/s", "samples/s", "GFLOP/sample", "TFLOP/s", "XLA GFLOP/sample",
            "XLA temp MiB", "peak host MiB")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for spec in _CONFIGS.value:
    r = time_config(spec, _STEPS.value)
    print(f"| {r['config']} | {r['batch']} | {r['compile_s']:.1f} | {r['steps_per_s']:.2f} | {r['samples_per_s']:.0f} | "
          f"{r['gflop_per_sample']:.2f} | {r['tflops']:.3f} | {r['xla_gflop_per_sample']:.2f} | {r['temp_mib']:.0f} | "
          f"{r['peak_host_mib']:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
