"""Train-step throughput, compile time, memory and FLOPs of experiment configs, against PyTorch.

  python benchmarks/train_step.py                                # demo (video stage) and small
  python benchmarks/train_step.py --compare_torch                # side by side with the PyTorch twin
  python benchmarks/train_step.py --configs=configs/small.py --dtype=float32 --compare_torch
  python benchmarks/train_step.py --configs=configs/small.py --dtype=float32 --compare_torch --isolate_runtimes
  python benchmarks/train_step.py --configs=configs/small.py --dtype=bfloat16   # accelerator: TFLOP/s, MFU
  python benchmarks/train_step.py --aot_paper                   # lower + compile the paper config only

On a CPU each config runs on the CPU devices its `cpu_devices` asks for (1 unless it says
otherwise), as `python -m vljepa_jax.main` would run it; `--devices=N` times every config on N.

For each config it builds the last stage exactly as `python -m vljepa_jax.main` does
(`trainer.Stage`: sharded init, optimizer groups, the jitted donated step), takes one pipeline
batch, and times:
  * compile: lowering + XLA compilation of the train step (seconds);
  * steps/s and samples/s on that fixed device batch, after 3 warm-up steps;
  * peak host memory of the process (ru_maxrss) and XLA's per-device temp memory estimate;
  * analytic FLOPs per sample (`vljepa_jax.models.flops`; frozen towers count forward only), the
    FLOP/s they imply, and XLA's own cost-analysis FLOPs of the compiled step for comparison;
  * on an accelerator, MFU: the analytic FLOP/s over the device's dense bf16 peak (`--peak_tflops`,
    default from a table of known devices).

`--compare_torch` builds the PyTorch twin of the same stage (`benchmarks/torch_reference.py`: Hugging
Face towers, same sizes, same parameters one to one, same optimizer groups; parameter counts are
asserted equal), feeds it the same pipeline batch, and times JAX, torch eager and `torch.compile` in
alternating rounds (`--rounds`, medians), each as the whole step, forward alone and forward +
backward (the phases' order rotating from round to round). It prints one line per config,
  ratio <config>: X.XX (jax S1 samples/s, torch S2 samples/s [eager|compile])
against the faster torch variant, and the machine's large-matmul FLOP/s in JAX and torch
(`--matmul_size`), so each figure can be read as a fraction of what the machine can do. With
`--isolate_runtimes` each runtime runs in a child process of its own, one child per runtime and
round in the same alternation: for a config whose JAX step and `torch.compile` step do not fit in
host memory together (`small` at batch 32 in 24 GiB), at the cost of compiling every round.

`--aot_paper` checks that the paper's full model (ViT-L + Llama-3.2-1B layers 8-15 +
EmbeddingGemma-300M) at the image stage's global batch of 24,000 lowers and compiles for a mesh of
`--aot_devices` virtual CPU devices (FSDP), without executing or allocating it.
"""
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

import harness  # benchmarks/, beside this script
from vljepa_jax import host_memory  # no JAX import: the allocator is set before a backend starts

_CONFIGS = flags.DEFINE_list("configs", ["configs/demo.py:video", "configs/small.py"], "Configs to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per config (per round with --compare_torch).")
_DEVICES = flags.DEFINE_integer("devices", None, "CPU devices for the timed configs (CPU only). Default: each "
                                "config's own `cpu_devices`; configs that ask for different counts are timed in "
                                "one child process per count, since a process's device count is fixed once JAX starts.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override the configs' compute dtype.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Override the configs' global batch size.")
_COMPARE = flags.DEFINE_bool("compare_torch", False, "Time the PyTorch twin side by side (torch_reference.py).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating JAX / torch rounds with --compare_torch (medians).")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", True, "With --compare_torch, also time torch.compile.")
_ISOLATE = flags.DEFINE_bool("isolate_runtimes", False, "With --compare_torch, time JAX, torch eager and "
                             "torch.compile each in a child process of its own, alternating in every round, so that "
                             "a config whose runtimes do not fit in host memory together can still be compared (each "
                             "child builds and compiles its step again).")
