r"""A/B of the CPU attention's batch slicing (`models.attention.cpu_batch_slices`) on a whole train step.

  python benchmarks/cpu_attention_slices.py --configs=configs/small.py --dtype=float32 --batch_size=16
  python benchmarks/cpu_attention_slices.py --configs=configs/demo.py:video

Builds the config's step twice in one process, with the attention sliced as the library does it
and with it whole (`_MIN_SLICED_WORK` raised out of reach while that step is traced), then times
the two in alternating rounds (`--rounds`, `--steps` per round, medians) on the same batch, and
prints each step's compile time. CPU only; `--dtype`, `--batch_size`, `--steps`, `--rounds` and
`--host_memory` are `train_step.py`'s flags.
"""
import os
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv):
  del argv
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  host_memory_note = train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  from vljepa_jax.models import attention as attention_lib  # pylint: disable=g-import-not-at-top

  print(harness.machine_line() + host_memory_note)
  default_threshold = attention_lib._MIN_SLICED_WORK  # pylint: disable=protected-access
  for spec in flags.FLAGS.configs:
    config = train_step_benchmark._override(harness.load_config(spec))  # pylint: disable=protected-access
    steps, compile_s = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
      for variant, threshold in (("sliced", default_threshold), ("whole", float("inf"))):
        attention_lib._MIN_SLICED_WORK = threshold  # pylint: disable=protected-access
        steps[variant], compile_s[variant], stage_config = train_step_benchmark.warm_step(
            config, os.path.join(workdir, variant))
      attention_lib._MIN_SLICED_WORK = default_threshold  # pylint: disable=protected-access
      seconds = train_step_benchmark.alternating_rounds(steps, flags.FLAGS.rounds, flags.FLAGS.steps)
    sliced, whole = seconds["sliced"], seconds["whole"]
    print(f"{spec} ({stage_config.dtype}, batch {stage_config.batch_size}): sliced {sliced * 1e3:.0f} ms "
          f"(compile {compile_s['sliced']:.1f} s), whole {whole * 1e3:.0f} ms (compile {compile_s['whole']:.1f} s); "
          f"sliced / whole {sliced / whole:.3f}", flush=True)


if __name__ == "__main__":
  app.run(main)
