"""The byte format of one ArrayRecord record: encoded media plus its texts, as msgpack.

A record is a msgpack map with the manifest's fields (see `manifest.py`), except that `media`
holds the file's encoded bytes (JPEG/PNG/mp4/... exactly as on disk; decoding happens in the
input pipeline, so shards stay as small as the source files) and `media_name` keeps the original
file name for error reports. `format` versions the layout so a later change can still read old
shards.
"""
from __future__ import annotations

from typing import Any

import msgpack

FORMAT_VERSION = 1
TEXT_FIELDS = ("id", "caption", "captions", "query", "answer", "answer_candidates", "question_type", "label")
# The manifest fields a record carries besides its media: its texts and its clip window.
FIELDS = TEXT_FIELDS + ("start_s", "end_s")


class RecordError(ValueError):
  """Bytes that are not a record this module wrote."""


def encode_record(media: bytes, media_name: str, **texts: Any) -> bytes:
  """One record: `media` bytes, the file name they came from, and manifest text fields."""
  unknown = sorted(set(texts) - set(FIELDS))
  if unknown:
    raise ValueError(f"unknown record field(s) {unknown}; expected some of {list(FIELDS)}")
  if not isinstance(media, (bytes, bytearray)):
    raise TypeError(f"media must be bytes, got {type(media).__name__}")
  record = {"format": FORMAT_VERSION, "media": bytes(media), "media_name": media_name}
  record.update({k: v for k, v in texts.items() if v is not None})
  return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  """Inverse of `encode_record`; `RecordError` for anything else."""
  try:
    record = msgpack.unpackb(data, raw=False)
  except Exception as e:  # msgpack raises several unrelated types for corrupt input
    raise RecordError(f"not a msgpack record ({type(e).__name__}: {e})") from None
  if not isinstance(record, dict) or "media" not in record:
    raise RecordError("record has no 'media' field")
  version = record.pop("format", None)
  if version != FORMAT_VERSION:
    raise RecordError(f"record format {version!r}; this version reads format {FORMAT_VERSION}")
  return record
