"""The CPU's cores as JAX devices: data parallelism inside one XLA:CPU process (`config.cpu_devices`).

Why. XLA:CPU runs a batched matrix product on one thread however many cores it has: attention's
QKᵀ and P·V, forward and backward, are batched products. At the `small` config's ViT shapes
(192 × 256×64×256, float32) one is 74 GFLOP/s on a 2-core AMD EPYC, on one core as on two, where
`torch.bmm` reaches 128; splitting the batch into independent products inside one program does not
help (the halves ran one after the other). Two CPU devices do: the same product, its batch split
over a two-device mesh, runs at 128 GFLOP/s (`python benchmarks/xla_cpu_repro.py --parts=bmm
--devices=2`), and a large GEMM keeps its speed. A step made of such products therefore runs
faster as a data-parallel mesh of one device per core, through the same sharded code as a GPU mesh.

The trade-off, measured on that 2-core machine (`benchmarks/README.md`, "CPU devices"):
  * `configs/small.py` in float32 gains 4-8% (batch 32: 15.8 → 14.6 s per step, from 0.94× to
    1.00× the PyTorch twin's speed), but the process holds 1.7-2× the host memory: each device
    allocates its own temporaries from the one retained heap (`host_memory`), and the blocks of two
    devices do not reuse each other's holes (batch 16: 10.6-12.7 GiB against 6.3). That is glibc's
    `posix_memalign` before 2.38: the hole a freed block leaves is a few bytes too small for the
    same aligned request (sourceware bug 14581; `python benchmarks/aligned_holes.py`), so two
    devices' blocks, freed in turn, leave holes that only the top of the heap can replace.
  * The demo loses 8-9%: its step is small, already keeps both cores busy with concurrent thunks and
    multi-threaded GEMMs, and the split adds the gradient all-reduce and a replicated update.
Hence an opt-in, off (1) by default and in every shipped config. Machines with more cores, where
one thread per batched product leaves more of the CPU idle, have the most to gain; that is not
measured here.

What. `config.cpu_devices`: 1 (one device, the default), N (N devices) or -1 (one per core this
process may run on, as `os.sched_getaffinity` says, lowered to the largest count that divides every
stage's batch). It sets `jax_num_cpu_devices` before the backend starts; `config.mesh`'s `-1` axis
then spans the devices. It applies to CPU-only processes (`host_memory.cpu_only_process`): on an
accelerator host it changes nothing. An environment that already fixes the count
(`--xla_force_host_platform_device_count` in `XLA_FLAGS`, as multi-device tests do) keeps it.
"""
from __future__ import annotations

import math
import os
import re
from typing import Sequence

from absl import logging

from vljepa_jax import host_memory

ONE_PER_CORE = -1
_FORCED_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def available_cores() -> int:
  """Cores this process may run on (its CPU affinity), not every core of the machine."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity call
    return os.cpu_count() or 1


def resolve_count(requested: int, batch_sizes: Sequence[tuple[str, int]], cores: int | None = None) -> int:
  """The device count `requested` asks for, checked against the global batches it must split.

  batch_sizes: (stage name, global batch) pairs; each must divide by the count, since the mesh's
  batch axes span every device.
  """
  if requested == ONE_PER_CORE:
    cores = available_cores() if cores is None else cores
    common = math.gcd(*(batch for _, batch in batch_sizes)) if batch_sizes else cores
    return max(count for count in range(1, cores + 1) if common % count == 0)
  if requested < 1:
    raise ValueError(f"config.cpu_devices={requested}: expected a device count >= 1, or -1 for one per core")
  for stage, batch in batch_sizes:
    if batch % requested:
      raise ValueError(f"config.cpu_devices={requested}: stage {stage!r}'s global batch {batch} does not divide "
                       f"by {requested} devices; choose a count that divides it, or -1")
  return requested


def forced_count() -> int | None:
  """The device count `XLA_FLAGS` already forces on the CPU platform, if any."""
  found = _FORCED_COUNT.findall(os.environ.get("XLA_FLAGS", ""))
  return int(found[-1]) if found else None


def count_is_configurable() -> bool:
  """Whether this process's CPU device count is the config's to set: a CPU-only process whose
  `XLA_FLAGS` does not already force one."""
  return host_memory.cpu_only_process() and forced_count() is None


def split_cpu(requested: int, batch_sizes: Sequence[tuple[str, int]] = ()) -> int | None:
  """Makes this process's CPU `requested` devices (see the module docstring); returns the count set.

  None: nothing was changed (1 was asked for, an accelerator process, or `XLA_FLAGS` fixes the
  count). Raises ValueError where the request is invalid or can no longer take effect.
  """
  count = resolve_count(requested, batch_sizes)
  if requested == 1 or not count_is_configurable():
    if requested != 1:
      logging.info("cpu devices: config.cpu_devices=%d is not applied (an accelerator process, or XLA_FLAGS forces "
                   "the CPU device count)", requested)
    return None
  if host_memory.backend_started():
    raise ValueError(f"config.cpu_devices={requested}: the JAX backend has already started, so the CPU's device "
                     "count is fixed; set it before anything touches jax devices")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", count)
  logging.info("cpu devices: %d (config.cpu_devices=%d, %d cores)", count, requested, available_cores())
  return count
