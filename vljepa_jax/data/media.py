"""Host-side media decoding and preprocessing for the VL-JEPA input pipeline.

The X-encoder is V-JEPA 2, which sees a clip of `T` frames: sampled uniformly over the video,
resized so the short side matches the crop, centre-cropped to a square and normalised with the
ImageNet mean and std. An image is the same frame repeated `T` times. This module turns every
kind of source the pipeline meets (encoded bytes, a file path, an in-memory array) into that
clip as uint8 `(T, crop, crop, 3)`; `normalize` makes the float input at the end. Images are
decoded here (Pillow), videos by `video.decode_video` (PyAV).

It runs inside input-pipeline (Grain) worker processes, so it is NumPy, Pillow and PyAV only,
never JAX. A failure that is the sample's fault raises `BadSample` with one of `SKIP_REASONS`
(both from `bad_samples`, part of this module's interface too), which the pipeline counts and
skips; programming errors (a bad argument) still raise `ValueError` / `TypeError`.

Frames are used as stored: no rotation metadata, sample-aspect-ratio or EXIF orientation is
applied, which is what a plain decode (and most dataset loaders) give too.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from vljepa_jax.data.bad_samples import (BAD_CHANNELS, EMPTY_TEXT, MISSING_FILE, SKIP_REASONS, TRUNCATED_MEDIA,
                                         UNREADABLE_MEDIA, WINDOW_PAST_END, BadSample)
from vljepa_jax.data.video import FRAME_SAMPLINGS, decode_video, sample_frame_indices, short_side_shape

__all__ = [
    # what this module raises, and the reasons the pipeline counts
    "BAD_CHANNELS", "EMPTY_TEXT", "MISSING_FILE", "SKIP_REASONS", "TRUNCATED_MEDIA", "UNREADABLE_MEDIA",
    "WINDOW_PAST_END", "BadSample",
    # samples -> model input
    "FRAME_SAMPLINGS", "IMAGENET_MEAN", "IMAGENET_STD", "SHORT_VIDEO", "center_crop", "check_text", "decode_image",
    "is_image_bytes", "load_frames", "normalize", "resize_short_side", "sample_frame_indices", "to_rgb_frames",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
  out_height, out_width = short_side_shape(height, width, size)
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
                short_side: int | None = None, window: tuple[float, float] | None = None,
                sampling: str = "segment_centres") -> tuple[np.ndarray, dict[str, int]]:
  """Any media the pipeline meets -> uint8 (num_frames, crop_size, crop_size, 3) and notes.

  Args:
    media: encoded image or video bytes (told apart by magic number), a path to an image or
      video file, or a uint8 array (see `to_rgb_frames`; (N, H, W, C) arrays are videos,
      lower-rank arrays single images).
    num_frames: T, the clip length. Images are their one frame repeated T times.
    crop_size: side of the square centre crop.
    short_side: the short side frames are resized to before cropping; None means `crop_size`
      (V-JEPA's evaluation transform: the crop spans the whole short side).
    window: (start_s, end_s) of a video file to take the clip from (`video.decode_video`); an
      image, or frames already in memory (no frame rate), with a window is a `BadSample`.
    sampling: how the clip's frames spread over a video (`video.FRAME_SAMPLINGS`).

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
    if window is not None:
      raise BadSample(UNREADABLE_MEDIA, f"a clip window {window} on in-memory frames, which have no frame rate")
    frames = to_rgb_frames(media)
    if media.ndim == 4:
      available = frames.shape[0]
      frames = _square(frames[sample_frame_indices(available, num_frames, sampling)], crop_size, short_side)
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
    if window is not None:
      raise BadSample(UNREADABLE_MEDIA, f"a clip window {window} on an image")
    frame = _square(image, crop_size, short_side)
    return np.repeat(frame, num_frames, axis=0), {}
  frames, info = decode_video(media, num_frames, short_side=short_side, window=window, sampling=sampling)
  return _square(frames, crop_size, short_side), ({SHORT_VIDEO: 1} if info.short else {})
