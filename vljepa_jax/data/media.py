"""Host-side media decoding and preprocessing for the VL-JEPA input pipeline.

The X-encoder is V-JEPA 2, which sees a clip of `T` frames: sampled uniformly over the video,
resized so the short side matches the crop, centre-cropped to a square and normalised with the
ImageNet mean and std. An image is the same frame repeated `T` times. This module turns every
kind of source the pipeline meets (encoded bytes, a file path, an in-memory array) into that
clip as uint8 `(T, crop, crop, 3)`; `normalize` makes the float input at the end.

It runs inside input-pipeline (Grain) worker processes, so it is NumPy, Pillow and PyAV only,
never JAX. Datasets contain broken files, and one of them must not stop a training run: every
failure that is the sample's fault raises `BadSample` with one of `SKIP_REASONS`, which the
pipeline counts and skips. Programming errors (a bad argument) still raise `ValueError` /
`TypeError`, so they are not silently counted as bad data.

Videos are decoded by seeking: a 10 s clip has ~250 frames and V-JEPA needs 8 to 64 of them,
so `decode_video` jumps to the keyframe before each sampled frame instead of decoding the whole
file, and checks every decoded frame's timestamp against the frame index it expects. Any doubt
(variable frame rate, a seek landing after its target or off a keyframe, a count estimate that
proves wrong) sends it back to a plain sequential decode, so the result is the frames a full
decode gives at the sampled indices. One case cannot be seen without decoding everything: a
container that stores no frame count (WebM, MKV) whose timestamps skip a slot only between
the stretches that were decoded; the clip is then sampled on the frame-rate grid, i.e. by time.

Frames are used as stored: no rotation metadata, sample-aspect-ratio or EXIF orientation is
applied, which is what a plain decode (and most dataset loaders) give too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fractions
import io
import os
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

import av

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Reasons a sample is skipped; the pipeline counts per reason.
MISSING_FILE = "missing_file"
UNREADABLE_MEDIA = "unreadable_media"
TRUNCATED_MEDIA = "truncated_media"
EMPTY_TEXT = "empty_text"
BAD_CHANNELS = "bad_channels"
SKIP_REASONS = (MISSING_FILE, UNREADABLE_MEDIA, TRUNCATED_MEDIA, EMPTY_TEXT, BAD_CHANNELS)
# Not a skip: a video with fewer frames than requested is padded by repeating frames and counted
# under this name.
SHORT_VIDEO = "short_video"

# Magic numbers of the image formats a dataset may hand over as raw bytes.
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a", b"GIF89a",  # GIF
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*",  # TIFF, little- and big-endian
    b"II+\x00", b"MM\x00+",  # BigTIFF
)
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


class BadSample(Exception):
  """A sample the pipeline skips; `reason` is one of `SKIP_REASONS`, `detail` says what was wrong."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail

  def __reduce__(self):
    # Worker processes pickle exceptions back to the parent; the default would call
    # `BadSample(message)` with one argument.
    return (BadSample, (self.reason, self.detail))


@dataclasses.dataclass
class VideoInfo:
  """How a clip was decoded: frames in the video, frames decoded, seeks made, and whether padded."""
  num_available: int
  num_decoded: int
  num_seeks: int
  short: bool  # num_available < the number of frames requested


