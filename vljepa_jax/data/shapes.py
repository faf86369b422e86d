"""Shapes: the embedded default dataset, coloured shapes drawn procedurally with NumPy.

Why it exists: every VL-JEPA task needs data, and the real corpora (video datasets, caption sets,
benchmarks) are large downloads behind licences. This generator needs no files and no network, so
training, every evaluator and the tests run anywhere, and a bug in the model cannot hide behind
noisy data: the ground truth is exact.

What it draws: a plain background with 1-5 flat-coloured squares, circles and triangles. In a
video clip one PRIMARY object performs one action from `ACTIONS` (translation, rotation, growth,
shrinking, appearing, disappearing, changing colour) while the others stay still. Each item carries
everything the VL-JEPA tasks need: paraphrased captions (contrastive training), a question with
its answer and the answer vocabulary (query-conditioned QA), an integer label (zero-shot
classification), per-object structured ground truth, plus dedicated generators for hard-negative
text triplets (`make_hard_negative`), inverse dynamics (`make_state_action_item`) and minutes-long
streams with timed captions (`LongStream`, selective decoding).

Rules that keep the ground truth measurable from pixels alone:
  * every object in a scene has a DISTINCT colour, and pixels take exact `COLOR_RGB` values (no
    antialiasing), so an object's mask is `frames == COLOR_RGB[colour]`;
  * objects never overlap, not even along the primary's path, and stay inside the frame for the
    whole clip, so no mask is ever occluded or clipped;
  * every shape is inscribed in a circle of its radius, which makes bounds and collision checks
    exact for any rotation.

Conventions the ground truth follows:
  * an event runs over progress u in [0, 1] (frame t of T is at u = t / (T - 1)); position, size
    and angle change linearly, while appearing, disappearing and changing colour switch at
    u >= 0.5, i.e. from frame T // 2 on, so both states are seen when T >= 2;
  * growing/shrinking scale the radius by 1.6 (size/8 <-> size/5 in clips); rotating turns a
    square by 45 degrees and a triangle by 60 (half their symmetry, the most visible change);
  * count questions count the objects visible in the first frame and are never asked about
    clips whose primary appears or disappears, so every frame gives the same count;
  * `objects[0]` is the primary; centres are (x, y) in pixels, x the column, y the row;
  * every state-action candidate starts from the initial scene, so "appearing" (whose first
    frame would differ) is never a candidate.

Determinism: every public function draws only from `np.random.default_rng([seed, index, S])`
with a per-function constant S, so the same (seed, index) always gives the same output and
different functions are independent. Seeds and indices must be non-negative ints.

Speed: generation is host-side NumPy (no JAX) because it runs inside the input pipeline. Each
object's mask is computed for all frames at once from (T, 1, 1) parameter arrays against a shared
pixel axis, only inside the object's bounding box, and a static object's mask is computed once and
broadcast over time; random numbers come from one block draw per ~64 uses, because a Generator
call costs microseconds and a clip needs dozens of draws.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import numbers
import operator
import re
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

# --- vocabulary --------------------------------------------------------------------------------

# Well separated in RGB (the closest pair, yellow/orange, is 86 apart; the background is at least
# 170 from every colour), so they stay distinguishable after resizing or colour jitter.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (40, 190, 40),
    "blue": (40, 80, 240),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (30, 215, 220),
}
BACKGROUND_RGB: tuple[int, int, int] = (20, 20, 20)

# Canonical word first. Synonyms are unique across colours so a word names one colour only.
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "plum"),
    "orange": ("orange", "amber", "tangerine"),
    "white": ("white", "ivory", "snowy"),
    "cyan": ("cyan", "aqua", "turquoise"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "block", "tile"),
    "circle": ("circle", "disc", "ball", "dot"),
    "triangle": ("triangle", "wedge", "arrowhead", "trigon"),
}
SHAPE_PLURALS: dict[str, str] = {"square": "squares", "circle": "circles", "triangle": "triangles"}

ACTIONS: tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down", "rotating",
                            "growing", "shrinking", "appearing", "disappearing", "changing colour")
# Verb phrases per action, canonical first. Captions avoid punctuation on purpose: WordPiece
# decoders re-space hyphens and commas, which would break exact caption round trips downstream.
ACTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving left": ("moves left", "slides to the left", "travels leftward", "heads left"),
    "moving right": ("moves right", "slides to the right", "travels rightward", "heads right"),
    "moving up": ("moves up", "rises", "travels upward", "climbs"),
    "moving down": ("moves down", "sinks", "travels downward", "descends"),
    "rotating": ("rotates", "spins", "turns in place", "twirls"),
    "growing": ("grows", "gets bigger", "expands", "swells"),
    "shrinking": ("shrinks", "gets smaller", "contracts", "dwindles"),
    "appearing": ("appears", "shows up", "pops into view", "comes into view"),
    "disappearing": ("disappears", "vanishes", "blinks out", "goes out of view"),
    "changing colour": ("changes colour to {color}", "turns {color}", "becomes {color}",
                        "switches to {color}"),
}
DIRECTIONS: dict[str, str] = {"moving left": "left", "moving right": "right", "moving up": "up",
                              "moving down": "down"}
# Spatial relation of a first object to a second one, canonical phrase first.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
    "to the left of": ("to the left of", "left of", "on the left of"),
    "to the right of": ("to the right of", "right of", "on the right of"),
}
INVERSE_RELATION: dict[str, str] = {"above": "below", "below": "above",
                                    "to the left of": "to the right of",
                                    "to the right of": "to the left of"}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")

# Five non-overlapping objects, one of them sweeping a path, is what a 16x16 frame holds with
# radii in [size/8, size/5]; it is also the largest count the number words cover.
MAX_OBJECTS = 5
MAX_PARAPHRASES = 8  # every scene has well over this many distinct phrasings
MIN_IMAGE_SIZE = 16  # below this a small triangle is a handful of pixels
HARD_NEGATIVE_KINDS: tuple[str, ...] = ("attribute", "relation", "object")

# --- geometry and timing -----------------------------------------------------------------------

# A scene state is a float array (num_objects, 6) with these columns. Columns before _STEP are
# interpolated linearly over an event; the rest switch from start to end value at its midpoint.
_X, _Y, _R, _ANGLE, _COLOR, _VISIBLE = range(6)
_STEP = 4
_GROWTH = 1.6  # size ratio of growing/shrinking: a clip's radius goes size/8 <-> size/5
_GAP = 1.0  # pixels kept free between objects so masks never touch
_CLEAR_RELATION = 1.5  # dominant offset must exceed the other by this to call "above"/"left of"
# Rotating by half the symmetry period gives the most visible change; a full period would
# leave the final frame identical to the first.
_HALF_TURN = {"square": math.pi / 4, "triangle": math.pi / 3}
_MOTION = {"moving left": (-1.0, 0.0), "moving right": (1.0, 0.0), "moving up": (0.0, -1.0),
           "moving down": (0.0, 1.0)}
_UNSTABLE = ("appearing", "disappearing", "changing colour")  # attributes not constant over a clip
_PLACEMENT_TRIES = 30
_SCENE_TRIES = 200
_DICE_BLOCK = 64

# Per-function constants mixed into the seed, so functions sharing (seed, index) are independent.
_STREAM_VIDEO, _STREAM_IMAGE, _STREAM_HARD_NEGATIVE, _STREAM_STATE_ACTION, _STREAM_LONG = (
    101, 102, 103, 104, 105)


# --- config ------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
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
    if not _is_int(value) or value < low or (high is not None and value > high):
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


def object_classes(config: ShapesConfig) -> list[str]:
  """Zero-shot classes of images: every "colour shape" pair, colour-major."""
  return [f"{color} {shape}" for color in config.colors for shape in config.shapes]


def action_classes() -> list[str]:
  """Zero-shot classes of videos: the primary object's action."""
  return list(ACTIONS)



