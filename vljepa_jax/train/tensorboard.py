"""TensorBoard event files of scalar metrics, written with tensorboardX's event writer.

`tensorboardX.SummaryWriter` hands events to a background thread, and its `flush()` does not wait
for that thread's queue: a step logged just before a crash, or read back right away, may not be on
disk yet. The train loop wants each logged step on disk when it returns, as `metrics.jsonl` is, so
this writes with the synchronous writer underneath (`EventsWriter`: file naming, TFRecord framing
and CRCs) and tensorboardX's protobuf messages, and flushes after every step. All values of one
step go into one `Event` as float32 `simple_value`s, TensorBoard's scalar type.

A resumed run's file starts with TensorBoard's restart marker, a `SessionLog.START` at the first new
step (what `SummaryWriter(purge_step=...)` writes): TensorBoard then drops the steps from there on
that earlier files hold, i.e. those the interrupted run logged after its last checkpoint.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Mapping


def _import_tensorboardx_without_torch():
  """tensorboardX's event writer and protobuf messages, without the import of torch that comes with them.

  Importing any part of tensorboardX runs its package `__init__`, whose `SummaryWriter` imports
  torch when it is installed (the test extra and checkpoint conversion install it), only to name
  torch tensors in its type annotations: 1.4 s and 190 MiB of every training process (a fresh
  interpreter on the 2-core AMD EPYC VM). `sys.modules["torch"] = None` makes `import torch` raise
  ImportError for the duration, which tensorboardX takes as "torch is not installed"; torch
  imported later, or already imported, is unaffected.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import summary_pb2  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules["torch"]
  return event_file_writer, event_pb2, summary_pb2


event_file_writer, event_pb2, summary_pb2 = _import_tensorboardx_without_torch()


class ScalarWriter:
  """`write(step, {tag: value})` to a new event file in `logdir`; `close()` when done."""

  def __init__(self, logdir: str, *, purge_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    # EventsWriter names files `events.out.tfevents.<second>.<host>`: the nanosecond suffix keeps a
    # second start within the same second from overwriting the first one's file, and keeps the
    # files' name order (TensorBoard's reading order) the order they were written in.
    self._writer = event_file_writer.EventsWriter(os.path.join(logdir, "events"),
                                                  filename_suffix=f".{time.time_ns()}")
    if purge_step is not None:
      self._writer.write_event(event_pb2.Event(
          wall_time=time.time(), step=purge_step,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self._writer.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not scalars:
      return
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)
                                         for tag, value in scalars.items()])
    self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
