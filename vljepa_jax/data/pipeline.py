"""The Grain input pipeline: sources -> decoded, normalised clips and tokenised texts -> host batches.

Per source (random access, so every step is a pure function of the record index):

  range(len(source)) -> shuffle(seed), reshuffled every epoch -> repeat(num_epochs)
    -> this process's slice [process_index::process_count]       (disjoint across JAX processes)
    -> read + decode + resize short side + centre crop + uniform frame sampling (images repeated)
       + ImageNet normalisation + tokenisation of query and target           (`Preprocess`)

Then the weighted mixture of the sources (`MapDataset.mix`), conversion to an iterator with
threaded read-ahead, the bad-record filter (`SkipBadRecords`: counts per reason, error budget),
per-process batching (global batch / process count), optional worker processes, thread prefetch,
and `ReportStats`, which strips the bookkeeping fields and keeps running counts.

Every stage keeps a JSON state, so `iterator.get_state()` / `set_state()` (and Grain's Orbax
`grain.checkpoint.CheckpointHandler`, saved next to the model) resume with exactly the next batch.

A batch is a dict of NumPy arrays, leading dimension the per-process batch:

  video        float32 (B, T, S, S, 3)   ImageNet-normalised frames (uint8 pixels with
               `video_dtype="uint8"`, normalised on device by `global_batch.normalize_video`)
  visual_tokens  bfloat16 (B, N, Dv)  instead of `video`, from `features` sources: the frozen
               X-encoder's output for the clip, cached by `python -m vljepa_jax.data.cache_features`
  query_ids    int32 (B, Lq), query_mask   the query, tokenised for the predictor (absent without a tokenizer)
  target_ids   int32 (B, Ly), target_mask  the target text, tokenised for the Y-encoder
  label        int32 (B,)   class index, -1 where the record has none
  source       int32 (B,)   which mixture component the sample came from
  source_index int64 (B,)   the record's index in that source (for tracing a sample back)
  valid        bool (B,)    False only on padding rows of a final partial batch (evaluation)

Short videos are padded by repeating frames (uniform sampling of T indices over fewer frames);
they are counted as `short_video`, not skipped. Records that cannot be used are skipped and
counted per reason (`SKIP_REASONS`); when the skipped fraction exceeds `error_budget` (after
`error_budget_min_seen` records) the iterator raises `DataErrorBudgetExceeded` naming examples.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from absl import flags
from absl import logging
import grain
import numpy as np

from vljepa_jax.data import global_batch
from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import media as media_lib
from vljepa_jax.data import sources as sources_lib

UNKNOWN_LABEL = "unknown_label"
SKIP_REASONS = media_lib.SKIP_REASONS + (UNKNOWN_LABEL,)
# The order of the skip counts in iterator states saved as a list (before clip windows added a reason).
_LIST_STATE_SKIP_REASONS = (media_lib.MISSING_FILE, media_lib.UNREADABLE_MEDIA, media_lib.TRUNCATED_MEDIA,
                            media_lib.EMPTY_TEXT, media_lib.BAD_CHANNELS, UNKNOWN_LABEL)
NOTES = (media_lib.SHORT_VIDEO,)
VISUAL_TOKENS = global_batch.VISUAL_TOKENS  # a `features` source's field, in place of `video`
FEATURES_SOURCE = "features"
TEXT_MODES = ("caption", "qa", "auto", "no_target")
VIDEO_DTYPES = ("float32", "uint8")
# Bookkeeping fields that travel with each element and are removed before the batch is returned.
_SKIPPED = "_skipped"
_NOTES = "_notes"
_BAD = "_bad"
_MAX_EXAMPLES = 5
_LOGGED_BAD_RECORDS = 10


class DataErrorBudgetExceeded(RuntimeError):
  """Too many records could not be used; the message names examples."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Everything the pipeline needs besides the tokenizers; built from a config dict by `from_dict`.

  `sources` is a sequence of dicts `{"type": ..., "weight": w, "text_mode": m, **source args}`
  (see `sources.SOURCE_TYPES`); weights are normalised, `text_mode` overrides the default.
  `from_dict` also takes a mapping `{name: spec}` (taken in sorted name order), which is what
  experiment configs use so that `--config.data.sources.NAME.size=...` works.
  """
  sources: tuple[Mapping[str, Any], ...] = ({"type": "shapes"},)
  num_frames: int = 8
  crop_size: int = 256
  # Resize the short side to this before the centre crop; None = crop_size (keep the whole frame).
  # V-JEPA 2's evaluation uses int(crop * 256 / 224), i.e. 292 for 256.
  short_side: int | None = None
  # How a clip's frames spread over a video: "segment_centres" (each frame the centre of one of
  # `num_frames` equal segments) or "first_to_last" (first and last frames included; open-vljepa's).
  frame_sampling: str = "segment_centres"
  # caption: target = a caption (a random paraphrase per epoch when `sample_paraphrase`), query =
  # `default_query`; qa: query and answer from the record; auto: qa where the record has an answer;
  # no_target: query = `default_query` and no target text is read (an empty one is tokenised):
  # zero-shot classification, whose candidates are the class names, of label-only records.
  text_mode: str = "caption"
  default_query: str = ""
  sample_paraphrase: bool = True
  # float32: normalised on the host (ImageNet mean/std). uint8: raw pixels, 4x less host memory
  # and transfer; the train/eval step then calls `global_batch.normalize_video` on device.
  video_dtype: str = "float32"
  query_length: int = 64
  target_length: int = 64
  # Class names for records whose label is a string (manifest); int labels are used as they are.
  label_names: tuple[str, ...] | None = None
  shuffle: bool = True
  seed: int = 0
  num_epochs: int | None = None  # None repeats forever
  num_threads: int = 4  # read-ahead threads for decoding (Grain ReadOptions)
  read_buffer_size: int = 256
  num_workers: int = 0  # worker processes (batches); 0 on small machines
  worker_buffer_size: int = 2
  prefetch_batches: int = 2  # thread-prefetched batches on top; 0 disables
  error_budget: float = 0.01
  error_budget_min_seen: int = 1000

  def __post_init__(self):
    if not self.sources:
      raise ValueError("data.sources is empty; expected at least one {'type': ...} entry")
    for i, spec in enumerate(self.sources):
      if "type" not in spec:
        raise ValueError(f"data.sources[{i}] has no 'type'; expected one of {sorted(sources_lib.SOURCE_TYPES)}")
      if spec.get("weight", 1.0) <= 0:
        raise ValueError(f"data.sources[{i}].weight must be > 0, got {spec['weight']}")
      if spec.get("text_mode", self.text_mode) not in TEXT_MODES:
        raise ValueError(f"data.sources[{i}].text_mode must be one of {TEXT_MODES}, got {spec['text_mode']!r}")
    cached = [spec["type"] == FEATURES_SOURCE for spec in self.sources]
    if any(cached) and not all(cached):
      raise ValueError(f"data.sources mixes {FEATURES_SOURCE!r} sources (cached X-encoder tokens) with sources of "
                       f"pixels ({[spec['type'] for spec in self.sources]}); their batches hold different fields. "
                       "Cache every source (python -m vljepa_jax.data.cache_features) or none")
    if self.video_dtype not in VIDEO_DTYPES:
      raise ValueError(f"data.video_dtype must be one of {VIDEO_DTYPES}, got {self.video_dtype!r}")
    if self.frame_sampling not in media_lib.FRAME_SAMPLINGS:
      raise ValueError(f"data.frame_sampling must be one of {media_lib.FRAME_SAMPLINGS}, got {self.frame_sampling!r}")
    if self.text_mode not in TEXT_MODES:
      raise ValueError(f"data.text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
    for name in ("num_frames", "crop_size", "query_length", "target_length"):
      if getattr(self, name) < 1:
        raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
    if self.short_side is not None and self.short_side < self.crop_size:
      raise ValueError(f"data.short_side ({self.short_side}) must be >= data.crop_size ({self.crop_size})")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"data.num_epochs must be None (forever) or >= 1, got {self.num_epochs}")
    if not 0 <= self.error_budget <= 1:
      raise ValueError(f"data.error_budget must be a fraction in [0, 1], got {self.error_budget}")
    for name in ("num_threads", "num_workers", "prefetch_batches", "error_budget_min_seen"):
      if getattr(self, name) < 0:
        raise ValueError(f"data.{name} must be >= 0, got {getattr(self, name)}")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "DataConfig":
    """From a plain or ml_collections dict; unknown keys fail by name."""
    values = values.to_dict() if hasattr(values, "to_dict") else dict(values)  # ml_collections or plain
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown data config key(s) {unknown}; expected some of {sorted(fields)}")
    if "sources" in values:
      sources = values["sources"]
      if hasattr(sources, "keys"):  # {name: spec}: lets a command line address one source by name
        sources = [sources[name] for name in sorted(sources)]
      values["sources"] = tuple(dict(s) for s in sources)
    if values.get("label_names") is not None:
      values["label_names"] = tuple(values["label_names"])
    return cls(**values)


def _bad_record(record_id: Any, error: media_lib.BadSample) -> dict[str, Any]:
  return {_BAD: error.reason, "detail": error.detail, "id": str(record_id)}


def decode_frames(record: Mapping[str, Any], config: DataConfig) -> tuple[np.ndarray, dict[str, int]]:
  """A record's clip as uint8 frames `(T, S, S, 3)` by the config's sampling, resizing and crop, and its notes.

  The one place the pipeline and the feature cache writer (`cache_features.py`) decode media, so a
  cache holds the X-encoder's output for exactly the clips training would have read.
  """
  visual = record["media"] if "media" in record else record["frames"]
  return media_lib.load_frames(visual, config.num_frames, crop_size=config.crop_size, short_side=config.short_side,
                               window=manifest_lib.clip_window(record), sampling=config.frame_sampling)


class Preprocess:
  """Record index -> one training example (or a bad-record marker). Picklable for worker processes."""

  def __init__(self, source, *, source_id: int, config: DataConfig, text_mode: str,
               query_tokenizer=None, target_tokenizer=None):
    self._source = source
    self._source_id = source_id
    self._config = config
    self._text_mode = text_mode
    self._query_tokenizer = query_tokenizer.with_max_length(config.query_length) if query_tokenizer else None
    self._target_tokenizer = target_tokenizer.with_max_length(config.target_length) if target_tokenizer else None
    self._label_ids = {name: i for i, name in enumerate(config.label_names or ())}

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    record = None
    try:
      record = self._source[int(index)]
      return self._example(int(index), record, rng)
    except media_lib.BadSample as e:
      record_id = record.get("id") if record is not None else None
      return _bad_record(record_id or f"{self._source!r}[{int(index)}]", e)

  def _texts(self, record: Mapping[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    mode = self._text_mode
    if mode == "auto":
      mode = "qa" if record.get("answer") is not None else "caption"
    if mode == "no_target":
      return self._config.default_query, ""
    if mode == "qa":
      return (media_lib.check_text(record.get("query"), "query"),
              media_lib.check_text(record.get("answer"), "answer"))
    captions = [c for c in record.get("captions") or () if c and c.strip()]
    if not captions and record.get("caption") is not None:
      captions = [record["caption"]]
    if not captions:
      raise media_lib.BadSample(media_lib.EMPTY_TEXT, "no caption")
    caption = captions[rng.integers(len(captions))] if self._config.sample_paraphrase else captions[0]
    return self._config.default_query, media_lib.check_text(caption, "caption")

  def _label(self, record: Mapping[str, Any]) -> int:
    label = record.get("label")
    if label is None:
      return -1
    if isinstance(label, str):
      if label not in self._label_ids:
        raise media_lib.BadSample(UNKNOWN_LABEL, f"label {label!r} is not in data.label_names")
      return self._label_ids[label]
    return int(label)

  def _example(self, index: int, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    config = self._config
    query, target = self._texts(record, rng)
    label = self._label(record)
    if VISUAL_TOKENS in record:  # a feature cache: the frozen X-encoder's output for this clip
      visual, notes = {VISUAL_TOKENS: record[VISUAL_TOKENS]}, {}
    else:
      frames, notes = decode_frames(record, config)
      visual = {"video": media_lib.normalize(frames) if config.video_dtype == "float32" else frames}
    example = {
        **visual,
        "label": np.int32(label),
        "source": np.int32(self._source_id),
        "source_index": np.int64(index),
        "valid": np.bool_(True),
        _NOTES: np.array([notes.get(name, 0) for name in NOTES], np.int32),
    }
    for prefix, tokenizer, text in (("query", self._query_tokenizer, query),
                                    ("target", self._target_tokenizer, target)):
      if tokenizer is not None:
        ids, mask = tokenizer([text])
        example[f"{prefix}_ids"], example[f"{prefix}_mask"] = ids[0], mask[0]
    return example


class SkipBadRecords(grain.IterDataset):
  """Drops bad-record markers, counting them per reason and enforcing the error budget."""

  def __init__(self, parent: grain.IterDataset, *, error_budget: float, min_seen: int, trailing_counts: bool = False):
    super().__init__(parent)
    self._error_budget, self._min_seen, self._trailing_counts = error_budget, min_seen, trailing_counts

  def __iter__(self) -> "_SkipBadRecordsIterator":
    return _SkipBadRecordsIterator(self._parent.__iter__(), self._error_budget, self._min_seen,
                                   self._trailing_counts)


class _SkipBadRecordsIterator(grain.DatasetIterator):
  """Each good element carries `_skipped`: the records skipped just before it, per reason.

  Attaching the counts to elements (instead of keeping them on this object) makes them survive
  batching and worker processes: summing `_skipped` over batches gives exact totals.

  Records skipped after the last good element of a finite pass have no element to ride on. With
  `trailing_counts`, they travel on one last *carrier* element: the last good element's structure,
  all zeros (so `valid=False`, like a padding row), which `DataIterator` counts and never returns
  as a sample. Only where the batches are padded (evaluation, `drop_remainder=False`): a carrier
  completing a full training batch would be trained on.
  """

  def __init__(self, parent: grain.DatasetIterator, error_budget: float, min_seen: int, trailing_counts: bool):
    super().__init__(parent)
    self._error_budget, self._min_seen, self._trailing_counts = error_budget, min_seen, trailing_counts
    self._seen = 0
    self._bad = [0] * len(SKIP_REASONS)
    self._examples: list[str] = []
    self._last_good: dict[str, Any] | None = None

  def __next__(self) -> dict[str, Any]:
    skipped = np.zeros(len(SKIP_REASONS), np.int32)
    while True:
      try:
        element = next(self._parent)
      except StopIteration:
        if self._trailing_counts and skipped.any() and self._last_good is not None:
          carrier = {key: np.zeros_like(value) for key, value in self._last_good.items()}
          carrier[_SKIPPED] = skipped
          return carrier  # the parent is exhausted: the next call ends the pass
        raise
      self._seen += 1
      if _BAD not in element:
        element[_SKIPPED] = skipped
        if self._trailing_counts:
          self._last_good = element
        return element
      reason = SKIP_REASONS.index(element[_BAD])
      skipped[reason] += 1
      self._bad[reason] += 1
      description = f"{element['id']}: {element[_BAD]}: {element['detail']}"
      if len(self._examples) < _MAX_EXAMPLES:
        self._examples.append(description)
      if sum(self._bad) <= _LOGGED_BAD_RECORDS:
        logging.warning("skipping record %s", description)
      self._check_budget()

  def _check_budget(self) -> None:
    bad = sum(self._bad)
    if self._seen >= self._min_seen and bad > self._error_budget * self._seen:
      counts = {r: n for r, n in zip(SKIP_REASONS, self._bad) if n}
      raise DataErrorBudgetExceeded(
          f"{bad} of {self._seen} records ({bad / self._seen:.1%}) could not be used, over the error "
          f"budget of {self._error_budget:.1%} (data.error_budget). Counts: {counts}. Examples:\n  "
          + "\n  ".join(self._examples))

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "seen": self._seen, "bad": list(self._bad),
            "examples": list(self._examples)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._seen, self._bad, self._examples = state["seen"], list(state["bad"]), list(state["examples"])


class ReportStats(grain.IterDataset):
  """Last stage: strips bookkeeping fields from batches and keeps running totals (`stats()`)."""

  def __init__(self, parent: grain.IterDataset, *, batch_size: int, pad_remainder: bool):
    super().__init__(parent)
    self._batch_size, self._pad_remainder = batch_size, pad_remainder

  def __iter__(self) -> "DataIterator":
    return DataIterator(self._parent.__iter__(), self._batch_size, self._pad_remainder)


class DataIterator(grain.DatasetIterator):
  """Yields clean host batches; `stats()` gives samples, per-reason skips and notes so far."""

  def __init__(self, parent: grain.DatasetIterator, batch_size: int, pad_remainder: bool):
    super().__init__(parent)
    self._batch_size, self._pad_remainder = batch_size, pad_remainder
    self._samples = 0
    self._skipped = np.zeros(len(SKIP_REASONS), np.int64)
    self._notes = np.zeros(len(NOTES), np.int64)

  def __next__(self) -> dict[str, np.ndarray]:
    while True:
      batch = dict(next(self._parent))
      self._skipped += batch.pop(_SKIPPED).sum(axis=0)
      self._notes += batch.pop(_NOTES).sum(axis=0)
      # Every row is a sample but a trailing-counts carrier (`_SkipBadRecordsIterator`), always the
      # last row of its pass; a batch of nothing else only brings its counts.
      samples = int(np.count_nonzero(batch["valid"]))
      self._samples += samples
      if samples:
        break
    if self._pad_remainder and len(batch["valid"]) < self._batch_size:
      batch = pad_batch(batch, self._batch_size)
    return batch

  def stats(self) -> dict[str, int]:
    """Samples returned, records skipped per reason, and notes (e.g. short videos padded)."""
    counts = {"samples": self._samples, "skipped": int(self._skipped.sum())}
    counts.update({f"skipped/{r}": int(n) for r, n in zip(SKIP_REASONS, self._skipped)})
    counts.update({f"notes/{r}": int(n) for r, n in zip(NOTES, self._notes)})
    return counts

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "samples": self._samples,
            "skipped": {reason: int(n) for reason, n in zip(SKIP_REASONS, self._skipped)},
            "notes": self._notes.tolist()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._samples = state["samples"]
    skipped = state["skipped"]
    if not isinstance(skipped, Mapping):  # a state saved before the counts were keyed by reason
      skipped = dict(zip(_LIST_STATE_SKIP_REASONS, skipped))
    self._skipped = np.array([skipped.get(reason, 0) for reason in SKIP_REASONS], np.int64)
    self._notes = np.array(state["notes"], np.int64)


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a partial batch with zero rows marked `valid=False`, keeping shapes static for jit."""
  def pad(x):
    widths = [(0, batch_size - len(x))] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, widths)
  return {k: pad(v) for k, v in batch.items()}


