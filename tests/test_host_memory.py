"""`host_memory`: with 'retain', an XLA:CPU step stops page-faulting its temporaries in on every call."""
import ctypes
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from vljepa_jax import host_memory

# One process per mode: the allocator must be set before the JAX backend starts. The program's
# temporaries (~135 MB, above glibc's largest mmap threshold and a thread arena's 64 MiB heap) are
# one block per call; the child prints the median minor page faults per call and that block's size.
# Products over 32 features keep the (8192, 2048) temporaries at a fraction of the work of wide
# ones (a call: ~60 ms against ~320 ms over 256 features, 2-core AMD EPYC).
_CHILD = textwrap.dedent("""
    import resource, sys
    from vljepa_jax import host_memory
    applied = host_memory.retain_freed_memory(sys.argv[1])
    import jax, jax.numpy as jnp
    f = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w.T) ** 2)))
    w, x = jnp.ones((32, 2048)) * 0.01, jnp.ones((8192, 32))
    temp = f.lower(w, x).compile().memory_analysis().temp_size_in_bytes
    per_call = []
    for _ in range(int(sys.argv[2])):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      jax.block_until_ready(f(w, x))
      per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # Median of the second half. Retained, the heap grows over the first calls until it holds the
    # temporaries of two overlapping calls (one call's block is freed after the next has taken its
    # own), then stops: 1-7 of 30 calls faulted, at most 2 of them in the second half (2-core AMD
    # EPYC, 12 runs). The median of the first 12 calls was a faulting one in 3 of 12 runs (products
    # over 256 features, 60 calls). glibc's default faults on every call, so fewer calls show it.
    faults = sorted(per_call[len(per_call) // 2:])[len(per_call) // 4]
    print(applied, faults, temp)
""")


def _faults_per_call(mode: str) -> tuple[bool, float, int]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  calls = "8" if mode == "system" else "30"
  out = subprocess.run([sys.executable, "-c", _CHILD, mode, calls], capture_output=True, text=True, env=env,
                       check=True)
  applied, faults, temp = out.stdout.split()
  return applied == "True", float(faults), int(temp)


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's (Linux)")  # pylint: disable=protected-access
def test_retain_stops_per_call_page_faults():
  applied, faults_system, temp = _faults_per_call("system")
  assert not applied
  assert temp > 100 * 2**20, temp
  # glibc's default: the temporaries come back as fresh pages on every call.
  assert faults_system > 0.5 * temp / 4096, (faults_system, temp)
  applied, faults_retained, _ = _faults_per_call("retain")
  assert applied
  # Measured (2-core AMD EPYC): ~33,000-38,000 faults per call with glibc's defaults, 0 retained.
  assert faults_retained < 0.05 * faults_system, (faults_retained, faults_system)


def test_cpu_only_process_follows_jax_platforms():
  assert host_memory.cpu_only_process("cpu")
  assert not host_memory.cpu_only_process("cuda,cpu")
  assert not host_memory.cpu_only_process("tpu")


def test_after_backend_start_nothing_is_changed_and_bad_modes_fail():
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()
  assert not host_memory.retain_freed_memory("retain")
  assert not host_memory.retain_freed_memory("system")
  with pytest.raises(ValueError, match="expected one of"):
    host_memory.retain_freed_memory("keep")


_GLIBC_HEAP = pytest.mark.skipif(host_memory.heap_in_use() is None, reason="mallinfo2 is glibc's (2.33+)")


@_GLIBC_HEAP
def test_wait_until_released_waits_for_a_block_freed_on_another_thread():
  libc = ctypes.CDLL(None)
  libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
  size = 256 * 2**20
  before = host_memory.heap_in_use()
  block = libc.malloc(size)
  assert block and host_memory.heap_in_use() - before >= size  # glibc's own accounting sees the block
  freer = threading.Timer(0.3, libc.free, (block,))
  start = time.monotonic()
  freer.start()
  assert host_memory.wait_until_released(before, size, timeout_s=10.0)
  assert time.monotonic() - start >= 0.25  # it waited for the free, not less
  freer.join()

  before = host_memory.heap_in_use()
  block = libc.malloc(size)
  try:  # never freed in time: it gives up after the timeout
    start = time.monotonic()
    assert not host_memory.wait_until_released(before, size, timeout_s=0.2)
    assert 0.2 <= time.monotonic() - start < 5.0
  finally:
    libc.free(block)
  assert host_memory.wait_until_released(None, size)  # no heap to read: nothing to wait for