def check_text(text: str | bytes | None, field: str) -> str:
  """Returns `text` stripped; None or whitespace-only text is a `BadSample(EMPTY_TEXT)`.

  Bytes (how TFDS hands out text features) are decoded as UTF-8, invalid sequences replaced.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  if text is not None and not isinstance(text, str):
    raise TypeError(f"{field} must be str, bytes or None, got {type(text).__name__}")
  if text is None or not text.strip():
    raise BadSample(EMPTY_TEXT, f"empty {field}")
  return text.strip()


# --- Frame sampling -------------------------------------------------------------------------


def sample_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
  """int64 indices of `num_frames` frames spread uniformly over `num_available`.

  Frame i is the centre of the i-th of `num_frames` equal segments,
  floor((i + 0.5) * num_available / num_frames). When the video is shorter than the clip,
  segments are shorter than a frame and indices repeat: that is how short videos are padded.
  Integer arithmetic keeps the floor exact for any length.
  """
  if num_available < 1:
    raise ValueError(f"num_available must be >= 1, got {num_available}")
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  i = np.arange(num_frames, dtype=np.int64)
  # (i + 0.5) * n / t == (2i + 1) * n / (2t)
  return (2 * i + 1) * np.int64(num_available) // np.int64(2 * num_frames)


# --- Images ---------------------------------------------------------------------------------


def is_image_bytes(data: bytes) -> bool:
  """True when `data` starts like a JPEG, PNG, GIF, BMP, WEBP or TIFF file."""
  head = bytes(data[:12])
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":  # RIFF is shared with AVI and WAV
    return True
  return head.startswith(_IMAGE_SIGNATURES)


def _failure_reason(error: Exception) -> str:
  # Pillow reports a short file as OSError("image file is truncated ...") while loading, or
  # OSError("Truncated File Read") while parsing the header; everything else is a bad file.
  return TRUNCATED_MEDIA if "truncated" in str(error).lower() else UNREADABLE_MEDIA


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  """Any Pillow mode -> uint8 (H, W, 3).

  Pillow's own `convert("RGB")` replicates grayscale, expands palettes and drops alpha (the
  stored colour is kept, not composited over a background). 16-bit grayscale is the exception:
  Pillow clips it to 255 instead of scaling, which would turn most pixels white, so it is
  scaled here (65535 -> 255).
  """
  if image.mode.startswith("I;16") or image.mode == "I":
    wide = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image bytes -> uint8 (H, W, 3). Multi-frame files (GIF, TIFF) give their first frame.

  Truncated files are rejected (`TRUNCATED_MEDIA`), never padded: this module leaves Pillow's
  `LOAD_TRUNCATED_IMAGES` off, which would otherwise fill the missing rows with grey.
  """
  if not data:
    raise BadSample(UNREADABLE_MEDIA, "empty image bytes")
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return _pil_to_rgb(image)
  # Pillow's format plugins raise many exception types on malformed input (OSError,
  # SyntaxError, ValueError, struct.error, DecompressionBombError, ...); any of them means the
  # bytes are not a usable image.
  except Exception as error:  # pylint: disable=broad-except
    raise BadSample(_failure_reason(error), f"{len(data)}-byte image: {error}") from error


def _read_image_file(path: str) -> np.ndarray:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as error:
    raise BadSample(UNREADABLE_MEDIA, f"{path}: {error}") from error
  try:
    return decode_image(data)
  except BadSample as error:
    raise BadSample(error.reason, f"{path}: {error.detail}") from error


# --- Arrays and geometry --------------------------------------------------------------------


def to_rgb_frames(array: np.ndarray) -> np.ndarray:
  """An in-memory image or video -> uint8 (N, H, W, 3).

  Accepts (H, W), (H, W, 1), (H, W, 3), (N, H, W, 1) and (N, H, W, 3) uint8 arrays, the
  layouts TFDS and the procedural dataset produce; one channel is replicated to three. Other
  dtypes are rejected rather than rescaled, because their value range (0-1 or 0-255 floats,
  16-bit) cannot be told from the array.
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise BadSample(UNREADABLE_MEDIA, f"frames must be uint8, got {array.dtype}")
  shape = array.shape  # as given, for the messages
  if array.size == 0:
    raise BadSample(UNREADABLE_MEDIA, f"empty frames of shape {shape}")
  if array.ndim not in (2, 3, 4):
    raise BadSample(UNREADABLE_MEDIA, f"expected (H, W[, C]) or (N, H, W, C) frames, got shape {shape}")
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim == 3:
    array = array[None]
  if array.shape[-1] == 1:
    return np.repeat(array, 3, axis=-1)
  if array.shape[-1] != 3:
    raise BadSample(BAD_CHANNELS, f"expected 1 or 3 channels, got shape {shape}")
  return array


def _short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """(height, width) with the short side == `size`, aspect kept; the long side rounds half up.

  Integer arithmetic: round(long * size / short) == (2 * long * size + short) // (2 * short).
  """
  if height <= width:
    return size, max(1, (2 * width * size + height) // (2 * height))
  return max(1, (2 * height * size + width) // (2 * width)), size


def _check_frames(frames: np.ndarray) -> None:
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"expected uint8 (N, H, W, 3) frames, got {frames.dtype} {frames.shape}")


def resize_short_side(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, H, W, 3) -> uint8 with the short side == `size`, bilinear (Pillow), per frame.

  Pillow's bilinear filter widens with the scale factor when shrinking, so downscaling is
  antialiased. Frames already at `size` are returned as they are (the same object).
  """
  _check_frames(frames)
  if size < 1:
    raise ValueError(f"size must be >= 1, got {size}")
  height, width = frames.shape[1:3]
  out_height, out_width = _short_side_shape(height, width, size)
  if (out_height, out_width) == (height, width):
    return frames
  out = np.empty((frames.shape[0], out_height, out_width, 3), np.uint8)
  for i, frame in enumerate(frames):
    image = Image.fromarray(np.ascontiguousarray(frame))
    out[i] = np.asarray(image.resize((out_width, out_height), Image.Resampling.BILINEAR))
  return out


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
  """(N, H, W, C) -> (N, size, size, C), the window at ((H - size) // 2, (W - size) // 2)."""
  height, width = frames.shape[1:3]
  if height < size or width < size:
    raise ValueError(f"cannot crop {size}x{size} from frames of shape {frames.shape}")
  top, left = (height - size) // 2, (width - size) // 2
  return frames[:, top:top + size, left:left + size]


