"""vljepa-jax entry point: train (and evaluate) a VL-JEPA from an experiment config.

    python -m vljepa_jax.main --config=configs/demo.py --workdir=/tmp/vljepa_demo
    python -m vljepa_jax.main --config=configs/demo.py --workdir=/tmp/vljepa_demo --mode=eval  # sweep checkpoints
    python -m vljepa_jax.main --config=configs/vljepa_pretrain.py:image --workdir=gs://... \\
        --config.init.x_encoder=/ckpt/vitl --config.batch_size=24000

Configs are Python files with `get_config(arg)` (ml_collections); `--config.KEY=VALUE` overrides
any key and `--config.stages.STAGE.KEY=VALUE` that key in one stage only, even one the stage's dict
does not set yet. Every override takes effect or the command fails before anything is compiled,
with exit status 2 and one line naming the flag that would work: an unknown key, a value of the
wrong type, a per-stage run-level key (`stages.RUN_LEVEL_KEYS`: one model, mesh and pair of
tokenizers for every stage) or a top-level override that a stage would override again.
Re-running the same command on the same workdir resumes from the newest checkpoint.

`--mode=eval` evaluates every saved checkpoint of the workdir (or `--eval_steps`) with the
config's evaluators, compiling each once for the whole sweep; results are added to
`<workdir>/eval_results.json` by global step (done steps are skipped on a re-run), with
`eval_results.md`, `eval_results.csv` and `eval_plots/<task>.png` beside it.

Multi-host: on TPU pods and under SLURM `jax.distributed.initialize()` detects the cluster by
itself (`--distributed=auto`, the default); elsewhere pass `--coordinator_address`,
`--num_processes` and `--process_id`. Only process 0 writes logs and results.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vljepa_jax import cpu_devices
from vljepa_jax import host_memory
from vljepa_jax.train import overrides as overrides_lib
from vljepa_jax.train import stages as stages_lib

# The command line the config flag reads its overrides from: `parse_flags` fills it with the real one
# less the per-stage overrides, which it applies itself (ml_collections only sets keys that exist).
_CONFIG_ARGV: list[str] = []
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: path/to/config.py[:ARG], e.g. configs/demo.py or "
    "configs/vljepa_pretrain.py:video8. Override keys with --config.KEY=VALUE, one stage's with "
    "--config.stages.STAGE.KEY=VALUE.", lock_config=True, sys_argv=_CONFIG_ARGV)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl, TensorBoard files and "
                               "eval_results.json go. Re-running with the same workdir resumes.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: every stage, then the evaluators. eval: evaluate the saved checkpoints.")
_EVAL_STEPS = flags.DEFINE_list("eval_steps", None, "--mode=eval: only these global steps (default: every "
                                "checkpoint).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "jax.distributed.initialize(): 'auto' = when --coordinator_address is given or a "
                                 "TPU pod / SLURM job with several tasks is detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")


# Libraries whose INFO lines (hundreds per run from Orbax alone) would bury the run's own output.
# Their warnings and errors still show; `--library_info` shows everything.
_QUIET_LIBRARIES = ("/orbax/", "/grain/", "/jax/", "/jaxlib/", "/tensorstore/")
_HOST_MEMORY = flags.DEFINE_enum(
    "host_memory", "auto", host_memory.MODES,
    "How the C allocator treats the step's host buffers (vljepa_jax/host_memory.py): 'retain' keeps freed memory "
    "mapped so XLA:CPU's per-step temporaries are not page-faulted in again every step; 'auto' = 'retain' in a "
    "CPU-only process; 'system' leaves glibc's defaults.")
_LIBRARY_INFO = flags.DEFINE_bool("library_info", False, "Show INFO logs of Orbax, Grain and JAX too.")


class _QuietLibraries(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(p in record.pathname for p in _QUIET_LIBRARIES)


def _cluster_detected() -> bool:
  """A multi-task SLURM job or a multi-host TPU slice, which `jax.distributed.initialize()` configures itself."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def _distributed_requested() -> bool:
  explicit = _COORDINATOR.value is not None
  return _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and (explicit or _cluster_detected()))


def initialize_distributed() -> None:
  explicit = _COORDINATOR.value is not None
  if not _distributed_requested():
    return
  if explicit:
    if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _eval_steps() -> list[int] | None:
  if not _EVAL_STEPS.value:
    return None
  try:
    return [int(step) for step in _EVAL_STEPS.value]
  except ValueError:
    raise app.UsageError(f"--eval_steps={','.join(_EVAL_STEPS.value)}: expected integers (global steps)") from None


