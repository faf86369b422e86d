"""WebDataset tar shards (img2dataset / video2dataset output) as a random-access Grain source.

Layout: each shard is a plain POSIX tar whose members are grouped into samples by WebDataset's
key rule: a member's key is its path up to the first "." of its basename, its extension the rest
(lowercased); consecutive members with the same key form one sample. img2dataset writes

  000000000.jpg   000000000.txt   000000000.json   000000001.jpg   000000001.txt   ...

In a sample, the media is the first member with an image or video extension (`MEDIA_EXTENSIONS`),
or with `media_keys` the first of those extensions the sample has (so `["mp4", "jpg"]` prefers the
video); `txt` is the caption; `json` may carry the manifest's fields (`manifest.py`: caption,
captions, query, answer, label, start_s, end_s, ...), which are used, while everything else in it
(img2dataset's url, key, status, width, height, ...) is ignored. The `txt` member wins over a
caption in the json. A record's id is `{shard basename}/{key}`.

Why random access, and why the standard library's `tarfile`: the pipeline shuffles globally,
slices the epoch per process, checkpoints a position and mixes weighted sources, all over record
indices (`pipeline.py`); a streaming tar reader (the `webdataset` package) gives none of that and
no byte offsets. `tarfile` streams the headers of a shard (it seeks over member data without
reading it) and reports each member's `offset_data` and `size`, which is all an index needs; a read
is then open + seek + read of one member. It is maintained with Python, handles the GNU and PAX
long-name extensions writers use, and adds no dependency. Compressed tars (.tar.gz, ...) cannot be
read at an offset, so they are refused with an error saying to decompress them.

Indexing reads every shard's headers when the source is built (a thread pool of `num_threads`,
with progress logged for many shards), about one header read per member. Only the index (paths
and NumPy arrays of offsets) is kept, so the source pickles small for Grain's worker processes
and opens files lazily per read.

Damage does not stop a run: a shard that exists but cannot be read as a tar, or that is cut short
(a member running past the end of the file, or no end-of-archive block), keeps the samples fully
present before the damage and gets ONE placeholder sample whose read raises
`BadSample(UNREADABLE_MEDIA, "<shard>: corrupt tar ...")`, so the loss is counted against the
pipeline's error budget (and logged when indexing). A sample without a media member is
`BadSample(MISSING_FILE)`: its media file is absent from the shard, as a manifest entry whose file
is missing, not a file that is there but broken. Configuration mistakes are errors when the source
is built: a pattern selecting no shard, a listed shard that does not exist, a compressed tar, or
shards that hold no usable sample at all.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import tarfile
import time
from typing import Any, Sequence

from absl import logging
import numpy as np

from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import media as media_lib
from vljepa_jax.data import sources as sources_lib

TAR_SUFFIX = ".tar"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
# Manifest fields a sample's json may carry; its other keys are the writer's bookkeeping.
JSON_FIELDS = ("caption", "captions", "query", "answer", "answer_candidates", "question_type", "label",
               "start_s", "end_s")
# Suffixes and magic numbers of compressed tars, which cannot be read by offset.
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bzip2", ".tbz": "bzip2", ".tbz2": "bzip2",
                        ".xz": "xz", ".txz": "xz", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                     b"\x04\x22\x4d\x18": "lz4"}
_BLOCK = tarfile.BLOCKSIZE
# Sample status in the index.
_OK, _NO_MEDIA, _DAMAGED = 0, 1, 2
_INDEX_DTYPE = np.dtype([("shard", np.int32), ("status", np.int8),
                         ("media_offset", np.int64), ("media_size", np.int64),
                         ("txt_offset", np.int64), ("txt_size", np.int64),
                         ("json_offset", np.int64), ("json_size", np.int64)])
_LOG_EVERY_SHARDS = 100
_MAX_LISTED = 5


def split_key(name: str) -> tuple[str, str] | None:
  """WebDataset's key rule: `dir/000001.seg.png` -> ("dir/000001", "seg.png"); None without an extension."""
  folder, base = os.path.split(name) if "/" in name else ("", name)
  if "." not in base or base.startswith("."):
    return None
  key, extension = base.split(".", 1)
  return (f"{folder}/{key}" if folder else key), extension.lower()


def _is_meta(name: str) -> bool:
  """WebDataset's metadata members (`__index__`, `__key__`, ...), which belong to no sample."""
  return os.path.basename(name).startswith("__")


