"""`ShapesConfig`: what the generator draws, checked on construction, and the limits it must keep."""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from vljepa_jax.data.shapes.catalog import COLOR_RGB, SHAPE_SYNONYMS

# Five non-overlapping objects, one of them sweeping a path, is what a 16x16 frame holds with
# radii in [size/8, size/5]; it is also the largest count the number words cover.
MAX_OBJECTS = 5
MAX_PARAPHRASES = 8  # every scene has well over this many distinct phrasings
MIN_IMAGE_SIZE = 16  # below this a small triangle is a handful of pixels


def is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _config_error(field: str, expected: str, value: Any) -> ValueError:
  return ValueError(f"ShapesConfig.{field} must be {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """What the generator draws. Validated on construction, so a bad value fails at config time."""
  image_size: int = 32
  num_frames: int = 8  # frames per video clip
  min_objects: int = 1
  max_objects: int = 3
  colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
  shapes: tuple[str, ...] = ("square", "circle", "triangle")
  num_paraphrases: int = 4
  stream_fps: float = 2.0  # frame rate of LongStream

  def __post_init__(self):
    # Lists arrive from JSON configs; store tuples so the config stays hashable.
    for field in ("colors", "shapes"):
      if isinstance(getattr(self, field), list):
        object.__setattr__(self, field, tuple(getattr(self, field)))
    self._check_int("image_size", MIN_IMAGE_SIZE)
    self._check_int("num_frames", 1)
    self._check_vocabulary("colors", COLOR_RGB)
    self._check_vocabulary("shapes", SHAPE_SYNONYMS)
    self._check_int("min_objects", 1)
    self._check_int("max_objects", self.min_objects,
                    min(MAX_OBJECTS, len(self.colors)),
                    why=f" (>= min_objects, <= {MAX_OBJECTS} and <= len(colors))")
    self._check_int("num_paraphrases", 2, MAX_PARAPHRASES)
    fps = self.stream_fps
    if (not isinstance(fps, numbers.Real) or isinstance(fps, bool) or not math.isfinite(fps)
        or fps <= 0):
      raise _config_error("stream_fps", "a finite number > 0", fps)

  def _check_int(self, field: str, low: int, high: int | None = None, why: str = ""):
    value = getattr(self, field)
    if not is_int(value) or value < low or (high is not None and value > high):
      expected = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
      raise _config_error(field, expected + why, value)

  def _check_vocabulary(self, field: str, known: dict[str, Any]):
    values = getattr(self, field)
    if not isinstance(values, tuple) or not values:
      raise _config_error(field, f"a non-empty tuple of names from {sorted(known)}", values)
    for name in values:
      if name not in known:
        raise _config_error(field, f"names from {sorted(known)} ({name!r} is unknown)", values)
    if len(set(values)) != len(values):
      raise _config_error(field, "free of duplicates", values)
