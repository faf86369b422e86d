"""Y-encoder hard negatives, text only (paper §4.7): is a paraphrase nearer than a one-word change?

Each item is a triplet of captions: two positives p1, p2 that say the same thing in different
words, and a negative n that shares most of its words with a positive but means something else.
With S_Y the Y-encoder's embedding and sim the cosine, the text-only task (TOT) of SugarCrepe++
and VISLA counts an item as correct iff

    sim(p1, p2) > sim(p1, n)  and  sim(p1, p2) > sim(p2, n),

strictly: a tie is wrong, so an encoder that maps everything to one point scores 0. For random
embeddings each of the three pairs is equally likely to be the most similar, so chance is 1/3.
Every distinct text is embedded once.

Formats (option `format`):
  "shapes" (default)   `shapes.make_hard_negative(ShapesConfig(), seed, i)` for i < `size`
                       (options `size`, `seed`); its negatives change an "attribute" (colours
                       swapped), a "relation" (flipped) or an "object" (another shape), reported
                       per kind as `accuracy/<kind>`.
  "sugarcrepe_pp"      SugarCrepe++ (github.com/Sri-Harsha/scpp, data/*.json; the layout its
                       `evaluate_ulms.py` reads): a JSON list of objects
                         {"id": 0, "filename": "000000331352.jpg", "caption": p1, "caption2": p2,
                          "negative_caption": n}
                       (an object keyed by id, SugarCrepe's layout, is read too). `path` is one
                       such file or a directory holding the five category files replace_att,
                       replace_obj, replace_rel, swap_att and swap_obj (.json).
  "visla"              VISLA (github.com/Sri-Harsha/visla_benchmark, data/*.tsv): tab-separated
                       with a header row; Generic_VISLA.tsv has columns
                         filename, caption, second positive, negative_caption
                       and Spatial_VISLA.tsv
                         image, sent1, sent2, Best reference (Semantically close), Reference-2 (...)
                       where the "semantically close" reference is the hard negative. Either
                       layout is recognised from the header; option `columns` ([p1, p2, n]
                       column names) reads any other CSV/TSV (.csv comma-, else tab-separated).
                       `path` is one file or a directory of *.tsv / *.csv files. Twelve rows of
                       the published Spatial_VISLA.tsv have no negative: such rows fail the run
                       unless `skip_incomplete: true`, which drops them and reports how many
                       (`num_skipped`).

For the file formats every file is one category: `accuracy/<file stem>` per file and `accuracy`
their mean (the benchmarks' "average"); for shapes `accuracy` is over all items. Every accuracy
comes with `chance_accuracy[/...]` = 1/3 and `num_samples[/...]`. A missing file fails with
FileNotFoundError naming the path and the expected format; a malformed item fails naming the
file and the item.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from vljepa_jax.data import shapes
from vljepa_jax.eval import evaluator

FORMATS = ("shapes", "sugarcrepe_pp", "visla")
SUGARCREPE_PP_CATEGORIES = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_PP_KEYS = ("caption", "caption2", "negative_caption")
# [p1, p2, n] columns of the two published VISLA files.
VISLA_COLUMNS = (("caption", "second positive", "negative_caption"),
                 ("sent1", "sent2", "Best reference (Semantically close)"))
SUGARCREPE_PP_FORMAT = ('a JSON list of {"caption": p1, "caption2": p2, "negative_caption": n} objects '
                        f"(SugarCrepe++), or a directory of {', '.join(c + '.json' for c in SUGARCREPE_PP_CATEGORIES)}")
VISLA_FORMAT = ("a VISLA .tsv (or .csv) file with a header naming p1, p2 and n columns, e.g. "
                f"{list(VISLA_COLUMNS[0])} or {list(VISLA_COLUMNS[1])} (or give `columns`), or a directory of them")
CHANCE = 1.0 / 3.0


class Triplet(NamedTuple):
  group: str  # the kind (shapes) or file stem (benchmarks) it is reported under; "" for none
  positive_1: str
  positive_2: str
  negative: str


def tot_correct(p1: np.ndarray, p2: np.ndarray, n: np.ndarray) -> np.ndarray:
  """The TOT rule on rows of embeddings (any scale): sim(p1, p2) beats both sims with n, strictly."""
  p1, p2, n = evaluator.normalize(p1), evaluator.normalize(p2), evaluator.normalize(n)
  positive = np.sum(p1 * p2, axis=-1)
  return (positive > np.sum(p1 * n, axis=-1)) & (positive > np.sum(p2 * n, axis=-1))


def _text(value: Any, where: str, field: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{where}: {field!r} must be a non-empty string, got {value!r:.80}")
  return value.strip()


def read_sugarcrepe_pp(path: str) -> list[Triplet]:
  """Triplets of one SugarCrepe++ category file, grouped under the file's stem."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"SugarCrepe++ file {path!r} does not exist; expected {SUGARCREPE_PP_FORMAT}")
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); expected {SUGARCREPE_PP_FORMAT}") from None
  if isinstance(data, dict):
    items = list(data.items())
  elif isinstance(data, list):
    items = [(item.get("id", i) if isinstance(item, dict) else i, item) for i, item in enumerate(data)]
  else:
    raise ValueError(f"{path}: expected a JSON list or object of items, got {type(data).__name__}; "
                     f"expected {SUGARCREPE_PP_FORMAT}")
  if not items:
    raise ValueError(f"{path}: no items; expected {SUGARCREPE_PP_FORMAT}")
  group = os.path.splitext(os.path.basename(path))[0]
  triplets = []
  for key, item in items:
    where = f"{path}: item {key!r}"
    if not isinstance(item, dict):
      raise ValueError(f"{where}: expected an object with keys {list(SUGARCREPE_PP_KEYS)}, got {type(item).__name__}")
    triplets.append(Triplet(group, *(_text(item.get(k), where, k) for k in SUGARCREPE_PP_KEYS)))
  return triplets


