"""`LongStream`: minutes of continuous activity with timed captions, rendered lazily (selective decoding)."""
from __future__ import annotations

import bisect
import math
import numbers
import operator
from typing import NamedTuple, Sequence

import numpy as np

from vljepa_jax.data.shapes.catalog import ACTIONS
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import STREAM_LONG, Dice
from vljepa_jax.data.shapes.events import event_caption, plan_event
from vljepa_jax.data.shapes.render import color_palette, render
from vljepa_jax.data.shapes.scenes import sample_scene


class Segment(NamedTuple):
  start_s: float
  end_s: float
  caption: str
  action: str


_MIN_SEGMENT_S, _MAX_SEGMENT_S = 4.0, 30.0


def _segment_lengths(dice: Dice, duration_s: float) -> list[float]:
  """Lengths in [4, 30] s summing to `duration_s` (>= 4): each cut leaves at least 4 s behind."""
  lengths, remaining = [], duration_s
  while remaining > _MAX_SEGMENT_S:
    length = dice.uniform(_MIN_SEGMENT_S, min(_MAX_SEGMENT_S, remaining - _MIN_SEGMENT_S))
    lengths.append(length)
    remaining -= length
  lengths.append(remaining)
  return lengths


def _rotation_shows(config: ShapesConfig, shapes: Sequence[str], state: np.ndarray, j: int,
                    row: np.ndarray) -> bool:
  """Whether turning object j changes any pixel; a small shape can rotate onto itself."""
  turned = state.copy()
  turned[j] = row
  ends = render(config.image_size, color_palette(config.colors), shapes, state, turned,
                np.array([0.0, 1.0]))
  return not np.array_equal(ends[0], ends[1])


def _next_event(config: ShapesConfig, dice: Dice, state: np.ndarray,
                shapes: Sequence[str]) -> tuple[int, str, np.ndarray]:
  """A random possible (object, action, end row) on the current scene of a stream."""
  for action in dice.shuffled(ACTIONS):
    for j in dice.shuffled(range(len(state))):
      row = plan_event(config, dice, state, shapes, j, action, keep_one_visible=True)
      if row is not None and (action != "rotating" or _rotation_shows(config, shapes, state, j,
                                                                      row)):
        return j, action, row
  # Every object boxed in and nothing else possible: hiding the first visible one always works,
  # and an empty scene always has room for a hidden one to reappear.
  for action in ("disappearing", "appearing"):
    for j in range(len(state)):
      row = plan_event(config, dice, state, shapes, j, action, keep_one_visible=False)
      if row is not None:
        return j, action, row
  raise AssertionError("unreachable: some object is either visible or hidden")


class LongStream:
  """Minutes of procedural activity, rendered lazily frame by frame (selective decoding).

  The scene persists: each segment (4-30 s) is one event, one object doing one action over the
  whole segment, starting from where the previous segment left every object, so the stream is
  visually continuous. Only the per-segment states are stored; frames are drawn on demand.
  """

  def __init__(self, config: ShapesConfig, seed: int, index: int, duration_s: float = 180.0):
    if not isinstance(duration_s, numbers.Real) or not duration_s >= _MIN_SEGMENT_S or (
        not math.isfinite(duration_s)):
      raise ValueError(f"duration_s must be a finite number >= {_MIN_SEGMENT_S}, got "
                       f"{duration_s!r}")
    self.config, self.seed, self.index = config, seed, index
    self.duration_s = float(duration_s)
    self.fps = float(config.stream_fps)
    self.num_frames = max(int(round(self.duration_s * self.fps)), 1)
    dice = Dice(seed, index, STREAM_LONG)
    num_objects = config.min_objects + dice.below(config.max_objects - config.min_objects + 1)
    scene = sample_scene(config, dice, num_objects, "static", relate=False)
    self._shapes = scene.shapes
    states, self.segments = [scene.start], []
    start_s = 0.0
    lengths = _segment_lengths(dice, self.duration_s)
    for k, length in enumerate(lengths):
      state = states[-1]
      j, action, row = _next_event(config, dice, state, self._shapes)
      caption = event_caption(config, state, self._shapes, j, action, row)
      end_s = self.duration_s if k == len(lengths) - 1 else start_s + length
      self.segments.append(Segment(start_s, end_s, caption, action))
      following = state.copy()
      following[j] = row
      states.append(following)
      start_s = end_s
    self._states = np.stack(states)  # (num_segments + 1, num_objects, 6)
    self._starts = [s.start_s for s in self.segments]
    self._bounds = np.array([[s.start_s, s.end_s] for s in self.segments])

  def __repr__(self) -> str:
    return (f"LongStream(seed={self.seed}, index={self.index}, duration_s={self.duration_s}, "
            f"fps={self.fps}, segments={len(self.segments)}, size={self.config.image_size})")

  def segment_index_at(self, t_s: float) -> int:
    """Segment covering time t_s; a boundary belongs to the segment it starts."""
    if not 0.0 <= t_s <= self.duration_s:
      raise ValueError(f"t_s={t_s!r} outside the stream [0, {self.duration_s}]")
    return max(bisect.bisect_right(self._starts, t_s) - 1, 0)

  def caption_at(self, t_s: float) -> str:
    return self.segments[self.segment_index_at(t_s)].caption

  def frame(self, i: int) -> np.ndarray:
    """Frame i (at time i / fps), uint8 (H, W, 3)."""
    return self.clip(i, 1)[0]

  def clip(self, start_frame: int, num_frames: int, stride: int = 1) -> np.ndarray:
    """Frames start_frame, +stride, ... (clamped to the last frame), uint8 (T, H, W, 3)."""
    start_frame, num_frames, stride = (operator.index(v) for v in (start_frame, num_frames, stride))
    if not 0 <= start_frame < self.num_frames:
      raise IndexError(f"start_frame {start_frame} outside [0, {self.num_frames})")
    if num_frames < 1 or stride < 1:
      raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")
    frames = np.minimum(start_frame + stride * np.arange(num_frames), self.num_frames - 1)
    times = frames / self.fps
    segment = np.clip(np.searchsorted(self._bounds[:, 0], times, side="right") - 1, 0,
                      len(self.segments) - 1)
    begin, end = self._bounds[segment, 0], self._bounds[segment, 1]
    progress = np.clip((times - begin) / (end - begin), 0.0, 1.0)
    return render(self.config.image_size, color_palette(self.config.colors), self._shapes,
                  self._states[segment], self._states[segment + 1], progress)
