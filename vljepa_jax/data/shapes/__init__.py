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

Determinism: the same (seed, index) always gives the same output, and different generators are
independent (`dice.py`). Seeds and indices must be non-negative ints. Generation is host-side
NumPy (no JAX) because it runs inside the input pipeline.

Modules, from the bottom up: `catalog` (colours, shapes, actions and their words), `config`
(`ShapesConfig`), `dice` (random numbers), `scenes` (layout), `render` (pixels), `captions` and
`questions` (text), `events` (an action on an existing scene), then one module per generator:
`clips`, `hard_negatives`, `state_action`, `streams`, `source` and `word_list` (`vocabulary`).
"""
from __future__ import annotations

from vljepa_jax.data.shapes.catalog import (ACTION_PHRASES, ACTIONS, BACKGROUND_RGB, COLOR_RGB, COLOR_SYNONYMS,
                                            DIRECTIONS, INVERSE_RELATION, NUMBER_WORDS, RELATION_PHRASES,
                                            SHAPE_PLURALS, SHAPE_SYNONYMS)
from vljepa_jax.data.shapes.clips import action_classes, make_clip, object_classes
from vljepa_jax.data.shapes.config import MAX_OBJECTS, MAX_PARAPHRASES, MIN_IMAGE_SIZE, ShapesConfig
from vljepa_jax.data.shapes.hard_negatives import HARD_NEGATIVE_KINDS, make_hard_negative
from vljepa_jax.data.shapes.source import ShapesSource
from vljepa_jax.data.shapes.state_action import make_state_action_item
from vljepa_jax.data.shapes.streams import LongStream, Segment
from vljepa_jax.data.shapes.word_list import vocabulary

__all__ = [
    # what scenes are made of, and the words for it
    "ACTIONS", "ACTION_PHRASES", "BACKGROUND_RGB", "COLOR_RGB", "COLOR_SYNONYMS", "DIRECTIONS",
    "INVERSE_RELATION", "NUMBER_WORDS", "RELATION_PHRASES", "SHAPE_PLURALS", "SHAPE_SYNONYMS",
    # configuration and its limits
    "MAX_OBJECTS", "MAX_PARAPHRASES", "MIN_IMAGE_SIZE", "ShapesConfig",
    # generators and what they return
    "HARD_NEGATIVE_KINDS", "LongStream", "Segment", "ShapesSource", "action_classes", "make_clip",
    "make_hard_negative", "make_state_action_item", "object_classes", "vocabulary",
]