_CHILD_RUNTIME = flags.DEFINE_enum("child_runtime", None, ["jax", "eager", "compile"], "Internal "
                                   "(--isolate_runtimes): time one round of this runtime only; print one JSON line.")
_PHASES = flags.DEFINE_bool("phases", True, "With --compare_torch, also time forward and forward + backward alone.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "N of the N x N x N float32 matmul that measures the machine "
                               "(0: skip).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Device peak TFLOP/s for MFU (default: known accelerators, dense "
                           "bf16).")
_HOST_MEMORY = flags.DEFINE_enum("host_memory", "auto", host_memory.MODES, "As the main job's flag "
                                  "(vljepa_jax/host_memory.py); one process, so the torch side runs with it too.")
_AOT = flags.DEFINE_bool("aot_paper", False, "Only lower + compile the paper config at batch 24,000.")
_AOT_DEVICES = flags.DEFINE_integer("aot_devices", 192, "Virtual devices for --aot_paper (the batch must divide by it).")
_AOT_BATCH = flags.DEFINE_integer("aot_batch", 24_000, "Global batch for --aot_paper.")

_PAUSE_S = 0.5  # between timed runs of different variants, see `_timed_rounds`
# Dense bf16 peak TFLOP/s per device (vendor datasheets), matched as substrings of `device_kind`.
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
               ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5", 197.0), ("TPU v4", 275.0))


def _stage(config, workdir):
  from vljepa_jax.train import model_setup, sharding, stages, trainer  # pylint: disable=g-import-not-at-top
  name, stage_config = stages.resolve(config)[-1]
  setup = model_setup.build(config, cache_dir=workdir)
  mesh = sharding.make_mesh(dict(stage_config.mesh))
  return trainer.Stage(stage_config, name, setup, mesh, os.path.join(workdir, name)), stage_config


def _stage_and_batch(config, workdir):
  """The config's last stage, its config, and its pipeline's first batch (host arrays and on the mesh)."""
  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import train_step  # pylint: disable=g-import-not-at-top
  stage, stage_config = _stage(config, workdir)
  host = next(stage.make_iterator())
  host = {k: host[k] for k in train_step.MODEL_INPUTS}
  return stage, stage_config, host, global_batch.to_global_batch(host, stage.mesh)


def child_command(script: str, *flags_: str, dropped: tuple[str, ...] = ()) -> list[str]:
  """The command line that runs `script` again with this command line's flags, except `--configs`,
  `--devices` and `dropped`, which `flags_` replace or leave out."""
  passed = [arg for arg in sys.argv[1:] if not arg.startswith(("--configs", "--devices") + dropped)]
  return [sys.executable, os.path.abspath(script), *passed, *flags_]


def warm_step(config, workdir, compiler_options: dict | None = None, info: dict | None = None):
  """The config's last-stage train step, compiled and run three times: (step(), compile seconds, stage config).

  `step()` runs one step on the pipeline's first batch, carrying the (donated) state along.
  `compiler_options`: XLA options the step is compiled with (see `_jax_variant`). `info`, if given,
  receives what `_jax_variant` measured of the compiled step (memory, FLOPs; with options, `program`).
  """
  stage, stage_config, _, batch = _stage_and_batch(config, workdir)
  result = {} if info is None else info
  step = _jax_variant(stage, stage_config, batch, result, compiler_options)["step"]
  return step, result["compile_s"], stage_config


def rotating_rounds(steps: dict, rounds: int, calls: int) -> dict[str, list[float]]:
  """Seconds per call of each (warmed-up) `steps` function in each round of `calls` calls.

  Round r times the functions starting at the r-th (mod their number), so that no variant of an
  A/B always runs first or last in a round (see `_timed_rounds` for what a position can cost).
  """
  import jax  # pylint: disable=g-import-not-at-top
  names = list(steps)
  timed = {name: [] for name in names}
  for round_index in range(rounds):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      time.sleep(_PAUSE_S)  # the previous variant's pool threads go to sleep first
      timed[name].append(harness.median_time(steps[name], calls, jax.block_until_ready))
  return timed


