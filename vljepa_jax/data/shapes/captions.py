"""Captions: the canonical description of a clip or still scene, and distinct paraphrases of it."""
from __future__ import annotations

from typing import Callable, Sequence

from vljepa_jax.data.shapes.catalog import (ACTION_PHRASES, COLOR_SYNONYMS, INVERSE_RELATION, NUMBER_WORDS,
                                            RELATION_PHRASES, SHAPE_SYNONYMS)
from vljepa_jax.data.shapes.dice import Dice


def with_article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _random_noun(dice: Dice, color: str, shape: str) -> str:
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


def video_caption(color: str, shape: str, action: str, new_color: str | None) -> str:
  """Canonical caption of one event: "a red square moves left"."""
  verb = ACTION_PHRASES[action][0].format(color=new_color)
  return f"{with_article(f'{color} {shape}')} {verb}"


_VIDEO_TEMPLATES = ("{a} {verb}", "the {noun} {verb}", "there is {a} that {verb}",
                    "in this clip {a} {verb}", "we see {a} that {verb}")


def video_captions(dice: Dice, count: int, color: str, shape: str, action: str,
                   new_color: str | None) -> list[str]:
  def variant() -> str:
    noun = _random_noun(dice, color, shape)
    new = dice.choice(COLOR_SYNONYMS[new_color]) if new_color else None
    verb = dice.choice(ACTION_PHRASES[action]).format(color=new)
    return dice.choice(_VIDEO_TEMPLATES).format(a=with_article(noun), noun=noun, verb=verb)
  return _distinct_phrasings(video_caption(color, shape, action, new_color), variant, count)


def image_caption(objects: Sequence[tuple[str, str]], relation: str | None) -> str:
  """Canonical still description: "a red square above a blue circle and a green triangle"."""
  nouns = [with_article(f"{color} {shape}") for color, shape in objects]
  if len(nouns) == 1:
    return nouns[0]
  return " and ".join([f"{nouns[0]} {relation} {nouns[1]}"] + nouns[2:])


def image_captions(dice: Dice, count: int, objects: Sequence[tuple[str, str]],
                   relation: str | None) -> list[str]:
  """Paraphrases of a still scene: synonyms, the inverse relation, framing and count phrases."""
  n = len(objects)

  def variant() -> str:
    nouns = [with_article(_random_noun(dice, c, s)) for c, s in objects]
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

  return _distinct_phrasings(image_caption(objects, relation), variant, count)
