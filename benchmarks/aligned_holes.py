r"""Why the retained heap grows past one step's temporaries on several CPU devices: glibc's `posix_memalign`.

  python benchmarks/aligned_holes.py                  # both parts
  python benchmarks/aligned_holes.py --parts=malloc   # glibc alone, in a second

XLA:CPU allocates a step's temporaries as one block per device with `posix_memalign`. glibc before
2.38 serves such a call by asking its heap for the block plus the alignment and a minimum chunk
(sourceware bug 14581, addressed in 2.38), so the hole a freed block of the same size leaves is a few
bytes too small to take it again. The hole is reused only where it merges with the top of the heap;
where anything was allocated above it, the next block comes from new memory and the hole stays
resident (`host_memory` keeps freed memory mapped, so the process's memory grows by a block).

Two parts, each with the allocator set as `host_memory.retain_freed_memory` sets it:
  1. `malloc`: a block of `--block_mib`, a small block allocated above it, the first freed, then the
     same request again: with `malloc` it lands in the hole, with `posix_memalign(64)` it does not
     (on glibc < 2.38), and the heap grows by the block.
  2. `xla`: a jitted program (a two-layer MLP's gradient step) sized by `--block_mib` (its
     temporaries per device are about 0.6 of it: 160 MiB at the default 256), run `--calls` times
     the way the trainer runs a big CPU step (`trainer.run_step`: each call waited for until its
     temporaries are back in the heap), on 1 CPU device and on `--devices`, each in a process of
     its own: the heap and resident memory after each call.
     Two devices' blocks are freed in turn, so one of them often has a neighbour above it.
"""
import ctypes
import os
import subprocess
import sys

from absl import app
from absl import flags

_PARTS = flags.DEFINE_list("parts", ["malloc", "xla"], "Which parts to run: malloc, xla.")
_BLOCK_MIB = flags.DEFINE_integer("block_mib", 256, "Block size (malloc) or temporaries per device (xla), in MiB.")
_DEVICES = flags.DEFINE_integer("devices", 2, "CPU devices for the xla part's second process.")
_CALLS = flags.DEFINE_integer("calls", 12, "Calls of the xla part's program.")
_CHILD_DEVICES = flags.DEFINE_integer("child_devices", 0, "Internal: run the xla part here on this many devices.")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vljepa_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

_ALIGNMENT = 64


def _libc() -> ctypes.CDLL:
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  libc.malloc_usable_size.restype = ctypes.c_size_t
  libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
  return libc


def glibc_version() -> tuple[int, int]:
  libc = _libc()
  libc.gnu_get_libc_version.restype = ctypes.c_char_p
  major, minor = libc.gnu_get_libc_version().decode().split(".")[:2]
  return int(major), int(minor)


def heap_bytes() -> int:
  """The main heap's size (glibc's `mallinfo2().arena`): what `host_memory` keeps mapped."""
  return host_memory._mallinfo2()().arena  # pylint: disable=protected-access


