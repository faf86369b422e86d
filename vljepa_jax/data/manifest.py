"""JSONL manifests: one JSON object per line describing one visual input and its texts.

Schema (every key but `media` is optional; unknown keys are an error, so a typo such as
`"captoin"` fails loudly instead of silently training on no text):

  media     str         path of an image (JPEG/PNG/GIF/BMP/WebP/TIFF) or video (mp4/webm/avi/mkv/mov),
                        relative to the media root (or absolute)
  id        str         a name for the record in logs and error reports (default: `media`)
  caption   str         target text Y for caption-style training and retrieval
  captions  list[str]   several paraphrases of the same caption; training samples one per epoch
  query     str         the question X_Q for query-conditioned (SFT) training / VQA
  answer    str         the answer Y to `query`
  answer_candidates  list[str]  the choices of a multiple-choice question (discriminative VQA)
  question_type      str        a question category, for per-type VQA accuracy
  label     str | int   class label, for zero-shot classification
  start_s, end_s  number   a clip window: the clip is [start_s, end_s) seconds of the video, its
                        frames sampled uniformly inside it (both or neither; 0 <= start_s < end_s)

Example line:
  {"media": "clips/0001.mp4", "caption": "a man slices bread", "query": "what is cut?",
   "answer": "bread", "label": "cutting"}

The whole manifest is parsed and validated when it is opened, so a malformed line fails the run
before any compilation, with its line number; media files are only opened when sampled (a missing
file is then a counted, skipped sample, not a crash).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterator

FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "media": (str,),
    "id": (str,),
    "caption": (str,),
    "captions": (list,),
    "query": (str,),
    "answer": (str,),
    "answer_candidates": (list,),
    "question_type": (str,),
    "label": (str, int),
    "start_s": (int, float),
    "end_s": (int, float),
}
WINDOW_FIELDS = ("start_s", "end_s")
REQUIRED_FIELDS = ("media",)


class ManifestError(ValueError):
  """A manifest that cannot be used; the message names the file and the line."""


def check_entry(entry: Any, where: str) -> dict[str, Any]:
  """One record checked against the schema (keys, types, clip window); `where` names it in errors.

  Shared by every source whose records carry manifest fields (WebDataset json, Parquet columns).
  """
  if not isinstance(entry, dict):
    raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
  unknown = sorted(set(entry) - set(FIELD_TYPES))
  if unknown:
    raise ManifestError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(FIELD_TYPES)}")
  for name in REQUIRED_FIELDS:
    if name not in entry:
      raise ManifestError(f"{where}: missing required key {name!r}")
  for name, value in entry.items():
    # bool is an int subclass; a label of `true` is a mistake, not class 1.
    if isinstance(value, bool) or not isinstance(value, FIELD_TYPES[name]):
      expected = " or ".join(t.__name__ for t in FIELD_TYPES[name])
      raise ManifestError(f"{where}: key {name!r} must be {expected}, got {type(value).__name__} {value!r:.80}")
  for name in ("captions", "answer_candidates"):
    if name in entry and not all(isinstance(c, str) for c in entry[name]):
      raise ManifestError(f"{where}: key {name!r} must be a list of strings")
  if not entry["media"]:
    raise ManifestError(f"{where}: key 'media' is empty")
  window = [name for name in WINDOW_FIELDS if name in entry]
  if window and len(window) != len(WINDOW_FIELDS):
    raise ManifestError(f"{where}: a clip window needs both 'start_s' and 'end_s', got only {window[0]!r}")
  if window and not (math.isfinite(entry["start_s"]) and math.isfinite(entry["end_s"])
                     and 0 <= entry["start_s"] < entry["end_s"]):
    raise ManifestError(f"{where}: clip window start_s={entry['start_s']!r}, end_s={entry['end_s']!r}; expected "
                        "0 <= start_s < end_s (seconds)")
  return entry


def clip_window(record: Any) -> tuple[float, float] | None:
  """A record's (start_s, end_s), or None when the whole video is the clip."""
  if record.get("start_s") is None:
    return None
  return float(record["start_s"]), float(record["end_s"])


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
  """Yields `("path:line", parsed JSON)` for every non-blank line; invalid JSON is a `ManifestError` there."""
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_number}"
      try:
        yield where, json.loads(line)
      except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


def iter_manifest(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields `(line_number, entry)` for every non-blank line, validating as it goes."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ManifestError(f"manifest {path!r} does not exist (expected a JSONL file, one object per line)")
  for where, entry in iter_json_lines(path):
    yield int(where.rsplit(":", 1)[1]), check_entry(entry, where)


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All entries of a manifest; raises `ManifestError` naming the first bad line."""
  entries = [entry for _, entry in iter_manifest(path)]
  if not entries:
    raise ManifestError(f"manifest {os.fspath(path)!r} has no entries")
  return entries


def resolve_media(media: str, media_root: str | os.PathLike | None) -> str:
  """Absolute media path: relative entries are joined to the media root (default: cwd)."""
  if os.path.isabs(media) or media_root is None:
    return os.path.abspath(media)
  return os.path.abspath(os.path.join(os.fspath(media_root), media))
