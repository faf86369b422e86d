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

Indexing reads every shard's headers when the source is built, about one header read per member:
30 µs of Python each on one core of a 2-core AMD EPYC, hours for a dataset of hundreds of millions
of samples. So each shard's index is kept in a persistent cache (`shard_index_cache.py`: keyed by
the shard's path, size and modification time and by the extensions picked; `cache_index`,
`index_cache_dir`), and a later start, or another run on the same shards, reads no header of a
shard that has not changed. The shards the cache lacks are indexed in worker processes, one per
core, when there are at least `MIN_SHARDS_FOR_PROCESSES` of them (`index_processes`;
`python -m vljepa_jax.data.index_shards` in a child process, which also fills the cache ahead of a
run), and in a thread pool of `num_threads` otherwise, with progress logged for many shards. Only
the index (paths and NumPy arrays of offsets) is kept in memory, so the source pickles small for
Grain's worker processes and opens files lazily per read.

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
import multiprocessing
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any, Sequence

from absl import logging
import numpy as np

from vljepa_jax import cpu_devices
from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import media as media_lib
from vljepa_jax.data import shard_index_cache
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
# A source indexes the shards its cache lacks in worker processes, rather than its threads, once this
# many are missing and it may use several cores: the processes' start-up (~1 s) is then small.
MIN_SHARDS_FOR_PROCESSES = 16
# Characters a shard path must not hold to be handed to `index_shards`, which expands patterns.
_PATTERN_CHARACTERS = frozenset("*?[]{}")
INDEX_CACHE_KIND = "webdataset-index"  # the default cache's folder (`shard_index_cache.default_directory`)
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
                 json_key: str | None, cache: shard_index_cache.ShardIndexCache | None = None
                 ) -> tuple[np.ndarray, np.ndarray, str | None, bool]:
  """(index rows, keys, damage, from the cache) of one shard; `damage` says what is wrong with it, if anything.

  With a `cache`, an entry for this very state of the shard (size and modification time, taken from
  the handle that is read) is used instead of the headers, and a fresh index is stored.
  """
  try:
    with open(path, "rb") as f:
      stat = os.fstat(f.fileno())
      cached = cache.load(path, stat) if cache is not None else None
      if cached is not None:
        rows = cached["rows"]
        rows["shard"] = shard  # the entry is the shard's alone; its place in this source is not
        return rows, cached["keys"], (str(cached["damage"]) or None), True
      rows, keys, damage, lasting = _read_headers(f, stat.st_size, shard, media_keys, caption_key, json_key)
  except OSError as e:
    return np.zeros(0, _INDEX_DTYPE), np.zeros(0, bytes), f"{type(e).__name__}: {e}", False
  # Keys as UTF-8 bytes: a quarter of NumPy's 4-byte characters, in memory, in the cache and in the
  # copy pickled to each data worker.
  rows = np.array(rows, dtype=_INDEX_DTYPE) if rows else np.zeros(0, _INDEX_DTYPE)
  keys = np.array([key.encode() for key in keys], dtype=bytes)
  if cache is not None and lasting:
    cache.store(path, stat, {"rows": rows, "keys": keys, "damage": np.array(damage or "")})
  return rows, keys, damage, False


def _read_headers(f, file_size: int, shard: int, media_keys: Sequence[str] | None, caption_key: str | None,
                  json_key: str | None) -> tuple[list[tuple], list[str], str | None, bool]:
  """Index rows and keys of the open shard `f`, what is damaged in it (if anything), and whether that lasts.

  Only headers are read: tarfile seeks over member data. A member whose data runs past the end of
  the file, an error while reading headers, or a missing end-of-archive block marks the shard
  damaged; the sample in progress then is dropped, since it may be incomplete. Damage in the bytes
  lasts as long as they do; an I/O error (a network filesystem's hiccup) may not, so its result is
  not worth caching.
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
    lasting = not isinstance(e, OSError)
  else:
    lasting = True
  if damage is None:
    finish()
  return rows, keys, damage, lasting


def _shard_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """The absolute paths of the shards `path` selects, each checked to be an uncompressed tar."""
  paths = [os.path.abspath(p) for p in sources_lib.expand_paths(path, suffix=TAR_SUFFIX, kind="WebDataset shards")]
  for shard_path in paths:
    _check_uncompressed(shard_path)
  return paths


def _log_progress(done: int, total: int, started: float) -> None:
  """Every `_LOG_EVERY_SHARDS` shards indexed, and at the end, when there are that many."""
  if total >= _LOG_EVERY_SHARDS and (done % _LOG_EVERY_SHARDS == 0 or done == total):
    logging.info("indexed %d of %d WebDataset shards (%.0f s)", done, total, time.monotonic() - started)


def _extensions(media_keys: str | Sequence[str] | None, caption_key: str | None,
                json_key: str | None) -> tuple[tuple[str, ...] | None, str | None, str | None]:
  """The source's extension arguments as the index uses them: lowercase, without a leading dot."""
  if isinstance(media_keys, str):
    media_keys = [media_keys]
  return (None if media_keys is None else tuple(k.lower().lstrip(".") for k in media_keys),
          caption_key.lower().lstrip(".") if caption_key else None,
          json_key.lower().lstrip(".") if json_key else None)


