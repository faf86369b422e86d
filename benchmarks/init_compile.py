r"""Compile time of the random-init program: XLA's default options against the library's.

  python benchmarks/init_compile.py                                  # configs/demo.py:video and configs/small.py
  python benchmarks/init_compile.py --configs=tests/tiny_train_config.py

For each config's last stage it lowers `trainer.Stage.model_init` (the model's init as a function of
a key, what `Stage.random_params` jits) once, compiles it with the library's compiler options
(`trainer.init_compiler_options`: LLVM level 1 on a CPU) and with XLA's defaults, runs each, and
prints a table:

  | config | prng | library compile s | default compile s | library run ms | default run ms | parameters |

`parameters` says whether both programs gave the same parameters: bit-equal, or the largest
absolute difference. The library's program is compiled first, so any warm-up of the compiler
favours the default. JAX's persistent compilation cache is turned off here; keys are JAX's default
implementation (`JAX_DEFAULT_PRNG_IMPL` chooses another).
"""
import os
import sys
import tempfile
import time

from absl import app

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIGS = train_step_benchmark._CONFIGS  # pylint: disable=protected-access  # --configs, as train_step.py reads it


def compare(spec: str) -> list[str]:
  """One table row for `spec`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as workdir:
    config = train_step_benchmark._override(harness.load_config(spec))  # pylint: disable=protected-access
    stage, _ = train_step_benchmark._stage(config, workdir)  # pylint: disable=protected-access
    key = jax.random.key(stage.config.seed)
    lowered = jax.jit(stage.model_init()).lower(key)
    compile_s, run_ms, params = {}, {}, {}
    for name, options in (("library", trainer.init_compiler_options(stage.mesh)), ("default", None)):
      start = time.perf_counter()
      compiled = lowered.compile(compiler_options=options)
      compile_s[name] = time.perf_counter() - start
      jax.block_until_ready(compiled(key))  # the first run pays for fresh pages
      start = time.perf_counter()
      params[name] = jax.device_get(compiled(key))
      run_ms[name] = (time.perf_counter() - start) * 1e3
    pairs = list(zip(jax.tree.leaves(params["library"]), jax.tree.leaves(params["default"])))
    if all(np.array_equal(a, b) for a, b in pairs):
      verdict = f"bit-equal ({len(pairs)} arrays)"
    else:
      verdict = f"max abs difference {max(float(np.max(np.abs(a - b))) for a, b in pairs):.2e}"
  impl = str(jax.config.jax_default_prng_impl)
  return [spec, impl, f"{compile_s['library']:.1f}", f"{compile_s['default']:.1f}", f"{run_ms['library']:.0f}",
          f"{run_ms['default']:.0f}", verdict]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_compilation_cache", False)  # every compile below is a real one
  print(harness.machine_line(), flush=True)
  rows = [compare(spec) for spec in _CONFIGS.value]
  header = ["config", "prng", "library compile s", "default compile s", "library run ms", "default run ms",
            "parameters"]
  harness.print_table(header, rows)


if __name__ == "__main__":
  app.run(main)
