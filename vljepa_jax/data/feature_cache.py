"""Cached X-encoder features: the frozen X-encoder's output for every clip of a dataset, read back
as a data source (`{"type": "features", "path": DIR}`).

The paper freezes the X-encoder (V-JEPA 2 ViT-L), so its tokens for a given clip never change:
computing them once (`python -m vljepa_jax.data.cache_features`) spares every later epoch, run and
evaluation both the video decoding and the X-encoder's forward pass. A batch from a `features`
source holds `visual_tokens (B, N, Dv)` instead of `video`; the model then starts at the
predictor (`models/vljepa.encode_video`).

A cache directory:

  features.json                              metadata, written last: its presence marks a complete cache
  features-PPPPP-of-CCCCC.array_record       process P's records (msgpack: the tokens' bytes + the texts)

A cache is only valid for the X-encoder and the preprocessing that wrote it, and a run refuses any
other, before it trains:
  * the preprocessing (`num_frames`, `crop_size`, `short_side`, `frame_sampling`) must equal the run's data config
    (`FeatureSource.check_data_config`, when the pipeline opens the source);
  * the X-encoder's architecture and `x_encoder_chunk_frames` must equal the run's, the former
    compared without the fields that change how it is computed and not what (`EXECUTION_FIELDS`);
  * its weights must be the run's: the writer stores the X-encoder's output for a fixed synthetic
    probe clip (mean token and first token), the run recomputes it from its own parameters and
    compares (`check_x_encoder`). A relative L2 distance above `PROBE_TOLERANCE` fails: bf16 against
    fp32 compute, or another device, moves the probe by about 1%, other weights by about 100%.

Tokens are stored in bfloat16 by default (`--dtype`): what the X-encoder computes in under the
paper's bf16 compute, at half float32's storage. A float32-computing X-encoder is then rounded to
bf16 (relative error <= 2^-9); `--dtype=float32` keeps its output exactly.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_dtypes
import msgpack
import numpy as np

from vljepa_jax.data import media as media_lib
from vljepa_jax.data import records as records_lib

METADATA_FILE = "features.json"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
# ViTConfig fields that change how the X-encoder computes, not what: a cache is valid across them.
EXECUTION_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat")
PREPROCESSING_FIELDS = ("num_frames", "crop_size", "short_side", "frame_sampling")
# Record fields kept beside the tokens: the texts and the label (the clip window was applied already).
RECORD_FIELDS = records_lib.TEXT_FIELDS
PROBE_SEED = 0
PROBE_TOLERANCE = 0.05


class CacheError(ValueError):
  """A feature cache that cannot serve this run; the message says what differs or is missing."""


def shard_name(process_index: int, process_count: int) -> str:
  return f"features-{process_index:05d}-of-{process_count:05d}.array_record"


def _plain(value: Any) -> Any:
  """NumPy scalars (the embedded dataset's labels) as Python values, for msgpack and JSON."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def encode_record(tokens: np.ndarray, record: Mapping[str, Any], dtype: str) -> bytes:
  """One cached clip: its tokens `(N, Dv)` as `dtype` bytes, and the record's `RECORD_FIELDS`."""
  fields = {k: _plain(record[k]) for k in RECORD_FIELDS if record.get(k) is not None}
  data = np.ascontiguousarray(np.asarray(tokens).astype(STORAGE_DTYPES[dtype]))
  return msgpack.packb({"tokens": data.tobytes(), **fields}, use_bin_type=True)


def decode_record(data: bytes, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
  record = msgpack.unpackb(data, raw=False)
  tokens = np.frombuffer(record.pop("tokens"), STORAGE_DTYPES[dtype])
  if tokens.size != np.prod(shape):
    raise ValueError(f"{tokens.size} values, expected tokens of shape {tuple(shape)}")
  return {"visual_tokens": tokens.reshape(shape), **record}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  path = os.fspath(path)
  file = os.path.join(path, METADATA_FILE)
  if not os.path.isfile(file):
    reason = ("the directory does not exist" if not os.path.isdir(path) else
              f"it has no {METADATA_FILE}: the writer did not finish, or this is not a feature cache")
    raise CacheError(f"{path!r} is not a complete feature cache ({reason}); write one with "
                     "`python -m vljepa_jax.data.cache_features --config=... --output=DIR`")
  with open(file, encoding="utf-8") as f:
    metadata = json.load(f)
  if metadata.get("format") != FORMAT_VERSION:
    raise CacheError(f"{file}: feature cache format {metadata.get('format')!r}; this version reads {FORMAT_VERSION}")
  return metadata


class FeatureSource:
  """Random access to a feature cache's records: `visual_tokens (N, Dv)` plus the source's texts.

  `label_names`: the cached source's class names, when it had them (for `class_names="source"`).
  """

  def __init__(self, path: str | os.PathLike):
    import grain  # pylint: disable=g-import-not-at-top  # keeps `import feature_cache` light for tools
    self.path = os.fspath(path)
    self.metadata = read_metadata(self.path)
    self._shape = tuple(self.metadata["token_shape"])
    self._dtype = self.metadata["dtype"]
    paths = [os.path.join(self.path, name) for name in self.metadata["shards"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise CacheError(f"feature cache {self.path!r} lacks shard(s) {missing} that {METADATA_FILE} lists")
    self._source = grain.sources.ArrayRecordDataSource(paths)
    if len(self._source) != self.metadata["num_records"]:
      raise CacheError(f"feature cache {self.path!r} holds {len(self._source)} records; {METADATA_FILE} says "
                       f"{self.metadata['num_records']}")
    if self.metadata.get("label_names"):
      self.label_names = list(self.metadata["label_names"])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      record = decode_record(self._source[index], self._shape, self._dtype)
    except Exception as e:  # msgpack and NumPy raise several unrelated types for corrupt bytes
      raise media_lib.BadSample(media_lib.UNREADABLE_MEDIA,
                                f"record {index} of feature cache {self.path}: {type(e).__name__}: {e}") from None
    record.setdefault("id", f"{self.path}#{index}")
    return record

  def check_data_config(self, config: Any) -> None:
    """Refuses a data config whose clips differ from the cached ones (frames, size, resizing)."""
    cached = self.metadata["preprocessing"]
    differ = {k: (cached[k], getattr(config, k)) for k in PREPROCESSING_FIELDS if cached[k] != getattr(config, k)}
    if differ:
      raise CacheError(f"feature cache {self.path!r} was written with other preprocessing than this run's data "
                       "config: " + ", ".join(f"data.{k} cached {c!r}, run {r!r}" for k, (c, r) in differ.items()))

  def __repr__(self) -> str:
    return f"FeatureSource({self.path!r}, len={len(self)}, tokens={self._shape} {self._dtype})"


def architecture(x_encoder_config: Any) -> dict[str, Any]:
  """The X-encoder config's fields that decide its output (`EXECUTION_FIELDS` left out)."""
  return {k: v for k, v in x_encoder_config.to_dict().items() if k not in EXECUTION_FIELDS}


def probe_clip(num_frames: int, crop_size: int) -> np.ndarray:
  """The fixed synthetic clip `(1, T, S, S, 3)` (already on the normalised scale) the check runs."""
  return np.random.default_rng(PROBE_SEED).standard_normal((1, num_frames, crop_size, crop_size, 3)).astype(np.float32)


def probe_summary(tokens: np.ndarray) -> dict[str, list[float]]:
  """What a cache keeps of the probe's tokens `(1, N, Dv)`: the mean token and the first token."""
  tokens = np.asarray(tokens, np.float32)[0]
  return {"mean": tokens.mean(axis=0).tolist(), "first": tokens[0].tolist()}


def probe_distance(stored: Mapping[str, list[float]], computed: Mapping[str, list[float]]) -> float:
  """The larger relative L2 distance of the two summaries' vectors."""
  out = 0.0
  for key in ("mean", "first"):
    a, b = np.asarray(stored[key], np.float64), np.asarray(computed[key], np.float64)
    if a.shape != b.shape:
      return float("inf")
    out = max(out, float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)))
  return out


def fingerprint(model_config: Any, data_config: Any, probe_tokens: np.ndarray) -> dict[str, Any]:
  """The metadata a cache is checked against: X-encoder architecture, chunking, preprocessing, probe."""
  return {"x_encoder": architecture(model_config.x_encoder),
          "x_encoder_chunk_frames": model_config.x_encoder_chunk_frames,
          "preprocessing": {k: getattr(data_config, k) for k in PREPROCESSING_FIELDS},
          "probe": probe_summary(probe_tokens)}


def check_x_encoder(path: str, metadata: Mapping[str, Any], model_config: Any, probe_tokens: np.ndarray) -> None:
  """Refuses a cache written by another X-encoder than the run's: architecture, chunking, weights."""
  run = architecture(model_config.x_encoder)
  differ = {k: (metadata["x_encoder"].get(k), v) for k, v in run.items() if metadata["x_encoder"].get(k) != v}
  if differ:
    raise CacheError(f"feature cache {path!r} was written by another X-encoder architecture: "
                     + ", ".join(f"model.x_encoder.{k} cached {c!r}, run {r!r}" for k, (c, r) in differ.items()))
  if metadata["x_encoder_chunk_frames"] != model_config.x_encoder_chunk_frames:
    raise CacheError(f"feature cache {path!r}: model.x_encoder_chunk_frames cached "
                     f"{metadata['x_encoder_chunk_frames']!r}, run {model_config.x_encoder_chunk_frames!r}")
  distance = probe_distance(metadata["probe"], probe_summary(probe_tokens))
  if not distance <= PROBE_TOLERANCE:
    raise CacheError(f"feature cache {path!r} was written by an X-encoder with other weights than this run's: its "
                     f"output for the probe clip differs by {distance:.3g} (relative L2; at most {PROBE_TOLERANCE} is "
                     "the same weights). Write the cache again from this run's init.x_encoder / init.checkpoint")
