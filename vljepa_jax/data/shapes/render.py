"""Pixels: uint8 frames of shapes between two scene states, in exact palette colours.

Each object's mask is computed for all frames at once from (T, 1, 1) parameter arrays against a
shared pixel axis, only inside the object's bounding box, and a still object's mask is computed
once and broadcast over time. No antialiasing, so every pixel is the background or one colour.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

from vljepa_jax.data.shapes.catalog import BACKGROUND_RGB, COLOR_RGB
from vljepa_jax.data.shapes.scenes import R, STEP, X, Y


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False  # cached and shared between calls
  return array


@functools.lru_cache(maxsize=16)
def _pixel_axis(size: int) -> np.ndarray:
  return _read_only(np.arange(size, dtype=np.float32))


@functools.lru_cache(maxsize=16)
def color_palette(colors: tuple[str, ...]) -> np.ndarray:
  """RGB per label: 0 is the background, 1 + i is colour i of the config."""
  return _read_only(np.array([BACKGROUND_RGB] + [COLOR_RGB[c] for c in colors], np.uint8))


@functools.lru_cache(maxsize=16)
def clip_times(num_frames: int) -> np.ndarray:
  """Event progress in [0, 1] at each frame of a clip; a single frame shows the start."""
  return _read_only(np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1))


def _circle_mask(dx, dy, r, angle):
  del angle  # a circle looks the same at every angle
  return dx * dx + dy * dy <= r * r


def _square_mask(dx, dy, r, angle):
  cos, sin = np.cos(angle), np.sin(angle)
  half = r * np.float32(math.sqrt(0.5))  # inscribed in the radius-r circle
  along, across = dx * cos + dy * sin, dy * cos - dx * sin
  return (np.abs(along) <= half) & (np.abs(across) <= half)


def _triangle_mask(dx, dy, r, angle):
  # Equilateral, inscribed in the radius-r circle: inside all three edges, each r/2 from the
  # centre. At angle 0 the apex points up (rows grow downward).
  inside = None
  for k in range(3):
    normal = angle + np.float32(math.pi / 2 + 2 * math.pi * k / 3)
    edge = dx * np.cos(normal) + dy * np.sin(normal) <= r * np.float32(0.5)
    inside = edge if inside is None else inside & edge
  return inside


_SHAPE_MASKS: dict[str, Callable[..., np.ndarray]] = {
    "square": _square_mask, "circle": _circle_mask, "triangle": _triangle_mask}


def render(image_size: int, palette: np.ndarray, shapes: Sequence[str], start: np.ndarray,
           end: np.ndarray, progress: np.ndarray) -> np.ndarray:
  """uint8 frames (T, H, W, 3) of objects between states `start` and `end`.

  `start`/`end` are (num_objects, 6), or (T, num_objects, 6) when frames span several events;
  `progress` (T,) is each frame's progress through its event.
  """
  u = np.asarray(progress, np.float64)[:, None, None]
  num_frames = u.shape[0]
  geometry = (start[..., :STEP] + u * (end[..., :STEP] - start[..., :STEP])).astype(np.float32)
  switched = np.where(u >= 0.5, end[..., STEP:], start[..., STEP:])
  slots = (switched[..., 0] + 1).astype(np.uint8)  # (T, n) palette index
  visible = switched[..., 1] > 0.5  # (T, n)
  still = (geometry == geometry[:1]).all(axis=(0, 2))
  # Bounding boxes over the whole clip in one go; every shape lies inside its radius circle.
  x, y, r = geometry[..., X], geometry[..., Y], geometry[..., R]
  x_lo = np.maximum(np.floor((x - r).min(0)), 0).astype(int).tolist()
  x_hi = np.minimum(np.ceil((x + r).max(0)) + 1, image_size).astype(int).tolist()
  y_lo = np.maximum(np.floor((y - r).min(0)), 0).astype(int).tolist()
  y_hi = np.minimum(np.ceil((y + r).max(0)) + 1, image_size).astype(int).tolist()
  axis = _pixel_axis(image_size)
  labels = np.zeros((num_frames, image_size, image_size), np.uint8)
  for j, shape in enumerate(shapes):
    shown = visible[:, j]
    if not shown.any():
      continue
    params = geometry[:1, j] if still[j] else geometry[:, j]  # a still mask is computed once
    cx, cy, radius, angle = (params[:, k, None, None] for k in range(STEP))
    dx = axis[None, None, x_lo[j]:x_hi[j]] - cx
    dy = axis[None, y_lo[j]:y_hi[j], None] - cy
    mask = _SHAPE_MASKS[shape](dx, dy, radius, angle)
    if not shown.all():
      mask = mask & shown[:, None, None]
    slot = slots[:, j]
    fill = slot[0] if (slot == slot[0]).all() else slot[:, None, None]
    np.copyto(labels[:, y_lo[j]:y_hi[j], x_lo[j]:x_hi[j]], fill, where=mask)
  return np.take(palette, labels, axis=0)
