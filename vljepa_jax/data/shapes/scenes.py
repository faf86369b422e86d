"""Scene layout: where objects sit, how the primary's action fits in the frame, spatial relations.

Objects never overlap, not even along the primary's path, and stay inside the frame for the whole
clip; every shape is inscribed in a circle of its radius, so these checks are exact at any angle.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from vljepa_jax.data.shapes.catalog import ACTIONS
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import Dice

# A scene state is a float array (num_objects, 6) with these columns. Columns before STEP are
# interpolated linearly over an event; the rest switch from start to end value at its midpoint.
X, Y, R, ANGLE, COLOR, VISIBLE = range(6)
STEP = 4
GAP = 1.0  # pixels kept free between objects so masks never touch
_CLEAR_RELATION = 1.5  # dominant offset must exceed the other by this to call "above"/"left of"
# Rotating by half the symmetry period gives the most visible change; a full period would
# leave the final frame identical to the first.
HALF_TURN = {"square": math.pi / 4, "triangle": math.pi / 3}
MOTION = {"moving left": (-1.0, 0.0), "moving right": (1.0, 0.0), "moving up": (0.0, -1.0),
          "moving down": (0.0, 1.0)}
_PLACEMENT_TRIES = 30
SCENE_TRIES = 200  # layouts (and, in callers, redraws) tried before giving up


def _radius_range(image_size: int) -> tuple[float, float]:
  return image_size / 8, image_size / 5


def _distance_to_path(x: float, y: float, path: tuple[float, ...]) -> float:
  """Distance from (x, y) to the segment a footprint's centre sweeps."""
  x0, y0, x1, y1 = path[:4]
  vx, vy = x1 - x0, y1 - y0
  length2 = vx * vx + vy * vy
  t = 0.0 if length2 == 0 else min(max(((x - x0) * vx + (y - y0) * vy) / length2, 0.0), 1.0)
  return math.hypot(x - x0 - t * vx, y - y0 - t * vy)


def spatial_relation(a: Sequence[float], b: Sequence[float]) -> str | None:
  """Where centre `a` lies relative to centre `b`, or None when neither axis clearly dominates."""
  dx, dy = a[0] - b[0], a[1] - b[1]
  if abs(dy) >= _CLEAR_RELATION * abs(dx):
    return "above" if dy < 0 else "below"  # image rows grow downward
  if abs(dx) >= _CLEAR_RELATION * abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return None


def _place_still_object(dice: Dice, image_size: int, radius: float,
                        footprints: list[tuple[float, ...]],
                        anchor: tuple[float, float] | None) -> tuple[float, float] | None:
  """A centre for a still object clear of every footprint (and clearly related to `anchor`)."""
  low, high = radius, image_size - 1 - radius
  for _ in range(_PLACEMENT_TRIES):
    x, y = dice.uniform(low, high), dice.uniform(low, high)
    if all(_distance_to_path(x, y, f) >= radius + f[4] + GAP for f in footprints) and (
        anchor is None or spatial_relation(anchor, (x, y)) is not None):
      return x, y
  return None


@dataclasses.dataclass
class Scene:
  """Objects of one clip: shapes, per-object actions, and the state at the clip's two ends.

  Object 0 is the primary (the one that acts in a video, the one the label names in an image).
  """
  shapes: list[str]
  actions: list[str]
  start: np.ndarray  # (num_objects, 6)
  end: np.ndarray  # (num_objects, 6)


