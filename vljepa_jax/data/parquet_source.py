"""Parquet files as a random-access Grain source: one row per sample, media path or bytes plus texts.

Layout: every row holds the media in `media_column` and the texts in other columns, named by the
constructor (img2dataset's Parquet output: `media_column="jpg", text_column="caption"`). The media
column's type says what it holds:

  string / large_string               a path, relative to `media_root` (default: the Parquet
                                      file's own folder) or absolute
  binary / large_binary / fixed-size  the encoded image or video bytes
  struct<bytes: binary, path: string> Hugging Face `datasets`' Image/Video feature: the bytes when
                                      set, else the path

Other columns map onto the manifest's fields (`manifest.py`): caption, captions (a list), query,
answer, answer_candidates, question_type, label (int or string), start_s / end_s (a clip window),
id (default `{file name}:{row in file}`). Columns not named are never read.

Reading is pyarrow's (`pyarrow.parquet.ParquetFile`). Construction reads only each file's footer:
its row groups' row counts, and its schema, checked for every named column. A read maps a global
row index to (file, row group, row), reads that row group's named columns and keeps the last few
row groups in a small cache per process (threads share it under a lock; it is dropped when the
source is pickled for Grain's worker processes, so each process starts empty). A shuffled epoch
therefore reads about one whole row group per sample: write training data with small row groups
(a few hundred rows, or a few MB of media: `pyarrow.parquet.write_table(..., row_group_size=256)`),
not the default of up to a million rows, which would make every sample read a whole file's worth.

Damage does not stop a run: a file whose footer cannot be read becomes one placeholder row, and a
row group that fails to read makes each of its rows, as they are sampled, raise
`BadSample(UNREADABLE_MEDIA)`; the pipeline counts both against its error budget. A row without
media is `BadSample(MISSING_FILE)`. Configuration mistakes fail when the source is built: a pattern
selecting no file, a named column a file lacks (the message lists the columns it has), a media
column of another type, or no readable file at all.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time
from typing import Any, Sequence

from absl import logging
import numpy as np

from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import media as media_lib
from vljepa_jax.data import sources as sources_lib

PARQUET_SUFFIX = ".parquet"
_LOG_EVERY_FILES = 100
_MAX_LISTED = 5


def _media_kind(arrow_type) -> str | None:
  """"path", "bytes" or "struct" (bytes or path) for a usable media column type, else None."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (
      hasattr(pa.types, "is_string_view") and pa.types.is_string_view(arrow_type)):
    return "path"
  if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(
      arrow_type) or (hasattr(pa.types, "is_binary_view") and pa.types.is_binary_view(arrow_type)):
    return "bytes"
  if pa.types.is_struct(arrow_type):
    names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
    if {"bytes", "path"} <= names:
      return "struct"
  return None