def alternating_rounds(steps: dict, rounds: int, calls: int) -> dict[str, float]:
  """Median seconds per call of each (warmed-up) `steps` function over `rotating_rounds`."""
  return {name: statistics.median(times) for name, times in rotating_rounds(steps, rounds, calls).items()}


def _retain_host_memory() -> str:
  """Applies `--host_memory` (before any backend starts); the machine line's note of the mode in effect."""
  retained = host_memory.retain_freed_memory(_HOST_MEMORY.value)
  return f", host memory {'retained' if retained else 'system malloc'}"


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


def matmul_gflops(size: int, torch_too: bool) -> dict[str, float]:
  """GFLOP/s of a float32 `size`^3 matmul in JAX (and torch): what this machine's matmul units can do."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  flop = 2.0 * size ** 3
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
  mm = jax.jit(jnp.matmul)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm(ja, jb).block_until_ready()
  out = {"jax": flop / min(harness.median_time(lambda: mm(ja, jb), 3, jax.block_until_ready) for _ in range(5)) / 1e9}
  if torch_too:
    import torch  # pylint: disable=g-import-not-at-top
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch.matmul(ta, tb)
    out["torch"] = flop / min(harness.median_time(lambda: torch.matmul(ta, tb), 3) for _ in range(5)) / 1e9
  return out


def _peak_tflops(device_kind: str) -> float | None:
  if _PEAK.value:
    return _PEAK.value
  return next((peak for name, peak in PEAK_TFLOPS if name.lower() in device_kind.lower()), None)


def _override(config):
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  if _BATCH_SIZE.value:
    config.batch_size = _BATCH_SIZE.value
  return config


RUNTIMES = {"jax": "jax", "eager": "torch eager", "compile": "torch compile"}  # flag value -> timed name


def time_config(spec: str, steps: int, runtimes: tuple[str, ...] = ("jax",)) -> dict:
  """Times one config's step in each of `runtimes` (`RUNTIMES` values), in alternating rounds if several.

  The JAX step is timed alone, as the whole step, unless torch runtimes are compared (here or, with
  `--isolate_runtimes`, in sibling processes): then every runtime's forward and forward + backward
  too (`--phases`). The result carries the JAX step's compile time, memory and FLOPs when JAX ran.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  config = _override(harness.load_config(spec))
  phases = ("step", "forward", "forward+backward") if _COMPARE.value and _PHASES.value else ("step",)
  result = {"config": spec}
  with tempfile.TemporaryDirectory() as workdir:
    stage, stage_config, host, batch = _stage_and_batch(config, workdir)
    variants = {}
    if "jax" in runtimes:
      variants["jax"] = _jax_variant(stage, stage_config, batch, result)
    torch_runtimes = [r for r in runtimes if r != "jax"]
    if torch_runtimes:
      variants.update(_torch_variants(stage, stage_config, host, torch_runtimes))
    # Warm-up: compile every phase, and run each once more after the others have allocated theirs, outside the
    # timed rounds (without the JAX step's call here it timed 10% slower on the demo: 310 against 283 ms).
    for fns in variants.values():
      for phase in phases:
        jax.block_until_ready(fns[phase]())
    timed = _timed_rounds(variants, phases, steps, _ROUNDS.value if len(variants) > 1 else 1)
  result.update(batch=stage_config.batch_size, dtype=stage_config.dtype,
                seconds={k: statistics.median(v) for k, v in timed.items()})
  return result