def _normalization_table() -> np.ndarray:
  """`table[x, c] = (x / 255 - mean[c]) / std[c]` for every uint8 value x, in float32."""
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return (np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - mean) / std


_NORMALIZATION_TABLE = _normalization_table()


def normalize(frames: np.ndarray) -> np.ndarray:
  """uint8 frames -> float32 (x / 255 - IMAGENET_MEAN) / IMAGENET_STD, channels last.

  A per-channel lookup table gives the formula's exact float32 values at about half the cost of
  evaluating it (this runs on every pixel of every sample in the input pipeline).
  """
  if frames.dtype != np.uint8 or frames.shape[-1] != 3:
    raise ValueError(f"normalize expects uint8 (..., 3) frames, got {frames.dtype} {frames.shape}")
  flat = frames.reshape(-1, 3)
  out = np.empty(flat.shape, np.float32)
  for channel in range(3):
    np.take(_NORMALIZATION_TABLE[:, channel], flat[:, channel], out=out[:, channel])
  return out.reshape(frames.shape)


# --- Video ----------------------------------------------------------------------------------


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
    height, width = _short_side_shape(frame.height, frame.width, short_side)
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


def _plan(container, stream) -> _Plan:
  """Frame count and timestamp grid from the container headers; nothing is decoded."""
  declared = stream.frames or 0
  # The nominal rate (FFmpeg's r_frame_rate) is the grid timestamps sit on; average_rate is
  # frames / duration, which hides a variable frame rate, so it is only a last resort.
  rate = stream.base_rate or stream.guessed_rate or stream.average_rate
  if not rate or rate <= 0 or not stream.time_base or stream.start_time is None:
    return _Plan(None, declared or None, bool(declared))
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
      return _Plan(None, declared, True)
    return _Plan(timeline, declared, True)
  if duration_frames is None or round(duration_frames) < 1:
    return _Plan(None, None, False)
  return _Plan(timeline, round(duration_frames), False)


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