@functools.lru_cache(maxsize=None)
def vocabulary(num_items: int = 400) -> tuple[str, ...]:
  """Every lower-case word the generator writes (captions, questions, answers, class names).

  For a word-level tokenizer when no pretrained one is installed. Collected from generated items
  of every colour and shape rather than from the templates, so a new template cannot be missed;
  the item count is far above what it takes for the word set to stop growing (about 60 items).
  """
  config = ShapesConfig(colors=tuple(COLOR_RGB), shapes=tuple(SHAPE_SYNONYMS), num_paraphrases=MAX_PARAPHRASES,
                        max_objects=MAX_OBJECTS)
  texts = object_classes(config) + action_classes()
  for video in (True, False):
    for i in range(num_items):
      item = make_clip(config, 0, i, video=video)
      texts += item["captions"] + [item["query"], item["answer"]] + list(item["answer_candidates"])
  for i in range(num_items // 4):
    texts += list(make_hard_negative(config, 0, i).values())
  return tuple(sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())}))

# --- randomness --------------------------------------------------------------------------------


class _Dice:
  """Uniform draws for one (seed, index, stream), served from a block-refilled pool.

  A Generator call costs microseconds and a clip needs dozens of draws; drawing them 64 at a time
  keeps generation fast while staying a pure function of (seed, index, stream).
  """

  def __init__(self, seed: int, index: int, stream: int):
    self._rng = np.random.default_rng([seed, index, stream])
    self._pool: list[float] = []

  def unit(self) -> float:
    if not self._pool:
      self._pool = self._rng.random(_DICE_BLOCK).tolist()
    return self._pool.pop()

  def uniform(self, low: float, high: float) -> float:
    return low + (high - low) * self.unit()

  def below(self, n: int) -> int:
    return min(int(self.unit() * n), n - 1)

  def choice(self, items: Sequence[Any]) -> Any:
    return items[self.below(len(items))]

  def shuffled(self, items: Sequence[Any]) -> list[Any]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):  # Fisher-Yates
      j = self.below(i + 1)
      out[i], out[j] = out[j], out[i]
    return out


