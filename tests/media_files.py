"""Builds small image and video files for the media tests, and reads back which frame is which.

Tests of a decoder need files whose content is known. Nothing here is downloaded: images are
written with Pillow and videos are encoded with PyAV (the same FFmpeg the decoder uses, but its
encoder side), so every test owns its fixtures and can choose the codec, container and keyframe
spacing that the case needs.

Lossy codecs change pixel values, so a decoded frame cannot be matched to its source frame by
equality. `numbered_frames` therefore writes each frame's index as a 4x4 grid of large black
and white cells (one bit per cell); codecs keep the mean of a 16-pixel-or-larger flat cell far
from the 50% threshold, so `frame_index_of` recovers the index after compression.

Pytest puts `tests/` on `sys.path` (it has a conftest.py and no `__init__.py`), so tests import
this module as `import media_files`.
"""
from __future__ import annotations

import fractions
import io
import os
import tempfile
from typing import Sequence

import av
import numpy as np
from PIL import Image

# Index bits drawn per frame: a 4x4 grid, so up to 65536 distinguishable frames.
GRID = 4
NUM_BITS = GRID * GRID
# Far apart and inside the video range [16, 235], so limited-range YUV keeps them apart.
LOW, HIGH = 24, 224
# Default codec per container extension.
DEFAULT_CODECS = {"mp4": "libx264", "webm": "libvpx-vp9", "avi": "mpeg4", "matroska": "libx264"}
# FFmpeg muxer for each file extension.
CONTAINER_FORMATS = {".mp4": "mp4", ".webm": "webm", ".avi": "avi", ".mkv": "matroska"}
# Pillow format names for the image extensions tests use.
MILLISECOND = fractions.Fraction(1, 1000)
IMAGE_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF",
                 "webp": "WEBP", "tiff": "TIFF"}


