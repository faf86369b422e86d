"""`config.cpu_devices`: a CPU-only process split into devices, so the step runs data-parallel over the cores."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import tiny_train_config
from vljepa_jax import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_train_config.py")


@pytest.mark.parametrize("requested, batches, cores, expected", [
    (1, [("train", 8)], 2, 1),
    (4, [("train", 8), ("video", 12)], 2, 4),  # an explicit count is taken as given, cores or not
    (-1, [("train", 32)], 2, 2),
    (-1, [("train", 32)], 3, 2),  # 3 does not divide 32: the largest count below it that does
    (-1, [("image", 12), ("video", 18)], 8, 6),  # gcd 6
    (-1, [("train", 7)], 4, 1),
    (-1, [], 3, 3),
])
def test_resolve_count(requested, batches, cores, expected):
  assert cpu_devices.resolve_count(requested, batches, cores=cores) == expected


@pytest.mark.parametrize("requested, batches, message", [
    (0, [], "expected a device count >= 1, or -1"),
    (-2, [], "expected a device count >= 1, or -1"),
    (3, [("image", 12), ("video", 32)], "stage 'video''s global batch 32 does not divide by 3 devices"),
])
def test_resolve_count_refuses(requested, batches, message):
  with pytest.raises(ValueError, match=message):
    cpu_devices.resolve_count(requested, batches, cores=2)


def test_forced_count_reads_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
  assert cpu_devices.forced_count() == 8
  monkeypatch.setenv("XLA_FLAGS", "")
  assert cpu_devices.forced_count() is None


# Each case in its own process: the device count is fixed once the backend starts.
_CHILD = textwrap.dedent("""
    import json, sys
    from vljepa_jax import cpu_devices
    requested, batch, touch_first = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    import jax
    if touch_first:
      jax.devices()
    try:
      result = cpu_devices.split_cpu(requested, [("train", batch)])
    except ValueError as e:
      result = str(e)
    print(json.dumps({"result": result, "devices": jax.device_count(), "cores": cpu_devices.available_cores()}))
""")


def _child(requested, batch, *, touch_first=False, xla_flags=""):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
  out = subprocess.run([sys.executable, "-c", _CHILD, str(requested), str(batch), "1" if touch_first else "0"],
                       capture_output=True, text=True, env=env, check=True, cwd=REPO)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_split_cpu_sets_the_device_count():
  one = _child(1, 6)
  assert one["result"] is None and one["devices"] == 1
  assert _child(3, 6) == {"result": 3, "devices": 3, "cores": one["cores"]}
  per_core = _child(-1, 64)
  expected = max(n for n in range(1, per_core["cores"] + 1) if 64 % n == 0)
  assert per_core["result"] == per_core["devices"] == expected


def test_split_cpu_leaves_a_forced_count_and_refuses_a_started_backend():
  forced = _child(3, 6, xla_flags="--xla_force_host_platform_device_count=2")
  assert forced["result"] is None and forced["devices"] == 2
  late = _child(2, 6, touch_first=True)
  assert "backend has already started" in late["result"] and late["devices"] == 1


def _main(workdir, *overrides):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "vljepa_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
                         *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_main_trains_on_the_devices_it_asks_for(tmp_path):
  """Two devices: the step runs under a 2-way data mesh, and trains as the one-device run does."""
  assert tiny_train_config.get_config().batch_size % 2 == 0  # the premise: two devices can split the batch
  losses = {}
  for devices in (1, 2):
    workdir = tmp_path / f"devices{devices}"
    proc = _main(workdir, f"--config.cpu_devices={devices}", "--config.total_steps=3", "--config.checkpoint_every=3",
                 "--library_info")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "train" / "metrics.jsonl") as f:
      losses[devices] = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    assert (f"cpu devices: {devices}" in proc.stderr) == (devices == 2), proc.stderr[-3000:]
  assert len(losses[1]) == len(losses[2]) == 3
  # The same global batch, split over two devices: the same losses up to summation order.
  assert losses[2] == pytest.approx(losses[1], rel=1e-4)


def test_main_refuses_a_count_the_batch_cannot_split(tmp_path):
  proc = _main(tmp_path, "--config.cpu_devices=3")
  assert proc.returncode == 2
  assert "config.cpu_devices=3: stage 'train''s global batch 8 does not divide by 3 devices" in proc.stderr
  assert not (tmp_path / "train").exists()  # refused before anything was built


def test_main_refuses_cpu_devices_in_a_multi_process_run(tmp_path):
  proc = _main(tmp_path, "--config.cpu_devices=2", "--coordinator_address=127.0.0.1:9", "--num_processes=2",
               "--process_id=0")
  assert proc.returncode == 2
  assert "config.cpu_devices=2 splits one process's CPU into devices; a multi-process run" in proc.stderr