def _read_footer(path: str) -> tuple[list[int] | None, Any, str | None]:
  """(rows per row group, arrow schema, error) of one file; only the footer is read."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    with pq.ParquetFile(path) as f:
      metadata = f.metadata
      return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)], f.schema_arrow, None
  except Exception as e:  # pylint: disable=broad-except  # pyarrow raises ArrowInvalid, OSError, ... on bad files
    return None, None, f"{type(e).__name__}: {e}"


class ParquetSource:
  """Rows of Parquet files as records (see the module docstring).

  Args:
    path: a Parquet file, a directory (all its `*.parquet`, sorted), a glob, a brace pattern such
      as `part-{00000..00009}.parquet`, or a list of those.
    media_column: the column holding a media path (string) or encoded media (binary).
    text_column: the caption column; None for data without captions (e.g. only query/answer).
    media_root: the folder relative media paths are read from; default each file's own folder.
    id_column, captions_column, label_column, query_column, answer_column,
    answer_candidates_column, question_type_column, start_column, end_column: the columns of the
      other manifest fields, each optional.
    cache_row_groups: row groups kept in memory per process (the last ones read).
    num_threads: threads reading footers in parallel when the source is built.
  """

  def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike], *, media_column: str = "media",
               text_column: str | None = "caption", media_root: str | os.PathLike | None = None,
               id_column: str | None = None, captions_column: str | None = None, label_column: str | None = None,
               query_column: str | None = None, answer_column: str | None = None,
               answer_candidates_column: str | None = None, question_type_column: str | None = None,
               start_column: str | None = None, end_column: str | None = None, cache_row_groups: int = 4,
               num_threads: int = 16):
    # `path`, as every file-based source names it: a config switches type with the same key.
    self._pattern = path if isinstance(path, (str, os.PathLike)) else list(path)
    self._paths = [os.path.abspath(p) for p in sources_lib.expand_paths(
        path, suffix=PARQUET_SUFFIX, kind="Parquet files")]
    self._media_root = os.path.abspath(media_root) if media_root not in (None, "") else None  # "": unset
    if (start_column is None) != (end_column is None):
      raise ValueError(f"a clip window needs both start_column and end_column, got start_column={start_column!r}, "
                       f"end_column={end_column!r}")
    # record field -> column, and the argument that named it (for messages).
    named = {"media": ("media_column", media_column), "caption": ("text_column", text_column),
             "id": ("id_column", id_column), "captions": ("captions_column", captions_column),
             "label": ("label_column", label_column), "query": ("query_column", query_column),
             "answer": ("answer_column", answer_column),
             "answer_candidates": ("answer_candidates_column", answer_candidates_column),
             "question_type": ("question_type_column", question_type_column),
             "start_s": ("start_column", start_column), "end_s": ("end_column", end_column)}
    if not media_column:
      raise ValueError("media_column must name the column holding the media path or bytes")
    self._fields = {field: column for field, (_, column) in named.items() if column is not None}
    self._arguments = {field: argument for field, (argument, column) in named.items() if column is not None}
    self._columns = sorted(set(self._fields.values()))
    self._cache_size = max(1, cache_row_groups)
    self._build_index(max(1, num_threads))
    self._cache: collections.OrderedDict | None = None
    self._lock: threading.Lock | None = None

  def _build_index(self, num_threads: int) -> None:
    started = time.monotonic()
    footers: list[Any] = [None] * len(self._paths)
    with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(self._paths))) as pool:
      futures = {pool.submit(_read_footer, path): i for i, path in enumerate(self._paths)}
      for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        footers[futures[future]] = future.result()
        if len(self._paths) >= _LOG_EVERY_FILES and (done % _LOG_EVERY_FILES == 0 or done == len(self._paths)):
          logging.info("read the footers of %d of %d Parquet files (%.0f s)", done, len(self._paths),
                       time.monotonic() - started)
    # One entry per row group; a file that cannot be read is one "group" of one placeholder row.
    groups: list[tuple[int, int, int, int]] = []  # (file, row group or -1, rows, first row in file)
    self._kinds: list[str | None] = []
    self._broken: dict[int, str] = {}
    for file_index, (path, (row_counts, schema, error)) in enumerate(zip(self._paths, footers)):
      if error is not None:
        logging.warning("Parquet file %s cannot be read (%s); it counts as one bad sample", path, error)
        self._broken[file_index] = error
        self._kinds.append(None)
        groups.append((file_index, -1, 1, 0))
        continue
      self._kinds.append(self._check_schema(path, schema))
      first = 0
      for group, rows in enumerate(row_counts):
        if rows:
          groups.append((file_index, group, rows, first))
        first += rows
    if len(self._broken) == len(self._paths):
      problems = [f"{os.path.basename(self._paths[i])}: {e}" for i, e in list(self._broken.items())[:_MAX_LISTED]]
      raise ValueError(f"none of the {len(self._paths)} Parquet file(s) "
                       f"{sources_lib.describe_paths(self._pattern)} can be read: {problems}")
    table = np.array(groups, dtype=np.int64).reshape(-1, 4)
    self._group_file, self._group_index, rows, self._group_first_row = table.T.copy()
    self._group_start = np.concatenate([[0], np.cumsum(rows)])  # global index of each group's first row

  def _check_schema(self, path: str, schema) -> str:
    names = list(schema.names)
    for field, column in self._fields.items():
      if column not in names:
        raise KeyError(f"Parquet file {path!r} has no column {column!r} ({self._arguments[field]}); "
                       f"its columns: {names}")
    media_type = schema.field(self._fields["media"]).type
    kind = _media_kind(media_type)
    if kind is None:
      raise TypeError(f"Parquet file {path!r}: media column {self._fields['media']!r} has type {media_type}; "
                      "expected string (paths), binary (encoded media) or struct<bytes, path>")
    return kind

  def __len__(self) -> int:
    return int(self._group_start[-1])

  def __getstate__(self) -> dict[str, Any]:
    # Locks and cached tables stay in the process that made them; workers start with empty caches.
    state = dict(self.__dict__)
    state["_cache"] = state["_lock"] = None
    return state

  def _row_group(self, group: int) -> dict[str, list]:
    """The named columns of one row group, as Python lists (cached); BadSample if unreadable."""
    if self._lock is None:
      self._lock, self._cache = threading.Lock(), collections.OrderedDict()
    with self._lock:
      if group in self._cache:
        self._cache.move_to_end(group)
        return self._cache[group]
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    path = self._paths[self._group_file[group]]
    try:
      with pq.ParquetFile(path) as f:
        table = f.read_row_group(int(self._group_index[group]), columns=self._columns)
      columns = {name: table.column(name).to_pylist() for name in self._columns}
    except FileNotFoundError as e:
      raise media_lib.BadSample(media_lib.MISSING_FILE, f"{path}: {e}") from None
    except Exception as e:  # pylint: disable=broad-except  # pyarrow's errors on damaged data vary
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA,
                                f"{path}: row group {self._group_index[group]} cannot be read "
                                f"({type(e).__name__}: {e})") from None
    with self._lock:
      self._cache[group] = columns
      while len(self._cache) > self._cache_size:
        self._cache.popitem(last=False)
    return columns

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"row {index} of {self!r}")
    group = int(np.searchsorted(self._group_start, index, side="right")) - 1
    file_index = int(self._group_file[group])
    path = self._paths[file_index]
    if file_index in self._broken:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA, f"{path}: not a readable Parquet file, all its rows "
                                f"are lost ({self._broken[file_index]})")
    row = index - int(self._group_start[group])
    columns = self._row_group(group)
    values = {field: columns[column][row] for field, column in self._fields.items()}
    record_id = f"{os.path.basename(path)}:{int(self._group_first_row[group]) + row}"
    record: dict[str, Any] = {"id": str(values.pop("id") if values.get("id") is not None else record_id)}
    media = values.pop("media")
    if self._kinds[file_index] == "struct" and media is not None:
      media = media.get("bytes") or media.get("path")
    if media is None or (isinstance(media, (str, bytes)) and not media):
      raise media_lib.BadSample(media_lib.MISSING_FILE, f"{record['id']}: no media in column {self._fields['media']!r}")
    if isinstance(media, str):
      root = self._media_root if self._media_root is not None else os.path.dirname(path)
      media = manifest_lib.resolve_media(media, root)
    record["media"] = media
    # None is a missing value in a column, as an absent key in a manifest line.
    texts = {field: value for field, value in values.items() if value is not None}
    try:  # the checks a manifest line gets (types, clip window)
      manifest_lib.check_entry(dict(texts, media=record["id"]), record["id"])
    except manifest_lib.ManifestError as e:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA, str(e)) from None
    record.update(texts)
    return record

  def __repr__(self) -> str:
    pattern = sources_lib.describe_paths(self._pattern)
    return f"ParquetSource({pattern}, files={len(self._paths)}, len={len(self)})"
