"""The dependency-free TensorBoard writer, checked against TensorBoard's own reader.

Files are read back with `tensorboard.backend.event_processing` (TensorBoard's loader, which
verifies both TFRecord CRCs) rather than with a parser of our own, so a wrong field number, wire
type or checksum fails here. CRC32C is checked against published check values and, where
available, against independent implementations.
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
import random
import re
import socket
import time

import numpy as np
import pytest

from vljepa_jax.train import tensorboard as tb

from tensorboard.backend.event_processing import event_accumulator  # the test extra installs tensorboard
from tensorboard.backend.event_processing import event_file_loader

_LOADER_LOGGER = "tensorboard"  # The logger all of TensorBoard logs to.


def _events(path: str) -> list:
  """All `Event` protos TensorBoard's loader yields for one file, as stored.

  (`EventFileLoader` would also migrate `simple_value`s to tensors; the legacy loader does not.)
  """
  return list(event_file_loader.LegacyEventFileLoader(path).Load())


def _accumulator(logdir: pathlib.Path) -> event_accumulator.EventAccumulator:
  keep_all = {event_accumulator.SCALARS: 0}
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance=keep_all)
  acc.Reload()
  return acc


def _f32(x: float) -> float:
  return float(np.float32(x))


# ------------------------------------------------------------------------------------------------
# CRC32C

# (data, crc32c): the common check value and RFC 3720 appendix B.4.
_CRC32C_CHECK_VALUES = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data,expected", _CRC32C_CHECK_VALUES)
def test_crc32c_known_values(data, expected):
  assert tb.crc32c(data) == expected


def _random_blobs() -> list[bytes]:
  rng = random.Random(0)
  return [rng.randbytes(n) for n in (1, 3, 8, 12, 100, 1000)]


def test_crc32c_matches_tensorboard_implementation():
  # TensorBoard ships its own pure-Python CRC32C (used when TensorFlow is absent).
  from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as pywrap  # pylint: disable=g-import-not-at-top
  for blob in _random_blobs():
    assert tb.crc32c(blob) == pywrap.crc32c(blob)
    assert tb.masked_crc32c(blob) == pywrap.masked_crc32c(blob)


# ------------------------------------------------------------------------------------------------
# Round trips through TensorBoard's reader


def test_file_name_and_version_record(tmp_path):
  t0 = time.time()
  with tb.SummaryWriter(str(tmp_path / "run")) as writer:
    path = writer.path
  t1 = time.time()
  name = os.path.basename(path)
  assert os.path.dirname(path) == str(tmp_path / "run")
  match = re.fullmatch(r"events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.v2", name)
  assert match, name
  assert int(t0) <= int(match.group(1)) <= int(t1)
  assert match.group(2) == socket.gethostname()
  assert int(match.group(3)) == os.getpid()

  (event,) = _events(path)
  assert event.file_version == "brain.Event:2"
  assert t0 <= event.wall_time <= t1
  assert _accumulator(tmp_path / "run").file_version == 2.0


def test_scalars_round_trip(tmp_path, caplog):
  caplog.set_level(logging.DEBUG, logger=_LOADER_LOGGER)
  expected: dict[str, list[tuple[int, float]]] = {"loss": [], "lr": [], "eval/acc": []}
  t0 = time.time()
  writer = tb.SummaryWriter(tmp_path)
  for step in range(0, 50, 5):
    loss, lr = 1.0 / (step + 1), 1e-4 * step
    writer.scalars({"loss": loss, "lr": np.float64(lr)}, step=step)
    expected["loss"].append((step, loss))
    expected["lr"].append((step, lr))
    if step % 10 == 0:
      writer.scalar("eval/acc", 0.1 + step / 100, np.int64(step))
      expected["eval/acc"].append((step, 0.1 + step / 100))
  writer.close()
  t1 = time.time()

  acc = _accumulator(tmp_path)
  assert sorted(acc.Tags()["scalars"]) == sorted(expected)
  for tag, points in expected.items():
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [s for s, _ in points]
    assert [e.value for e in events] == [_f32(v) for _, v in points]
    assert all(t0 <= e.wall_time <= t1 for e in events)
  # Every record was read intact: 1 version record + 10 `scalars` + 5 `scalar` calls, and the
  # loader never hit a bad or truncated record.
  assert len(_events(writer.path)) == 1 + 10 + 5
  assert "Truncated record" not in caplog.text


def test_scalars_writes_one_event_with_all_values(tmp_path):
  with tb.SummaryWriter(tmp_path) as writer:
    writer.scalars({"a": 1.0, "b": 2.0, "c": 3.0}, step=7)
    writer.scalars({}, step=8)  # Nothing to log: no event.
  _, event = _events(writer.path)
  assert event.step == 7
  assert [(v.tag, v.simple_value) for v in event.summary.value] == [("a", 1.0), ("b", 2.0),
                                                                    ("c", 3.0)]


def test_non_finite_and_extreme_values(tmp_path):
  values = {"nan": float("nan"), "inf": math.inf, "neg_inf": -math.inf, "f32_overflow": 1e40,
            "tiny": 1e-45, "np_nan": np.float32("nan"), "zero": 0.0, "neg": -2.5}
  with tb.SummaryWriter(tmp_path) as writer:
    writer.scalars(values, step=3)
  acc = _accumulator(tmp_path)
  got = {tag: acc.Scalars(tag)[0].value for tag in values}
  assert math.isnan(got["nan"]) and math.isnan(got["np_nan"])
  assert got["inf"] == math.inf and got["f32_overflow"] == math.inf
  assert got["neg_inf"] == -math.inf
  assert got["tiny"] == _f32(1e-45) > 0  # float32 subnormal
  assert got["zero"] == 0.0 and got["neg"] == -2.5
  assert all(acc.Scalars(tag)[0].step == 3 for tag in values)


@pytest.mark.parametrize("step", [0, 1, 127, 128, 2**31, 2**62, 2**63 - 1, -1, -(2**63)])
def test_int64_steps(tmp_path, step):
  with tb.SummaryWriter(tmp_path) as writer:
    writer.scalar("x", 1.0, step)
  assert _events(writer.path)[1].step == step


def test_unicode_tag(tmp_path):
  with tb.SummaryWriter(tmp_path) as writer:
    writer.scalar("train/Verlust/λ", 0.25, 1)
  assert _accumulator(tmp_path).Scalars("train/Verlust/λ")[0].value == 0.25


def test_flush_makes_records_visible_while_open(tmp_path):
  writer = tb.SummaryWriter(tmp_path)
  try:
    writer.scalar("x", 1.5, 1)
    writer.flush()
    assert [e.step for e in _events(writer.path)] == [0, 1]
    writer.scalar("x", 2.5, 2)
    writer.flush()
    assert [e.summary.value[0].simple_value for e in _events(writer.path)[1:]] == [1.5, 2.5]
  finally:
    writer.close()


def test_close_is_idempotent_and_final(tmp_path):
  writer = tb.SummaryWriter(tmp_path)
  writer.close()
  writer.close()
  writer.flush()
  with pytest.raises(ValueError, match="closed"):
    writer.scalar("x", 1.0, 0)


# ------------------------------------------------------------------------------------------------
# The reader really checks our CRCs: a corrupted record (and everything after it) is dropped.


def _record_offsets(data: bytes) -> list[int]:
  """Start offsets of the TFRecords in `data` (from the length headers only)."""
  offsets, pos = [], 0
  while pos < len(data):
    offsets.append(pos)
    pos += 8 + 4 + int.from_bytes(data[pos:pos + 8], "little") + 4
  assert pos == len(data)
  return offsets


@pytest.mark.parametrize("where", ["payload", "payload_crc", "length_crc"])
def test_reader_drops_corrupted_record(tmp_path, caplog, where):
  with tb.SummaryWriter(tmp_path) as writer:
    for step in range(4):
      writer.scalar("x", float(step), step)
  assert [e.step for e in _events(writer.path)] == [0, 0, 1, 2, 3]

  data = bytearray(pathlib.Path(writer.path).read_bytes())
  offsets = _record_offsets(bytes(data))
  start = offsets[3]  # The record for step 2.
  length = int.from_bytes(data[start:start + 8], "little")
  flip = {"payload": start + 12 + length // 2, "payload_crc": start + 12 + length,
          "length_crc": start + 8}[where]
  data[flip] ^= 0x01
  pathlib.Path(writer.path).write_bytes(bytes(data))

  caplog.set_level(logging.DEBUG, logger=_LOADER_LOGGER)
  assert [e.step for e in _events(writer.path)] == [0, 0, 1]
  assert "Truncated record" in caplog.text


# ------------------------------------------------------------------------------------------------
# Argument checking


@pytest.mark.parametrize("tag", [None, b"loss", 3, ("a",)])
def test_bad_tag(tmp_path, tag):
  with tb.SummaryWriter(tmp_path) as writer:
    with pytest.raises(TypeError, match=re.escape(repr(tag))):
      writer.scalar(tag, 1.0, 0)
    # A bad tag among good ones: nothing from that call is written.
    with pytest.raises(TypeError, match="tag"):
      writer.scalars({"ok": 1.0, tag: 2.0}, 0)
  assert len(_events(writer.path)) == 1


@pytest.mark.parametrize("step", [1.0, "3", None, True, np.float32(2)])
def test_bad_step(tmp_path, step):
  with tb.SummaryWriter(tmp_path) as writer:
    with pytest.raises(TypeError, match="step.*" + re.escape(repr(step))):
      writer.scalar("x", 1.0, step)
  assert len(_events(writer.path)) == 1


def test_step_out_of_int64_range(tmp_path):
  with tb.SummaryWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="int64"):
      writer.scalar("x", 1.0, 2**63)


@pytest.mark.parametrize("value", ["0.5", None, [1.0, 2.0], 1j])
def test_bad_value(tmp_path, value):
  with tb.SummaryWriter(tmp_path) as writer:
    with pytest.raises(TypeError, match="'x'"):
      writer.scalar("x", value, 0)