def numbered_frames(num: int, size: int, *, height: int | None = None) -> np.ndarray:
  """uint8 `(num, height or size, size, 3)` frames whose cells spell out their index in binary.

  Cell k of the row-major 4x4 grid is bright when bit k of the frame index is set. Each cell
  also gets a different colour tint so the frames are not grey-only (chroma planes carry
  data, as in real video) without moving any cell across the threshold.
  """
  if num > 2**NUM_BITS:
    raise ValueError(f"at most {2**NUM_BITS} numbered frames, asked for {num}")
  height = size if height is None else height
  if height < 2 * GRID or size < 2 * GRID:
    raise ValueError(f"frames of {height}x{size} are too small for a {GRID}x{GRID} grid")
  rows = np.minimum(np.arange(height) * GRID // height, GRID - 1)
  cols = np.minimum(np.arange(size) * GRID // size, GRID - 1)
  cell = rows[:, None] * GRID + cols[None, :]  # (H, W) bit number of each pixel
  bits = (np.arange(num)[:, None, None] >> cell[None]) & 1  # (N, H, W)
  luma = np.where(bits == 1, HIGH, LOW).astype(np.int32)
  tint = np.stack([(cell * 5) % 16, (cell * 3) % 16, (cell * 7) % 16], axis=-1)  # (H, W, 3)
  return np.clip(luma[..., None] + tint[None] - 8, 0, 255).astype(np.uint8)


def frame_index_of(frame: np.ndarray) -> int:
  """Inverse of `numbered_frames` for one decoded `(H, W, 3)` frame, after lossy coding too.

  Only the middle half of each cell is averaged: block edges are where codecs ring and blur.
  """
  frame = np.asarray(frame, dtype=np.float64).mean(axis=-1)
  height, width = frame.shape
  index = 0
  for bit in range(NUM_BITS):
    row, col = divmod(bit, GRID)
    top, bottom = row * height // GRID, (row + 1) * height // GRID
    left, right = col * width // GRID, (col + 1) * width // GRID
    dy, dx = (bottom - top) // 4, (right - left) // 4
    mean = frame[top + dy:bottom - dy, left + dx:right - dx].mean()
    if mean > (LOW + HIGH) / 2:
      index |= 1 << bit
  return index


def frame_indices_of(frames: Sequence[np.ndarray]) -> list[int]:
  return [frame_index_of(f) for f in frames]


def image_bytes(frame: np.ndarray, fmt: str, **save_kwargs) -> bytes:
  """Encodes one frame (any array Pillow's `fromarray` takes) as `fmt` ("jpeg", "png", ...)."""
  image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
  pil_format = IMAGE_FORMATS[fmt.lower()]
  if pil_format == "JPEG":
    save_kwargs.setdefault("quality", 95)
  buffer = io.BytesIO()
  image.save(buffer, format=pil_format, **save_kwargs)
  return buffer.getvalue()


def write_image(path: str | os.PathLike, frame: np.ndarray, fmt: str, **save_kwargs) -> str:
  with open(path, "wb") as f:
    f.write(image_bytes(frame, fmt, **save_kwargs))
  return os.fspath(path)


def _codec_options(codec: str, gop: int | None, extra: dict[str, str] | None) -> dict[str, str]:
  """Encoder options that pin keyframes to every `gop` frames exactly.

  `gop_size` alone is an upper bound: x264 inserts extra keyframes at scene cuts (and the
  numbered frames change a lot from frame to frame), and libvpx places keyframes freely
  below the maximum. Setting the minimum interval too and turning scene-cut detection off
  makes the keyframe positions, and so what a seeking decoder has to do, predictable.
  """
  options = {}
  if codec in ("libvpx", "libvpx-vp9"):
    # Fast settings: the tests need small files quickly, not good compression.
    options.update({"deadline": "realtime", "cpu-used": "8"})
  if gop is not None:
    options.update({"g": str(gop), "keyint_min": str(gop)})
    if codec in ("libx264", "h264"):
      options["sc_threshold"] = "0"
      options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
  options.update(extra or {})
  return options


def encode_video(file, frames: np.ndarray, *, container_format: str, fps: int = 25,
                 codec: str | None = None, gop: int | None = None, pix_fmt: str | None = None,
                 faststart: bool = False, options: dict[str, str] | None = None,
                 timestamps_ms: Sequence[int] | None = None, flag_all_keyframes: bool = False) -> None:
  """Encodes uint8 `(T, H, W, 3)` frames into `file` (a path or a writable binary file).

  `options` are extra encoder options, e.g. {"bf": "3"} for B-frames (frames stored out of
  display order, so packet dts and pts differ: the hard case for seeking).
  `timestamps_ms` gives every frame its own presentation time in milliseconds, for a
  variable-frame-rate file; by default frame i is shown at i / fps.
  `flag_all_keyframes` marks every packet as a keyframe in the container's index, as broken
  muxers do: seeking then lands on frames that cannot be decoded on their own.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
  codec = codec or DEFAULT_CODECS[container_format]
  if pix_fmt is None:
    # MJPEG stores full-range YUV; FFmpeg's encoder rejects the limited-range yuv420p.
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
  container_options = {"movflags": "+faststart"} if faststart else {}
  with av.open(file, mode="w", format=container_format, options=container_options) as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = pix_fmt
    if gop is not None:
      stream.codec_context.gop_size = gop
    stream.options = _codec_options(codec, gop, options)
    if timestamps_ms is not None:
      if len(timestamps_ms) != len(frames):
        raise ValueError(f"{len(timestamps_ms)} timestamps for {len(frames)} frames")
      stream.codec_context.time_base = MILLISECOND
    for i, array in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(array, format="rgb24")
      if timestamps_ms is not None:
        frame.pts, frame.time_base = int(timestamps_ms[i]), MILLISECOND
      _mux(container, stream.encode(frame), flag_all_keyframes)
    _mux(container, stream.encode(None), flag_all_keyframes)  # the encoder's delayed frames


def _mux(container, packets, flag_all_keyframes: bool) -> None:
  for packet in packets:
    if flag_all_keyframes:
      packet.is_keyframe = True
    container.mux(packet)


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 25, codec: str | None = None,
                gop: int | None = None, pix_fmt: str | None = None, faststart: bool = False,
                options: dict[str, str] | None = None, timestamps_ms: Sequence[int] | None = None,
                flag_all_keyframes: bool = False) -> str:
  """Writes a video file; the container comes from the extension (.mp4, .webm, .avi, .mkv).

  `codec` None picks the extension's usual codec: libx264 for .mp4/.mkv, libvpx-vp9 for .webm,
  mpeg4 for .avi. `gop` fixes the keyframe interval. `faststart` moves the MP4 index to the
  front of the file, so a file cut short still opens and fails only while decoding.
  """
  path = os.fspath(path)
  extension = os.path.splitext(path)[1].lower()
  if extension not in CONTAINER_FORMATS:
    raise ValueError(f"unknown video extension {extension!r}; use one of {sorted(CONTAINER_FORMATS)}")
  encode_video(path, frames, container_format=CONTAINER_FORMATS[extension], fps=fps, codec=codec,
               gop=gop, pix_fmt=pix_fmt, faststart=faststart, options=options, timestamps_ms=timestamps_ms,
               flag_all_keyframes=flag_all_keyframes)
  return path


def video_bytes(frames: np.ndarray, extension: str, **kwargs) -> bytes:
  """`write_video` into memory; `extension` is ".mp4", ".webm", ".avi" or ".mkv"."""
  if kwargs.get("faststart"):
    # The MP4 muxer moves its index to the front by reopening the output file by name, which
    # an in-memory buffer does not have.
    with tempfile.TemporaryDirectory() as tmp:
      with open(write_video(os.path.join(tmp, f"video{extension}"), frames, **kwargs), "rb") as f:
        return f.read()
  buffer = io.BytesIO()
  encode_video(buffer, frames, container_format=CONTAINER_FORMATS[extension], **kwargs)
  return buffer.getvalue()


def audio_only_bytes(seconds: float = 0.5, rate: int = 8000) -> bytes:
  """A WAV file of silence: a valid media file with no video stream."""
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="wav") as container:
    stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
    frame = av.AudioFrame.from_ndarray(np.zeros((1, int(seconds * rate)), np.int16), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  return buffer.getvalue()