def _jax_variant(stage, stage_config, batch, result: dict, compiler_options: dict | None = None) -> dict:
  """The JAX step (compiled, warmed up) and its phases; its compile time, memory and FLOPs go in `result`.

  With `compiler_options` (a dict, possibly empty), the step is compiled with those XLA options and
  that executable is what runs, and `result["program"]` fingerprints its optimised HLO; without, the
  stage's jitted step runs, as in the trainer (it reuses the compilation timed here).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import flops  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  holder = {"state": stage.init_state(None)}
  start = time.perf_counter()
  with jax.set_mesh(stage.mesh):
    compiled = stage.step_fn.jitted.lower(holder["state"], batch).compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - start
  step_fn = stage.step_fn if compiler_options is None else compiled
  temp_bytes = trainer.temp_bytes_of(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  wait_temp_bytes = trainer.wait_temp_bytes(stage.mesh, temp_bytes)

  def jax_step():  # as the trainer's loop runs it (a big step on a CPU finishes, and frees, before the next)
    holder["state"], metrics = trainer.run_step(step_fn, holder["state"], batch, wait_temp_bytes)
    return metrics

  for _ in range(3):
    jax.block_until_ready(jax_step())
  data = stage.data
  per_sample = flops.train_flops_per_sample(stage.setup.model.config, trainable=_trainable(stage),
                                            num_frames=data.num_frames, crop_size=data.crop_size,
                                            query_length=data.query_length, target_length=data.target_length)
  batch_size = stage_config.batch_size
  if compiler_options is not None:
    # A fingerprint of the optimised HLO, to compare variants by (options that leave it unchanged left
    # this step alone); only here, as printing a big program's text costs time the plain benchmark need not spend.
    result["program"] = hashlib.sha256(compiled.as_text().encode()).hexdigest()[:10]
  result.update(compile_s=compile_s, gflop_per_sample=per_sample / 1e9,
                xla_gflop_per_sample=(cost or {}).get("flops", float("nan")) / batch_size / 1e9,
                temp_mib=temp_bytes / 2**20,
                peak_host_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  forward, forward_backward = stage.phase_fns()
  # The step donates its state, so the phases read the current parameters at each call.
  return {"step": jax_step, "forward": lambda: forward(holder["state"].params, batch),
          "forward+backward": lambda: forward_backward(holder["state"].params, batch)}


def _torch_variants(stage, stage_config, host, runtimes) -> dict[str, dict]:
  """The PyTorch twin's step and phases, eager and/or compiled (`runtimes`), on the same pipeline batch."""
  import torch_reference  # pylint: disable=g-import-not-at-top

  twin = torch_reference.build(stage_config, arch=stage.setup.model.config)
  jax_total, torch_total = torch_reference.jax_param_counts(stage_config, stage.setup.model.config), twin.param_counts()
  print(f"  parameters (total, trainable): jax {jax_total}, torch {torch_total}; torch AdamW {twin.optimizer_kind}, "
        f"{twin.attn_implementation} attention", flush=True)
  torch_batch = twin.batch_from_numpy(host)
  variants = {}
  if "torch eager" in runtimes:
    variants["torch eager"] = {"step": lambda: twin.step(torch_batch), "forward": lambda: twin.forward_only(torch_batch),
                               "forward+backward": lambda: twin.forward_backward(torch_batch)}
  if "torch compile" in runtimes:
    fast = twin.compiled()
    start = time.perf_counter()
    for fn in (fast.step, fast.forward_only):
      fn(torch_batch)
    print(f"  torch.compile: first calls (compilation) {time.perf_counter() - start:.1f} s", flush=True)
    variants["torch compile"] = {"step": lambda: fast.step(torch_batch),
                                 "forward": lambda: fast.forward_only(torch_batch),
                                 "forward+backward": lambda: fast.forward_backward(torch_batch)}
  return variants


def _timed_rounds(variants: dict[str, dict], phases: tuple[str, ...], steps: int, rounds: int
                  ) -> dict[str, list[float]]:
  """Seconds per call of each variant's phases ("jax", "jax/forward", ...), timed in alternating rounds.

  Each round starts the phases at the next one (step, forward, forward + backward; then forward,
  forward + backward, step; ...), the same order for every variant. With the step always first,
  the JAX step, the first JAX call after the torch variants, ran 13-69 ms above its own forward +
  backward in six runs of the demo, against 9-22 ms timed after its phases or in a process of its
  own (issue 13, ninth pass); rotating spreads that position's cost over every phase and variant.
  """
  import jax  # pylint: disable=g-import-not-at-top
  timed = {f"{name}/{phase}" if phase != "step" else name: [] for name in variants for phase in phases}
  for round_index in range(rounds):
    order = phases[round_index % len(phases):] + phases[:round_index % len(phases)]
    for name, fns in variants.items():
      for phase in order:
        if len(timed) > 1:
          # Runtimes keep their worker threads spinning for a moment after a call (XLA's pool,
          # torch's OpenMP team); a pause lets them sleep before the next variant is timed.
          time.sleep(_PAUSE_S)
        timed[f"{name}/{phase}" if phase != "step" else name].append(
            harness.median_time(fns[phase], steps, jax.block_until_ready))
  return timed