# --- scene layout ------------------------------------------------------------------------------


def _radius_range(image_size: int) -> tuple[float, float]:
  return image_size / 8, image_size / 5


def _event_radius_range(image_size: int) -> tuple[float, float]:
  # Events on an existing scene (streams, inverse dynamics) start from any size in the range
  # above; letting sizes reach size/10..size/4 allows the full 1.6x growth or shrinkage from
  # almost any of them, so growing always looks like growing.
  return image_size / 10, image_size / 4


def _distance_to_path(x: float, y: float, path: tuple[float, ...]) -> float:
  """Distance from (x, y) to the segment a footprint's centre sweeps."""
  x0, y0, x1, y1 = path[:4]
  vx, vy = x1 - x0, y1 - y0
  length2 = vx * vx + vy * vy
  t = 0.0 if length2 == 0 else min(max(((x - x0) * vx + (y - y0) * vy) / length2, 0.0), 1.0)
  return math.hypot(x - x0 - t * vx, y - y0 - t * vy)


def _relation(a: Sequence[float], b: Sequence[float]) -> str | None:
  """Where centre `a` lies relative to centre `b`, or None when neither axis clearly dominates."""
  dx, dy = a[0] - b[0], a[1] - b[1]
  if abs(dy) >= _CLEAR_RELATION * abs(dx):
    return "above" if dy < 0 else "below"  # image rows grow downward
  if abs(dx) >= _CLEAR_RELATION * abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return None


def _place_still_object(dice: _Dice, image_size: int, radius: float,
                        footprints: list[tuple[float, ...]],
                        anchor: tuple[float, float] | None) -> tuple[float, float] | None:
  """A centre for a still object clear of every footprint (and clearly related to `anchor`)."""
  low, high = radius, image_size - 1 - radius
  for _ in range(_PLACEMENT_TRIES):
    x, y = dice.uniform(low, high), dice.uniform(low, high)
    if all(_distance_to_path(x, y, f) >= radius + f[4] + _GAP for f in footprints) and (
        anchor is None or _relation(anchor, (x, y)) is not None):
      return x, y
  return None


@dataclasses.dataclass
class _Scene:
  """Objects of one clip: shapes, per-object actions, and the state at the clip's two ends.

  Object 0 is the primary (the one that acts in a video, the one the label names in an image).
  """
  shapes: list[str]
  actions: list[str]
  start: np.ndarray  # (num_objects, 6)
  end: np.ndarray  # (num_objects, 6)