def _primary_rows(dice: Dice, image_size: int, action: str, shape: str, color: int,
                  new_color: int, compact: bool) -> tuple[list[float], list[float],
                                                          tuple[float, ...]]:
  """Start and end state of the primary, placed so its whole action stays inside the frame.

  Returns the two rows and the footprint (path x0, y0, x1, y1 and largest radius) that the other
  objects must keep clear of. `compact` asks for the smallest size and shortest move, which is
  what lets five objects fit in a 16x16 frame.
  """
  r_min, r_max = _radius_range(image_size)
  r0 = {"growing": r_min, "shrinking": r_max}.get(action) or (
      r_min if compact else dice.uniform(r_min, r_max))
  r1 = {"growing": r_max, "shrinking": r_min}.get(action, r0)
  reach = max(r0, r1)
  low, high = reach, image_size - 1 - reach
  x0, y0 = dice.uniform(low, high), dice.uniform(low, high)
  x1, y1 = x0, y0
  if action in MOTION:
    # The usable span (0.6 * size - 1) always exceeds the longest move (size / 3).
    distance = image_size / 6 if compact else dice.uniform(image_size / 6, image_size / 3)
    dx, dy = MOTION[action]
    first = dice.uniform(low, high - distance)  # start so that the far end stays in bounds
    begin, finish = (first + distance, first) if dx + dy < 0 else (first, first + distance)
    if dx:
      x0, x1 = begin, finish
    else:
      y0, y1 = begin, finish
  angle0 = dice.uniform(0.0, 2 * math.pi)
  angle1 = angle0
  if action == "rotating":
    angle1 = angle0 + dice.choice((-1.0, 1.0)) * HALF_TURN[shape]
  visible0 = 0.0 if action == "appearing" else 1.0
  visible1 = 0.0 if action == "disappearing" else 1.0
  color1 = new_color if action == "changing colour" else color
  start = [x0, y0, r0, angle0, float(color), visible0]
  end = [x1, y1, r1, angle1, float(color1), visible1]
  return start, end, (x0, y0, x1, y1, reach)


def possible_actions(config: ShapesConfig, num_objects: int) -> list[str]:
  """Actions a primary can perform given the shapes on offer and the colours left free."""
  actions = list(ACTIONS)
  if all(shape == "circle" for shape in config.shapes):
    actions.remove("rotating")  # a turning circle looks still
  if num_objects >= len(config.colors):
    actions.remove("changing colour")  # no unused colour to change to
  return actions


def sample_scene(config: ShapesConfig, dice: Dice, num_objects: int, action: str,
                 relate: bool) -> Scene:
  """A scene whose primary performs `action` ("static" for stills), others static.

  `relate` asks object 1 to sit clearly above/below/left/right of the primary, so an image
  caption's relation is unambiguous in pixels.
  """
  size = config.image_size
  colors = dice.shuffled(range(len(config.colors)))
  new_color = colors[num_objects] if action == "changing colour" else colors[0]
  turnable = [s for s in config.shapes if s != "circle"]
  shapes = [dice.choice(turnable if action == "rotating" else config.shapes)]
  shapes += [dice.choice(config.shapes) for _ in range(num_objects - 1)]
  r_min, r_max = _radius_range(size)
  for attempt in range(SCENE_TRIES):
    compact = attempt >= SCENE_TRIES // 4  # random sizes keep failing: pack small objects
    start, end, footprint = _primary_rows(dice, size, action, shapes[0], colors[0], new_color,
                                          compact)
    starts, ends, footprints = [start], [end], [footprint]
    for j in range(1, num_objects):
      anchor = (start[X], start[Y]) if relate and j == 1 else None
      radius = r_min if compact else dice.uniform(r_min, r_max)
      centre = _place_still_object(dice, size, radius, footprints, anchor)
      if centre is None and radius > r_min:  # crowded: a smallest-size object fits more often
        radius = r_min
        centre = _place_still_object(dice, size, radius, footprints, anchor)
      if centre is None:
        break
      row = [centre[0], centre[1], radius, dice.uniform(0.0, 2 * math.pi), float(colors[j]), 1.0]
      starts.append(row)
      ends.append(row)
      footprints.append((centre[0], centre[1], centre[0], centre[1], radius))
    else:
      return Scene(shapes, [action] + ["static"] * (num_objects - 1), np.array(starts),
                   np.array(ends))
  raise RuntimeError(f"could not lay out {num_objects} objects in {size}x{size}; "
                     "lower ShapesConfig.max_objects")