def index_cache(index_cache_dir: str | os.PathLike | None, media_keys: tuple[str, ...] | None,
                caption_key: str | None, json_key: str | None) -> shard_index_cache.ShardIndexCache:
  """The index cache of shards indexed with these (normalised) extensions, in `index_cache_dir` or the default."""
  return shard_index_cache.ShardIndexCache(
      index_cache_dir or shard_index_cache.default_directory(INDEX_CACHE_KIND),
      {"media_keys": None if media_keys is None else list(media_keys), "caption_key": caption_key,
       "json_key": json_key})


def fill_index_cache(path: str | os.PathLike | Sequence[str | os.PathLike], *,
                     media_keys: str | Sequence[str] | None = None, caption_key: str | None = "txt",
                     json_key: str | None = "json", index_cache_dir: str | os.PathLike | None = None,
                     processes: int = 1) -> dict[str, Any]:
  """Indexes the shards the cache lacks, in `processes` worker processes, ahead of a run.

  A source indexes in threads, which take turns at the tar parsing (Python's GIL); here each process
  parses its own shards. The arguments are the source's, so the entries are exactly the ones a
  `WebDatasetSource` with them reads. Returns counts: shards, samples, already cached, damaged, and
  `write_error` (the first failed write, or None).
  """
  media_keys, caption_key, json_key = _extensions(media_keys, caption_key, json_key)
  paths = _shard_paths(path)
  cache = index_cache(index_cache_dir, media_keys, caption_key, json_key)
  summary: dict[str, Any] = {"shards": len(paths), "samples": 0, "cached": 0, "damaged": 0,
                             "directory": cache.directory, "write_error": None}
  started = time.monotonic()
  # Spawned, not forked: the caller may hold threads (JAX's, a data pipeline's) that a fork would copy mid-work.
  with concurrent.futures.ProcessPoolExecutor(max(1, min(processes, len(paths))),
                                              mp_context=multiprocessing.get_context("spawn")) as pool:
    futures = [pool.submit(_index_into_cache, i, p, media_keys, caption_key, json_key, cache)
               for i, p in enumerate(paths)]
    for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
      samples, from_cache, damage, write_error = future.result()
      summary["samples"] += samples
      summary["cached"] += from_cache
      summary["damaged"] += damage is not None
      summary["write_error"] = summary["write_error"] or write_error
      _log_progress(done, len(paths), started)
  return summary


def _index_into_cache(shard: int, path: str, media_keys, caption_key, json_key,
                      cache: shard_index_cache.ShardIndexCache) -> tuple[int, bool, str | None, str | None]:
  """`_index_shard` in a worker process: (samples, from the cache, damage, write error), small to send back."""
  rows, _, damage, from_cache = _index_shard(shard, path, media_keys, caption_key, json_key, cache)
  return len(rows), from_cache, damage, cache.write_error


