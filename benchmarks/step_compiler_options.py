r"""A/B of XLA compile options on a whole train step: the step as XLA compiles it by default against
the same step compiled with other options, in rotating rounds in one process.

  python benchmarks/step_compiler_options.py --configs=configs/demo.py:video \
      --variant=eigen_dots:xla_cpu_experimental_ynn_fusion_type=
  python benchmarks/step_compiler_options.py --configs=configs/small.py --dtype=float32 --batch_size=8 \
      --steps=1 --rounds=4 --variant=eigen_dots:xla_cpu_experimental_ynn_fusion_type=

Each `--variant=NAME:OPTION=VALUE` adds one XLA option to the variant NAME (repeat the flag, with
the same NAME, for several options; VALUE `true`/`false` is a bool, digits an integer, anything
else a string, empty included). Every variant's options are checked on a one-op program before the
first step compiles, so a misspelt option fails in a second, naming the variant.

The config's last stage is built once per variant (`train_step.warm_step`), each step compiled
with its options (the default with none) and warmed up; then the variants are timed in rotating
rounds (`--rounds`, `--steps` calls per round, medians), each round starting at the next variant.
Printed per variant: compile seconds, ms per step, the ratio to the default, in how many rounds it
beat the default's round, the loss after warm-up (the same model computes the same loss, up to
rounding) and a fingerprint of the compiled program's optimised HLO (an option that leaves it
unchanged did not change this step's HLO). On the 2-core VM one run resolves about 10% with four variants in one process
(a variant whose optimised HLO was the default's measured 1.109): read the rounds, and repeat.
`--dtype`, `--batch_size`, `--steps`, `--rounds` and `--host_memory` are `train_step.py`'s flags.
"""
import os
import statistics
import sys
import tempfile

from absl import app
from absl import flags

_VARIANTS = flags.DEFINE_multi_string("variant", [], "NAME:OPTION=VALUE, one XLA compile option of variant NAME "
                                      "(repeatable).")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT = "default"


def _value(text: str) -> bool | int | str:
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  if text.lstrip("-").isdigit():
    return int(text)
  return text


def parse_variants(specs: list[str]) -> dict[str, dict]:
  """`["name:option=value", ...]` -> {"default": {}, name: {option: value, ...}, ...}, in order of appearance."""
  variants = {DEFAULT: {}}
  for spec in specs:
    name, sep, option = spec.partition(":")
    key, eq, value = option.partition("=")
    if not sep or not eq or not name or not key:
      raise ValueError(f"--variant={spec!r}: expected NAME:OPTION=VALUE (e.g. "
                       "eigen_dots:xla_cpu_experimental_ynn_fusion_type=)")
    if name == DEFAULT:
      raise ValueError(f"--variant={spec!r}: {DEFAULT!r} is the step compiled with XLA's defaults; name yours otherwise")
    variants.setdefault(name, {})[key] = _value(value)
  if len(variants) == 1:
    raise ValueError("give at least one --variant=NAME:OPTION=VALUE to compare with the default")
  return variants


def check_options(variants: dict[str, dict]) -> None:
  """Compiles a one-op program with each variant's options: an option XLA rejects fails here, named."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  probe = jax.jit(lambda x: x + 1).lower(jnp.float32(0))
  for name, options in variants.items():
    try:
      probe.compile(compiler_options=options)
    except Exception as e:  # pylint: disable=broad-except  # XLA raises its own status types
      raise ValueError(f"variant {name!r}: XLA rejects its options {options}: {e}") from e


HEADER = ("variant", "options", "compile s", "ms per step", "/ default", "faster rounds", "loss", "program")


def report_rows(variants: dict[str, dict], timed: dict[str, list[float]], compile_s: dict[str, float],
                losses: dict[str, float], programs: dict[str, str]) -> list[tuple]:
  """One `HEADER` row per variant: `timed` holds its seconds per step in each round, round for round."""
  base = statistics.median(timed[DEFAULT])
  rows = []
  for name, options in variants.items():
    median = statistics.median(timed[name])
    wins = sum(t < b for t, b in zip(timed[name], timed[DEFAULT]))
    rows.append((name, ", ".join(f"{k}={v!r}" for k, v in options.items()) or "-", f"{compile_s[name]:.1f}",
                 f"{median * 1e3:.1f}", f"{median / base:.3f}", "-" if name == DEFAULT else f"{wins}/{len(timed[name])}",
                 f"{losses[name]:.6f}", programs[name]))
  return rows


def main(argv):
  del argv
  try:
    variants = parse_variants(_VARIANTS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  host_memory_note = train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  try:
    check_options(variants)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(harness.machine_line() + host_memory_note)
  for spec in flags.FLAGS.configs:
    config = train_step_benchmark._override(harness.load_config(spec))  # pylint: disable=protected-access
    steps, compile_s, losses, programs = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as workdir:
      for name, options in variants.items():
        info = {}
        steps[name], compile_s[name], stage_config = train_step_benchmark.warm_step(
            config, os.path.join(workdir, name), compiler_options=options, info=info)
        programs[name] = info["program"]
        losses[name] = float(jax.device_get(steps[name]()["loss"]))
      timed = train_step_benchmark.rotating_rounds(steps, flags.FLAGS.rounds, flags.FLAGS.steps)
    print(f"\n{spec} ({stage_config.dtype}, batch {stage_config.batch_size}), {flags.FLAGS.rounds} rounds of "
          f"{flags.FLAGS.steps} steps\n")
    harness.print_table(HEADER, report_rows(variants, timed, compile_s, losses, programs))


if __name__ == "__main__":
  app.run(main)