def read_visla(path: str, columns: Sequence[str] | None = None,
               skip_incomplete: bool = False) -> tuple[list[Triplet], int]:
  """Triplets of one VISLA (or VISLA-like) CSV/TSV file and how many incomplete rows were skipped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"VISLA file {path!r} does not exist; expected {VISLA_FORMAT}")
  delimiter = "," if path.lower().endswith(".csv") else "\t"
  group = os.path.splitext(os.path.basename(path))[0]
  # utf-8-sig: spreadsheet exports often start with a byte-order mark, which would rename column 1.
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.DictReader(f, delimiter=delimiter)
    header = reader.fieldnames or []
    if columns is not None:
      chosen = tuple(columns)
      if len(chosen) != 3 or not set(chosen) <= set(header):
        raise ValueError(f"{path}: columns {list(chosen)} must be 3 names of the header {header}")
    else:
      found = [c for c in VISLA_COLUMNS if set(c) <= set(header)]
      if not found:
        raise ValueError(f"{path}: header {header} has none of the VISLA layouts; expected {VISLA_FORMAT}")
      chosen = found[0]
    triplets, skipped = [], 0
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if None in row or None in row.values():  # more or fewer fields than the header: a broken row
        raise ValueError(f"{where}: expected {len(header)} {'tab' if delimiter == chr(9) else 'comma'}-separated "
                         f"fields as in the header {header}")
      values = [row[c].strip() for c in chosen]
      if not all(values):
        if skip_incomplete:
          skipped += 1
          continue
        raise ValueError(f"{where}: empty {[c for c, v in zip(chosen, values) if not v]}; set "
                         "skip_incomplete=true to drop such rows (and report num_skipped)")
      triplets.append(Triplet(group, *values))
  if not triplets:
    raise ValueError(f"{path}: no usable rows; expected {VISLA_FORMAT}")
  return triplets, skipped


def _files(path: str, suffixes: Iterable[str], what: str, expected: str) -> list[str]:
  if os.path.isdir(path):
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(tuple(suffixes)))
    if not files:
      raise FileNotFoundError(f"{what} directory {path!r} holds no {'/'.join(suffixes)} files; expected {expected}")
    return files
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} path {path!r} does not exist; expected {expected}")
  return [path]


class HardNegatives(evaluator.Evaluator):
  OPTIONS = {"format": "shapes", "size": 256, "seed": 1000, "path": None, "columns": None, "skip_incomplete": False}

  def __init__(self, name: str, config: Mapping[str, Any], **kwargs: Any):
    super().__init__(name, config, **kwargs)
    fmt = self.options["format"]
    if fmt not in FORMATS:
      raise ValueError(f"evals.{name}.format={fmt!r}; expected one of {list(FORMATS)}")
    if fmt != "shapes" and not self.options["path"]:
      raise ValueError(f"evals.{name}: format {fmt!r} needs `path`; expected "
                       + (SUGARCREPE_PP_FORMAT if fmt == "sugarcrepe_pp" else VISLA_FORMAT))
    self.skipped = 0
    # Read once, here: a missing or malformed file fails before any compilation.
    self.triplets = self._read()

  def _read(self) -> list[Triplet]:
    options = self.options
    if options["format"] == "shapes":
      config = shapes.ShapesConfig()
      items = [shapes.make_hard_negative(config, int(options["seed"]), i) for i in range(int(options["size"]))]
      return [Triplet(str(t.get("kind", "")), t["positive_1"], t["positive_2"], t["negative"]) for t in items]
    path = os.fspath(options["path"])
    if options["format"] == "sugarcrepe_pp":
      if os.path.isdir(path):
        files = [os.path.join(path, c + ".json") for c in SUGARCREPE_PP_CATEGORIES]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
          raise FileNotFoundError(f"SugarCrepe++ directory {path!r} lacks {missing}; expected {SUGARCREPE_PP_FORMAT}")
      else:
        files = _files(path, (".json",), "SugarCrepe++", SUGARCREPE_PP_FORMAT)
      return [t for f in files for t in read_sugarcrepe_pp(f)]
    triplets = []
    for f in _files(path, (".tsv", ".csv"), "VISLA", VISLA_FORMAT):
      read, skipped = read_visla(f, options["columns"], bool(options["skip_incomplete"]))
      triplets += read
      self.skipped += skipped
    return triplets

  def run(self, params: Any) -> dict[str, float]:
    texts: dict[str, int] = {}
    for t in self.triplets:
      for text in t[1:]:
        texts.setdefault(text, len(texts))
    emb = self.embedder.texts(params, list(texts), self.target_tokenizer)
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
