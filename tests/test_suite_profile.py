"""`benchmarks/suite_profile.py`: compile time attributed to programs, tests and subprocesses.

The profiled run is a two-test pytest session written here: one test compiles a function in
process, the other in a `python -c` subprocess. Each named program must appear once, under its test,
and the subprocess in its own row; nothing here is timed.
"""
import os
import subprocess
import sys
import textwrap

from conftest import REPO

_TESTS = textwrap.dedent('''
    import subprocess
    import sys

    import jax
    import jax.numpy as jnp


    def test_in_process():
      def profiled_in_process(x):
        return jnp.sin(x) * 2
      jax.jit(profiled_in_process)(jnp.ones(3)).block_until_ready()


    def test_in_a_subprocess():
      code = ("import jax, jax.numpy as jnp\\n"
              "def profiled_in_child(x):\\n  return jnp.cos(x) + 1\\n"
              "jax.jit(profiled_in_child)(jnp.ones(3)).block_until_ready()\\n")
      subprocess.run([sys.executable, "-c", code], check=True)
''')


def test_compiles_are_attributed_to_their_program_test_and_process(tmp_path):
  (tmp_path / "test_profiled.py").write_text(_TESTS)
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "PYTEST_ADDOPTS")}
  proc = subprocess.run([sys.executable, "benchmarks/suite_profile.py", "--", "-q", "-p", "no:cacheprovider",
                         "--rootdir", str(tmp_path), str(tmp_path)],
                        cwd=REPO, capture_output=True, text=True, timeout=300, env={**env, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in proc.stdout.splitlines()
          if line.startswith("| ")}
  # Each program compiled once; the child's compile is charged to the test that started it.
  for program, test in (("jit(profiled_in_process)", "test_in_process"),
                        ("jit(profiled_in_child)", "test_in_a_subprocess")):
    assert rows[program][1] == "1" and float(rows[program][2].strip(" |")) > 0, proc.stdout
    assert f"test_profiled.py::{test}" in rows, proc.stdout
  assert rows["python -c"][1] == "1", proc.stdout
  summary = [line for line in proc.stdout.splitlines() if line.startswith("backend compile in pytest's own")]
  assert len(summary) == 1, proc.stdout
