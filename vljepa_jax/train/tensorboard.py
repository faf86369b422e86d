"""A dependency-free TensorBoard writer for scalar summaries.

TensorBoard reads "event files": a sequence of TFRecord-framed, protobuf-serialised `Event`
messages. The usual writers (`tf.summary`, tensorboardX, `flax.metrics.tensorboard`) pull in
TensorFlow or a protobuf runtime plus generated message classes. Training only ever logs scalars,
so this module writes the handful of bytes those need itself, with the standard library and numpy:

  * a tiny protobuf encoder for the four wire types used (varint, 64-bit, length-delimited,
    32-bit) and the three messages `Event`, `Summary` and `Summary.Value`;
  * TFRecord framing with masked CRC32C checksums (CRC32C from a 256-entry table; records are a
    few dozen bytes, so pure Python is fast enough).

Usage:

    with SummaryWriter("/tmp/run1") as writer:
      writer.scalars({"train/loss": 0.5, "train/lr": 1e-4}, step=100)

Files are named `events.out.tfevents.<int(time)>.<hostname>.<pid>.v2` like TensorFlow's, so
`tensorboard --logdir` finds them. Records are buffered; call `flush()` (or `close()`) to make
them visible to a reader that is tailing the file.
"""
from __future__ import annotations

import os
import socket
import struct
import time
from types import TracebackType
from typing import BinaryIO, Mapping

import numpy as np

__all__ = ["SummaryWriter", "crc32c", "masked_crc32c"]

# ------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli). TFRecord checksums use this polynomial, not zlib's CRC32, so
# `zlib.crc32` cannot be used.

_CRC32C_POLY = 0x82F63B78  # 0x1EDC6F41 bit-reversed (the table below processes LSB first).


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """The CRC32C checksum of `data`, e.g. `crc32c(b"123456789") == 0xE3069283`."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """CRC32C rotated and offset as TFRecord stores it.

  TFRecord masks checksums so that a CRC of data which itself contains CRCs is not degenerate.
  """
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(payload: bytes) -> bytes:
  """One TFRecord: uint64 length, masked CRC of the length bytes, payload, masked CRC of payload."""
  header = struct.pack("<Q", len(payload))
  return (header + struct.pack("<I", masked_crc32c(header)) + payload
          + struct.pack("<I", masked_crc32c(payload)))


# ------------------------------------------------------------------------------------------------
# Minimal protobuf encoding. Only what the three messages below need; see
# https://protobuf.dev/programming-guides/encoding/. A field is a key (field number << 3 | wire
# type) followed by the value in that wire type's format.

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LEN, _WIRE_FIXED32 = 0, 1, 2, 5
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _varint(n: int) -> bytes:
  """Base-128 varint, 7 bits per byte, low bits first.

  Negative int64 values are encoded as their 64-bit two's complement (always 10 bytes), as the
  protobuf spec requires for `int64` fields.
  """
  n &= 0xFFFFFFFFFFFFFFFF
  out = bytearray()
  while n > 0x7F:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _int64_field(field: int, value: int) -> bytes:
  return _key(field, _WIRE_VARINT) + _varint(value)


def _double_field(field: int, value: float) -> bytes:
  return _key(field, _WIRE_FIXED64) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
  # Through numpy rather than struct.pack("<f"): struct raises OverflowError for finite values
  # beyond the float32 range, whereas a float32 cast (what TensorFlow does) gives +-inf.
  with np.errstate(over="ignore"):
    return _key(field, _WIRE_FIXED32) + np.asarray(value, dtype="<f4").tobytes()


def _bytes_field(field: int, payload: bytes) -> bytes:
  return _key(field, _WIRE_LEN) + _varint(len(payload)) + payload


# Field numbers from tensorflow/core/util/event.proto and tensorflow/core/framework/summary.proto.
# Event:         wall_time=1 (double), step=2 (int64), file_version=3 (string), summary=5 (Summary)
# Summary:       value=1 (repeated Summary.Value)
# Summary.Value: tag=1 (string), simple_value=2 (float)


def _summary_value(tag: str, value: float) -> bytes:
  # simple_value sits in a oneof, so it is written even when it is 0.
  return _bytes_field(1, tag.encode("utf-8")) + _float_field(2, value)


def _event(wall_time: float, step: int = 0, *, file_version: str | None = None,
           values: Mapping[str, float] | None = None) -> bytes:
  out = _double_field(1, wall_time) + _int64_field(2, step)
  if file_version is not None:
    out += _bytes_field(3, file_version.encode("utf-8"))
  if values is not None:
    summary = b"".join(_bytes_field(1, _summary_value(t, v)) for t, v in values.items())
    out += _bytes_field(5, summary)
  return out


# ------------------------------------------------------------------------------------------------


def _check_step(step: object) -> int:
  # bool is an int subclass but almost certainly a bug here; numpy integers (e.g. a step counter
  # read back from a device array) are accepted.
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
    raise TypeError(f"TensorBoard step must be an int, got {step!r} ({type(step).__name__})")
  step = int(step)
  if not _INT64_MIN <= step <= _INT64_MAX:
    raise ValueError(f"TensorBoard step {step} does not fit in int64")
  return step


def _check_value(tag: object, value: object) -> float:
  if not isinstance(tag, str):
    raise TypeError(f"TensorBoard tag must be a str, got {tag!r} ({type(tag).__name__})")
  # float() would also parse strings ("0.5", "nan"); a string here is a caller's bug.
  if not isinstance(value, (str, bytes)):
    try:
      return float(value)  # nan and +-inf are kept: TensorBoard displays them.
    except (TypeError, ValueError):
      pass
  raise TypeError(f"TensorBoard value for tag {tag!r} is not a real number: {value!r}")


class SummaryWriter:
  """Appends scalar summaries to a new TensorBoard event file in `logdir`.

  Not thread-safe; use one writer per process and directory.
  """

  def __init__(self, logdir: str | os.PathLike[str]):
    self.logdir = os.fspath(logdir)
    os.makedirs(self.logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
    self.path = os.path.join(self.logdir, name)
    self._file: BinaryIO | None = open(self.path, "ab")
    # The first record of every event file names the format version; readers use it to detect
    # event files. Flushed at once so the file is recognisable even if nothing else is written.
    self._write(_event(time.time(), file_version="brain.Event:2"))
    self.flush()

  def _write(self, event: bytes) -> None:
    if self._file is None:
      raise ValueError(f"SummaryWriter for {self.path} is closed")
    self._file.write(_tfrecord(event))

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Logs one scalar. `value` is stored as float32 (TensorBoard's `simple_value`)."""
    self.scalars({tag: value}, step)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Logs several scalars at one step, as one event (nothing is written if any is invalid)."""
    step = _check_step(step)
    checked = {tag: _check_value(tag, value) for tag, value in values.items()}
    if checked:
      self._write(_event(time.time(), step, values=checked))

  def flush(self) -> None:
    """Writes buffered records to disk. A no-op once closed."""
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    """Flushes and closes the file. Safe to call more than once."""
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> SummaryWriter:
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               tb: TracebackType | None) -> None:
    self.close()