def _decode_by_seeking(reader: _SeekingReader, plan: _Plan, num_frames: int,
                       convert: Callable[[Any], np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
  """Decodes the sampled frames by seeking; returns ({index: frame}, frames in the stream).

  With an estimated count the reader also decodes past the last target to the end (about
  1 / (2 T) of the video) to learn the true count; if the estimate was wrong the indices are
  resampled with the true count and read again, reusing frames already decoded.
  """
  count, declared = plan.count, plan.declared
  decoded: dict[int, np.ndarray] = {}
  for _ in range(_MAX_COUNT_ROUNDS):
    ended_early = False
    for target in np.unique(sample_frame_indices(count, num_frames)).tolist():
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


def _decode_sequentially(source, num_frames: int, declared: int | None,
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
  wanted = set(sample_frame_indices(count, num_frames).tolist())
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


def decode_video(source: bytes | str | os.PathLike, num_frames: int, *,
                 short_side: int | None = None) -> tuple[np.ndarray, VideoInfo]:
  """Decodes the frames at `sample_frame_indices(frames in video, num_frames)` with PyAV.

  Args:
    source: encoded video bytes, or a path.
    num_frames: frames in the clip; a shorter video repeats frames (`VideoInfo.short`).
    short_side: if given, FFmpeg resizes each frame (bilinear) so its short side is this, the
      long side rounded half up; otherwise frames keep their size.

  Returns:
    uint8 (num_frames, H, W, 3) and a `VideoInfo`.

  Raises:
    BadSample: MISSING_FILE (no such path), UNREADABLE_MEDIA (not a video, no video stream),
      TRUNCATED_MEDIA (decoding fails, or the stream ends before a frame its container
      declared).
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if short_side is not None and short_side < 1:
    raise ValueError(f"short_side must be >= 1, got {short_side}")
  convert = _frame_converter(short_side)
  name = _describe(source)
  reader = decoded = None
  try:
    with _open_video(source) as (container, stream):
      plan = _plan(container, stream)
      if plan.timeline is not None and plan.count:
        reader = _SeekingReader(container, stream, plan.timeline)
        try:
          decoded, count = _decode_by_seeking(reader, plan, num_frames, convert)
        except _SeekingFailed:
          decoded = None  # timestamps not trustworthy: decode sequentially below
    num_decoded = reader.num_decoded if reader else 0
    num_seeks = reader.num_seeks if reader else 0
    if decoded is None:
      declared = plan.count if plan.declared else None
      decoded, count, sequential = _decode_sequentially(source, num_frames, declared, convert)
      num_decoded += sequential
  # The container opened (`_open_video` maps its own failures), so an FFmpeg error from here on
  # is the demuxer or decoder giving up on damaged data: a cut or corrupted file.
  except av.FFmpegError as error:
    raise BadSample(TRUNCATED_MEDIA, f"{name}: {error}") from error
  # What PyAV's frame conversion raises for a frame it cannot turn into RGB.
  except ValueError as error:
    raise BadSample(UNREADABLE_MEDIA, f"{name}: {error}") from error
  indices = sample_frame_indices(count, num_frames)
  frames = np.stack([decoded[i] for i in indices.tolist()])
  return frames, VideoInfo(num_available=count, num_decoded=num_decoded, num_seeks=num_seeks,
                           short=count < num_frames)


# --- Entry point ----------------------------------------------------------------------------


def _is_image_file(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      return is_image_bytes(f.read(12))
  except OSError as error:
    raise BadSample(UNREADABLE_MEDIA, f"{path}: {error}") from error


def _square(frames: np.ndarray, crop_size: int, short_side: int) -> np.ndarray:
  return center_crop(resize_short_side(frames, short_side), crop_size)


def load_frames(media: bytes | str | os.PathLike | np.ndarray, num_frames: int, *, crop_size: int,
                short_side: int | None = None) -> tuple[np.ndarray, dict[str, int]]:
  """Any media the pipeline meets -> uint8 (num_frames, crop_size, crop_size, 3) and notes.

  Args:
    media: encoded image or video bytes (told apart by magic number), a path to an image or
      video file, or a uint8 array (see `to_rgb_frames`; (N, H, W, C) arrays are videos,
      lower-rank arrays single images).
    num_frames: T, the clip length. Images are their one frame repeated T times.
    crop_size: side of the square centre crop.
    short_side: the short side frames are resized to before cropping; None means `crop_size`
      (V-JEPA's evaluation transform: the crop spans the whole short side).

  Returns:
    The frames, and notes for the pipeline's counters: {SHORT_VIDEO: 1} when a video had fewer
    than `num_frames` frames (they were repeated), else {}.
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if crop_size < 1:
    raise ValueError(f"crop_size must be >= 1, got {crop_size}")
  short_side = crop_size if short_side is None else short_side
  if short_side < crop_size:
    raise ValueError(f"short_side {short_side} is smaller than crop_size {crop_size}")

  if isinstance(media, np.ndarray) and media.ndim == 0 and isinstance(media.item(), bytes):
    media = media.item()  # encoded bytes wrapped by np.asarray (a TFDS bytes feature)
  if isinstance(media, np.ndarray):
    frames = to_rgb_frames(media)
    if media.ndim == 4:
      available = frames.shape[0]
      frames = _square(frames[sample_frame_indices(available, num_frames)], crop_size, short_side)
      return frames, ({SHORT_VIDEO: 1} if available < num_frames else {})
    image = frames
  elif isinstance(media, (bytes, bytearray, memoryview)):
    image = decode_image(bytes(media))[None] if is_image_bytes(media) else None
  elif isinstance(media, (str, os.PathLike)):
    path = os.fspath(media)
    if not os.path.exists(path):
      raise BadSample(MISSING_FILE, path)
    image = _read_image_file(path)[None] if _is_image_file(path) else None
  else:
    raise TypeError(f"media must be bytes, a path or a numpy array, got {type(media).__name__}")

  if image is not None:
    frame = _square(image, crop_size, short_side)
    return np.repeat(frame, num_frames, axis=0), {}
  frames, info = decode_video(media, num_frames, short_side=short_side)
  return _square(frames, crop_size, short_side), ({SHORT_VIDEO: 1} if info.short else {})
