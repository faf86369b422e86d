r"""Checkpoint saves of a train state laid out over several CPU devices: the library's handler
against Orbax's default.

  python benchmarks/checkpoint_save.py                                # configs/demo.py:video, 8 devices
  python benchmarks/checkpoint_save.py --configs=configs/small.py --cpu_devices=4 --saves=4

For each config's last stage it lays a train state out as the trainer does (its mesh over
`--cpu_devices` devices, `config.mesh` deciding what is replicated), fills it with random values,
and saves it `--saves` times asynchronously with `checkpointing.Checkpointer`: once with the
library's state handler (`checkpointing.state_handler`: replica-parallel only from
`MIN_REPLICA_SLICE_BYTES` per replica) and once with Orbax's `StandardCheckpointHandler`. Each
variant runs in a fresh child process, since what a first save compiles stays cached in the
process. Printed per config and variant:

  | config | handler | arrays | MiB | first save: compiles | blocked s | total s | later saves: blocked s | total s |

`blocked` is the time the train loop waits in `save()` (the device-to-host copy), `total` the time
until the checkpoint is on disk; later saves are medians.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIGS = train_step_benchmark._CONFIGS  # pylint: disable=protected-access  # --configs, as train_step.py reads it
flags.FLAGS.set_default("configs", ["configs/demo.py:video"])  # a state that fits a laptop many times over
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 8, "CPU devices the state is laid out over.")
_SAVES = flags.DEFINE_integer("saves", 3, "Saves per variant (the first, then the later ones).")
_CHILD = flags.DEFINE_enum("child_handler", None, ["library", "orbax"], "Internal: run one variant and print JSON.")

HANDLERS = ("library", "orbax")


def _random_state(stage):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def fill(abstract):
    if np.issubdtype(abstract.dtype, np.floating):
      host = rng.standard_normal(abstract.shape, dtype=np.float32).astype(abstract.dtype)
    else:
      host = np.zeros(abstract.shape, abstract.dtype)
    return jax.device_put(host, abstract.sharding)
  return jax.tree.map(fill, stage.abstract_state)


def measure(spec: str, handler: str) -> dict:
  """Saves `spec`'s train state `--saves` times with `handler`; what each save cost."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  compiles = []

  def listener(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)
  with tempfile.TemporaryDirectory() as workdir:
    stage, _ = train_step_benchmark._stage(harness.load_config(spec), workdir)  # pylint: disable=protected-access
    state = jax.block_until_ready(_random_state(stage))
    leaves = jax.tree.leaves(state)
    saves = []
    # "orbax": Orbax's own handler with its global type handlers, replica-parallel for every array.
    factory = checkpointing.state_handler if handler == "library" else ocp.PyTreeCheckpointHandler
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=2,
                                              state_handler_factory=factory)
    jax.monitoring.register_event_duration_secs_listener(listener)
    with checkpointer:
      for step in range(_SAVES.value):
        state = state.replace(step=jax.device_put(jax.numpy.int32(step), state.step.sharding))
        start = time.perf_counter()
        checkpointer.save(state, None, {"stage": stage.name})
        blocked = time.perf_counter() - start
        checkpointer.wait()
        saves.append((blocked, time.perf_counter() - start, len(compiles)))
    jax.monitoring.unregister_event_duration_listener(listener)
  later = saves[1:] or saves
  return {"arrays": len(leaves), "mib": sum(x.nbytes for x in leaves) / 2**20, "first_compiles": saves[0][2],
          "first_blocked": saves[0][0], "first_total": saves[0][1],
          "later_blocked": statistics.median(s[0] for s in later), "later_total": statistics.median(s[1] for s in later)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
  if _CHILD.value:
    print(json.dumps({spec: measure(spec, _CHILD.value) for spec in _CONFIGS.value}), flush=True)
    return
  print(harness.machine_line(), flush=True)
  results = {}
  for handler in HANDLERS:
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--child_handler={handler}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    results[handler] = json.loads(out.strip().splitlines()[-1])
  header = ["config", "handler", "arrays", "MiB", "first save: compiles", "blocked s", "total s",
            "later saves: blocked s", "total s"]
  rows = []
  for spec in _CONFIGS.value:
    for handler in HANDLERS:
      r = results[handler][spec]
      rows.append([spec, handler, r["arrays"], f"{r['mib']:.1f}", r["first_compiles"], f"{r['first_blocked']:.2f}",
                   f"{r['first_total']:.2f}", f"{r['later_blocked']:.2f}", f"{r['later_total']:.2f}"])
  harness.print_table(header, rows)


if __name__ == "__main__":
  app.run(main)
