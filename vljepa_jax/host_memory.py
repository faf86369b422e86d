"""Host memory for XLA:CPU runs: keep the step's freed temporaries mapped instead of faulting them back in.

Why. An XLA:CPU executable allocates all its temporaries as one block per call (the demo train
step: 244 MiB; `configs/small.py` in float32: 9 GiB) with `malloc`, and frees it when the call
ends. glibc serves a block above 32 MiB with a fresh `mmap` and returns it with `munmap` on
`free`, so every call page-faults its whole temporary buffer back in, 4 KiB at a time, each page
zero-filled by the kernel. Measured on a 2-core AMD EPYC (`benchmarks/README.md`, "Host memory"):
the four-layer SwiGLU block of the demo's predictor, forward + backward, took 20,420 minor faults
(= its 83.6 MB of temporaries / 4 KiB) and 54 ms of system time per call, of 117 ms; the demo step
ran 0.84x of the PyTorch twin's speed with it and 0.98x without. PyTorch does not pay this: its
tensors are separate blocks small enough for glibc's dynamic mmap threshold, so they are reused
from the heap.

What. Three `mallopt` settings, the in-process equivalent of `MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=-1 MALLOC_ARENA_MAX=1`: serve large blocks from the heap (no mmap), never
give freed heap memory back (no trim), and one arena, because a thread's own arena (a heap of at
most 64 MiB) maps any larger block regardless. The process keeps its peak host memory for its
life. That peak is reached within the first steps, not the first one: when calls are queued
ahead, a call's block is freed after the next call has taken its own, so the heap grows until it
holds two calls' temporaries, then stays (a program with 136 MiB of temporaries, 60 calls:
329-735 MiB of heap; 1-4 calls faulted, all among the first 15). The trainer therefore waits for
each step whose temporaries are large (`trainer.waits_for_each_step`), keeping the heap at one
step's.

Waiting for a call's outputs is not enough for that: XLA:CPU marks the outputs ready on its worker
thread and frees the temporaries just after, so a call dispatched as soon as the outputs are ready
can take its own block before the last one is back, and the heap grows by a block. With 528 MiB of
temporaries and each call dispatched right after its outputs were ready, the heap grew to 2.4 GiB
within 7 calls; waiting also for the release (`wait_until_released`, which reads glibc's heap
accounting) kept it at 1.0 GiB over 40 calls (`benchmarks/README.md`, "Sixth pass").

Where the heap still grows. XLA:CPU takes the block with `posix_memalign`, which glibc before 2.38
serves from a chunk of the block plus its alignment and more (sourceware bug 14581), so the hole an
earlier block left is a few bytes too small for the next one. The hole is reused only where it
merges with the top of the heap; with anything allocated above it, the next block comes from new
memory and the hole stays resident. One device's block usually lies at the top; two devices'
blocks, freed in turn, do not (`python benchmarks/aligned_holes.py`; `benchmarks/README.md`,
"Seventh pass").

When. Before the JAX backend starts: its worker threads pick their arena on their first
allocation, so `retain_freed_memory` must run before anything initialises a backend (it says so
and does nothing otherwise). "auto" applies it to CPU-only processes, decided without starting a
backend: `JAX_PLATFORMS` names cpu first, or no accelerator plugin (a `jax_plugins` package or
entry point, or libtpu) is installed. On an accelerator host the step's temporaries live on the
device, and the host's other threads keep their own arenas. It is glibc-specific (Linux); other C
libraries (macOS, musl) keep their behaviour.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import time

from absl import logging

MODES = ("auto", "retain", "system")
RELEASE_TIMEOUT_S = 1.0  # the release follows the outputs by microseconds; this only bounds a stall

# <malloc.h> parameter numbers (stable glibc ABI).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


class _MallInfo2(ctypes.Structure):
  """glibc's `struct mallinfo2` (2.33+): byte counts of the heap."""
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
    return libc
  except (OSError, AttributeError):
    return None


def backend_started() -> bool:
  # JAX has no public "has a backend started?"; xla_bridge has answered it since 0.4.
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return started() if started is not None else bool(getattr(xla_bridge, "_backends", None))


def cpu_only_process(platforms: str | None = None) -> bool:
  """Whether this process will compute on the CPU, decided without starting a JAX backend.

  platforms: a `JAX_PLATFORMS` value; None reads `jax.config.jax_platforms` (which the environment
  variable sets).
  """
  if platforms is None:
    import jax  # pylint: disable=g-import-not-at-top
    platforms = jax.config.jax_platforms or ""
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.util.find_spec("libtpu") is not None or importlib.util.find_spec("jax_plugins") is not None:
    return False
  return not list(importlib.metadata.entry_points(group="jax_plugins"))


def retain_freed_memory(mode: str = "auto") -> bool:
  """Applies the allocator settings above if `mode` asks for them; returns whether they are in effect.

  mode: "auto" (CPU-only processes), "retain" (always, where glibc is the C library) or "system"
  (leave the allocator alone).
  """
  if mode not in MODES:
    raise ValueError(f"host memory mode {mode!r}: expected one of {MODES}")
  if mode == "system" or (mode == "auto" and not cpu_only_process()):
    return False
  libc = _glibc()
  if libc is None:
    logging.info("host memory: not glibc, the C library's allocator is left as it is")
    return False
  if backend_started():
    logging.warning("host memory: the JAX backend has already started, so its threads keep their malloc arenas; "
                    "call host_memory.retain_freed_memory() before anything touches jax devices")
    return False
  # M_TRIM_THRESHOLD = -1 disables trimming (mallopt(3)); each call returns 1 on success.
  ok = all(libc.mallopt(param, value) == 1
           for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1)))
  if not ok:
    logging.warning("host memory: glibc rejected a mallopt setting; the allocator may be partly configured")
  return ok


def heap_in_use() -> int | None:
  """Bytes the C heap has handed out and not taken back (glibc's `mallinfo2`: heap plus mmapped
  blocks), or None where that cannot be read (another C library, or glibc before 2.33)."""
  mallinfo2 = _mallinfo2()
  if mallinfo2 is None:
    return None
  info = mallinfo2()
  return info.uordblks + info.hblkhd


@functools.cache
def _mallinfo2():
  """glibc's `mallinfo2`, typed once (`wait_until_released` polls it), or None."""
  libc = _glibc()
  if libc is None or not hasattr(libc, "mallinfo2"):
    return None
  libc.mallinfo2.restype = _MallInfo2
  return libc.mallinfo2


def wait_until_released(in_use_before: int | None, temp_bytes: int, timeout_s: float = RELEASE_TIMEOUT_S) -> bool:
  """Waits until a finished call's temporaries are back in the heap; returns whether they were in time.

  `in_use_before`: `heap_in_use()` just before the call was dispatched; `temp_bytes`: the call's
  temporaries (its executable's `memory_analysis().temp_size_in_bytes`). The block counts as back
  once less than half of it is still handed out beyond `in_use_before`: other threads (the input
  pipeline) allocate far less than that in the microseconds between the outputs and the release.
  Returns True at once where the heap cannot be read.
  """
  if in_use_before is None:
    return True
  limit = in_use_before + temp_bytes // 2
  deadline = time.monotonic() + timeout_s
  while True:
    in_use = heap_in_use()
    if in_use is None or in_use < limit:
      return True
    if time.monotonic() >= deadline:
      return False
    time.sleep(1e-4)