def _primary_rows(dice: _Dice, image_size: int, action: str, shape: str, color: int,
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
  if action in _MOTION:
    # The usable span (0.6 * size - 1) always exceeds the longest move (size / 3).
    distance = image_size / 6 if compact else dice.uniform(image_size / 6, image_size / 3)
    dx, dy = _MOTION[action]
    first = dice.uniform(low, high - distance)  # start so that the far end stays in bounds
    begin, finish = (first + distance, first) if dx + dy < 0 else (first, first + distance)
    if dx:
      x0, x1 = begin, finish
    else:
      y0, y1 = begin, finish
  angle0 = dice.uniform(0.0, 2 * math.pi)
  angle1 = angle0
  if action == "rotating":
    angle1 = angle0 + dice.choice((-1.0, 1.0)) * _HALF_TURN[shape]
  visible0 = 0.0 if action == "appearing" else 1.0
  visible1 = 0.0 if action == "disappearing" else 1.0
  color1 = new_color if action == "changing colour" else color
  start = [x0, y0, r0, angle0, float(color), visible0]
  end = [x1, y1, r1, angle1, float(color1), visible1]
  return start, end, (x0, y0, x1, y1, reach)


def _possible_actions(config: ShapesConfig, num_objects: int) -> list[str]:
  """Actions a primary can perform given the shapes on offer and the colours left free."""
  actions = list(ACTIONS)
  if all(shape == "circle" for shape in config.shapes):
    actions.remove("rotating")  # a turning circle looks still
  if num_objects >= len(config.colors):
    actions.remove("changing colour")  # no unused colour to change to
  return actions


def _sample_scene(config: ShapesConfig, dice: _Dice, num_objects: int, action: str,
                  relate: bool) -> _Scene:
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
  for attempt in range(_SCENE_TRIES):
    compact = attempt >= _SCENE_TRIES // 4  # random sizes keep failing: pack small objects
    start, end, footprint = _primary_rows(dice, size, action, shapes[0], colors[0], new_color,
                                          compact)
    starts, ends, footprints = [start], [end], [footprint]
    for j in range(1, num_objects):
      anchor = (start[_X], start[_Y]) if relate and j == 1 else None
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
      return _Scene(shapes, [action] + ["static"] * (num_objects - 1), np.array(starts),
                    np.array(ends))
  raise RuntimeError(f"could not lay out {num_objects} objects in {size}x{size}; "
                     "lower ShapesConfig.max_objects")


# --- rendering ---------------------------------------------------------------------------------


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False  # cached and shared between calls
  return array


@functools.lru_cache(maxsize=16)
def _pixel_axis(size: int) -> np.ndarray:
  return _read_only(np.arange(size, dtype=np.float32))


@functools.lru_cache(maxsize=16)
def _palette(colors: tuple[str, ...]) -> np.ndarray:
  """RGB per label: 0 is the background, 1 + i is colour i of the config."""
  return _read_only(np.array([BACKGROUND_RGB] + [COLOR_RGB[c] for c in colors], np.uint8))


@functools.lru_cache(maxsize=16)
def _clip_times(num_frames: int) -> np.ndarray:
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


def _render(image_size: int, palette: np.ndarray, shapes: Sequence[str], start: np.ndarray,
            end: np.ndarray, progress: np.ndarray) -> np.ndarray:
  """uint8 frames (T, H, W, 3) of objects between states `start` and `end`.

  `start`/`end` are (num_objects, 6), or (T, num_objects, 6) when frames span several events;
  `progress` (T,) is each frame's progress through its event.
  """
  u = np.asarray(progress, np.float64)[:, None, None]
  num_frames = u.shape[0]
  geometry = (start[..., :_STEP] + u * (end[..., :_STEP] - start[..., :_STEP])).astype(np.float32)
  switched = np.where(u >= 0.5, end[..., _STEP:], start[..., _STEP:])
  slots = (switched[..., 0] + 1).astype(np.uint8)  # (T, n) palette index
  visible = switched[..., 1] > 0.5  # (T, n)
  still = (geometry == geometry[:1]).all(axis=(0, 2))
  # Bounding boxes over the whole clip in one go; every shape lies inside its radius circle.
  x, y, r = geometry[..., _X], geometry[..., _Y], geometry[..., _R]
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
    cx, cy, radius, angle = (params[:, k, None, None] for k in range(_STEP))
    dx = axis[None, None, x_lo[j]:x_hi[j]] - cx
    dy = axis[None, y_lo[j]:y_hi[j], None] - cy
    mask = _SHAPE_MASKS[shape](dx, dy, radius, angle)
    if not shown.all():
      mask = mask & shown[:, None, None]
    slot = slots[:, j]
    fill = slot[0] if (slot == slot[0]).all() else slot[:, None, None]
    np.copyto(labels[:, y_lo[j]:y_hi[j], x_lo[j]:x_hi[j]], fill, where=mask)
  return np.take(palette, labels, axis=0)


# --- text --------------------------------------------------------------------------------------


def _with_article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _random_noun(dice: _Dice, color: str, shape: str) -> str:
  return f"{dice.choice(COLOR_SYNONYMS[color])} {dice.choice(SHAPE_SYNONYMS[shape])}"


def _distinct_phrasings(canonical: str, variant: Callable[[], str], count: int) -> list[str]:
  """`canonical` then random variants until `count` distinct strings exist."""
  out, seen = [canonical], {canonical}
  for _ in range(100 * count):  # far more tries than the >= 48 phrasings of any scene need
    if len(out) == count:
      return out
    text = variant()
    if text not in seen:
      out.append(text)
      seen.add(text)
  raise RuntimeError(f"only {len(out)} distinct phrasings of {canonical!r}")


def _video_caption(color: str, shape: str, action: str, new_color: str | None) -> str:
  """Canonical caption of one event: "a red square moves left"."""
  verb = ACTION_PHRASES[action][0].format(color=new_color)
  return f"{_with_article(f'{color} {shape}')} {verb}"


_VIDEO_TEMPLATES = ("{a} {verb}", "the {noun} {verb}", "there is {a} that {verb}",
                    "in this clip {a} {verb}", "we see {a} that {verb}")


def _video_captions(dice: _Dice, count: int, color: str, shape: str, action: str,
                    new_color: str | None) -> list[str]:
  def variant() -> str:
    noun = _random_noun(dice, color, shape)
    new = dice.choice(COLOR_SYNONYMS[new_color]) if new_color else None
    verb = dice.choice(ACTION_PHRASES[action]).format(color=new)
    return dice.choice(_VIDEO_TEMPLATES).format(a=_with_article(noun), noun=noun, verb=verb)
  return _distinct_phrasings(_video_caption(color, shape, action, new_color), variant, count)


def _image_caption(objects: Sequence[tuple[str, str]], relation: str | None) -> str:
  """Canonical still description: "a red square above a blue circle and a green triangle"."""
  nouns = [_with_article(f"{color} {shape}") for color, shape in objects]
  if len(nouns) == 1:
    return nouns[0]
  return " and ".join([f"{nouns[0]} {relation} {nouns[1]}"] + nouns[2:])


def _image_captions(dice: _Dice, count: int, objects: Sequence[tuple[str, str]],
                    relation: str | None) -> list[str]:
  """Paraphrases of a still scene: synonyms, the inverse relation, framing and count phrases."""
  n = len(objects)

  def variant() -> str:
    nouns = [_with_article(_random_noun(dice, c, s)) for c, s in objects]
    if n == 1:
      return dice.choice(("{0}", "there is {0}", "an image of {0}", "{0} on a plain background",
                          "a single {1}", "one {1}")).format(nouns[0], nouns[0].split(" ", 1)[1])
    if dice.below(2):
      core = f"{nouns[0]} {dice.choice(RELATION_PHRASES[relation])} {nouns[1]}"
    else:
      core = f"{nouns[1]} {dice.choice(RELATION_PHRASES[INVERSE_RELATION[relation]])} {nouns[0]}"
    joiner = dice.choice((" and ", " and also ", " plus "))
    core = joiner.join([core] + nouns[2:])
    frame = dice.choice(("{0}", "there is {0}", "an image of {0}", "{0} on a plain background",
                         "{1} shapes with {0}"))
    return frame.format(core, NUMBER_WORDS[n])

  return _distinct_phrasings(_image_caption(objects, relation), variant, count)


# --- questions ---------------------------------------------------------------------------------


def _question(config: ShapesConfig, dice: _Dice, scene: _Scene,
              video: bool) -> tuple[str, str, list[str], str]:
  """(query, answer, answer_candidates, question_type) for one clip.

  Count questions count objects visible in the first frame, and are not asked of clips where the
  primary appears or disappears (the count would change mid-clip). Questions naming an object by
  colour or asking its colour skip objects whose colour or visibility changes.
  """
  colors = [config.colors[int(c)] for c in scene.start[:, _COLOR]]
  primary_action = scene.actions[0]
  stable = [j for j, a in enumerate(scene.actions) if a not in _UNSTABLE]
  unique_shapes = [j for j in stable if scene.shapes.count(scene.shapes[j]) == 1]
  kinds = []
  if video:
    if primary_action != "changing colour":
      kinds.append("colour_of_actor")
    if primary_action in DIRECTIONS:
      kinds.append("direction")
    kinds.append("action")
  if primary_action not in ("appearing", "disappearing"):
    kinds.append("count")
  if unique_shapes:
    kinds.append("colour_of_shape")
  if stable:
    kinds.append("shape_of_colour")
  kind = dice.choice(kinds)
  name = f"{colors[0]} {scene.shapes[0]}"
  if kind == "colour_of_actor":
    verb = ACTION_PHRASES[primary_action][0]
    return f"what colour is the shape that {verb}?", colors[0], list(config.colors), kind
  if kind == "direction":
    return (f"which direction does the {name} move?", DIRECTIONS[primary_action],
            ["left", "right", "up", "down"], kind)
  if kind == "action":
    return f"what does the {name} do?", primary_action, list(ACTIONS), kind
  if kind == "count":
    shape = dice.choice(config.shapes)
    visible = scene.start[:, _VISIBLE] > 0.5
    number = sum(1 for j, s in enumerate(scene.shapes) if s == shape and visible[j])
    return (f"how many {SHAPE_PLURALS[shape]} are there?", NUMBER_WORDS[number],
            list(NUMBER_WORDS[:config.max_objects + 1]), kind)
  if kind == "colour_of_shape":
    j = dice.choice(unique_shapes)
    return f"what colour is the {scene.shapes[j]}?", colors[j], list(config.colors), kind
  j = dice.choice(stable)
  return f"what shape is the {colors[j]} object?", scene.shapes[j], list(config.shapes), kind


# --- public generators -------------------------------------------------------------------------


def _object_records(config: ShapesConfig, scene: _Scene) -> list[dict[str, Any]]:
  records = []
  for j, (shape, action) in enumerate(zip(scene.shapes, scene.actions)):
    s, e = scene.start[j].tolist(), scene.end[j].tolist()
    records.append({
        "color": config.colors[int(s[_COLOR])], "shape": shape, "action": action,
        "start": (s[_X], s[_Y]), "end": (e[_X], e[_Y]), "radius": s[_R], "end_radius": e[_R],
        "end_color": config.colors[int(e[_COLOR])]})
  return records


def make_clip(config: ShapesConfig, seed: int, index: int, *, video: bool = True) -> dict[str, Any]:
  """One item: frames (T, H, W, 3) uint8 with captions, a question, a label and ground truth.

  Keys: frames, captions (canonical first), caption, query, answer, answer_candidates,
  question_type, label, label_name, objects (object 0 is the primary; centres are (x, y) pixel
  coordinates, x the column), index. Videos have T = config.num_frames and one acting primary;
  images (video=False) have T = 1 and only still objects.
  """
  dice = _Dice(seed, index, _STREAM_VIDEO if video else _STREAM_IMAGE)
  num_objects = config.min_objects + dice.below(config.max_objects - config.min_objects + 1)
  if video:
    action = dice.choice(_possible_actions(config, num_objects))
  else:
    action = "static"
  times = _clip_times(config.num_frames) if video else _clip_times(1)
  for _ in range(_SCENE_TRIES):
    scene = _sample_scene(config, dice, num_objects, action, relate=not video)
    frames = _render(config.image_size, _palette(config.colors), scene.shapes, scene.start,
                     scene.end, times)
    # A small shape can rotate onto the same pixels; a video must show its action.
    if len(frames) == 1 or not np.array_equal(frames[0], frames[-1]):
      break
  objects = _object_records(config, scene)
  color, shape = objects[0]["color"], objects[0]["shape"]
  if video:
    new_color = objects[0]["end_color"] if action == "changing colour" else None
    captions = _video_captions(dice, config.num_paraphrases, color, shape, action, new_color)
    label, label_name = ACTIONS.index(action), action
  else:
    relation = _relation(objects[0]["start"], objects[1]["start"]) if num_objects > 1 else None
    captions = _image_captions(dice, config.num_paraphrases,
                               [(o["color"], o["shape"]) for o in objects], relation)
    label_name = f"{color} {shape}"
    label = config.colors.index(color) * len(config.shapes) + config.shapes.index(shape)
  query, answer, candidates, question_type = _question(config, dice, scene, video)
  return {"frames": frames, "captions": captions, "caption": captions[0], "query": query,
          "answer": answer, "answer_candidates": candidates, "question_type": question_type,
          "label": label, "label_name": label_name, "objects": objects, "index": index}


def make_hard_negative(config: ShapesConfig, seed: int, index: int) -> dict[str, str]:
  """SugarCrepe++-style triplet: two paraphrases of a two-object scene and a one-change negative.

  positive_1 is the canonical description ("a red square above a blue circle"), positive_2 a
  paraphrase of it (synonyms, maybe the inverse relation: "an azure disc under a crimson box").
  The negative, in canonical words, changes exactly one thing: "attribute" swaps the two colours,
  "relation" flips the relation, "object" gives one object another shape. It shares more words
  with positive_1 than positive_2 does, so word overlap alone picks the wrong pair.
  """
  dice = _Dice(seed, index, _STREAM_HARD_NEGATIVE)
  colors = dice.shuffled(config.colors) * 2  # doubled so a one-colour config still has two
  color_a, color_b = colors[0], colors[1]
  shapes = dice.shuffled(config.shapes)
  shape_a, shape_b = (shapes[0], shapes[1]) if len(shapes) > 1 else (shapes[0], shapes[0])
  relation = dice.choice(tuple(RELATION_PHRASES))
  objects = [(color_a, shape_a), (color_b, shape_b)]
  kinds = [k for k in HARD_NEGATIVE_KINDS if k != "object" or len(config.shapes) > 1]
  if color_a == color_b:  # a one-colour config: swapping colours would change nothing
    kinds.remove("attribute")
  kind = dice.choice(kinds)
  positive_1, positive_2 = _image_captions(dice, 2, objects, relation)
  if kind == "attribute":
    changed = [(color_b, shape_a), (color_a, shape_b)]
    negative = _image_caption(changed, relation)
  elif kind == "relation":
    negative = _image_caption(objects, INVERSE_RELATION[relation])
  else:
    which = dice.below(2)
    color, shape = objects[which]
    changed = list(objects)
    changed[which] = (color, dice.choice([s for s in config.shapes if s != shape]))
    negative = _image_caption(changed, relation)
  return {"positive_1": positive_1, "positive_2": positive_2, "negative": negative, "kind": kind}


def _free_run(state: np.ndarray, j: int, direction: tuple[float, float], image_size: int) -> float:
  """How far object j can travel along a unit axis before leaving the frame or touching another."""
  x, y, r = state[j, _X], state[j, _Y], state[j, _R]
  dx, dy = direction
  room = {(-1.0, 0.0): x - r, (1.0, 0.0): image_size - 1 - r - x,
          (0.0, -1.0): y - r, (0.0, 1.0): image_size - 1 - r - y}[direction]
  for k in range(len(state)):
    if k == j or state[k, _VISIBLE] < 0.5:
      continue
    px, py = x - state[k, _X], y - state[k, _Y]
    reach = r + state[k, _R] + _GAP
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
    if k != j and state[k, _VISIBLE] > 0.5 and math.hypot(
        x - state[k, _X], y - state[k, _Y]) < r + state[k, _R] + _GAP:
      return False
  return True


def _plan_event(config: ShapesConfig, dice: _Dice, state: np.ndarray, shapes: Sequence[str],
                j: int, action: str, keep_one_visible: bool) -> np.ndarray | None:
  """Object j's state after `action` from `state`, or None when the action is not possible there.

  Every returned event keeps all objects in frame and apart for its whole duration. An object
  reappears where it vanished, so its position never changes while unseen.
  """
  size = config.image_size
  r_min, r_max = _event_radius_range(size)
  row = state[j].copy()
  x, y, r = row[_X], row[_Y], row[_R]
  shown = row[_VISIBLE] > 0.5
  if action == "appearing":
    if shown or not _fits(state, j, x, y, r, size):
      return None
    row[_VISIBLE] = 1.0
    return row
  if not shown:
    return None
  if action in _MOTION:
    room = _free_run(state, j, _MOTION[action], size)
    if room < size / 6:
      return None
    distance = dice.uniform(size / 6, min(room, size / 3))
    row[_X] += _MOTION[action][0] * distance
    row[_Y] += _MOTION[action][1] * distance
  elif action == "rotating":
    if shapes[j] == "circle":
      return None
    row[_ANGLE] += dice.choice((-1.0, 1.0)) * _HALF_TURN[shapes[j]]
  elif action in ("growing", "shrinking"):
    target = r * _GROWTH if action == "growing" else r / _GROWTH
    if not r_min <= target <= r_max or not _fits(state, j, x, y, target, size):
      return None
    row[_R] = target
  elif action == "disappearing":
    if keep_one_visible and (state[:, _VISIBLE] > 0.5).sum() < 2:
      return None
    row[_VISIBLE] = 0.0
  elif action == "changing colour":
    used = set(state[:, _COLOR].astype(int).tolist())  # hidden objects keep their colour too
    free = [c for c in range(len(config.colors)) if c not in used]
    if not free:
      return None
    row[_COLOR] = float(dice.choice(free))
  else:
    raise ValueError(f"unknown action {action!r}")
  return row


def _event_caption(config: ShapesConfig, state: np.ndarray, shapes: Sequence[str], j: int,
                   action: str, row: np.ndarray) -> str:
  new_color = config.colors[int(row[_COLOR])] if action == "changing colour" else None
  return _video_caption(config.colors[int(state[j, _COLOR])], shapes[j], action, new_color)


def make_state_action_item(config: ShapesConfig, seed: int, index: int) -> dict[str, Any]:
  """Inverse dynamics (WorldPrediction-WM style): which of 4 clips turns `initial` into `final`?

  All four candidates act on the same initial scene (one (object, action) pair each, never
  "appearing", so every candidate's first frame IS `initial`), and their last frames are pairwise
  different and different from `initial`, so exactly one candidate ends in `final`.
  """
  if config.num_frames < 2:
    raise ValueError("make_state_action_item needs ShapesConfig.num_frames >= 2, got "
                     f"{config.num_frames}")
  dice = _Dice(seed, index, _STREAM_STATE_ACTION)
  palette, times = _palette(config.colors), _clip_times(config.num_frames)
  for _ in range(_SCENE_TRIES):
    num_objects = config.min_objects + dice.below(config.max_objects - config.min_objects + 1)
    scene = _sample_scene(config, dice, num_objects, "static", relate=False)
    state = scene.start
    outcomes = [_render(config.image_size, palette, scene.shapes, state, state, times[:1])[0]]
    clips, captions = [], []
    pairs = [(j, a) for j in range(num_objects) for a in ACTIONS if a != "appearing"]
    for j, action in dice.shuffled(pairs):
      row = _plan_event(config, dice, state, scene.shapes, j, action, keep_one_visible=False)
      if row is None:
        continue
      end = state.copy()
      end[j] = row
      clip = _render(config.image_size, palette, scene.shapes, state, end, times)
      if any(np.array_equal(clip[-1], seen) for seen in outcomes):
        continue  # an end state that another candidate (or doing nothing) also reaches
      outcomes.append(clip[-1])
      clips.append(clip)
      captions.append(_event_caption(config, state, scene.shapes, j, action, row))
      if len(clips) == 4:
        break
    if len(clips) == 4:
      break
  else:
    raise RuntimeError("no scene with 4 distinguishable actions; enlarge ShapesConfig.image_size")
  answer = dice.below(4)
  order = [1, 2, 3]
  order.insert(answer, 0)  # candidate 0 is the true one; put it at position `answer`
  candidates = np.stack([clips[k] for k in order])
  return {"initial": candidates[answer, 0].copy(), "final": candidates[answer, -1].copy(),
          "candidates": candidates, "candidate_captions": [captions[k] for k in order],
          "answer": answer}


# --- long streams ------------------------------------------------------------------------------


class Segment(NamedTuple):
  start_s: float
  end_s: float
  caption: str
  action: str


_MIN_SEGMENT_S, _MAX_SEGMENT_S = 4.0, 30.0


def _segment_lengths(dice: _Dice, duration_s: float) -> list[float]:
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
  ends = _render(config.image_size, _palette(config.colors), shapes, state, turned,
                 np.array([0.0, 1.0]))
  return not np.array_equal(ends[0], ends[1])


def _next_event(config: ShapesConfig, dice: _Dice, state: np.ndarray,
                shapes: Sequence[str]) -> tuple[int, str, np.ndarray]:
  """A random possible (object, action, end row) on the current scene of a stream."""
  for action in dice.shuffled(ACTIONS):
    for j in dice.shuffled(range(len(state))):
      row = _plan_event(config, dice, state, shapes, j, action, keep_one_visible=True)
      if row is not None and (action != "rotating" or _rotation_shows(config, shapes, state, j,
                                                                      row)):
        return j, action, row
  # Every object boxed in and nothing else possible: hiding the first visible one always works,
  # and an empty scene always has room for a hidden one to reappear.
  for action in ("disappearing", "appearing"):
    for j in range(len(state)):
      row = _plan_event(config, dice, state, shapes, j, action, keep_one_visible=False)
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
    dice = _Dice(seed, index, _STREAM_LONG)
    num_objects = config.min_objects + dice.below(config.max_objects - config.min_objects + 1)
    scene = _sample_scene(config, dice, num_objects, "static", relate=False)
    self._shapes = scene.shapes
    states, self.segments = [scene.start], []
    start_s = 0.0
    lengths = _segment_lengths(dice, self.duration_s)
    for k, length in enumerate(lengths):
      state = states[-1]
      j, action, row = _next_event(config, dice, state, self._shapes)
      caption = _event_caption(config, state, self._shapes, j, action, row)
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
    return _render(self.config.image_size, _palette(self.config.colors), self._shapes,
                   self._states[segment], self._states[segment + 1], progress)


# --- data source -------------------------------------------------------------------------------


class ShapesSource:
  """Random-access source of `make_clip` items (Grain compatible: len, getitem, picklable)."""

  def __init__(self, config: ShapesConfig = ShapesConfig(), *, kind: str = "video",
               size: int = 10_000, seed: int = 0):
    if not isinstance(config, ShapesConfig):
      raise TypeError(f"config must be a ShapesConfig, got {type(config).__name__}")
    if kind not in ("video", "image"):
      raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    if not _is_int(size) or size < 1:
      raise ValueError(f"size must be an int >= 1, got {size!r}")
    if not _is_int(seed) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    self.config, self.kind, self.size, self.seed = config, kind, int(size), int(seed)

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = operator.index(i)  # python and numpy integers pass, floats raise TypeError
    if not 0 <= i < self.size:
      raise IndexError(f"index {i} out of range for ShapesSource of size {self.size}")
    item = make_clip(self.config, self.seed, i, video=self.kind == "video")
    item["id"] = f"shapes-{self.kind}-{self.seed}-{i}"
    return item

  def __repr__(self) -> str:
    return f"ShapesSource(kind={self.kind!r}, size={self.size}, seed={self.seed}, {self.config})"