def _process_index_and_count(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # only when not given: workers need no JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  return process_index, process_count


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                     f"number of JAX processes ({process_count})")
  return global_batch_size // process_count


def make_source(spec: Mapping[str, Any], config: DataConfig):
  """The random-access source a `data.sources` entry describes (mixture keys dropped)."""
  spec = {k: v for k, v in spec.items() if k not in ("weight", "text_mode")}
  if spec["type"] == "shapes":
    # The embedded dataset renders at the pipeline's size unless told otherwise: no resampling.
    spec.setdefault("image_size", config.crop_size)
    spec.setdefault("num_frames", config.num_frames)
  source = sources_lib.make_source(spec)
  if spec["type"] == FEATURES_SOURCE:
    source.check_data_config(config)  # the clips it cached must be the ones this config would read
  return source


def _source_dataset(index: int, spec: Mapping[str, Any], config: DataConfig, process_index: int,
                    process_count: int, tokenizers: dict[str, Any]) -> grain.MapDataset:
  text_mode = spec.get("text_mode", config.text_mode)
  source = make_source(spec, config)
  if len(source) == 0:
    raise ValueError(f"data source {index} ({source!r}) is empty")
  ds = grain.MapDataset.range(len(source))
  if config.shuffle:
    # Each source gets its own stream; `shuffle` before `repeat` gives a new order every epoch.
    ds = ds.shuffle(seed=config.seed + 7919 * index)
  ds = ds.repeat(config.num_epochs)
  ds = ds[process_index::process_count]
  preprocess = Preprocess(source, source_id=index, config=config, text_mode=text_mode, **tokenizers)
  return ds.random_map(preprocess, seed=config.seed + 104729 * index + 1)


