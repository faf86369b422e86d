"""Video decoding with PyAV: the frames of a clip at `sample_frame_indices`, found by seeking.

A 10 s clip has ~250 frames and V-JEPA needs 8 to 64 of them, so `decode_video` jumps to the
keyframe before each sampled frame instead of decoding the whole file, and checks every decoded
frame's timestamp against the frame index it expects. Any doubt (variable frame rate, a seek
landing after its target or off a keyframe, a count estimate that proves wrong) sends it back to
a plain sequential decode, so the result is the frames a full decode gives at the sampled
indices. One case cannot be seen without decoding everything: a
container that stores no frame count (WebM, MKV) whose timestamps skip a slot only between
the stretches that were decoded; the clip is then sampled on the frame-rate grid, i.e. by time.

A clip window `(start_s, end_s)` (a segment inside a long video) samples the clip among the frames
shown in it, frame i being shown at i / frame rate seconds after the stream's start
(`window_frame_indices`); the seeking above then decodes little more than those frames.

`sample_frame_indices` (which frames make a clip) and `short_side_shape` (the size frames are
resized to) are shared with `media`, which uses them for in-memory videos and Pillow resizing.
This runs inside input-pipeline (Grain) worker processes, so it is NumPy and PyAV only, never JAX;
a file that is missing or cannot be decoded raises `BadSample`. Frames are used as stored: no
rotation metadata or sample aspect ratio is applied.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fractions
import io
import math
import os
from typing import Any, Callable, Iterator

import numpy as np

import av

from vljepa_jax.data.bad_samples import MISSING_FILE, TRUNCATED_MEDIA, UNREADABLE_MEDIA, WINDOW_PAST_END
from vljepa_jax.data.bad_samples import BadSample

# How far ahead (in frames) decoding forward is preferred to seeking, before anything is known
# about the keyframe spacing; `_SeekingReader` raises it to the spacing it observes.
_SEEK_AHEAD_FRAMES = 16
# Seeks that land after their target are retried this many times, each further back.
_SEEK_ATTEMPTS = 4
# Count re-estimations before giving up on seeking (the second always has the exact count).
_MAX_COUNT_ROUNDS = 3
# One decoder thread: parallelism comes from the pipeline's worker processes, and FFmpeg's
# default of one thread per core in every worker would oversubscribe the host.
_DECODER_THREADS = 1


@dataclasses.dataclass
class VideoInfo:
  """How a clip was decoded: frames in the video (or its window), frames decoded, seeks made, and
  whether padded."""
  num_available: int
  num_decoded: int
  num_seeks: int
  short: bool  # num_available < the number of frames requested


# --- Which frames, at what size -------------------------------------------------------------


# How a clip's frames are spread over a video (`sample_frame_indices`): "segment_centres", the
# default, or "first_to_last" (both ends included), the sampling of open-vljepa's MSR-VTT evaluation.
FRAME_SAMPLINGS = ("segment_centres", "first_to_last")


def sample_frame_indices(num_available: int, num_frames: int, sampling: str = "segment_centres") -> np.ndarray:
  """int64 indices of `num_frames` frames spread uniformly over `num_available`.

  "segment_centres": frame i is the centre of the i-th of `num_frames` equal segments,
  floor((i + 0.5) * num_available / num_frames); integer arithmetic keeps the floor exact for any
  length. "first_to_last": `np.linspace(0, num_available - 1, num_frames)` truncated, the first
  and last frames included (open-vljepa's `MSRVTTDataset._load_video`, the same NumPy expression).
  When the video is shorter than the clip, indices repeat: that is how short videos are padded.
  """
  if num_available < 1:
    raise ValueError(f"num_available must be >= 1, got {num_available}")
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if sampling == "first_to_last":
    return np.linspace(0, num_available - 1, num_frames).astype(np.int64)
  if sampling != "segment_centres":
    raise ValueError(f"frame sampling {sampling!r}: expected one of {FRAME_SAMPLINGS}")
  i = np.arange(num_frames, dtype=np.int64)
  # (i + 0.5) * n / t == (2i + 1) * n / (2t)
  return (2 * i + 1) * np.int64(num_available) // np.int64(2 * num_frames)


# A window edge within this many frames of a frame's time counts as on it (float seconds).
_WINDOW_TOLERANCE_FRAMES = 1e-6


def window_frame_indices(num_available: int, rate: float, window: tuple[float, float],
                         num_frames: int, sampling: str = "segment_centres") -> tuple[np.ndarray, int]:
  """`num_frames` indices spread uniformly over the frames shown in `window` = (start_s, end_s).

  Frame i is shown at i / `rate` seconds; the window holds the frames with start_s <= i / rate <
  end_s, cut at the video's end, and at least the first of them. Returns the indices and how many
  frames the window holds. A window that starts after the last frame raises `BadSample`.
  """
  start_s, end_s = window
  first = math.ceil(start_s * rate - _WINDOW_TOLERANCE_FRAMES)
  if first >= num_available:
    raise BadSample(WINDOW_PAST_END, f"window {start_s:g}-{end_s:g} s starts after the video's last frame "
                                     f"({num_available} frames at {rate:g} fps)")
  stop = min(max(math.ceil(end_s * rate - _WINDOW_TOLERANCE_FRAMES), first + 1), num_available)
  return first + sample_frame_indices(stop - first, num_frames, sampling), stop - first


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """(height, width) with the short side == `size`, aspect kept; the long side rounds half up.

  Integer arithmetic: round(long * size / short) == (2 * long * size + short) // (2 * short).
  """
  if height <= width:
    return size, max(1, (2 * width * size + height) // (2 * height))
  return max(1, (2 * height * size + width) // (2 * width)), size


# --- Decoding -------------------------------------------------------------------------------


class _SeekingFailed(Exception):
  """The stream's timestamps cannot be trusted for seeking; decode sequentially instead."""


def _describe(source: bytes | str | os.PathLike) -> str:
  if isinstance(source, (bytes, bytearray, memoryview)):
    return f"<{len(source)} bytes>"
  return os.fspath(source)


@contextlib.contextmanager
def _open_video(source: bytes | str | os.PathLike) -> Iterator[tuple[Any, Any]]:
  """Yields (container, first video stream); the container is closed however the block ends."""
  name = _describe(source)
  if isinstance(source, (bytes, bytearray, memoryview)):
    if not len(source):
      raise BadSample(UNREADABLE_MEDIA, "empty video bytes")
    file = io.BytesIO(source)
  else:
    file = os.fspath(source)
    if not os.path.exists(file):
      raise BadSample(MISSING_FILE, name)
  try:
    container = av.open(file, mode="r")
  except FileNotFoundError as error:  # removed between the check and the open
    raise BadSample(MISSING_FILE, name) from error
  # FFmpeg's demuxers fail in many ways on garbage (InvalidDataError, ValueError, OSError and
  # more from PyAV's error mapping); none of them is the caller's bug.
  except Exception as error:  # pylint: disable=broad-except
    raise BadSample(UNREADABLE_MEDIA, f"{name}: {error}") from error
  try:
    if not container.streams.video:
      raise BadSample(UNREADABLE_MEDIA, f"{name}: no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = _DECODER_THREADS
    yield container, stream
  finally:
    container.close()


def _frame_converter(short_side: int | None) -> Callable[[Any], np.ndarray]:
  """av.VideoFrame -> uint8 (H, W, 3); resized by FFmpeg (swscale) when `short_side` is given.

  Resizing in the same swscale pass as the YUV -> RGB conversion is cheaper than converting at
  full size and resizing afterwards.
  """
  if short_side is None:
    return lambda frame: frame.to_ndarray(format="rgb24")
  try:
    from av.video.reformatter import Interpolation  # pylint: disable=import-outside-toplevel
    interpolation = Interpolation.BILINEAR
  except ImportError:  # older PyAV takes the name
    interpolation = "BILINEAR"

  def convert(frame) -> np.ndarray:
    height, width = short_side_shape(frame.height, frame.width, short_side)
    resized = frame.reformat(width=width, height=height, format="rgb24", interpolation=interpolation)
    return resized.to_ndarray()

  return convert


@dataclasses.dataclass(frozen=True)
class _Timeline:
  """Frame index <-> timestamp (pts, in stream.time_base units) for a constant-frame-rate stream.

  Frame i sits at start_pts + i * ticks / frames, `ticks / frames` being the frame duration in
  time_base units as an exact fraction (512/1 for 25 fps in MP4's 1/12800, 100/3 for 30 fps
  in Matroska's milliseconds). Integer arithmetic keeps this exact and cheap on every frame.
  """
  start_pts: int
  ticks: int
  frames: int

  @classmethod
  def create(cls, start_pts: int, rate: fractions.Fraction, time_base: fractions.Fraction) -> _Timeline:
    frame_duration = 1 / (rate * time_base)
    return cls(start_pts, frame_duration.numerator, frame_duration.denominator)

  def index_of(self, pts: int | None) -> int:
    """The index of the frame with this pts; `_SeekingFailed` when pts is missing or off the grid."""
    if pts is None:
      raise _SeekingFailed("frame without a timestamp")
    scaled = (pts - self.start_pts) * self.frames  # position in frames, times `ticks`
    index = (2 * scaled + self.ticks) // (2 * self.ticks)  # rounded to the nearest frame
    # Containers round timestamps to their time base (30 fps in ms: 0, 33, 67, 100), so allow
    # a quarter of a frame either way; more means the frame is not where the grid puts it.
    if 4 * abs(scaled - index * self.ticks) > self.ticks:
      raise _SeekingFailed(f"pts {pts} is off the frame grid of {self.ticks}/{self.frames} ticks")
    return index

  def pts_of(self, index: int) -> int:
    # Rounding down keeps a seek target at or before the frame; a backward seek is then safe.
    return self.start_pts + index * self.ticks // self.frames

  def frames_in(self, duration: int) -> fractions.Fraction:
    """How many frame durations fit in `duration` ticks."""
    return fractions.Fraction(duration * self.frames, self.ticks)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the container says about the stream before anything is decoded."""
  timeline: _Timeline | None  # None: timestamps unusable, decode sequentially
  count: int | None  # frames in the stream (None: unknown)
  declared: bool  # `count` is the container's own frame count, not an estimate from the duration
  rate: fractions.Fraction | None = None  # the nominal frame rate, where the container gives one


def _plan(container, stream) -> _Plan:
  """Frame count and timestamp grid from the container headers; nothing is decoded."""
  declared = stream.frames or 0
  # The nominal rate (FFmpeg's r_frame_rate) is the grid timestamps sit on; average_rate is
  # frames / duration, which hides a variable frame rate, so it is only a last resort.
  rate = stream.base_rate or stream.guessed_rate or stream.average_rate
  rate = fractions.Fraction(rate) if rate and rate > 0 else None
  if not rate or not stream.time_base or stream.start_time is None:
    return _Plan(None, declared or None, bool(declared), rate)
  timeline = _Timeline.create(stream.start_time, fractions.Fraction(rate), fractions.Fraction(stream.time_base))
  duration_frames = None
  if stream.duration:
    duration_frames = timeline.frames_in(stream.duration)
  elif container.duration:
    # Container duration is in microseconds and covers every stream; only an estimate.
    duration_frames = fractions.Fraction(container.duration, 1_000_000) * fractions.Fraction(rate)
  if declared:
    # On a constant grid the duration is `declared` frames, or one fewer where a muxer leaves
    # out the last frame's duration. More means slots without a frame (variable frame rate,
    # dropped frames), and frame i is then not at pts_of(i).
    if duration_frames is not None and not declared - 1 <= duration_frames <= declared + fractions.Fraction(1, 2):
      return _Plan(None, declared, True, rate)
    return _Plan(timeline, declared, True, rate)
  if duration_frames is None or round(duration_frames) < 1:
    return _Plan(None, None, False, rate)
  return _Plan(timeline, round(duration_frames), False, rate)


class _SeekingReader:
  """Reads frames by index in increasing order, seeking over long gaps, checking every timestamp.

  Decoding forward costs one frame per frame skipped; a seek costs the frames from the keyframe
  before the target to the target. Without a keyframe index the spacing is unknown, so forward
  decoding is preferred up to `reach` frames ahead, and `reach` grows to the largest
  keyframe-to-target distance a seek has shown. On a file with one keyframe every 250 frames
  that stops repeated seeks back to the same keyframe after the first.
  """

  def __init__(self, container, stream, timeline: _Timeline):
    self._container = container
    self._stream = stream
    self._timeline = timeline
    self._frames = None  # the current decode iterator; None before the first read
    self.position = -1  # index of the last frame decoded
    self.reach = _SEEK_AHEAD_FRAMES
    self.num_decoded = 0
    self.num_seeks = 0

  def read(self, target: int):
    """The frame at index `target`, or None if the stream ends before it."""
    if self._frames is not None and self.position < target <= self.position + self.reach:
      return self._decode_until(target, after_seek=False)
    if self._frames is None and target <= self.reach:
      self._frames = self._container.decode(self._stream)  # from the start, no seek needed
      return self._decode_until(target, after_seek=False)
    back_off = 0
    for _ in range(_SEEK_ATTEMPTS):
      self._seek(max(target - back_off, 0))
      frame = self._decode_until(target, after_seek=True)
      if frame is not False:
        return frame
      # The seek landed after the target. With open GOPs the decoder drops the frames shown
      # before the keyframe it starts from, and a container that indexes keyframes by decode
      # time can pick the keyframe after the target. Seek further back.
      back_off = max(2 * back_off, _SEEK_AHEAD_FRAMES)
    raise _SeekingFailed(f"seeks for frame {target} keep landing after it")

  def read_to_end(self) -> int:
    """Decodes to the end of the stream; returns the number of frames it has."""
    if self._frames is None:
      self._frames = self._container.decode(self._stream)
    self._decode_until(None, after_seek=False)
    return self.position + 1

  def _seek(self, index: int) -> None:
    if self._frames is not None:
      self._frames.close()
    try:
      self._container.seek(self._timeline.pts_of(index), stream=self._stream, backward=True)
    except av.FFmpegError as error:  # unseekable input: sequential decoding still works
      raise _SeekingFailed(f"seek failed: {error}") from error
    self.num_seeks += 1
    self._frames = self._container.decode(self._stream)

  def _decode_until(self, target: int | None, *, after_seek: bool):
    """Decodes up to frame `target` (None: the end) and returns it.

    Returns None when the stream ends first, and False when the first frame after a seek is
    already past `target` (the caller seeks again).
    """
    first = after_seek
    for frame in self._frames:
      self.num_decoded += 1
      index = self._timeline.index_of(frame.pts)
      if first:
        if not frame.key_frame:
          # Decoding must restart at a keyframe; anything else means the container's index
          # flags frames as keyframes that are not, and what follows may be built on nothing.
          raise _SeekingFailed(f"seek landed on frame {index}, which is not a keyframe")
        if target is not None and index > target:
          return False
        # A seek lands on a keyframe; how far it was from the target bounds the keyframe spacing.
        if target is not None:
          self.reach = max(self.reach, target - index)
        first = False
      elif index != self.position + 1:
        raise _SeekingFailed(f"frame {index} follows frame {self.position}: timestamps skip, "
                             "repeat or do not start at the stream's start time")
      self.position = index
      if index == target:
        return frame
    if first:
      # Nothing decodes after the seek, so `position` says nothing about where the stream ends.
      raise _SeekingFailed("no frame decodes after seeking")
    return None


def _decode_by_seeking(reader: _SeekingReader, plan: _Plan, indices: Callable[[int], np.ndarray],
                       convert: Callable[[Any], np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
  """Decodes the frames `indices(frames in the stream)` by seeking; returns ({index: frame}, count).

  With an estimated count the reader also decodes past the last target to the end (about
  1 / (2 T) of the video) to learn the true count; if the estimate was wrong the indices are
  resampled with the true count and read again, reusing frames already decoded.
  """
  count, declared = plan.count, plan.declared
  decoded: dict[int, np.ndarray] = {}
  for _ in range(_MAX_COUNT_ROUNDS):
    ended_early = False
    try:
      targets = np.unique(indices(count)).tolist()
    except BadSample as error:  # a window past an estimated end: learn the true end first
      if error.reason != WINDOW_PAST_END or declared:
        raise
      count, declared = reader.read_to_end(), True
      continue
    for target in targets:
      if target in decoded:
        continue
      frame = reader.read(target)  # seeks back by itself when a resampled target is behind it
      if frame is None:
        ended_early = True
        break
      decoded[target] = convert(frame)
    if ended_early:
      if declared:
        raise BadSample(TRUNCATED_MEDIA, f"stream ends after frame {reader.position}, {count} declared")
      if reader.position < 0:
        raise BadSample(TRUNCATED_MEDIA, "no frame could be decoded")
      count, declared = reader.position + 1, True  # the stream's real end is now known
      continue
    if declared:
      return decoded, count
    actual = reader.read_to_end()
    if actual == count:
      return decoded, count
    count, declared = actual, True
  raise _SeekingFailed("frame count did not settle")


def _decode_sequentially(source, indices: Callable[[int], np.ndarray], declared: int | None,
                         convert: Callable[[Any], np.ndarray]) -> tuple[dict[int, np.ndarray], int, int]:
  """Fallback: counts every frame in one pass, then decodes up to the last sampled one in another.

  Two passes keep memory at T frames for any video length. Returns ({index: frame}, count,
  frames decoded).
  """
  with _open_video(source) as (container, stream):
    count = sum(1 for _ in container.decode(stream))
  num_decoded = count
  if count == 0:
    raise BadSample(TRUNCATED_MEDIA, f"{_describe(source)}: no frame could be decoded")
  if declared and count < declared:
    raise BadSample(TRUNCATED_MEDIA, f"{_describe(source)}: {count} frames decoded, {declared} declared")
  wanted = set(indices(count).tolist())
  last = max(wanted)
  decoded = {}
  with _open_video(source) as (container, stream):
    for index, frame in enumerate(container.decode(stream)):
      num_decoded += 1
      if index in wanted:
        decoded[index] = convert(frame)
      if index == last:
        break
  if len(decoded) != len(wanted):
    raise BadSample(TRUNCATED_MEDIA, f"{_describe(source)}: frames changed between two decodes")
  return decoded, count, num_decoded


def decode_video(source: bytes | str | os.PathLike, num_frames: int, *, short_side: int | None = None,
                 window: tuple[float, float] | None = None, sampling: str = "segment_centres"
                 ) -> tuple[np.ndarray, VideoInfo]:
  """Decodes the frames at `sample_frame_indices(frames in video, num_frames, sampling)` with PyAV.

  Args:
    source: encoded video bytes, or a path.
    num_frames: frames in the clip; a shorter video (or window) repeats frames (`VideoInfo.short`).
    short_side: if given, FFmpeg resizes each frame (bilinear) so its short side is this, the
      long side rounded half up; otherwise frames keep their size.
    window: (start_s, end_s): the clip is the frames shown in that window of the video
      (`window_frame_indices`) rather than the whole video.

  Returns:
    uint8 (num_frames, H, W, 3) and a `VideoInfo`.

  Raises:
    BadSample: MISSING_FILE (no such path), UNREADABLE_MEDIA (not a video, no video stream,
      a window in a video without a frame rate), TRUNCATED_MEDIA (decoding fails, or the stream
      ends before a frame its container declared), WINDOW_PAST_END (a window that starts after
      the last frame).
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if short_side is not None and short_side < 1:
    raise ValueError(f"short_side must be >= 1, got {short_side}")
  convert = _frame_converter(short_side)
  name = _describe(source)
  reader = decoded = None
  in_window = {}  # frames the window holds, per stream length asked about

  def indices(count: int) -> np.ndarray:
    if window is None:
      return sample_frame_indices(count, num_frames, sampling)
    if plan.rate is None:
      raise BadSample(UNREADABLE_MEDIA, f"{name}: no frame rate, so the clip window {window} cannot be found")
    chosen, in_window[count] = window_frame_indices(count, float(plan.rate), window, num_frames, sampling)
    return chosen

  try:
    with _open_video(source) as (container, stream):
      plan = _plan(container, stream)
      if plan.timeline is not None and plan.count:
        reader = _SeekingReader(container, stream, plan.timeline)
        try:
          decoded, count = _decode_by_seeking(reader, plan, indices, convert)
        except _SeekingFailed:
          decoded = None  # timestamps not trustworthy: decode sequentially below
    num_decoded = reader.num_decoded if reader else 0
    num_seeks = reader.num_seeks if reader else 0
    if decoded is None:
      declared = plan.count if plan.declared else None
      decoded, count, sequential = _decode_sequentially(source, indices, declared, convert)
      num_decoded += sequential
  # The container opened (`_open_video` maps its own failures), so an FFmpeg error from here on
  # is the demuxer or decoder giving up on damaged data: a cut or corrupted file.
  except av.FFmpegError as error:
    raise BadSample(TRUNCATED_MEDIA, f"{name}: {error}") from error
  # What PyAV's frame conversion raises for a frame it cannot turn into RGB.
  except ValueError as error:
    raise BadSample(UNREADABLE_MEDIA, f"{name}: {error}") from error
  frames = np.stack([decoded[i] for i in indices(count).tolist()])
  available = count if window is None else in_window[count]
  return frames, VideoInfo(num_available=available, num_decoded=num_decoded, num_seeks=num_seeks,
                           short=available < num_frames)
