r"""Packs a JSONL manifest and its media files into ArrayRecord shards for fast random access.

  python -m vljepa_jax.data.write_arrayrecord --manifest M.jsonl --media-root DIR \
      --output OUT --shards N

Writes `OUT/shard-00000-of-0000N.array_record` ... (records in manifest order, split into N
contiguous shards) plus `OUT/dataset.json` (record count, shards, skipped files). Each record is
the media file's encoded bytes and its texts (`records.py`); decoding stays in the training
pipeline. Files that are missing or unreadable are skipped and reported; if more than
`--error_budget` of them are, nothing is written and the command exits 1. The output appears
atomically: shards are written to a temporary folder renamed to OUT at the end, so an
interrupted run never leaves a half-written dataset behind.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import records as records_lib
from vljepa_jax.data import sources as sources_lib

_MANIFEST = flags.DEFINE_string("manifest", None, "JSONL manifest (schema: vljepa_jax/data/manifest.py).")
_MEDIA_ROOT = flags.DEFINE_string("media_root", None,
                                  "Folder relative media paths are read from (default: the manifest's folder).")
# The spelling is --media-root; absl flags use underscores, so both are accepted.
flags.DEFINE_alias("media-root", "media_root")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder; must not exist unless --overwrite.")
_SHARDS = flags.DEFINE_integer("shards", 1, "Number of shards.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.")
_ERROR_BUDGET = flags.DEFINE_float("error_budget", 0.01, "Largest fraction of entries that may be skipped.")

METADATA_FILE = "dataset.json"
_MAX_REPORTED = 10


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}{sources_lib.ARRAY_RECORD_SUFFIX}"


def shard_bounds(num_records: int, num_shards: int) -> list[tuple[int, int]]:
  """Contiguous [start, end) ranges, sizes differing by at most one."""
  return [(i * num_records // num_shards, (i + 1) * num_records // num_shards) for i in range(num_shards)]


def _read_media(path: str) -> bytes | str:
  """The file's bytes, or the reason it cannot be used."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return "missing_file"
  except OSError as e:
    return f"unreadable_media ({e.strerror})"
  return data if data else "unreadable_media (empty file)"


def write_dataset(manifest: str, output: str, *, num_shards: int = 1, media_root: str | None = None,
                  overwrite: bool = False, error_budget: float = 0.01) -> dict:
  """Writes the shards and returns the metadata written to `OUT/dataset.json`."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  if num_shards < 1:
    raise ValueError(f"--shards must be >= 1, got {num_shards}")
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"output {output!r} exists; pass --overwrite to replace it")
  entries = manifest_lib.read_manifest(manifest)
  if num_shards > len(entries):
    raise ValueError(f"--shards={num_shards} is more than the {len(entries)} manifest entries")
  root = media_root if media_root is not None else os.path.dirname(os.path.abspath(manifest))
  parent = os.path.dirname(os.path.abspath(output)) or "."
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
  skipped: list[str] = []
  written = 0
  start = time.time()
  try:
    for shard, (lo, hi) in enumerate(shard_bounds(len(entries), num_shards)):
      writer = array_record_module.ArrayRecordWriter(
          os.path.join(staging, shard_name(shard, num_shards)), "group_size:1")
      try:
        for entry in entries[lo:hi]:
          path = manifest_lib.resolve_media(entry["media"], root)
          data = _read_media(path)
          if isinstance(data, str):
            skipped.append(f"{entry['media']}: {data}")
            continue
          texts = {k: entry[k] for k in records_lib.FIELDS if k in entry}
          texts.setdefault("id", entry["media"])
          writer.write(records_lib.encode_record(data, os.path.basename(path), **texts))
          written += 1
          if written % 1000 == 0:
            logging.info("%d/%d records written (%.0f/s)", written, len(entries), written / (time.time() - start))
      finally:
        writer.close()
    if len(skipped) > error_budget * len(entries):
      raise RuntimeError(
          f"{len(skipped)} of {len(entries)} media files could not be read, over --error_budget="
          f"{error_budget}; nothing was written. First ones:\n  " + "\n  ".join(skipped[:_MAX_REPORTED]))
    metadata = {"num_records": written, "shards": [shard_name(i, num_shards) for i in range(num_shards)],
                "manifest": os.path.abspath(manifest), "media_root": os.path.abspath(root),
                "skipped": skipped}
    with open(os.path.join(staging, METADATA_FILE), "w") as f:
      json.dump(metadata, f, indent=2)
    if os.path.exists(output):
      shutil.rmtree(output)
    os.replace(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  for line in skipped[:_MAX_REPORTED]:
    logging.warning("skipped %s", line)
  logging.info("wrote %d records in %d shard(s) to %s (%d skipped) in %.1f s", written, num_shards,
               output, len(skipped), time.time() - start)
  return metadata


def main(argv):
  del argv
  for flag in (_MANIFEST, _OUTPUT):
    if flag.value is None:
      raise app.UsageError(f"--{flag.name} is required")
  try:
    metadata = write_dataset(_MANIFEST.value, _OUTPUT.value, num_shards=_SHARDS.value,
                             media_root=_MEDIA_ROOT.value, overwrite=_OVERWRITE.value,
                             error_budget=_ERROR_BUDGET.value)
  except (manifest_lib.ManifestError, FileExistsError, ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"{metadata['num_records']} records in {len(metadata['shards'])} shard(s) -> {_OUTPUT.value}"
        + (f" ({len(metadata['skipped'])} skipped)" if metadata["skipped"] else ""))


if __name__ == "__main__":
  app.run(main)
