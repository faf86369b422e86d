"""What every benchmark script measures with, and nothing else (no flags, no JAX at import).

Scripts put `benchmarks/` on `sys.path` and `import harness`: loading a config the way
`--config=path[:arg]` does, the machine line every printed figure carries, the mean time of
repeated calls, and the markdown table results are printed as.
"""
import os
import platform
import time


def load_config(spec: str):
  """`path/to/config.py[:arg]` -> its `get_config(arg)`, as the `--config` flag loads it."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  module = config_flags.config_flags._LoadConfigModule(f"{path}_config", path)  # pylint: disable=protected-access
  return module.get_config(arg) if arg else module.get_config()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name with its family and model numbers (`AMD EPYC (family 25, model 17)`), where Linux says.

  Figures from two machines differ by more than their core counts: the same "AMD EPYC" is a Zen 2, 3 or 4
  part, and a KVM guest may show no more than the vendor's name. Elsewhere: `platform.processor()`.
  """
  fields = {}
  try:
    with open(cpuinfo) as f:
      for line in f:
        if not line.strip():
          break  # the first processor's block says it for all of them
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  name = fields.get("model name") or platform.processor() or platform.machine()
  if "cpu family" in fields and "model" in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name


def machine_line(devices: bool = True) -> str:
  """`machine: <cpu>, <n> cores, <device> x <count>, python <v>, jax <v>`; without `devices`, only the host
  and Python (for scripts that must not start JAX's backend)."""
  host = f"machine: {cpu_model()}, {os.cpu_count()} cores"
  if not devices:
    return f"{host}, python {platform.python_version()}"
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{host}, {jax.devices()[0].device_kind} x {jax.device_count()}, python {platform.python_version()}, "
          f"jax {jax.__version__}")


def median_time(fn, calls: int, sync=lambda out: out) -> float:
  """Seconds per call of `fn()` over `calls` calls, waiting for the last result."""
  start = time.perf_counter()
  out = None
  for _ in range(calls):
    out = fn()
  sync(out)
  return (time.perf_counter() - start) / calls


def print_table(header, rows) -> None:
  """A markdown table: `header` cells, then one line per row (cells printed with `str`)."""
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
