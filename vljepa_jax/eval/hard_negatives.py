"""Y-encoder hard negatives, text only (paper §4.7): is a paraphrase nearer than a one-word change?

Each item is a triplet of captions: two positives p1, p2 that say the same thing in different
words, and a negative n that shares most of its words with a positive but means something else.
With S_Y the Y-encoder's embedding and sim the cosine, the text-only task (TOT) of SugarCrepe++
and VISLA counts an item as correct iff

    sim(p1, p2) > sim(p1, n)  and  sim(p1, p2) > sim(p2, n),

strictly: a tie is wrong, so an encoder that maps everything to one point scores 0. For random
embeddings each of the three pairs is equally likely to be the most similar, so chance is 1/3.
Every distinct text is embedded once.

Formats (option `format`; `data/text_triplets.py` reads them and documents their layouts):
  "shapes" (default)   the embedded generator's triplets (options `size`, `seed`); their negatives
                       change an "attribute", a "relation" or an "object", reported per kind as
                       `accuracy/<kind>`.
  "sugarcrepe_pp"      SugarCrepe++ JSON files (option `path`: a file or the directory of the five).
  "visla"              VISLA TSV/CSV files (options `path`, `columns`, `skip_incomplete`; rows
                       skipped for lacking a negative are reported as `num_skipped`).

For the file formats every file is one category: `accuracy/<file stem>` per file and `accuracy`
their mean (the benchmarks' "average"); for shapes `accuracy` is over all items. Every accuracy
comes with `chance_accuracy[/...]` = 1/3 and `num_samples[/...]`. A missing file fails with
FileNotFoundError naming the path and the expected format; a malformed item fails naming the
file and the item.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vljepa_jax.data import text_triplets
from vljepa_jax.eval import evaluator
from vljepa_jax.eval import predictions as predictions_lib

CHANCE = 1.0 / 3.0


def tot_correct(p1: np.ndarray, p2: np.ndarray, n: np.ndarray) -> np.ndarray:
  """The TOT rule on rows of embeddings (any scale): sim(p1, p2) beats both sims with n, strictly."""
  p1, p2, n = predictions_lib.normalize(p1), predictions_lib.normalize(p2), predictions_lib.normalize(n)
  positive = np.sum(p1 * p2, axis=-1)
  return (positive > np.sum(p1 * n, axis=-1)) & (positive > np.sum(p2 * n, axis=-1))


class HardNegatives(evaluator.Evaluator):
  OPTIONS = {"format": "shapes", "size": 256, "seed": 1000, "path": None, "columns": None, "skip_incomplete": False}
  REQUIRES = ("embed_texts",)

  def __init__(self, name: str, config: Mapping[str, Any], predictions: Any, context: evaluator.EvalContext):
    super().__init__(name, config, predictions, context)
    options = self.options
    if options["format"] not in text_triplets.FORMATS:
      raise ValueError(f"evals.{name}.format={options['format']!r}; expected one of {list(text_triplets.FORMATS)}")
    try:
      # Read once, here: a missing or malformed file fails before any compilation.
      self.triplets, self.skipped = text_triplets.read_triplets(
          options["format"], path=options["path"], columns=options["columns"],
          skip_incomplete=bool(options["skip_incomplete"]), size=int(options["size"]), seed=int(options["seed"]))
    except ValueError as e:
      raise ValueError(f"evals.{name}: {e}") from None

  def run(self, params: Any) -> dict[str, float]:
    texts: dict[str, int] = {}
    for t in self.triplets:
      for text in t[1:]:
        texts.setdefault(text, len(texts))
    emb = self.predictions.embed_texts(params, list(texts), self.target_tokenizer)
    take = lambda field: emb[[texts[getattr(t, field)] for t in self.triplets]]
    correct = tot_correct(take("positive_1"), take("positive_2"), take("negative"))
    groups = np.array([t.group for t in self.triplets])
    result: dict[str, float] = {}
    names = sorted(set(groups.tolist()) - {""})
    for group in names:
      chosen = groups == group
      result.update({f"accuracy/{group}": float(np.mean(correct[chosen])), f"chance_accuracy/{group}": CHANCE,
                     f"num_samples/{group}": int(chosen.sum())})
    if self.options["format"] == "shapes" or not names:
      result["accuracy"] = float(np.mean(correct))
    else:  # the benchmarks average their categories
      result["accuracy"] = float(np.mean([result[f"accuracy/{g}"] for g in names]))
    result["chance_accuracy"] = CHANCE
    result["num_samples"] = int(len(self.triplets))
    if self.options["format"] == "visla":
      result["num_skipped"] = int(self.skipped)
    return result