class WebDatasetSource:
  """Samples of WebDataset tar shards, indexed for random access (see the module docstring).

  Args:
    path: the shards: a directory (all its `*.tar`, sorted), a glob, a brace pattern such as
      `data/shard-{000000..000009}.tar`, a path, or a list of those.
    media_keys: the extensions that hold the media, in order of preference (e.g. ["mp4"]); None
      takes the first member with any image or video extension.
    caption_key: the extension of the caption member; None ignores captions in members.
    json_key: the extension of the metadata member whose manifest fields are used; None ignores it.
    num_threads: threads that index the shards the cache lacks (those the worker processes did not).
      On a network filesystem a header read waits for the network, which threads overlap. On a local
      disk the parsing is the work and threads take turns at it under Python's lock: 16 threads
      indexed 40 shards of 1,000 samples in 11.3 s against 3.5 s for one and 2.1 s for two processes
      (`benchmarks/webdataset_index.py`).
    cache_index: keep each shard's index in a persistent cache (`shard_index_cache.py`), so that a
      later start reads no headers of a shard that has not changed.
    index_cache_dir: where; None is the default cache directory
      (`shard_index_cache.default_directory`: under `$VLJEPA_JAX_CACHE_DIR`, else `~/.cache`).
    index_processes: when at least `MIN_SHARDS_FOR_PROCESSES` shards are missing from the cache,
      they are indexed first in this many worker processes (`python -m vljepa_jax.data.index_shards`
      in a child process), which do not share Python's lock; None is one per core this process may
      use, 1 leaves it all to the threads.
  """

  def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike], *,
               media_keys: Sequence[str] | None = None, caption_key: str | None = "txt",
               json_key: str | None = "json", num_threads: int = 16, cache_index: bool = True,
               index_cache_dir: str | os.PathLike | None = None, index_processes: int | None = None):
    # `path`, as every file-based source names it: a config switches type with the same key.
    self._pattern = path if isinstance(path, (str, os.PathLike)) else list(path)
    self._paths = _shard_paths(path)
    self._media_keys, self._caption_key, self._json_key = _extensions(media_keys, caption_key, json_key)
    started = time.monotonic()
    cache = None
    if cache_index:
      cache = index_cache(index_cache_dir, self._media_keys, self._caption_key, self._json_key)
      self._index_missing_in_processes(cache, cpu_devices.available_cores() if index_processes is None else index_processes)
    elif index_cache_dir is not None or index_processes is not None:
      raise ValueError(f"WebDataset source: cache_index=False, but index_cache_dir={index_cache_dir!r} and "
                       f"index_processes={index_processes!r} only act through the cache; unset them or cache")
    self._index, self._keys, self._damage = self._build_index(max(1, num_threads), cache, started)
    if not (self._index["status"] == _OK).any():
      problems = [f"{os.path.basename(self._paths[s])}: {d}" for s, d in list(self._damage.items())[:_MAX_LISTED]]
      raise ValueError(f"WebDataset shards {sources_lib.describe_paths(self._pattern)} hold no usable sample "
                       f"({len(self._paths)} shard(s), {len(self._index)} entries; media extensions "
                       f"{list(self._media_keys or MEDIA_EXTENSIONS)}). Problems: "
                       f"{problems or 'none in the tars, but no sample has a media member'}")

  def _index_missing_in_processes(self, cache: shard_index_cache.ShardIndexCache, processes: int) -> None:
    """Fills the cache for the shards it lacks with `python -m vljepa_jax.data.index_shards`, if that pays.

    A child process, not a pool of this one's: this process may be a training job whose main module
    (JAX and all) every worker would import again, while the command's workers import this module
    only. Whatever it leaves out (it failed, a shard changed meanwhile) the threads index after it.
    """
    if processes < 2:
      return
    missing = []
    for path in self._paths:
      try:
        if not cache.has(path, os.stat(path)) and not _PATTERN_CHARACTERS & set(path):
          missing.append(path)
      except OSError:
        pass  # the threads report it
    if len(missing) < MIN_SHARDS_FOR_PROCESSES:
      return
    logging.info("indexing %d WebDataset shard(s) missing from the index cache in %d processes", len(missing),
                 processes)
    with tempfile.TemporaryDirectory(prefix="vljepa-index-shards-") as folder:
      flagfile = os.path.join(folder, "shards.flags")  # one --path per shard: too many for a command line
      with open(flagfile, "w") as f:
        f.writelines(f"--path={path}\n" for path in missing)
      command = [sys.executable, "-m", "vljepa_jax.data.index_shards", f"--flagfile={flagfile}",
                 f"--processes={processes}", f"--index_cache_dir={cache.directory}",
                 f"--caption_key={self._caption_key or ''}", f"--json_key={self._json_key or ''}"]
      if self._media_keys is not None:
        command.append(f"--media_keys={','.join(self._media_keys)}")
      # The child imports this package from where this process did, whatever its working directory.
      package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
      returncode = subprocess.run(command, stdout=subprocess.DEVNULL, env=env, check=False).returncode  # log: stderr
    if returncode != 0:
      logging.warning("`python -m vljepa_jax.data.index_shards` exited %d; the shards it did not index are "
                      "indexed in this process", returncode)

  def _build_index(self, num_threads: int, cache: shard_index_cache.ShardIndexCache | None, started: float):
    results: list[Any] = [None] * len(self._paths)
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(self._paths))) as pool:
      futures = {pool.submit(_index_shard, i, path, self._media_keys, self._caption_key, self._json_key, cache): i
                 for i, path in enumerate(self._paths)}
      for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        results[futures[future]] = future.result()
        _log_progress(done, len(self._paths), started)
    rows: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    damage: dict[int, str] = {}
    for shard, (shard_rows, shard_keys, problem, _) in enumerate(results):
      rows.append(shard_rows)
      keys.append(shard_keys)
      if problem is not None:
        damage[shard] = problem
        rows.append(np.array([(shard, _DAMAGED, -1, -1, -1, -1, -1, -1)], dtype=_INDEX_DTYPE))
        keys.append(np.array([b"<damaged>"]))
        logging.warning("WebDataset shard %s is damaged (%s); its %d complete sample(s) before the damage are "
                        "kept and the rest is one counted bad sample", self._paths[shard], problem, len(shard_rows))
    if cache is not None:
      cached = sum(from_cache for *_, from_cache in results)
      logging.info("indexed %d WebDataset shard(s) in %.1f s, %d from the index cache at %s", len(self._paths),
                   time.monotonic() - started, cached, cache.directory)
      if cache.write_error is not None:
        logging.warning("could not write the WebDataset index cache at %s (%s); the next start indexes the "
                        "shards again (set the source's index_cache_dir to a writable directory, or "
                        "cache_index=False)", cache.directory, cache.write_error)
    return np.concatenate(rows), np.concatenate(keys), damage

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
    record_id = f"{os.path.basename(shard_path)}/{self._keys[index].decode()}"
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

