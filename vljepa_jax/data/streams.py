"""Readers of long video streams with timed captions, for selective decoding.

A `Stream` gives frames on demand (any indices, uint8 (n, S, S, 3)), its frame rate and its
annotations (time in seconds, caption). Sources (`make_streams(spec, data)`, `spec["type"]`):

  {"type": "shapes", "num_streams": 8, "seed": 2000, "duration_s": 180, **ShapesConfig fields}
      the embedded dataset's `shapes.LongStream`s (one event per 4-30 s segment, captioned at the
      segment's midpoint), rendered at data.crop_size unless `image_size` says otherwise;
  {"type": "manifest", "path": "streams.jsonl", "fps": 2.0, "media_root": None}
      real videos, one JSON object per line:
        {"id": "v1", "media": "videos/v1.mp4", "annotations": [[12.5, "cut the onion"], [30.0, "..."]]}
      sampled with PyAV at `fps`, resized and centre-cropped as the pipeline would.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import numpy as np

from vljepa_jax.data import manifest
from vljepa_jax.data import media
from vljepa_jax.data import pipeline
from vljepa_jax.data import shapes
from vljepa_jax.data import video as video_lib

MANIFEST_FORMAT = ('one JSON object per line: {"id": str, "media": video path, "annotations": '
                   '[[time_s, caption], ...]}')


@dataclasses.dataclass
class Stream:
  """One long video: frames on demand, its annotations, and its frame rate."""
  name: str
  num_frames: int
  fps: float
  annotation_times: np.ndarray  # (A,) seconds
  annotation_captions: list[str]
  frames: Any  # callable(indices (n,)) -> uint8 (n, S, S, 3)


def shapes_streams(spec: Mapping[str, Any], crop_size: int) -> list[Stream]:
  spec = dict(spec)
  count, seed = int(spec.pop("num_streams", 8)), int(spec.pop("seed", 2000))
  duration = float(spec.pop("duration_s", 180.0))
  spec.setdefault("image_size", crop_size)
  config = shapes.ShapesConfig(**spec)
  streams = []
  for i in range(count):
    long = shapes.LongStream(config, seed, i, duration_s=duration)
    times = np.array([(s.start_s + s.end_s) / 2 for s in long.segments])

    def frames(indices, long=long):
      return np.concatenate([long.clip(int(i), 1) for i in indices])

    streams.append(Stream(f"shapes-stream-{seed}-{i}", long.num_frames, long.fps, times,
                          [s.caption for s in long.segments], frames))
  return streams


def manifest_streams(path: str, fps: float, crop_size: int, short_side: int | None,
                     media_root: str | None = None) -> list[Stream]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"stream manifest {path!r} does not exist; expected {MANIFEST_FORMAT}")
  root = media_root or os.path.dirname(os.path.abspath(path))
  streams = []
  for where, entry in manifest.iter_json_lines(path):
    try:
      video = os.path.join(root, entry["media"])
      annotations = sorted((float(t), str(c)) for t, c in entry["annotations"])
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{where}: not a stream entry ({type(e).__name__}: {e}); expected {MANIFEST_FORMAT}") from None
    if not annotations:
      raise ValueError(f"{where}: no annotations")
    if not os.path.isfile(video):
      raise FileNotFoundError(f"{where}: video {video!r} does not exist")
    num_frames = max(1, int(round(video_seconds(video) * fps)))
    streams.append(Stream(str(entry.get("id", entry["media"])), num_frames, fps,
                          np.array([t for t, _ in annotations]), [c for _, c in annotations],
                          functools.partial(_video_frames, video, num_frames, crop_size, short_side)))
  if not streams:
    raise ValueError(f"{path}: no streams; expected {MANIFEST_FORMAT}")
  return streams


def video_seconds(path: str) -> float:
  """A video's duration from its container (PyAV), for sampling it at a fixed frame rate."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as container:
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
      return float(stream.duration * stream.time_base)
    if container.duration is not None:
      return container.duration / av.time_base
  raise ValueError(f"{path}: the container states no duration; re-mux it (ffmpeg -c copy) to add one")


@functools.lru_cache(maxsize=2)  # batches walk the streams in order: keep the current (and previous) one
def _decoded_video(path: str, num_frames: int, crop_size: int, short_side: int | None) -> np.ndarray:
  frames, _ = video_lib.decode_video(path, num_frames)
  return media.center_crop(media.resize_short_side(frames, short_side or crop_size), crop_size)


def _video_frames(path: str, num_frames: int, crop_size: int, short_side: int | None, indices) -> np.ndarray:
  return _decoded_video(path, num_frames, crop_size, short_side)[np.asarray(indices)]


def make_streams(spec: Mapping[str, Any], data: pipeline.DataConfig, where: str = "streams") -> list[Stream]:
  """The streams `spec` names (see the module docstring); `where` prefixes errors (e.g. "evals.sd.streams")."""
  spec = dict(spec)
  kind = spec.pop("type", "shapes")
  if kind == "shapes":
    return shapes_streams(spec, data.crop_size)
  if kind == "manifest":
    unknown = sorted(set(spec) - {"path", "fps", "media_root"})
    if "path" not in spec or unknown:
      raise ValueError(f"{where}: a manifest source takes 'path' and optionally 'fps' and 'media_root', got "
                       f"{sorted(spec)}; the file holds {MANIFEST_FORMAT}")
    return manifest_streams(spec["path"], float(spec.get("fps", 2.0)), data.crop_size, data.short_side,
                            spec.get("media_root"))
  raise ValueError(f"{where}.type={kind!r}; expected 'shapes' or 'manifest' ({MANIFEST_FORMAT})")
