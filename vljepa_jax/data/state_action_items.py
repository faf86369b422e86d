"""Readers of inverse-dynamics items: an initial and a final state image and K candidate action clips.

Sources (`make_items(spec, data)`, `spec["type"]`):
  {"type": "shapes", "size": 256, "seed": 1000, **ShapesConfig fields}   (the default)
      `shapes.make_state_action_item` (K = 4), rendered at data.crop_size with data.num_frames
      frames unless `image_size` / `num_frames` say otherwise;
  {"type": "manifest", "path": "items.jsonl", "media_root": None}
      a JSONL file, one item per line:
        {"id": "item-0", "initial": "states/0_a.png", "final": "states/0_b.png",
         "candidates": ["clips/0_0.mp4", "clips/0_1/", "clips/0_2.mp4", "clips/0_3.mp4"],
         "answer": 2}
      `initial`/`final` are image files; each candidate is a video file, a single image, or a
      directory of frame images (taken in name order, numbers compared as numbers); relative
      paths are under `media_root` (default: the manifest's folder); `answer` is the 0-based index
      of the true candidate; `id` is optional (default: the line number). The whole manifest is
      validated when it is read, naming the file and line of a malformed entry.

`item_clip(item, slot, data)` decodes slot 0 (the state clip: the initial image for frames
[0, T // 2), the final one for [T // 2, T)) or candidate k (slot k) as uint8 (T, S, S, 3), as the
pipeline would (`media.load_frames` with the data's num_frames, crop_size and short_side).
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from vljepa_jax.data import media
from vljepa_jax.data import pipeline
from vljepa_jax.data import shapes

MANIFEST_FORMAT = ('one JSON object per line: {"id": str (optional), "initial": image path, "final": image path, '
                   '"candidates": [video file, image or frame-directory paths], "answer": index of the true candidate}')
_MANIFEST_KEYS = {"id", "initial", "final", "candidates", "answer"}
SHAPES_DEFAULTS = {"size": 256, "seed": 1000}


def _natural_key(name: str) -> list[Any]:
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class ShapesItems:
  """`shapes.make_state_action_item` items: arrays for the states and K = 4 candidate clips."""

  def __init__(self, spec: Mapping[str, Any], data: pipeline.DataConfig):
    spec = {**SHAPES_DEFAULTS, **spec}
    self.size, self.seed = int(spec.pop("size")), int(spec.pop("seed"))
    if self.size < 1 or self.seed < 0:
      raise ValueError(f"inverse dynamics source: size must be >= 1 and seed >= 0, got {self.size}, {self.seed}")
    fields = set(shapes.ShapesConfig.__dataclass_fields__)
    unknown = sorted(set(spec) - fields)
    if unknown:
      raise ValueError(f"inverse dynamics source 'shapes': unknown key(s) {unknown}; expected size, seed or "
                       f"ShapesConfig fields {sorted(fields)}")
    # Rendered at the evaluation's resolution and clip length unless told otherwise: no resampling.
    spec.setdefault("image_size", data.crop_size)
    spec.setdefault("num_frames", data.num_frames)
    self.config = shapes.ShapesConfig(**spec)
    # A batch decodes each item once; the cache spares regenerating one whose rows straddle two batches.
    self.item = functools.lru_cache(maxsize=2)(self._item)

  def __len__(self) -> int:
    return self.size

  def num_candidates(self, index: int) -> int:
    return 4

  def _item(self, index: int) -> dict[str, Any]:
    item = shapes.make_state_action_item(self.config, self.seed, index)
    return {"id": f"shapes-state-action-{self.seed}-{index}", "initial": item["initial"], "final": item["final"],
            "candidates": list(item["candidates"]), "answer": int(item["answer"])}

  def __repr__(self) -> str:
    return f"ShapesItems(size={self.size}, seed={self.seed}, {self.config})"


class ManifestItems:
  """Items of an inverse-dynamics JSONL manifest (see the module docstring), validated up front."""

  def __init__(self, path: str | os.PathLike, media_root: str | os.PathLike | None = None):
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"inverse dynamics manifest {self.path!r} does not exist; expected a JSONL file, "
                              + MANIFEST_FORMAT)
    root = os.fspath(media_root) if media_root is not None else os.path.dirname(os.path.abspath(self.path))
    self._items = []
    with open(self.path, encoding="utf-8") as f:
      for line_number, line in enumerate(f, start=1):
        if line.strip():
          self._items.append(self._parse(line, f"{self.path}:{line_number}", root))
    if not self._items:
      raise ValueError(f"inverse dynamics manifest {self.path!r} has no items; expected {MANIFEST_FORMAT}")

  @staticmethod
  def _parse(line: str, where: str, root: str) -> dict[str, Any]:
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); expected {MANIFEST_FORMAT}") from None
    if not isinstance(entry, dict):
      raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}; expected {MANIFEST_FORMAT}")
    unknown, missing = sorted(set(entry) - _MANIFEST_KEYS), sorted(_MANIFEST_KEYS - {"id"} - set(entry))
    if unknown or missing:
      raise ValueError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}; expected {MANIFEST_FORMAT}")
    candidates, answer = entry["candidates"], entry["answer"]
    paths_ok = all(isinstance(entry[k], str) and entry[k] for k in ("initial", "final"))
    if not (paths_ok and isinstance(candidates, list) and len(candidates) >= 2
            and all(isinstance(c, str) and c for c in candidates)):
      raise ValueError(f"{where}: 'initial' and 'final' must be paths and 'candidates' a list of at least 2 "
                       f"paths; expected {MANIFEST_FORMAT}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(candidates):
      raise ValueError(f"{where}: 'answer' must be an int index into the {len(candidates)} candidates, got {answer!r}")
    resolve = lambda p: os.path.abspath(os.path.join(root, p))  # absolute paths pass through join unchanged
    return {"id": str(entry.get("id", where)), "initial": resolve(entry["initial"]), "final": resolve(entry["final"]),
            "candidates": [resolve(c) for c in candidates], "answer": answer}

  def __len__(self) -> int:
    return len(self._items)

  def num_candidates(self, index: int) -> int:
    return len(self._items[index]["candidates"])

  def item(self, index: int) -> dict[str, Any]:
    return self._items[index]

  def __repr__(self) -> str:
    return f"ManifestItems({self.path!r}, len={len(self)})"


SOURCE_TYPES = {"shapes": ShapesItems, "manifest": ManifestItems}


def make_items(spec: Mapping[str, Any], data: pipeline.DataConfig, where: str = "source"):
  """The items `spec` names (see the module docstring); `where` prefixes errors (e.g. "evals.id.source")."""
  spec = dict(spec)
  kind = spec.pop("type", "shapes")
  if kind == "shapes":
    return ShapesItems(spec, data)
  if kind == "manifest":
    if "path" not in spec or not set(spec) <= {"path", "media_root"}:
      raise ValueError(f"{where}: a manifest source takes 'path' and optionally 'media_root', got "
                       f"{sorted(spec)}; the file holds {MANIFEST_FORMAT}")
    return ManifestItems(**spec)
  raise ValueError(f"{where}.type={kind!r}; expected one of {sorted(SOURCE_TYPES)}")


def load_clip(media_item: Any, data: pipeline.DataConfig) -> np.ndarray:
  """One clip or image -> uint8 (T, S, S, 3) as the pipeline would decode it (`media.load_frames`)."""
  if isinstance(media_item, str) and os.path.isdir(media_item):
    names = sorted((n for n in os.listdir(media_item) if not n.startswith(".")), key=_natural_key)
    if not names:
      raise media.BadSample(media.MISSING_FILE, f"frame directory {media_item} is empty")
    chosen = media.sample_frame_indices(len(names), data.num_frames, data.frame_sampling)
    frames = {i: load_image(os.path.join(media_item, names[i]), data) for i in set(chosen.tolist())}
    return np.concatenate([frames[i] for i in chosen.tolist()])
  return media.load_frames(media_item, data.num_frames, crop_size=data.crop_size, short_side=data.short_side,
                           sampling=data.frame_sampling)[0]


def load_image(image: Any, data: pipeline.DataConfig) -> np.ndarray:
  """One image -> uint8 (1, S, S, 3)."""
  return media.load_frames(image, 1, crop_size=data.crop_size, short_side=data.short_side)[0]


def item_clip(item: Mapping[str, Any], slot: int, data: pipeline.DataConfig) -> np.ndarray:
  """Slot `slot` of an item as uint8 (T, S, S, 3): slot 0 the state clip, slot k the k-th candidate.

  Raises `media.BadSample` when a file cannot be read.
  """
  if slot > 0:
    return load_clip(item["candidates"][slot - 1], data)
  half = data.num_frames // 2
  initial, final = load_image(item["initial"], data), load_image(item["final"], data)
  return np.concatenate([np.repeat(initial, half, axis=0), np.repeat(final, data.num_frames - half, axis=0)])
