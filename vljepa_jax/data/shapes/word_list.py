"""`vocabulary()`: every word the generator writes, for a word-level tokenizer."""
from __future__ import annotations

import functools
import re

from vljepa_jax.data.shapes.catalog import COLOR_RGB, SHAPE_SYNONYMS
from vljepa_jax.data.shapes.clips import action_classes, make_clip, object_classes
from vljepa_jax.data.shapes.config import MAX_OBJECTS, MAX_PARAPHRASES, ShapesConfig
from vljepa_jax.data.shapes.hard_negatives import make_hard_negative


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