def _isolated(spec: str, devices: int, runtimes: tuple[str, ...]) -> dict:
  """`time_config` with each runtime in a child process of its own, alternating in every round (medians)."""
  names = {name: flag for flag, name in RUNTIMES.items()}
  result, timed, compile_s = {}, {}, []
  for _ in range(_ROUNDS.value):
    for runtime in runtimes:
      command = child_command(__file__, f"--configs={spec}", f"--devices={devices}",
                              f"--child_runtime={names[runtime]}", dropped=("--isolate_runtimes",))
      out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()
      for line in out[:-1]:  # what the child said besides its result: parameter counts, compilation
        print(f"  [{runtime}] {line.strip()}", flush=True)
      child = json.loads(out[-1])
      for key, seconds in child.pop("seconds").items():
        timed.setdefault(key, []).append(seconds)
      if runtime == "jax":
        compile_s.append(child["compile_s"])
        result.update(child)
  result["compile_s"] = statistics.median(compile_s)
  result["seconds"] = {key: statistics.median(v) for key, v in timed.items()}
  return result


def _with_rates(r: dict) -> dict:
  """`r` with the JAX step's rates (steps/s, samples/s, TFLOP/s) filled in from its seconds."""
  seconds = r["seconds"]["jax"]
  return {**r, "steps_per_s": 1 / seconds, "samples_per_s": r["batch"] / seconds,
          "tflops": r["gflop_per_sample"] * r["batch"] / seconds / 1e3}


