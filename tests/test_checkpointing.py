"""How `checkpointing.Checkpointer` saves a train state replicated over devices.

Orbax's replica-parallel saving cuts each replicated array into one slice per replica with a jitted
op per device, which for a state of many small arrays is hundreds of compiles at the first save. The
library keeps it for large arrays only (`MIN_REPLICA_SLICE_BYTES`); the reference for what each
save compiled is JAX's own compile events, and for what it wrote, the arrays themselves.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import NUM_CPU_DEVICES, REPO
from vljepa_jax.train import checkpointing
from vljepa_jax.train import train_step


def _replicated_state(shapes):
  mesh = jax.make_mesh((NUM_CPU_DEVICES,), ("data",))
  replicated = NamedSharding(mesh, P())
  rng = np.random.default_rng(0)
  params = {f"w{i}": jax.device_put(rng.normal(size=shape).astype(np.float32), replicated)
            for i, shape in enumerate(shapes)}
  state = train_step.TrainState.create(params, optax.adam(1e-3))
  return jax.device_put(state, replicated)


def _save_and_count_compiles(directory, state):
  compiles = []
  def listener(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(duration)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with checkpointing.Checkpointer(str(directory)) as ckpt:
      ckpt.save(state, None, {"stage": "test"})
      ckpt.wait()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return len(compiles)


def _restored(directory, state):
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  with checkpointing.Checkpointer(str(directory)) as ckpt:
    restored, meta = ckpt.restore(0, abstract, None)
  assert meta["stage"] == "test" and meta["step"] == 0
  return restored


def test_small_replicated_arrays_are_saved_without_slicing_them_per_device(tmp_path):
  # Distinct shapes, as a model's norm scales and biases are: each would be a new slice program per device.
  state = _replicated_state([(16 + i,) for i in range(6)] + [(8, 24)])
  assert _save_and_count_compiles(tmp_path, state) == 0
  restored = _restored(tmp_path, state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  assert restored.params["w6"].sharding.is_equivalent_to(state.params["w6"].sharding, 2)


def test_a_large_replicated_array_is_still_saved_replica_parallel(tmp_path):
  # One replica's share of this array is exactly the threshold: each device slices its part.
  rows = checkpointing.MIN_REPLICA_SLICE_BYTES * NUM_CPU_DEVICES // (4 * 256)
  state = _replicated_state([(rows, 256)])
  assert _save_and_count_compiles(tmp_path, state) >= NUM_CPU_DEVICES
  restored = _restored(tmp_path, state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_orbax_global_handlers_are_left_as_they_were(tmp_path):
  """The threshold lives in the checkpointer's own handler: other Orbax users in the process keep Orbax's defaults."""
  before = checkpointing.ocp.type_handlers.get_type_handler(jax.Array)
  with checkpointing.Checkpointer(str(tmp_path)):
    pass
  assert checkpointing.ocp.type_handlers.get_type_handler(jax.Array) is before


def test_checkpoint_save_benchmark_compares_both_handlers():
  """benchmarks/checkpoint_save.py end to end at toy size (plumbing and the compile counts, no timing asserted)."""
  tiny = os.path.join(REPO, "tests", "tiny_train_config.py")
  proc = subprocess.run([sys.executable, "benchmarks/checkpoint_save.py", f"--configs={tiny}", "--cpu_devices=2",
                         "--saves=1"], cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ", cpu x 2," in proc.stdout.splitlines()[0], proc.stdout
  rows = {cells[1]: cells for cells in (line.split(" | ") for line in proc.stdout.splitlines()
                                        if line.startswith(f"| {tiny} |"))}
  assert sorted(rows) == ["library", "orbax"], proc.stdout
  assert rows["library"][2] == rows["orbax"][2]  # the same state: as many arrays
  # Two replicas of every array: Orbax's default slices the small ones per device, the library's handler does not.
  assert int(rows["library"][4]) == 0 < int(rows["orbax"][4]), proc.stdout
