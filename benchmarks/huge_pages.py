r"""Does backing the retained host heap with transparent huge pages speed up an XLA:CPU train step?

  python benchmarks/huge_pages.py --configs=configs/demo.py:video --rounds=3 --steps=5

An A/B in alternating processes (one per variant and round, so each starts from a fresh heap), on
Linux with glibc, with the allocator set as `host_memory` retains it:
  * `4k`: the heap first grown by `--reserve_gib` (one `malloc` and `free`: address space, no pages
    touched), then the config's last-stage step built, warmed up and timed as `train_step.py` times it;
  * `huge`: the same, with the grown heap flagged `MADV_HUGEPAGE` before anything touches it, so the
    step's temporaries and state fault in as 2 MiB pages (fewer TLB misses; no copy, unlike
    `MADV_COLLAPSE` of pages already in place).
It needs the kernel's transparent huge pages in `madvise` or `always` mode
(/sys/kernel/mm/transparent_hugepage/enabled); in `always` mode both variants get them. Each line
gives the step's median and the anonymous memory held in huge pages (`/proc/self/smaps_rollup`).
"""
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_RESERVE_GIB = flags.DEFINE_float("reserve_gib", 3.0, "How far the heap is grown before the step is built.")
_VARIANT = flags.DEFINE_enum("variant", None, ["4k", "huge"], "Internal: time this variant in this process.")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from vljepa_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

_MADV_HUGEPAGE = 14  # <sys/mman.h>
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def grow_heap(reserve_bytes: int, huge: bool) -> None:
  """Grows the (retained) heap by `reserve_bytes` without touching its pages; flags it MADV_HUGEPAGE if `huge`."""
  libc = ctypes.CDLL(None, use_errno=True)
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
  block = libc.malloc(reserve_bytes)
  if not block:
    raise MemoryError(f"--reserve_gib: malloc({reserve_bytes}) failed")
  libc.free(block)  # back to the top of the heap, which is never trimmed while retained
  if not huge:
    return
  with open("/proc/self/maps") as maps:
    heap = [line.split()[0] for line in maps if line.rstrip().endswith("[heap]")]
  for span in heap:
    start, end = (int(address, 16) for address in span.split("-"))
    if libc.madvise(start, end - start, _MADV_HUGEPAGE) != 0:
      raise OSError(ctypes.get_errno(), f"madvise(MADV_HUGEPAGE) of the heap {span}")


def _anon_huge_kib() -> int:
  with open("/proc/self/smaps_rollup") as rollup:
    return next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages"))


def _time_here(spec: str) -> None:
  if not host_memory.retain_freed_memory("retain"):
    raise SystemExit("huge_pages.py needs glibc and a process where JAX has not started")
  grow_heap(int(_RESERVE_GIB.value * 2**30), _VARIANT.value == "huge")
  import jax  # pylint: disable=g-import-not-at-top
  config = train_step_benchmark._override(harness.load_config(spec))  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as workdir:
    step, _, _ = train_step_benchmark.warm_step(config, workdir)
    seconds = harness.median_time(step, flags.FLAGS.steps, jax.block_until_ready)
  print(f"result {seconds} {_anon_huge_kib()}", flush=True)


def main(argv):
  del argv
  specs = flags.FLAGS.configs  # train_step.py's flags: one definition each
  if _VARIANT.value:
    _time_here(specs[0])
    return
  with open(_THP_MODE) as mode:
    print(f"{harness.machine_line()}; transparent huge pages: {mode.read().strip()}")
  print("\n| config | 4k pages: step ms | huge pages: step ms | huge / 4k | anonymous huge pages 4k / huge (MiB) |\n"
        "|---|---|---|---|---|")
  for spec in specs:
    times = {"4k": [], "huge": []}
    held = {}
    for _ in range(flags.FLAGS.rounds):
      for variant in times:
        out = subprocess.run(train_step_benchmark.child_command(__file__, f"--configs={spec}", f"--variant={variant}"),
                             capture_output=True, text=True, check=True).stdout
        _, seconds, kib = next(line for line in out.splitlines() if line.startswith("result ")).split()
        times[variant].append(float(seconds))
        held[variant] = int(kib) / 1024
    small, huge = statistics.median(times["4k"]), statistics.median(times["huge"])
    print(f"| {spec} | {small * 1e3:.1f} ({', '.join(f'{t * 1e3:.0f}' for t in times['4k'])}) "
          f"| {huge * 1e3:.1f} ({', '.join(f'{t * 1e3:.0f}' for t in times['huge'])}) | {huge / small:.3f} "
          f"| {held['4k']:.0f} / {held['huge']:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