def make_dataset(config: DataConfig | Mapping[str, Any], *, global_batch_size: int,
                 query_tokenizer=None, target_tokenizer=None, process_index: int | None = None,
                 process_count: int | None = None, drop_remainder: bool = True) -> grain.IterDataset:
  """The pipeline as a Grain `IterDataset` of host batches (per-process batch = global / processes).

  `drop_remainder=False` (evaluation) keeps the final partial batch, padded with `valid=False`
  rows. `process_index/process_count` default to JAX's.
  """
  if not isinstance(config, DataConfig):
    config = DataConfig.from_dict(config)
  process_index, process_count = _process_index_and_count(process_index, process_count)
  batch_size = per_process_batch_size(global_batch_size, process_count)
  tokenizers = {"query_tokenizer": query_tokenizer, "target_tokenizer": target_tokenizer}
  datasets = [_source_dataset(i, spec, config, process_index, process_count, tokenizers)
              for i, spec in enumerate(config.sources)]
  if len(datasets) == 1:
    ds = datasets[0]
  else:
    weights = [float(spec.get("weight", 1.0)) for spec in config.sources]
    ds = grain.MapDataset.mix(datasets, weights=weights)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads,
                                            prefetch_buffer_size=config.read_buffer_size))
  ds = SkipBadRecords(ds, error_budget=config.error_budget, min_seen=config.error_budget_min_seen,
                      trailing_counts=not drop_remainder)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if config.num_workers > 0:
    # Grain's worker pool reads its absl flags; outside an absl app (notebooks, pytest) they are
    # unparsed, which would raise. Their defaults are what we want there.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers,
                                                     per_worker_buffer_size=config.worker_buffer_size))
  if config.prefetch_batches > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=config.prefetch_batches)
  return ReportStats(ds, batch_size=batch_size, pad_remainder=not drop_remainder)


def make_iterator(config: DataConfig | Mapping[str, Any], **kwargs: Any) -> DataIterator:
  """`iter(make_dataset(...))`: the checkpointable host-batch iterator training and evaluation use."""
  return iter(make_dataset(config, **kwargs))
