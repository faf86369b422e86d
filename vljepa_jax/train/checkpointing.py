"""Training checkpoints: train state + data-iterator position + a little metadata, via Orbax.

One `CheckpointManager` per training stage, under `<stage workdir>/checkpoints/<step>/`:

    state/   the `TrainState` (params, optimizer state, step, RNG, non-finite counters), sharded
    data/    the Grain iterator's position, one JSON file per process
    meta/    JSON: stage name, step, total steps, wall time

Saves are asynchronous (the train loop carries on while the arrays are written) and atomic:
Orbax writes to a temporary folder and renames it when complete, so a run killed mid-save leaves
the previous checkpoint as the latest one. The last `keep` checkpoints are kept.

Replicated arrays are written by one replica unless a replica's share is at least
`MIN_REPLICA_SLICE_BYTES` (see `state_handler`).

`restore_latest` tries the newest checkpoint first; if it cannot be read (files deleted, truncated
or garbled) it says so, moves the folder aside to `corrupt.<step>` (nothing is deleted) and falls
back to the one before.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp
# What Orbax's default ArrayHandler is given. A private module: requirements.txt pins orbax-checkpoint < 0.13.
from orbax.checkpoint._src.metadata import array_metadata_store

from vljepa_jax.train import train_step as train_step_lib

CORRUPT_PREFIX = "corrupt."


def checkpoints_dir(path: str) -> str:
  """A stage workdir (holding `checkpoints/`) or a checkpoints folder -> the checkpoints folder."""
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def restore_params(path: str, abstract_params: Any, step: int | None = None, *,
                   supplied: Sequence[str] = ()) -> tuple[Any, int]:
  """Only the parameters of a training checkpoint (the newest, or `step`), laid out as `abstract_params`.

  For starting a run from another run (image stage -> video stage -> SFT): the optimizer state,
  step and data position stay behind, and the parameter tree must match the new model's.

  `path` may also be a whole VL-JEPA converted with `python -m vljepa_jax.convert` (a folder with
  `model.json`, e.g. `--model open_vljepa`): its parameters are restored at step 0. A tower it
  left out (an X-encoder not given at conversion) fails here unless the caller names it in
  `supplied` (the trainer loads it from `config.init.<tower>`): a random X-encoder would silently
  give meaningless embeddings.
  """
  if os.path.isfile(os.path.join(path, CONVERTED_METADATA)):
    return _restore_converted(path, abstract_params, supplied), 0
  directory = checkpoints_dir(os.path.abspath(path))
  steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f"config.init.checkpoint={path!r}: no training checkpoints in {directory} (expected "
                            "a stage workdir such as <workdir>/image, or its checkpoints/ folder)")
  step = steps[-1] if step is None else step
  path = os.path.join(directory, str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    # Top-level parts the checkpoint lacks (a Y-decoder added after pretraining) are left out here
    # and keep their fresh initialisation in the caller.
    stored = checkpointer.metadata(path).item_metadata.tree["params"]
    missing = sorted(set(abstract_params) - set(stored))
    if missing:
      logging.warning("%s has no %s parameters; they keep their initial values", path, missing)
    item = {"params": {k: v for k, v in abstract_params.items() if k in stored}}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
  return restored["params"], step


CONVERTED_METADATA = "model.json"  # vljepa_jax.convert.checkpoint.METADATA_FILE
# Converter families whose output is a whole VL-JEPA (rather than one tower, for config.init.<tower>).
WHOLE_MODEL_FAMILIES = ("open_vljepa",)


# The parts of a VL-JEPA a converted whole model must hold (or the caller supply): the others (the
# objective's few parameters, a Y-decoder trained later) start from their initialisation.
REQUIRED_PARTS = ("x_encoder", "predictor", "y_encoder", "y_head")


def _restore_converted(path: str, abstract_params: Any, supplied: Sequence[str]) -> Any:
  from vljepa_jax.convert import checkpoint as convert_checkpoint  # pylint: disable=g-import-not-at-top
  meta = convert_checkpoint.read_metadata(path)
  if meta["family"] not in WHOLE_MODEL_FAMILIES:
    raise ValueError(f"config.init.checkpoint={path!r} holds a converted {meta['family']!r} model, one tower: pass it "
                     f"as config.init.<tower> instead (whole models: {WHOLE_MODEL_FAMILIES})")
  params_dir = os.path.join(os.path.abspath(path), convert_checkpoint.PARAMS_DIR)
  with ocp.PyTreeCheckpointer() as checkpointer:
    stored = checkpointer.metadata(params_dir).item_metadata.tree
    missing = sorted(set(abstract_params) - set(stored))
    unsupplied = [k for k in missing if k in REQUIRED_PARTS and k not in supplied]
    if unsupplied:
      raise ValueError(f"config.init.checkpoint={path!r} has no {unsupplied} parameters (left out at conversion): "
                       f"pass config.init.{unsupplied[0]}=<converted folder> when training, or convert with "
                       f"--{unsupplied[0]}=<converted folder> to get a whole model")
    if missing:
      logging.warning("%s has no %s parameters; they come from config.init or their initialisation", path, missing)
    item = {k: v for k, v in abstract_params.items() if k in stored}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    return checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))


# Orbax saves a replicated array "replica-parallel" by default (on CPU and TPU): each replica writes a
# slice of it, cut on its device by a small jitted op. That spreads big replicated arrays over
# hosts and devices, but a train state holds hundreds of small ones (norm scales, biases and their
# Adam moments, the step): each costs a compile per (shape, device) at a run's first save and a
# dispatch per slice at every save, for a copy of a few KiB. The demo's state over 8 CPU devices
# (benchmarks/checkpoint_save.py): the first save blocked the loop 10.0 s (200 compiles), later ones
# 1.0 s, against 2.0 s (24) and 0.25 s with this threshold. Below it one replica writes the whole
# array, as Orbax does when replicas are not parallelised; on one device nothing changes.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def state_handler() -> ocp.PyTreeCheckpointHandler:
  """The handler of a checkpoint's `state`: Orbax's own, with replica-parallel saving only for
  slices of at least `MIN_REPLICA_SLICE_BYTES`."""
  arrays = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
                                          array_metadata_store=array_metadata_store.Store())
  others = [(ty, ocp.type_handlers.get_type_handler(ty)) for ty in ocp.type_handlers.supported_types()
            if ty is not jax.Array]
  registry = ocp.type_handlers.create_type_handler_registry((jax.Array, arrays), *others)
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class Checkpointer:
  """Save / restore of one stage's `TrainState` together with its data iterator."""

  def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True,
               state_handler_factory: Callable[[], ocp.CheckpointHandler] = state_handler):
    """`state_handler_factory` makes the handler of the state (benchmarks/checkpoint_save.py passes Orbax's default)."""
    if keep < 1:
      raise ValueError(f"checkpoints to keep must be >= 1, got {keep}")
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._asynchronous = asynchronous
    self._state_handler_factory = state_handler_factory
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, enable_async_checkpointing=self._asynchronous,
                                           cleanup_tmp_directories=True)
    handlers = {"state": self._state_handler_factory(), "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, state: train_step_lib.TrainState, data_iterator: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of `state` at `state.step` (a no-op if that step is saved)."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return
    args = {"state": ocp.args.PyTreeSave(state),
            "meta": ocp.args.JsonSave({**meta, "step": step, "time": time.time()})}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict[str, Any]]:
    """The state at `step` laid out as `abstract_state` says (shapes, dtypes, shardings)."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    args = {"state": ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args),
            "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], restored["meta"]

  def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest readable checkpoint, falling back past unreadable ones; None if there is none."""
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax, TensorStore and JSON raise many types for a damaged checkpoint; all mean "unreadable".
        logging.error("checkpoint %s/%d cannot be restored (%s: %s); moving it aside and trying the one "
                      "before", self.directory, step, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        print(f"WARNING: checkpoint step {step} is unreadable ({type(e).__name__}); falling back to an earlier one",
              flush=True)
        self._set_aside(step)
    return None

  def _set_aside(self, step: int) -> None:
    self._manager.close()
    if jax.process_index() == 0:
      source = os.path.join(self.directory, str(step))
      os.replace(source, os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}.{int(time.time())}"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint set aside {step}")
    self._manager = self._open()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
