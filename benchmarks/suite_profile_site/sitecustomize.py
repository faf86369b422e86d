"""Per-process compile accounting for `benchmarks/suite_profile.py` (loaded through PYTHONPATH).

Python imports `sitecustomize` at start-up, so every process of a profiled test run (pytest, its
xdist workers and every `python` subprocess a test starts) loads this file. It does nothing unless
`VLJEPA_SUITE_PROFILE_DIR` is set. Then, once the process has imported JAX, it listens to JAX's
compile events (`jax.monitoring`: backend compile, tracing, lowering, persistent-cache hits) and,
at exit, writes what it heard to `<dir>/<pid>.json`, with the test that was running
(`PYTEST_CURRENT_TEST`, which pytest sets and subprocesses inherit) and the process's command line.
The listener is attached from an import hook because importing JAX here would cost every process
that never uses it a second.
"""
import atexit
import builtins
import json
import os
import sys
import time

_DIR = os.environ.get("VLJEPA_SUITE_PROFILE_DIR")

if _DIR:
  _START = time.time()
  _COMPILES = []  # (event, program, seconds, test)
  _CACHE_HITS = [0]
  _original_import = builtins.__import__

  def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]

  def _on_duration(event, duration, **kwargs):
    if not event.startswith(("/jax/core/compile/", "/jax/compilation_cache/")):
      return
    _COMPILES.append((event, str(kwargs.get("fun_name", "")), float(duration), _current_test()))

  def _on_event(event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      _CACHE_HITS[0] += 1

  _attached = []

  def _import(name, *args, **kwargs):
    module = _original_import(name, *args, **kwargs)
    monitoring = sys.modules.get("jax._src.monitoring")
    if not _attached and monitoring is not None and hasattr(
        monitoring, "register_event_duration_secs_listener") and hasattr(monitoring, "register_event_listener"):
      # Once: imports still in progress further up the stack come back through here.
      _attached.append(True)
      builtins.__import__ = _original_import
      monitoring.register_event_duration_secs_listener(_on_duration)
      monitoring.register_event_listener(_on_event)
    return module

  builtins.__import__ = _import

  def _write():
    record = {"argv": sys.argv, "pytest": "_pytest" in sys.modules, "jax": bool(_attached),
              "wall_s": time.time() - _START, "compiles": _COMPILES, "cache_hits": _CACHE_HITS[0]}
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
      json.dump(record, f)
    os.replace(path + ".tmp", path)

  atexit.register(_write)
