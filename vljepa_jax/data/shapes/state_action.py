"""`make_state_action_item`: inverse dynamics, which of four clips turns the initial frame into the final one."""
from __future__ import annotations

from typing import Any

import numpy as np

from vljepa_jax.data.shapes.catalog import ACTIONS
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import STREAM_STATE_ACTION, Dice
from vljepa_jax.data.shapes.events import event_caption, plan_event
from vljepa_jax.data.shapes.render import clip_times, color_palette, render
from vljepa_jax.data.shapes.scenes import SCENE_TRIES, sample_scene


def make_state_action_item(config: ShapesConfig, seed: int, index: int) -> dict[str, Any]:
  """Inverse dynamics (WorldPrediction-WM style): which of 4 clips turns `initial` into `final`?

  All four candidates act on the same initial scene (one (object, action) pair each, never
  "appearing", so every candidate's first frame IS `initial`), and their last frames are pairwise
  different and different from `initial`, so exactly one candidate ends in `final`.
  """
  if config.num_frames < 2:
    raise ValueError("make_state_action_item needs ShapesConfig.num_frames >= 2, got "
                     f"{config.num_frames}")
  dice = Dice(seed, index, STREAM_STATE_ACTION)
  palette, times = color_palette(config.colors), clip_times(config.num_frames)
  for _ in range(SCENE_TRIES):
    num_objects = config.min_objects + dice.below(config.max_objects - config.min_objects + 1)
    scene = sample_scene(config, dice, num_objects, "static", relate=False)
    state = scene.start
    outcomes = [render(config.image_size, palette, scene.shapes, state, state, times[:1])[0]]
    clips, captions = [], []
    pairs = [(j, a) for j in range(num_objects) for a in ACTIONS if a != "appearing"]
    for j, action in dice.shuffled(pairs):
      row = plan_event(config, dice, state, scene.shapes, j, action, keep_one_visible=False)
      if row is None:
        continue
      end = state.copy()
      end[j] = row
      clip = render(config.image_size, palette, scene.shapes, state, end, times)
      if any(np.array_equal(clip[-1], seen) for seen in outcomes):
        continue  # an end state that another candidate (or doing nothing) also reaches
      outcomes.append(clip[-1])
      clips.append(clip)
      captions.append(event_caption(config, state, scene.shapes, j, action, row))
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
