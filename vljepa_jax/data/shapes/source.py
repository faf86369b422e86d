"""`ShapesSource`: random access to `make_clip` items as a Grain data source."""
from __future__ import annotations

import operator
from typing import Any

from vljepa_jax.data.shapes.clips import action_classes, make_clip, object_classes
from vljepa_jax.data.shapes.config import ShapesConfig, is_int


class ShapesSource:
  """Random-access source of `make_clip` items (Grain compatible: len, getitem, picklable)."""

  def __init__(self, config: ShapesConfig = ShapesConfig(), *, kind: str = "video",
               size: int = 10_000, seed: int = 0):
    if not isinstance(config, ShapesConfig):
      raise TypeError(f"config must be a ShapesConfig, got {type(config).__name__}")
    if kind not in ("video", "image"):
      raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    if not is_int(size) or size < 1:
      raise ValueError(f"size must be an int >= 1, got {size!r}")
    if not is_int(seed) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    self.config, self.kind, self.size, self.seed = config, kind, int(size), int(seed)

  def __len__(self) -> int:
    return self.size

  @property
  def label_names(self) -> list[str]:
    """What the items' integer `label` indexes: the actions of video clips, the "colour shape" classes of images."""
    return action_classes() if self.kind == "video" else object_classes(self.config)

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = operator.index(i)  # python and numpy integers pass, floats raise TypeError
    if not 0 <= i < self.size:
      raise IndexError(f"index {i} out of range for ShapesSource of size {self.size}")
    item = make_clip(self.config, self.seed, i, video=self.kind == "video")
    item["id"] = f"shapes-{self.kind}-{self.seed}-{i}"
    return item

  def __repr__(self) -> str:
    return f"ShapesSource(kind={self.kind!r}, size={self.size}, seed={self.seed}, {self.config})"
