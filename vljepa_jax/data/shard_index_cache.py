"""A persistent cache of per-shard indexes, so a restarted run does not read every shard's headers again.

Indexing a WebDataset shard reads the header of every member (`webdataset_source.py`): 3.5 s for 40
shards of 1,000 samples on one core of a 2-core AMD EPYC, hours for the hundreds of millions of
samples of the paper's image stage, and again in every process of every run; read from this
cache, 0.08 s (`benchmarks/webdataset_index.py`). A shard's index depends only on its bytes and on
how samples are picked from it, so it is kept, one small `.npz` per shard, under a cache directory:

- **Key.** The shard's absolute path, size and modification time (nanoseconds), the indexing
  parameters (which extensions hold the media, caption and metadata) and this format's version.
  The file is named by the key's hash and stores the key itself, which is compared on every load,
  so an entry is used only for exactly the shard state it was computed from. A rewritten shard
  has another size or time and is indexed again; its old entry is never read (delete the
  directory to reclaim it). A copy that keeps both size and time (`rsync -a` of a changed file of
  the same length) would be served the old index: turn the cache off (`cache_index=False`) or
  delete the directory after such a copy.
- **Writes** go to a temporary file in the directory, then `os.replace`: a reader never sees half a
  file, and processes or hosts sharing the directory may write the same entry at once.
- **Failures never stop a run.** An entry that cannot be read (damaged, or written by an
  incompatible version) is a miss and is rewritten; a directory that cannot be written is logged
  once per source, and indexing goes on without the cache.

Where: `index_cache_dir` (a source argument), else `$VLJEPA_JAX_CACHE_DIR/webdataset-index`, else
`$XDG_CACHE_HOME/vljepa_jax/webdataset-index`, else `~/.cache/vljepa_jax/webdataset-index`: a
directory on each host, or one on a shared filesystem that every host reads.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np

CACHE_DIR_ENV = "VLJEPA_JAX_CACHE_DIR"
# Bump when what an entry holds, or what the indexer puts in it, changes.
FORMAT_VERSION = 1


def default_directory(kind: str) -> str:
  """`$VLJEPA_JAX_CACHE_DIR/<kind>`, else under `$XDG_CACHE_HOME` or `~/.cache`, in `vljepa_jax/<kind>`."""
  root = os.environ.get(CACHE_DIR_ENV)
  if not root:
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "vljepa_jax")
  return os.path.join(root, kind)


class ShardIndexCache:
  """Per-shard index entries (named NumPy arrays) under `directory`, keyed as the module docstring says.

  `params`: everything besides the shard's bytes that the index depends on (JSON-serialisable).
  """

  def __init__(self, directory: str | os.PathLike, params: Mapping[str, Any]):
    self.directory = os.path.abspath(os.fspath(directory))
    self._params = dict(params)
    self.write_error: str | None = None  # the first failed write, for one warning per source

  def _key(self, path: str, stat: os.stat_result) -> str:
    return json.dumps({"format": FORMAT_VERSION, "path": os.path.abspath(path), "size": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns, "params": self._params}, sort_keys=True)

  def _file(self, key: str) -> str:
    return os.path.join(self.directory, hashlib.sha256(key.encode()).hexdigest()[:40] + ".npz")

  def has(self, path: str, stat: os.stat_result) -> bool:
    """Whether an entry for this shard state exists (not whether it reads: `load` says that)."""
    return os.path.exists(self._file(self._key(path, stat)))

  def load(self, path: str, stat: os.stat_result) -> dict[str, np.ndarray] | None:
    """The arrays stored for this shard state, or None (no entry, another state, or an unreadable file)."""
    key = self._key(path, stat)
    try:
      with np.load(self._file(key), allow_pickle=False) as entry:
        if str(entry["__key__"]) != key:  # a hash collision, however unlikely, is a miss too
          return None
        return {name: entry[name] for name in entry.files if name != "__key__"}
    except FileNotFoundError:
      return None
    except (OSError, ValueError, KeyError, EOFError):
      return None  # damaged or foreign: indexed again and overwritten

  def store(self, path: str, stat: os.stat_result, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes the entry atomically; a failure is remembered in `write_error`, never raised."""
    key = self._key(path, stat)
    temporary = None
    try:
      os.makedirs(self.directory, exist_ok=True)
      handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npz")
      with os.fdopen(handle, "wb") as f:
        np.savez(f, __key__=np.array(key), **arrays)
      os.replace(temporary, self._file(key))
    except OSError as e:
      if self.write_error is None:
        self.write_error = f"{type(e).__name__}: {e}"
      if temporary is not None:
        with contextlib.suppress(OSError):
          os.unlink(temporary)
