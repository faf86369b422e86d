"""Random-access data sources, chosen by name from config: `{"type": "manifest", ...}`.

Every source is a Grain-compatible random-access container (`__len__`, `__getitem__`) whose items
are plain dicts with one visual field and the manifest's text fields (see `manifest.py`):

  media     bytes (an encoded image or video), a file path, or a uint8 array (T,H,W,C) / (H,W,C)
  id        a name for the record in logs and error reports
  caption / captions / query / answer / label    as in the manifest schema

Decoding is deliberately *not* done here: the pipeline decodes inside its map stage, where a bad
record becomes a counted skip instead of an exception in Grain's reader.

  shapes        the embedded procedural dataset (package `shapes/`), no files needed
  manifest      a JSONL manifest plus a media folder
  array_record  shards written by `python -m vljepa_jax.data.write_arrayrecord`
  tfds          a TFDS dataset through `tfds.data_source` (ArrayRecord format; TensorFlow not needed)
  webdataset    WebDataset tar shards (img2dataset / video2dataset), `webdataset_source.py`
  parquet       Parquet files, rows with a media path or bytes column and texts, `parquet_source.py`
  features      cached X-encoder outputs (`python -m vljepa_jax.data.cache_features`), `feature_cache.py`
"""
from __future__ import annotations

import glob
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import media as media_lib
from vljepa_jax.data import records as records_lib

ARRAY_RECORD_SUFFIX = ".array_record"
_MAX_LISTED = 5  # paths named in an error


class ManifestSource:
  """Entries of a JSONL manifest, with `media` resolved to an absolute path under `media_root`."""

  def __init__(self, manifest: str | os.PathLike, media_root: str | os.PathLike | None = None):
    self._manifest = os.fspath(manifest)
    # Relative media paths default to the manifest's own folder, the usual layout ("" as None: a
    # config's unset placeholder).
    self._media_root = os.fspath(media_root) if media_root not in (None, "") else os.path.dirname(
        os.path.abspath(self._manifest))
    self._entries = manifest_lib.read_manifest(self._manifest)

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index: int) -> dict[str, Any]:
    entry = dict(self._entries[index])
    entry.setdefault("id", entry["media"])
    entry["media"] = manifest_lib.resolve_media(entry["media"], self._media_root)
    return entry

  def __repr__(self) -> str:
    return f"ManifestSource({self._manifest!r}, media_root={self._media_root!r}, len={len(self)})"


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike], *, suffix: str, kind: str) -> list[str]:
  """Files selected by a directory (its `*{suffix}`, sorted), a glob (sorted), a brace pattern
  (`shard-{000000..000009}.tar`, in its order; each expansion may itself be a glob), a path, or a
  list of those (concatenated in order).

  A part that selects nothing is a `FileNotFoundError` naming it, and so is a listed or
  brace-expanded path that does not exist: a typo in a range should fail now, not count as data
  loss for the whole run. `kind` names the files in messages ("WebDataset shards").
  """
  import braceexpand  # pylint: disable=g-import-not-at-top  # only the shard sources need it

  items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
  if not items:
    raise FileNotFoundError(f"no {kind} selected: the list of paths is empty")
  paths: list[str] = []
  for item in items:
    item = os.fspath(item)
    if os.path.isdir(item):
      found = sorted(glob.glob(os.path.join(glob.escape(item), "*" + suffix)))
    else:
      found = []
      for pattern in braceexpand.braceexpand(item):
        if glob.has_magic(pattern):
          found += sorted(glob.glob(pattern))
        else:
          found.append(pattern)
      missing = [p for p in found if not os.path.exists(p)]
      if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(found)} {kind} that {item!r} names do not exist: "
            f"{missing[:_MAX_LISTED]}{' ...' if len(missing) > _MAX_LISTED else ''}")
    if not found:
      raise FileNotFoundError(
          f"no {kind} at {item!r} (expected a directory of *{suffix} files, a glob, a brace pattern such "
          f"as 'shard-{{000000..000009}}{suffix}', a path, or a list of those)")
    paths += found
  return paths


def describe_paths(spec: Any) -> str:
  """A pattern or list of paths for messages and reprs, a long list shortened."""
  if isinstance(spec, (str, os.PathLike)):
    return repr(os.fspath(spec))
  items = [os.fspath(p) for p in spec]
  if len(items) <= 3:
    return repr(items)
  return f"[{items[0]!r}, {items[1]!r}, ... {len(items) - 3} more ..., {items[-1]!r}]"


