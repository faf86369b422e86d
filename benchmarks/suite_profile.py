r"""Where the test suite's time goes: JAX compilation per program, per test and per subprocess.

  python benchmarks/suite_profile.py                        # the README's test command
  python benchmarks/suite_profile.py -- -q tests/test_trainer.py

Runs pytest (by default with the arguments of the README's test command, read from README.md;
anything after `--` replaces them) with `benchmarks/suite_profile_site` on PYTHONPATH, so
that every process of the run, xdist workers and the `python` subprocesses tests start included,
records JAX's compile events (`suite_profile_site/sitecustomize.py`). Then prints:

  - the run's wall time, and the seconds all its processes spent in XLA's backend compile, in
    tracing and in lowering to MLIR, with the number of compiles and of persistent-cache hits;
  - the programs (JAX's function names) that took the most backend compile time, with counts;
  - the tests that did, and the subprocesses that imported JAX (by script) with their wall time
    (helpers that never do, such as multiprocessing's resource tracker, live as long as the
    process that started them and would only blur the column).

Compile seconds overlap: the two xdist workers and the subprocesses compile at the same time, so
they add up to more than the wall time. Backend compile seconds include persistent-cache lookups,
which are short. Timing figures from this script are for reading shares, not for comparing runs.
"""
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_TOP = flags.DEFINE_integer("top", 15, "Rows per table.")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suite_profile_site")
BACKEND = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HITS = "/jax/compilation_cache/cache_hits"


def readme_pytest_args() -> list[str]:
  """The arguments of the README's test command (`... && python -m pytest ARGS`), so the two cannot drift."""
  with open(os.path.join(REPO, "README.md")) as f:
    lines = [line for line in f if "python -m pytest " in line]
  if not lines:
    raise SystemExit("README.md has no `python -m pytest` command; pass the pytest arguments after `--`")
  return lines[0].split("python -m pytest ", 1)[1].split()


def run_pytest(pytest_args: list[str], out_dir: str) -> tuple[int, float]:
  """pytest's exit code and wall seconds, every process recording into `out_dir`."""
  path = os.pathsep.join(p for p in (SITE, os.environ.get("PYTHONPATH", "")) if p)
  env = {**os.environ, "PYTHONPATH": path, "VLJEPA_SUITE_PROFILE_DIR": out_dir}
  start = time.perf_counter()
  code = subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=REPO, env=env)
  return code, time.perf_counter() - start


def _script(record: dict) -> str:
  """A process's name for the tables: pytest's own processes, or the script or module a test ran."""
  argv = record["argv"]
  if record["pytest"]:
    return "pytest (controller, xdist workers)"
  if not argv or argv[0] == "-c":
    return "python -c"
  if argv[0].endswith("__main__.py"):
    return "python -m " + os.path.basename(os.path.dirname(argv[0]))
  return os.path.relpath(argv[0], REPO) if os.path.isabs(argv[0]) else argv[0]


def summarise(out_dir: str, wall_s: float, top: int) -> None:
  records = []
  for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
    with open(path) as f:
      records.append(json.load(f))
  seconds, counts = collections.Counter(), collections.Counter()
  by_program, program_counts = collections.Counter(), collections.Counter()
  by_test = collections.Counter()
  by_script, script_counts, script_compile = collections.Counter(), collections.Counter(), collections.Counter()
  for record in records:
    script = _script(record)
    counts[CACHE_HITS] += record["cache_hits"]
    if not record["pytest"] and record["jax"]:
      by_script[script] += record["wall_s"]
      script_counts[script] += 1
    for event, program, duration, test in record["compiles"]:
      seconds[event] += duration
      counts[event] += 1
      if event == BACKEND:
        by_program[program] += duration
        program_counts[program] += 1
        by_test[test or "(outside a test)"] += duration
        script_compile[script] += duration
  print(f"pytest: {wall_s:.1f} s wall, {len(records)} processes")
  print(f"backend compile: {seconds[BACKEND]:.1f} s over {counts[BACKEND]} compiles "
        f"({counts[CACHE_HITS]} persistent-cache hits); tracing {seconds[TRACE]:.1f} s; "
        f"lowering {seconds[LOWER]:.1f} s (seconds summed over processes)")
  print()
  harness.print_table(["program", "compiles", "compile s"],
                      [[name, program_counts[name], f"{s:.2f}"] for name, s in by_program.most_common(top)])
  print()
  harness.print_table(["test", "compile s"], [[name, f"{s:.2f}"] for name, s in by_test.most_common(top)])
  print()
  harness.print_table(["subprocess", "runs", "wall s", "compile s"],
                      [[name, script_counts[name], f"{s:.1f}", f"{script_compile[name]:.1f}"]
                       for name, s in by_script.most_common(top)])
  pytest_compile = script_compile["pytest (controller, xdist workers)"]
  print(f"\nbackend compile in pytest's own processes: {pytest_compile:.1f} s; in subprocesses: "
        f"{seconds[BACKEND] - pytest_compile:.1f} s")


def main(argv):
  pytest_args = argv[1:] or readme_pytest_args()
  with tempfile.TemporaryDirectory(prefix="vljepa-suite-profile-") as out_dir:
    code, wall_s = run_pytest(pytest_args, out_dir)
    summarise(out_dir, wall_s, _TOP.value)
  if code != 0:
    sys.exit(f"pytest exited {code}")


if __name__ == "__main__":
  app.run(main)