def aot_paper(num_devices: int, batch_size: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vljepa_jax import losses  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import vljepa  # pylint: disable=g-import-not-at-top
  from vljepa_jax.objectives import contrastive  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import config_base, optimizer, sharding, train_step  # pylint: disable=g-import-not-at-top

  arch = vljepa.paper_config().with_dtypes("bfloat16", "float32")
  arch = arch.replace(x_encoder=arch.x_encoder.replace(remat=True),
                      predictor=arch.predictor.replace(
                          backbone_config=arch.predictor.backbone_config.replace(remat=True)),
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
  tx, _ = optimizer.make_optimizer(abstract, learning_rate=5e-5, lr_rules=config_base.paper_lr_rules("llama"))
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
  objective = contrastive.Contrastive(losses.make_loss("infonce", temperature=0.07, mesh=mesh, chunk_size=1000))
  frozen = jax.tree.map(lambda m: m == 0.0, optimizer.lr_multipliers(abstract, config_base.paper_lr_rules("llama")))
  step = train_step.jit_train_step(train_step.make_train_step(model, tx, objective, rules=rules, frozen=frozen),
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


def _config_device_counts() -> dict[int | None, list[str]]:
  """The configs grouped by the CPU device count each asks for (`cpu_devices`, resolved for its batch).

  One group, keyed None, where the count is not the configs' to choose: an accelerator process, or
  `XLA_FLAGS` forcing a CPU device count.
  """
  from vljepa_jax import cpu_devices  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import stages  # pylint: disable=g-import-not-at-top
  if not cpu_devices.count_is_configurable():
    return {None: list(_CONFIGS.value)}
  groups = {}
  for spec in _CONFIGS.value:
    config = _override(harness.load_config(spec))
    batch = stages.resolve(config)[-1][1].batch_size
    groups.setdefault(cpu_devices.resolve_count(config.cpu_devices, [(spec, batch)]), []).append(spec)
  return groups


def main(argv):
  del argv  # children get this command line's flags from sys.argv
  host_memory_note = _retain_host_memory()  # before any backend starts, as main.py does
  if _AOT.value:
    devices = _AOT_DEVICES.value
  elif _DEVICES.value is not None:
    devices = _DEVICES.value
  else:
    groups = _config_device_counts()
    if len(groups) > 1:
      for count, specs in groups.items():
        print(f"--- {count} CPU device(s): {', '.join(specs)} (a child process)", flush=True)
        subprocess.run(child_command(__file__, f"--configs={','.join(specs)}", f"--devices={count}"), check=True)
      return
    devices = next(iter(groups)) or 1
  if devices > 1:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", devices)
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_reference
  if _CHILD_RUNTIME.value:  # one round of one runtime, for a parent with --isolate_runtimes
    print(json.dumps(time_config(_CONFIGS.value[0], _STEPS.value, (RUNTIMES[_CHILD_RUNTIME.value],))))
    return
  print(harness.machine_line() + host_memory_note)
  if _AOT.value:
    aot_paper(devices, _AOT_BATCH.value)
    return
  device_kind = jax.devices()[0].device_kind
  on_cpu = jax.devices()[0].platform == "cpu"
  matmul = {}
  if _MATMUL.value:
    if _COMPARE.value:
      import torch  # pylint: disable=g-import-not-at-top
      print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    matmul = matmul_gflops(_MATMUL.value, torch_too=_COMPARE.value)
    print(f"large matmul (float32, {_MATMUL.value}^3): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in matmul.items()),
          flush=True)
  peak = None if on_cpu else _peak_tflops(device_kind)
  header = ["config", "dtype", "batch", "compile s", "steps/s", "samples/s", "GFLOP/sample", "TFLOP/s"]
  if matmul:
    header.append("of matmul peak")
  if peak:
    header.append("MFU")
  header += ["XLA GFLOP/sample", "XLA temp MiB", "peak host MiB"]
  rows, ratios, phase_rows = [], [], []
  runtimes = ("jax",)
  if _COMPARE.value:
    runtimes += ("torch eager", "torch compile") if _TORCH_COMPILE.value else ("torch eager",)
  for spec in _CONFIGS.value:
    if _COMPARE.value and _ISOLATE.value:
      r = _with_rates(_isolated(spec, devices, runtimes))
    else:
      r = _with_rates(time_config(spec, _STEPS.value, runtimes))
    row = [r["config"], r["dtype"], r["batch"], f"{r['compile_s']:.1f}", f"{r['steps_per_s']:.2f}",
           f"{r['samples_per_s']:.1f}", f"{r['gflop_per_sample']:.2f}", f"{r['tflops']:.3f}"]
    if matmul:
      row.append(f"{r['tflops'] * 1e3 / max(matmul.values()):.0%}")
    if peak:
      row.append(f"{r['tflops'] / peak:.1%}")
    row += [f"{r['xla_gflop_per_sample']:.2f}", f"{r['temp_mib']:.0f}", f"{r['peak_host_mib']:.0f}"]
    rows.append(row)
    if _COMPARE.value:
      sec, batch = r["seconds"], r["batch"]
      torch_variants = [v for v in ("torch eager", "torch compile") if v in sec]
      best = min(torch_variants, key=lambda v: sec[v])
      jax_sps, torch_sps = batch / sec["jax"], batch / sec[best]
      ratios.append(f"ratio {spec}: {jax_sps / torch_sps:.2f} (jax {jax_sps:.1f} samples/s, torch {torch_sps:.1f} "
                    f"samples/s [{best.split()[1]}])")
      for name in ["jax"] + torch_variants:
        phase_rows.append([spec, name] + [f"{sec[f'{name}/{p}'] * 1e3:.0f}" if f"{name}/{p}" in sec else "-"
                                          for p in ("forward", "forward+backward")] + [f"{sec[name] * 1e3:.0f}",
                                                                                         f"{batch / sec[name]:.1f}"])
    print(f"  {spec}: {r['samples_per_s']:.1f} samples/s", flush=True)
  harness.print_table(header, rows)
  if phase_rows:
    print()
    harness.print_table(["config", "side", "forward ms", "forward+backward ms", "step ms", "samples/s"], phase_rows)
  for line in ratios:
    print(line)


if __name__ == "__main__":
  app.run(main)
