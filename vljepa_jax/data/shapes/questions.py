"""Questions with their answers and answer vocabulary, each answerable from the clip's pixels."""
from __future__ import annotations

from vljepa_jax.data.shapes.catalog import ACTION_PHRASES, ACTIONS, DIRECTIONS, NUMBER_WORDS, SHAPE_PLURALS
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import Dice
from vljepa_jax.data.shapes.scenes import COLOR, VISIBLE, Scene

_UNSTABLE = ("appearing", "disappearing", "changing colour")  # attributes not constant over a clip


def question(config: ShapesConfig, dice: Dice, scene: Scene,
             video: bool) -> tuple[str, str, list[str], str]:
  """(query, answer, answer_candidates, question_type) for one clip.

  Count questions count objects visible in the first frame, and are not asked of clips where the
  primary appears or disappears (the count would change mid-clip). Questions naming an object by
  colour or asking its colour skip objects whose colour or visibility changes.
  """
  colors = [config.colors[int(c)] for c in scene.start[:, COLOR]]
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
    visible = scene.start[:, VISIBLE] > 0.5
    number = sum(1 for j, s in enumerate(scene.shapes) if s == shape and visible[j])
    return (f"how many {SHAPE_PLURALS[shape]} are there?", NUMBER_WORDS[number],
            list(NUMBER_WORDS[:config.max_objects + 1]), kind)
  if kind == "colour_of_shape":
    j = dice.choice(unique_shapes)
    return f"what colour is the {scene.shapes[j]}?", colors[j], list(config.colors), kind
  j = dice.choice(stable)
  return f"what shape is the {colors[j]} object?", scene.shapes[j], list(config.shapes), kind
