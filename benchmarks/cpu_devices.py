r"""A/B of `config.cpu_devices` on a whole train step: one CPU device against one per core.

  python benchmarks/cpu_devices.py --configs=configs/small.py --dtype=float32 --steps=1
  python benchmarks/cpu_devices.py --configs=configs/demo.py:video,configs/demo.py:image --steps=10

For each config it times the step in a process of one CPU device and in a process of `--devices`
devices (default: one per core, `vljepa_jax/cpu_devices.py`), as `python -m vljepa_jax.main`
would run it with `cpu_devices` 1 and N: the two kinds of process alternate, `--rounds` of each,
each building the step, compiling it, warming it up and timing `--steps` steps; medians. Each round
is its own process because a process's device count is fixed once JAX starts, and a one-device
mesh inside a process of two devices is no stand-in for a one-device process (the demo's video
step: 331 against 284 ms). The batch must divide by the device count. CPU only; `--dtype`,
`--batch_size`, `--steps`, `--rounds` and `--host_memory` are `train_step.py`'s flags.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

_CHILD = flags.DEFINE_integer("child_devices", None, "Internal: time one round on this many devices and print JSON.")


def _child_round(devices: int) -> None:
  """One round in this process: the first config's step on `devices` CPU devices, as one JSON line."""
  train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", devices)
  config = train_step_benchmark._override(harness.load_config(flags.FLAGS.configs[0]))  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as workdir:
    step, compile_s, stage_config = train_step_benchmark.warm_step(config, workdir)
    seconds = harness.median_time(step, flags.FLAGS.steps, jax.block_until_ready)
  print(json.dumps({"seconds": seconds, "compile_s": compile_s, "batch": stage_config.batch_size,
                    "dtype": stage_config.dtype, "machine": harness.machine_line()}))


def main(argv):
  del argv  # the children get this command line's flags from sys.argv
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if _CHILD.value:
    _child_round(_CHILD.value)
    return
  from vljepa_jax import cpu_devices  # pylint: disable=g-import-not-at-top
  count = flags.FLAGS.devices or cpu_devices.available_cores()
  for spec in flags.FLAGS.configs:
    rounds = {1: [], count: []}
    for _ in range(flags.FLAGS.rounds):
      for devices, results in rounds.items():
        command = train_step_benchmark.child_command(__file__, f"--configs={spec}", f"--child_devices={devices}")
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    if spec == flags.FLAGS.configs[0]:
      print(rounds[count][0]["machine"].replace(f"x {count},", f"x 1 and x {count},"))
    seconds = {devices: statistics.median(r["seconds"] for r in results) for devices, results in rounds.items()}
    compile_s = {devices: statistics.median(r["compile_s"] for r in results) for devices, results in rounds.items()}
    batch, dtype = rounds[1][0]["batch"], rounds[1][0]["dtype"]
    print(f"{spec} ({dtype}, batch {batch}): "
          + ", ".join(f"{d} device{'s' if d > 1 else ''} {seconds[d] * 1e3:.0f} ms = {batch / seconds[d]:.1f} samples/s "
                      f"(compile {compile_s[d]:.1f} s)" for d in rounds)
          + f"; speed-up {seconds[1] / seconds[count]:.2f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