def _check_uncompressed(path: str) -> None:
  lower = path.lower()
  kind = next((name for suffix, name in _COMPRESSED_SUFFIXES.items() if lower.endswith(suffix)), None)
  if kind is None:
    try:
      with open(path, "rb") as f:
        head = f.read(8)
    except OSError:
      return  # unreadable: the indexer makes it a counted placeholder
    kind = next((name for magic, name in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
  if kind is not None:
    raise ValueError(
        f"WebDataset shard {path!r} is compressed ({kind}); random access needs uncompressed tars, "
        "whose members can be read at a byte offset. Decompress the shards (e.g. `gunzip shard.tar.gz`) "
        "or write them uncompressed (img2dataset/video2dataset write plain .tar by default)")


class _Sample:
  """Members of one sample while indexing: (offset, size) per extension, in tar order."""

  def __init__(self, key: str):
    self.key = key
    self.members: dict[str, tuple[int, int]] = {}


def _pick(sample: _Sample, media_keys: Sequence[str] | None, caption_key: str | None,
          json_key: str | None, shard: int) -> tuple:
  media = None
  if media_keys is not None:
    media = next((sample.members[k] for k in media_keys if k in sample.members), None)
  else:
    # The last dot-part decides: "seg.png" is a PNG too.
    media = next((span for ext, span in sample.members.items()
                  if ext.rsplit(".", 1)[-1] in MEDIA_EXTENSIONS), None)
  txt = sample.members.get(caption_key, (-1, -1)) if caption_key else (-1, -1)
  meta = sample.members.get(json_key, (-1, -1)) if json_key else (-1, -1)
  status = _OK if media is not None else _NO_MEDIA
  media = media or (-1, -1)
  return (shard, status, *media, *txt, *meta)


def _index_shard(shard: int, path: str, media_keys: Sequence[str] | None, caption_key: str | None,
                 json_key: str | None) -> tuple[list[tuple], list[str], str | None]:
  """(index rows, keys, damage) of one shard; `damage` says what is wrong with it, if anything.

  Only headers are read: tarfile seeks over member data. A member whose data runs past the end of
  the file, an error while reading headers, or a missing end-of-archive block marks the shard
  damaged; the sample in progress then is dropped, since it may be incomplete.
  """
  rows: list[tuple] = []
  keys: list[str] = []
  current: _Sample | None = None
  damage = None

  def finish():
    if current is not None:
      rows.append(_pick(current, media_keys, caption_key, json_key, shard))
      keys.append(current.key)

  try:
    with open(path, "rb") as f:
      file_size = os.fstat(f.fileno()).st_size
      with tarfile.open(fileobj=f, mode="r:") as archive:
        for member in archive:
          split = split_key(member.name) if member.isfile() and not _is_meta(member.name) else None
          if split is not None and (current is None or split[0] != current.key):
            finish()  # a new key: the previous sample is complete
            current = _Sample(split[0])
          if member.offset_data + member.size > file_size:
            damage = f"member {member.name!r} runs past the end of the file ({file_size} bytes)"
            break
          if split is None:
            continue
          extension = split[1]
          # WebDataset refuses a repeated extension in a sample; the first one is kept here.
          current.members.setdefault(extension, (member.offset_data, member.size))
        else:
          # tarfile stops quietly at a header cut short; a whole end-of-archive block says the
          # shard really ends here.
          f.seek(archive.offset)
          end = f.read(_BLOCK)
          if len(end) < _BLOCK or end.count(0) != _BLOCK:
            damage = f"no end-of-archive block after offset {archive.offset} (file of {file_size} bytes)"
  except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, ValueError) as e:
    damage = f"{type(e).__name__}: {e}"
  if damage is None:
    finish()
  return rows, keys, damage


class WebDatasetSource:
  """Samples of WebDataset tar shards, indexed for random access (see the module docstring).

  Args:
    path: the shards: a directory (all its `*.tar`, sorted), a glob, a brace pattern such as
      `data/shard-{000000..000009}.tar`, a path, or a list of those.
    media_keys: the extensions that hold the media, in order of preference (e.g. ["mp4"]); None
      takes the first member with any image or video extension.
    caption_key: the extension of the caption member; None ignores captions in members.
    json_key: the extension of the metadata member whose manifest fields are used; None ignores it.
    num_threads: threads that index shards in parallel (headers are small reads; on network
      filesystems their latency dominates).
  """

  def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike], *,
               media_keys: Sequence[str] | None = None, caption_key: str | None = "txt",
               json_key: str | None = "json", num_threads: int = 16):
    # `path`, as every file-based source names it: a config switches type with the same key.
    self._pattern = path if isinstance(path, (str, os.PathLike)) else list(path)
    self._paths = [os.path.abspath(p)
                   for p in sources_lib.expand_paths(path, suffix=TAR_SUFFIX, kind="WebDataset shards")]
    if isinstance(media_keys, str):
      media_keys = [media_keys]
    self._media_keys = None if media_keys is None else tuple(k.lower().lstrip(".") for k in media_keys)
    self._caption_key = caption_key.lower().lstrip(".") if caption_key else None
    self._json_key = json_key.lower().lstrip(".") if json_key else None
    for path in self._paths:
      _check_uncompressed(path)
    self._index, self._keys, self._damage = self._build_index(max(1, num_threads))
    if not (self._index["status"] == _OK).any():
      problems = [f"{os.path.basename(self._paths[s])}: {d}" for s, d in list(self._damage.items())[:_MAX_LISTED]]
      raise ValueError(f"WebDataset shards {sources_lib.describe_paths(self._pattern)} hold no usable sample "
                       f"({len(self._paths)} shard(s), {len(self._index)} entries; media extensions "
                       f"{list(self._media_keys or MEDIA_EXTENSIONS)}). Problems: "
                       f"{problems or 'none in the tars, but no sample has a media member'}")

  def _build_index(self, num_threads: int):
    started = time.monotonic()
    results: list[Any] = [None] * len(self._paths)
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(self._paths))) as pool:
      futures = {pool.submit(_index_shard, i, path, self._media_keys, self._caption_key, self._json_key): i
                 for i, path in enumerate(self._paths)}
      for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        results[futures[future]] = future.result()
        if len(self._paths) >= _LOG_EVERY_SHARDS and (done % _LOG_EVERY_SHARDS == 0 or done == len(self._paths)):
          logging.info("indexed %d of %d WebDataset shards (%.0f s)", done, len(self._paths),
                       time.monotonic() - started)
    rows: list[tuple] = []
    keys: list[str] = []
    damage: dict[int, str] = {}
    for shard, (shard_rows, shard_keys, problem) in enumerate(results):
      rows += shard_rows
      keys += shard_keys
      if problem is not None:
        damage[shard] = problem
        rows.append((shard, _DAMAGED, -1, -1, -1, -1, -1, -1))
        keys.append("<damaged>")
        logging.warning("WebDataset shard %s is damaged (%s); its %d complete sample(s) before the damage are "
                        "kept and the rest is one counted bad sample", self._paths[shard], problem, len(shard_rows))
    index = np.array(rows, dtype=_INDEX_DTYPE) if rows else np.zeros(0, _INDEX_DTYPE)
    return index, np.array(keys, dtype=str), damage

  @property
  def paths(self) -> list[str]:
    """The shards, in index order."""
    return list(self._paths)

  def __len__(self) -> int:
    return len(self._index)

  def _read(self, shard_path: str, offset: int, size: int, what: str, record_id: str) -> bytes:
    try:
      with open(shard_path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    except FileNotFoundError as e:
      raise media_lib.BadSample(media_lib.MISSING_FILE, f"{record_id}: {e}") from None
    except OSError as e:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA, f"{record_id}: {what}: {e}") from None
    if len(data) != size:  # the shard changed since it was indexed
      raise media_lib.BadSample(media_lib.TRUNCATED_MEDIA,
                                f"{record_id}: {what}: {len(data)} of {size} bytes at offset {offset}")
    return data

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = self._index[index]
    shard_path = self._paths[row["shard"]]
    if row["status"] == _DAMAGED:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA,
                                f"{shard_path}: corrupt tar, samples after the damage are lost "
                                f"({self._damage[int(row['shard'])]})")
    record_id = f"{os.path.basename(shard_path)}/{self._keys[index]}"
    if row["status"] == _NO_MEDIA:
      raise media_lib.BadSample(media_lib.MISSING_FILE, f"{record_id}: the sample has no media member (extensions "
                                f"{list(self._media_keys or MEDIA_EXTENSIONS)})")
    record: dict[str, Any] = {}
    if row["json_offset"] >= 0:
      record.update(self._json_fields(self._read(shard_path, row["json_offset"], row["json_size"], "json",
                                                 record_id), record_id))
    if row["txt_offset"] >= 0:
      text = self._read(shard_path, row["txt_offset"], row["txt_size"], "caption", record_id)
      record["caption"] = text.decode("utf-8", errors="replace")
    record["media"] = self._read(shard_path, row["media_offset"], row["media_size"], "media", record_id)
    record["id"] = record_id
    return record

  def _json_fields(self, data: bytes, record_id: str) -> dict[str, Any]:
    """The manifest fields of a sample's json, checked as a manifest line is (`manifest.py`)."""
    try:
      meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA,
                                f"{record_id}.{self._json_key}: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA,
                                f"{record_id}.{self._json_key}: expected a JSON object, got {type(meta).__name__}")
    # None is how writers say "no value" (img2dataset's caption of an image without alt text).
    fields = {k: meta[k] for k in JSON_FIELDS if meta.get(k) is not None}
    try:  # the very checks a manifest line gets
      manifest_lib.check_entry(dict(fields, media=record_id), f"{record_id}.{self._json_key}")
    except manifest_lib.ManifestError as e:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA, str(e)) from None
    return fields

  def __repr__(self) -> str:
    return (f"WebDatasetSource({sources_lib.describe_paths(self._pattern)}, shards={len(self._paths)}, "
            f"len={len(self)})")

