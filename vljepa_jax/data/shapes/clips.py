"""`make_clip`: one video clip or image with captions, a question, a label and per-object ground truth."""
from __future__ import annotations

from typing import Any

import numpy as np

from vljepa_jax.data.shapes.captions import image_captions, video_captions
from vljepa_jax.data.shapes.catalog import ACTIONS
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import STREAM_IMAGE, STREAM_VIDEO, Dice
from vljepa_jax.data.shapes.questions import question
from vljepa_jax.data.shapes.render import clip_times, color_palette, render
from vljepa_jax.data.shapes.scenes import (COLOR, R, SCENE_TRIES, X, Y, Scene, possible_actions, sample_scene,
                                           spatial_relation)


def object_classes(config: ShapesConfig) -> list[str]:
  """Zero-shot classes of images: every "colour shape" pair, colour-major."""
  return [f"{color} {shape}" for color in config.colors for shape in config.shapes]


def action_classes() -> list[str]:
  """Zero-shot classes of videos: the primary object's action."""
  return list(ACTIONS)


def _object_records(config: ShapesConfig, scene: Scene) -> list[dict[str, Any]]:
  records = []
  for j, (shape, action) in enumerate(zip(scene.shapes, scene.actions)):
    s, e = scene.start[j].tolist(), scene.end[j].tolist()
    records.append({
        "color": config.colors[int(s[COLOR])], "shape": shape, "action": action,
        "start": (s[X], s[Y]), "end": (e[X], e[Y]), "radius": s[R], "end_radius": e[R],
        "end_color": config.colors[int(e[COLOR])]})
  return records


def make_clip(config: ShapesConfig, seed: int, index: int, *, video: bool = True) -> dict[str, Any]:
  """One item: frames (T, H, W, 3) uint8 with captions, a question, a label and ground truth.

  Keys: frames, captions (canonical first), caption, query, answer, answer_candidates,
  question_type, label, label_name, objects (object 0 is the primary; centres are (x, y) pixel
  coordinates, x the column), index. Videos have T = config.num_frames and one acting primary;
  images (video=False) have T = 1 and only still objects.
  """
  dice = Dice(seed, index, STREAM_VIDEO if video else STREAM_IMAGE)
  num_objects = config.min_objects + dice.below(config.max_objects - config.min_objects + 1)
  if video:
    action = dice.choice(possible_actions(config, num_objects))
  else:
    action = "static"
  times = clip_times(config.num_frames) if video else clip_times(1)
  for _ in range(SCENE_TRIES):
    scene = sample_scene(config, dice, num_objects, action, relate=not video)
    frames = render(config.image_size, color_palette(config.colors), scene.shapes, scene.start,
                    scene.end, times)
    # A small shape can rotate onto the same pixels; a video must show its action.
    if len(frames) == 1 or not np.array_equal(frames[0], frames[-1]):
      break
  objects = _object_records(config, scene)
  color, shape = objects[0]["color"], objects[0]["shape"]
  if video:
    new_color = objects[0]["end_color"] if action == "changing colour" else None
    captions = video_captions(dice, config.num_paraphrases, color, shape, action, new_color)
    label, label_name = ACTIONS.index(action), action
  else:
    relation = spatial_relation(objects[0]["start"], objects[1]["start"]) if num_objects > 1 else None
    captions = image_captions(dice, config.num_paraphrases,
                              [(o["color"], o["shape"]) for o in objects], relation)
    label_name = f"{color} {shape}"
    label = config.colors.index(color) * len(config.shapes) + config.shapes.index(shape)
  query, answer, candidates, question_type = question(config, dice, scene, video)
  return {"frames": frames, "captions": captions, "caption": captions[0], "query": query,
          "answer": answer, "answer_candidates": candidates, "question_type": question_type,
          "label": label, "label_name": label_name, "objects": objects, "index": index}
