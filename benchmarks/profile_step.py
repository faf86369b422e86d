r"""Where a train step's time goes, in JAX and in the PyTorch twin: per-op breakdowns side by side.

  python benchmarks/profile_step.py                                   # configs/demo.py:video
  python benchmarks/profile_step.py --config=configs/small.py --dtype=float32 --batch_size=8 --top=30

(`--steps`, at most 5, is how many steps are profiled after 3 warm-up steps; figures are per step.)

JAX: the jitted step (`trainer.Stage`, as the main job builds it, on the CPU devices the config's
`cpu_devices` asks for, each step run through `trainer.run_step` as the trainer runs it) runs under
`jax.profiler` with a Perfetto trace; every XLA:CPU thunk event is matched to its instruction in
the compiled HLO, and its time is summed by phase (forward `jvp`, backward `transpose(jvp)`, or the update and metrics
outside both), tower (x_encoder, predictor, y_encoder) and kind (matmul: a YNNPACK/oneDNN/Eigen
dot; copy/transpose: a layout change; broadcast; other fusion). The top single ops follow, with
their JAX source op.

torch: the same step of `benchmarks/torch_reference.py` (eager) under `torch.profiler`, its ops
summed by self CPU time (forward and backward ops alike; autograd's `...Backward` nodes name the
backward ones).

Thunk times are summed over ops, and XLA runs independent thunks concurrently on the CPU's
threads, so on a busy step the JAX sum exceeds the wall time and each op's figure includes time it
shared a core: read the table as shares, and the wall-clock step time printed above it as the
truth (`benchmarks/train_step.py --compare_torch` times both properly, in alternating rounds).
"""
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

# --dtype, --batch_size, --steps and --host_memory are train_step.py's flags (imported below): one definition each.
_CONFIG = flags.DEFINE_string("config", "configs/demo.py:video", "Config (last stage) to profile.")
_TOP = flags.DEFINE_integer("top", 20, "How many single ops to list on each side.")
_TORCH = flags.DEFINE_bool("torch", True, "Also profile the PyTorch twin.")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from vljepa_jax import cpu_devices  # pylint: disable=g-import-not-at-top,wrong-import-position
from vljepa_jax.train import stages  # pylint: disable=g-import-not-at-top,wrong-import-position

TOWERS = ("x_encoder", "predictor", "y_encoder", "y_head")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$", re.M)


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (shape, JAX op_name metadata) of a compiled module's text."""
  out = {}
  for match in _INSTRUCTION.finditer(hlo_text):
    name, shape, _, rest = match.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    out[name] = (shape, op_name.group(1) if op_name else "")
  return out


def classify(name: str, op_name: str) -> tuple[str, str, str]:
  """(phase, tower, kind) of one XLA instruction."""
  phase = "backward" if "transpose(jvp" in op_name else ("forward" if "jvp(" in op_name else "update/metrics")
  tower = next((t for t in TOWERS if f"{t}/" in op_name or f"{t}." in op_name), "-")
  if name.startswith(("ynn_fusion", "onednn", "xnn_fusion", "dot")):
    kind = "matmul"
  elif name.startswith(("copy", "transpose")):
    kind = "copy/transpose"
  elif "broadcast" in name:
    kind = "broadcast"
  elif name.startswith(("scatter", "gather")):
    kind = name.split("_")[0].split(".")[0]
  else:
    kind = "fusion"
  return phase, tower, kind