def _fail(message: str) -> NoReturn:
  """Exits with status 2 and the message on one line (the last line of a wrapped traceback)."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  text = lines[-1] if "Traceback (most recent call last)" in message else " ".join(lines)
  print(f"error: {text}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every `--config.*` override either taking effect or failing here.

  Failing means exit status 2 and one line naming the flag that would work, before anything is
  built: see the module docstring and `stages.check_overrides`.
  """
  argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  stage_args = [arg for arg in argv[1:] if overrides_lib.STAGE_OVERRIDE.match(arg)]
  # After a backbone switch the backbone's own flags apply to the switched config, so they wait.
  switching = any(overrides_lib.BACKBONE_OVERRIDE.match(arg) for arg in argv[1:])
  backbone_args = [arg for arg in argv[1:] if switching and overrides_lib.BACKBONE_CONFIG_OVERRIDE.match(arg)]
  _CONFIG_ARGV[:] = [argv[0]] + [arg for arg in argv[1:]
                                 if not overrides_lib.STAGE_OVERRIDE.match(arg) and arg not in backbone_args]
  try:
    remaining = flags.FLAGS(_CONFIG_ARGV)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, IndexError, TypeError, ValueError, OSError) as e:
    _fail(overrides_lib.config_error(_CONFIG_ARGV, e))
  config = _CONFIG.value
  if config is None:
    if stage_args:
      _fail(f"{stage_args[0]}: no --config to override")
    return remaining
  try:
    overrides = dict(config_flags.get_override_values(flags.FLAGS["config"]))
    if switching and (note := overrides_lib.switch_predictor_backbone(config)):
      logging.info(note)
    overrides.update(overrides_lib.apply_backbone_config_overrides(config, backbone_args))
    overrides.update(overrides_lib.apply_stage_overrides(config, stage_args))
    batch_sizes = _batch_sizes(config)  # resolves the stages, refusing keys they would ignore
    stages_lib.check_overrides(config, overrides)
    cpu_devices.resolve_count(config.cpu_devices, batch_sizes)
  except (ValueError, OSError) as e:  # OSError: a config file that could not be loaded
    _fail(str(e))
  return remaining


def _batch_sizes(config) -> list[tuple[str, int]]:
  return [(name, stage.batch_size) for name, stage in stages_lib.resolve(config)]


def split_cpu(config) -> None:
  """Applies `config.cpu_devices` (vljepa_jax/cpu_devices.py) before anything starts the backend."""
  if config.cpu_devices != 1 and _distributed_requested():
    _fail(f"config.cpu_devices={config.cpu_devices} splits one process's CPU into devices; a multi-process run "
          "(jax.distributed) keeps one device per process: leave it at 1")
  try:
    cpu_devices.split_cpu(config.cpu_devices, _batch_sizes(config))
  except ValueError as e:
    _fail(str(e))


def start_process(config) -> None:
  """What every command that runs the config's model does first, in this order, before the backend starts.

  The process flags (`--host_memory`, `--library_info`, the `jax.distributed` ones) and
  `config.cpu_devices` apply to every such command (this one, `vljepa_jax.data.cache_features`), so
  none of them is accepted by one and silently ignored by another.
  """
  if not _LIBRARY_INFO.value:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  # Before anything starts a JAX backend: its threads choose their malloc arena on first use.
  host_memory.retain_freed_memory(_HOST_MEMORY.value)
  split_cpu(config)
  initialize_distributed()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: where checkpoints and results go")
  start_process(_CONFIG.value)
  # Imported after jax.distributed is up: nothing may touch the backend before it.
  from vljepa_jax.convert import hub  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  try:
    if _MODE.value == "eval":
      from vljepa_jax.train import evaluation  # pylint: disable=g-import-not-at-top
      evaluation.sweep(_CONFIG.value, _WORKDIR.value, steps=_eval_steps())
    else:
      trainer.run(_CONFIG.value, _WORKDIR.value)
  except hub.HubError as e:  # a config.init.* repo id that cannot be fetched: the message says what to do
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except (FileNotFoundError, ValueError) as e:
    if _MODE.value != "eval":
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