def array_record_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Shard files of a dataset written by `python -m vljepa_jax.data.write_arrayrecord` (`expand_paths`)."""
  return expand_paths(path, suffix=ARRAY_RECORD_SUFFIX, kind="ArrayRecord shards")


class ArrayRecordSource:
  """Records written by `write_arrayrecord`: encoded media bytes plus texts (`records.py`)."""

  def __init__(self, path: str | os.PathLike):
    import grain  # pylint: disable=g-import-not-at-top  # keeps `import sources` light for tools
    self._path = os.fspath(path)
    self._paths = array_record_paths(path)
    self._source = grain.sources.ArrayRecordDataSource(self._paths)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    data = self._source[index]
    try:
      record = records_lib.decode_record(data)
    except records_lib.RecordError as e:
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA, f"record {index} of {self._path}: {e}") from None
    record.setdefault("id", record.get("media_name", f"{self._path}#{index}"))
    return record

  def __repr__(self) -> str:
    return f"ArrayRecordSource({self._path!r}, shards={len(self._paths)}, len={len(self)})"


class TfdsSource:
  """A TFDS dataset read through `tfds.data_source` (prepared in ArrayRecord format).

  `media_key` names the image (or `Tensor(T,H,W,3)` video) feature. A `ClassLabel` feature under
  `label_key` gives `label` (int) and `label_name`; `caption_key` names a text feature to use as
  the caption, and `caption_template` (e.g. "a photo of a {}.") makes a caption from the label
  name where the dataset has no text.
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None, *, media_key: str = "image",
               label_key: str | None = "label", caption_key: str | None = None,
               caption_template: str | None = None):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError("source type 'tfds' needs tensorflow-datasets: pip install 'vljepa-jax[tfds]'") from None
    self._name, self._split = name, split
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)
    # The source's own metadata: a second `tfds.builder` would read it again (and, for a dataset that
    # is not prepared, as under `tfds.testing.mock_data`, leave an empty temporary directory behind).
    features = self._source.dataset_info.features
    for key in (media_key, label_key, caption_key):
      if key is not None and key not in features:
        raise KeyError(f"TFDS dataset {name!r} has no feature {key!r}; it has {sorted(features.keys())}")
    self._media_key, self._label_key, self._caption_key = media_key, label_key, caption_key
    self.label_names: list[str] | None = None
    if label_key is not None and hasattr(features[label_key], "names"):
      self.label_names = list(features[label_key].names)
    if caption_template is not None and self.label_names is None:
      raise ValueError(f"caption_template needs a ClassLabel feature; {name!r} has none under {label_key!r}")
    self._caption_template = caption_template

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[index]
    record: dict[str, Any] = {"id": f"{self._name}/{self._split}/{index}",
                              "media": np.asarray(example[self._media_key])}
    if self._label_key is not None:
      record["label"] = int(example[self._label_key])
      if self.label_names is not None:
        record["label_name"] = self.label_names[record["label"]]
        if self._caption_template is not None:
          record["caption"] = self._caption_template.format(record["label_name"])
    if self._caption_key is not None:
      text = example[self._caption_key]
      record["caption"] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    return record

  def __repr__(self) -> str:
    return f"TfdsSource({self._name!r}, split={self._split!r}, len={len(self)})"


def _shapes_source(**kwargs: Any):
  from vljepa_jax.data import shapes  # pylint: disable=g-import-not-at-top
  config_fields = {f: kwargs.pop(f) for f in list(kwargs) if f in shapes.ShapesConfig.__dataclass_fields__}
  return shapes.ShapesSource(shapes.ShapesConfig(**config_fields), **kwargs)


def _webdataset_source(**kwargs: Any):
  from vljepa_jax.data import webdataset_source  # pylint: disable=g-import-not-at-top
  return webdataset_source.WebDatasetSource(**kwargs)


def _parquet_source(**kwargs: Any):
  from vljepa_jax.data import parquet_source  # pylint: disable=g-import-not-at-top  # pyarrow only when used
  return parquet_source.ParquetSource(**kwargs)


def _features_source(**kwargs: Any):
  from vljepa_jax.data import feature_cache  # pylint: disable=g-import-not-at-top
  return feature_cache.FeatureSource(**kwargs)


SOURCE_TYPES: dict[str, Callable[..., Any]] = {
    "shapes": _shapes_source,
    "manifest": ManifestSource,
    "array_record": ArrayRecordSource,
    "tfds": TfdsSource,
    "webdataset": _webdataset_source,
    "parquet": _parquet_source,
    "features": _features_source,
}


class FirstRecords:
  """The first `limit` records of `source`; every other attribute is the source's.

  For a smaller pool than the data holds: a quick evaluation, or the token baseline's retrieval,
  which costs one decoder pass per (clip, caption) pair (`eval/likelihood.py`).
  """

  def __init__(self, source: Any, limit: int):
    self.source, self.limit = source, limit

  def __len__(self) -> int:
    return min(self.limit, len(self.source))

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of {self!r} (length {len(self)})")
    return self.source[index]

  def __getattr__(self, name: str) -> Any:
    # Only called for names this object lacks; "source" itself is missing while unpickling (data
    # workers), and looking it up through itself would recurse.
    if name == "source" or name.startswith("__"):
      raise AttributeError(name)
    return getattr(self.source, name)

  def __repr__(self) -> str:
    return f"{self.source!r}[:{self.limit}]"


def make_source(spec: Mapping[str, Any]):
  """A source from its config: `{"type": <one of SOURCE_TYPES>, "limit": N (optional), **constructor arguments}`.

  `limit`: only the source's first N records (`FirstRecords`), for any type.
  """
  spec = dict(spec)
  kind = spec.pop("type", None)
  limit = spec.pop("limit", None)
  if kind not in SOURCE_TYPES:
    raise ValueError(f"unknown data source type {kind!r}; expected one of {sorted(SOURCE_TYPES)}")
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
    raise ValueError(f"data source {kind!r}: limit={limit!r}; expected a positive number of records")
  try:
    source = SOURCE_TYPES[kind](**spec)
  except TypeError as e:
    raise TypeError(f"data source {kind!r}: {e}") from None
  return source if limit is None else FirstRecords(source, limit)