def thunk_times(trace_dir: str, instructions: dict, steps: int) -> dict[str, float]:
  """Milliseconds per step of every instruction in a `jax.profiler` Perfetto trace."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  per = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in instructions:
      per[event["name"]] += event["dur"] / 1e3 / steps
  return per


def profile_jax(stage, batch, steps: int, top: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  state = stage.init_state(None)
  with jax.set_mesh(stage.mesh):
    compiled = stage.step_fn.jitted.lower(state, batch).compile()
  instructions = hlo_instructions(compiled.as_text())
  # Each step run as the trainer runs it: a big CPU step is waited for, so the heap holds one step's temporaries.
  wait = trainer.wait_temp_bytes(stage.mesh, trainer.temp_bytes_of(compiled))
  for _ in range(3):
    state, metrics = trainer.run_step(stage.step_fn, state, batch, wait)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.run_step(stage.step_fn, state, batch, wait)
  jax.block_until_ready(metrics)
  wall = (time.perf_counter() - start) / steps * 1e3
  trace_dir = tempfile.mkdtemp(prefix="vljepa-profile-")
  try:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(steps):
      state, metrics = trainer.run_step(stage.step_fn, state, batch, wait)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    per = thunk_times(trace_dir, instructions, steps)
  finally:
    shutil.rmtree(trace_dir, ignore_errors=True)
  groups = collections.Counter()
  for name, ms in per.items():
    groups[classify(name, instructions[name][1])] += ms
  print(f"\n## JAX step: {wall:.1f} ms wall per step; {sum(per.values()):.1f} ms of XLA thunks summed\n")
  print("| phase | tower | kind | ms/step | share |")
  print("|---|---|---|---|---|")
  total = sum(groups.values())
  for (phase, tower, kind), ms in groups.most_common():
    if ms >= 0.005 * total:
      print(f"| {phase} | {tower} | {kind} | {ms:.1f} | {ms / total:.1%} |")
  print("\n| ms/step | XLA instruction | shape | JAX op |")
  print("|---|---|---|---|")
  for name, ms in per.most_common(top):
    shape, op_name = instructions[name]
    print(f"| {ms:.2f} | {name} | {shape.split('{')[0]} | {op_name.replace('jit(step)/', '')[-80:]} |")
  return wall


def profile_torch(twin, host, steps: int, top: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import profiler as torch_profiler  # pylint: disable=g-import-not-at-top
  batch = twin.batch_from_numpy(host)
  for _ in range(3):
    twin.step(batch)
  start = time.perf_counter()
  for _ in range(steps):
    twin.step(batch)
  wall = (time.perf_counter() - start) / steps * 1e3
  with torch_profiler.profile(activities=[torch_profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      twin.step(batch)
  averages = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
  total = sum(e.self_cpu_time_total for e in averages) / 1e3 / steps
  print(f"\n## torch eager step: {wall:.1f} ms wall per step; {total:.1f} ms of op self time summed "
        f"({torch.get_num_threads()} threads)\n")
  print("| ms/step | calls/step | op |")
  print("|---|---|---|")
  for event in averages[:top]:
    print(f"| {event.self_cpu_time_total / 1e3 / steps:.2f} | {event.count // steps} | {event.key} |")
  return wall


def main(argv):
  del argv
  host_memory_note = train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  config = harness.load_config(_CONFIG.value)
  config = train_step_benchmark._override(config)  # pylint: disable=protected-access
  # The config's CPU devices (`cpu_devices`), set before anything starts the backend, as the main job sets them.
  cpu_devices.split_cpu(config.cpu_devices, [(name, stage.batch_size) for name, stage in stages.resolve(config)])
  print(harness.machine_line() + host_memory_note)
  with tempfile.TemporaryDirectory() as workdir:
    stage, stage_config, host, batch = train_step_benchmark._stage_and_batch(config, workdir)  # pylint: disable=protected-access
    print(f"config {_CONFIG.value}, batch {stage_config.batch_size}, dtype {stage_config.dtype}")
    steps = max(1, min(flags.FLAGS.steps, 5))
    profile_jax(stage, batch, steps, _TOP.value)
    if _TORCH.value:
      import torch_reference  # pylint: disable=g-import-not-at-top
      profile_torch(torch_reference.build(stage_config, arch=stage.setup.model.config), host, steps, _TOP.value)


if __name__ == "__main__":
  app.run(main)