def reuses_hole(aligned: bool, block_bytes: int) -> dict:
  """Frees a block with another allocated above it and asks for the same size again: the freed
  block's chunk (the hole, its neighbours being in use), whether the new block lands in it, and how
  much the heap grew. The block above and the new one stay allocated, so that a later call's hole
  is bounded the same way whatever this one left."""
  libc = _libc()

  def allocate(size: int) -> int:
    if not aligned:
      return libc.malloc(size)
    address = ctypes.c_void_p()
    if libc.posix_memalign(ctypes.byref(address), _ALIGNMENT, size) != 0:
      raise MemoryError(f"posix_memalign({_ALIGNMENT}, {size})")
    return address.value

  first = allocate(block_bytes)
  allocate(block_bytes // 4)  # from the top of the heap, above the first block; it stays allocated
  hole = libc.malloc_usable_size(first) + ctypes.sizeof(ctypes.c_size_t)  # + the chunk's size field
  libc.free(first)
  heap_before = heap_bytes()
  again = allocate(block_bytes)
  grown = heap_bytes() - heap_before
  return {"reused": again == first, "hole": hole, "grown": grown}


def xla_calls(devices: int, block_bytes: int, calls: int) -> None:
  """The xla part in this process (which must not have started JAX): prints one line per call."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", devices)
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top

  mesh = jax.make_mesh((devices,), ("batch",))
  width, hidden = 1024, 4096
  # XLA keeps about 2.5 (rows, hidden) float32 arrays of temporaries for this step.
  rows = max(block_bytes // (16 * hidden), 8)

  def step(w, x):
    loss = lambda w: (jax.numpy.tanh(jax.numpy.tanh(x @ w) @ w.T) ** 2).sum()
    grad = jax.grad(loss)(w)
    return w - 1e-3 * grad, {"grad_sum": grad.sum()}

  x = jax.device_put(np.full((rows * devices, width), 0.01, np.float32), NamedSharding(mesh, PartitionSpec("batch")))
  w = jax.device_put(np.full((width, hidden), 0.01, np.float32), NamedSharding(mesh, PartitionSpec()))
  compiled = jax.jit(step, donate_argnums=(0,)).lower(w, x).compile()
  temp = trainer.temp_bytes_of(compiled)
  print(f"temp {temp}", flush=True)
  for _ in range(calls):
    w, _ = trainer.run_step(compiled, w, x, max(temp, 1))
    with open("/proc/self/statm") as statm:
      resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    print(f"call {heap_bytes()} {resident}", flush=True)


def _xla_part(devices: int) -> tuple[int, list[tuple[int, int]]]:
  command = [sys.executable, os.path.abspath(__file__), f"--child_devices={devices}",
             f"--block_mib={_BLOCK_MIB.value}", f"--calls={_CALLS.value}"]
  out = subprocess.run(command, capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout.splitlines()
  temp = int(next(line for line in out if line.startswith("temp ")).split()[1])
  heap = [tuple(int(v) for v in line.split()[1:]) for line in out if line.startswith("call ")]
  return temp, heap


def main(argv):
  del argv
  if not host_memory.retain_freed_memory("retain"):
    raise SystemExit("aligned_holes.py needs glibc (mallopt, mallinfo2), before JAX starts")
  block = _BLOCK_MIB.value * 2**20
  if _CHILD_DEVICES.value:
    xla_calls(_CHILD_DEVICES.value, block, _CALLS.value)
    return
  version = glibc_version()
  print(f"glibc {version[0]}.{version[1]} (sourceware bug 14581 was addressed in 2.38)")
  gib = lambda b: f"{b / 2**30:.2f}"
  if "malloc" in _PARTS.value:
    print(f"\n| {_BLOCK_MIB.value} MiB block, freed below another, asked for again "
          "| the freed chunk minus the block (B) | lands in the hole | heap grew by (GiB) |\n|---|---|---|---|")
    for aligned in (True, False):  # the aligned case first, on the heap as the process started it
      r = reuses_hole(aligned, block)
      name = f"posix_memalign({_ALIGNMENT})" if aligned else "malloc"
      print(f"| {name} | {r['hole'] - block:,} | {'yes' if r['reused'] else 'no'} | {gib(r['grown'])} |")
  if "xla" in _PARTS.value:
    print(f"\n| CPU devices | temporaries per device (MiB) | heap after call 1 / {_CALLS.value} (GiB) "
          f"| resident after call 1 / {_CALLS.value} (GiB) | blocks the heap holds beyond call 1's |\n"
          "|---|---|---|---|---|")
    for devices in (1, _DEVICES.value):
      temp, heap = _xla_part(devices)
      extra = (heap[-1][0] - heap[0][0]) / temp
      print(f"| {devices} | {temp / 2**20:.0f} | {gib(heap[0][0])} / {gib(heap[-1][0])} "
            f"| {gib(heap[0][1])} / {gib(heap[-1][1])} | {extra:.1f} |")


if __name__ == "__main__":
  app.run(main)
