"""`make_hard_negative`: two paraphrases of a two-object scene and a negative that changes one thing."""
from __future__ import annotations

from vljepa_jax.data.shapes.captions import image_caption, image_captions
from vljepa_jax.data.shapes.catalog import INVERSE_RELATION, RELATION_PHRASES
from vljepa_jax.data.shapes.config import ShapesConfig
from vljepa_jax.data.shapes.dice import STREAM_HARD_NEGATIVE, Dice

HARD_NEGATIVE_KINDS: tuple[str, ...] = ("attribute", "relation", "object")


def make_hard_negative(config: ShapesConfig, seed: int, index: int) -> dict[str, str]:
  """SugarCrepe++-style triplet: two paraphrases of a two-object scene and a one-change negative.

  positive_1 is the canonical description ("a red square above a blue circle"), positive_2 a
  paraphrase of it (synonyms, maybe the inverse relation: "an azure disc under a crimson box").
  The negative, in canonical words, changes exactly one thing: "attribute" swaps the two colours,
  "relation" flips the relation, "object" gives one object another shape. It shares more words
  with positive_1 than positive_2 does, so word overlap alone picks the wrong pair.
  """
  dice = Dice(seed, index, STREAM_HARD_NEGATIVE)
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
  positive_1, positive_2 = image_captions(dice, 2, objects, relation)
  if kind == "attribute":
    changed = [(color_b, shape_a), (color_a, shape_b)]
    negative = image_caption(changed, relation)
  elif kind == "relation":
    negative = image_caption(objects, INVERSE_RELATION[relation])
  else:
    which = dice.below(2)
    color, shape = objects[which]
    changed = list(objects)
    changed[which] = (color, dice.choice([s for s in config.shapes if s != shape]))
    negative = image_caption(changed, relation)
  return {"positive_1": positive_1, "positive_2": positive_2, "negative": negative, "kind": kind}
