"""Events on an existing scene: one object doing one action, planned so every object stays in frame and apart.

Shared by the inverse-dynamics items and long streams, whose events start from any scene rather
than one laid out for the action.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from vljepa_jax.data.shapes.captions import video_caption
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import Dice
from vljepa_jax.data.shapes.scenes import ANGLE, COLOR, GAP, HALF_TURN, MOTION, R, VISIBLE, X, Y

_GROWTH = 1.6  # size ratio of growing/shrinking: a clip's radius goes size/8 <-> size/5


def _event_radius_range(image_size: int) -> tuple[float, float]:
  # Events on an existing scene (streams, inverse dynamics) start from any size a layout gives
  # (size/8..size/5, see `scenes`); letting sizes reach size/10..size/4 allows the full 1.6x
  # growth or shrinkage from almost any of them, so growing always looks like growing.
  return image_size / 10, image_size / 4


def _free_run(state: np.ndarray, j: int, direction: tuple[float, float], image_size: int) -> float:
  """How far object j can travel along a unit axis before leaving the frame or touching another."""
  x, y, r = state[j, X], state[j, Y], state[j, R]
  dx, dy = direction
  room = {(-1.0, 0.0): x - r, (1.0, 0.0): image_size - 1 - r - x,
          (0.0, -1.0): y - r, (0.0, 1.0): image_size - 1 - r - y}[direction]
  for k in range(len(state)):
    if k == j or state[k, VISIBLE] < 0.5:
      continue
    px, py = x - state[k, X], y - state[k, Y]
    reach = r + state[k, R] + GAP
    # First contact of the moving centre p + t * direction with the circle of radius `reach`.
    b = px * dx + py * dy
    c = px * px + py * py - reach * reach
    disc = b * b - c
    if disc >= 0 and -b - math.sqrt(disc) >= 0:
      room = min(room, -b - math.sqrt(disc))
  return room


def _fits(state: np.ndarray, j: int, x: float, y: float, r: float, image_size: int) -> bool:
  """Whether object j at (x, y) with radius r is in frame and clear of every visible object."""
  if not (r <= x <= image_size - 1 - r and r <= y <= image_size - 1 - r):
    return False
  for k in range(len(state)):
    if k != j and state[k, VISIBLE] > 0.5 and math.hypot(
        x - state[k, X], y - state[k, Y]) < r + state[k, R] + GAP:
      return False
  return True


def plan_event(config: ShapesConfig, dice: Dice, state: np.ndarray, shapes: Sequence[str],
               j: int, action: str, keep_one_visible: bool) -> np.ndarray | None:
  """Object j's state after `action` from `state`, or None when the action is not possible there.

  Every returned event keeps all objects in frame and apart for its whole duration. An object
  reappears where it vanished, so its position never changes while unseen.
  """
  size = config.image_size
  r_min, r_max = _event_radius_range(size)
  row = state[j].copy()
  x, y, r = row[X], row[Y], row[R]
  shown = row[VISIBLE] > 0.5
  if action == "appearing":
    if shown or not _fits(state, j, x, y, r, size):
      return None
    row[VISIBLE] = 1.0
    return row
  if not shown:
    return None
  if action in MOTION:
    room = _free_run(state, j, MOTION[action], size)
    if room < size / 6:
      return None
    distance = dice.uniform(size / 6, min(room, size / 3))
    row[X] += MOTION[action][0] * distance
    row[Y] += MOTION[action][1] * distance
  elif action == "rotating":
    if shapes[j] == "circle":
      return None
    row[ANGLE] += dice.choice((-1.0, 1.0)) * HALF_TURN[shapes[j]]
  elif action in ("growing", "shrinking"):
    target = r * _GROWTH if action == "growing" else r / _GROWTH
    if not r_min <= target <= r_max or not _fits(state, j, x, y, target, size):
      return None
    row[R] = target
  elif action == "disappearing":
    if keep_one_visible and (state[:, VISIBLE] > 0.5).sum() < 2:
      return None
    row[VISIBLE] = 0.0
  elif action == "changing colour":
    used = set(state[:, COLOR].astype(int).tolist())  # hidden objects keep their colour too
    free = [c for c in range(len(config.colors)) if c not in used]
    if not free:
      return None
    row[COLOR] = float(dice.choice(free))
  else:
    raise ValueError(f"unknown action {action!r}")
  return row


def event_caption(config: ShapesConfig, state: np.ndarray, shapes: Sequence[str], j: int,
                  action: str, row: np.ndarray) -> str:
  new_color = config.colors[int(row[COLOR])] if action == "changing colour" else None
  return video_caption(config.colors[int(state[j, COLOR])], shapes[j], action, new_color)
