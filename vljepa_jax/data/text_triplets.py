"""Readers of text triplets for the hard-negative task: (positive 1, positive 2, negative) captions.

Formats:
  "shapes"             `shapes.make_hard_negative(ShapesConfig(), seed, i)` for i < size; grouped by
                       the kind of change of the negative: "attribute" (colours swapped),
                       "relation" (flipped) or "object" (another shape).
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
                       layout is recognised from the header; `columns` ([p1, p2, n] column
                       names) reads any other CSV/TSV (.csv comma-, else tab-separated). `path`
                       is one file or a directory of *.tsv / *.csv files. Twelve rows of the
                       published Spatial_VISLA.tsv have no negative: such rows fail unless
                       `skip_incomplete`, which drops them and counts them.

For the file formats every file is one group (its stem). A missing file fails with
FileNotFoundError naming the path and the expected format; a malformed item fails naming the
file and the item.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable, NamedTuple, Sequence

from vljepa_jax.data import shapes

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


class Triplet(NamedTuple):
  group: str  # the kind (shapes) or file stem (benchmarks) it is reported under; "" for none
  positive_1: str
  positive_2: str
  negative: str


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


def read_triplets(fmt: str, *, path: str | os.PathLike | None = None, columns: Sequence[str] | None = None,
                  skip_incomplete: bool = False, size: int = 256, seed: int = 1000) -> tuple[list[Triplet], int]:
  """The triplets of one source in format `fmt`, and how many incomplete rows were skipped (VISLA)."""
  if fmt not in FORMATS:
    raise ValueError(f"triplet format {fmt!r}; expected one of {list(FORMATS)}")
  if fmt == "shapes":
    config = shapes.ShapesConfig()
    items = [shapes.make_hard_negative(config, int(seed), i) for i in range(int(size))]
    return [Triplet(str(t.get("kind", "")), t["positive_1"], t["positive_2"], t["negative"]) for t in items], 0
  if not path:
    raise ValueError(f"format {fmt!r} needs `path`; expected "
                     + (SUGARCREPE_PP_FORMAT if fmt == "sugarcrepe_pp" else VISLA_FORMAT))
  path = os.fspath(path)
  if fmt == "sugarcrepe_pp":
    if os.path.isdir(path):
      files = [os.path.join(path, c + ".json") for c in SUGARCREPE_PP_CATEGORIES]
      missing = [f for f in files if not os.path.isfile(f)]
      if missing:
        raise FileNotFoundError(f"SugarCrepe++ directory {path!r} lacks {missing}; expected {SUGARCREPE_PP_FORMAT}")
    else:
      files = _files(path, (".json",), "SugarCrepe++", SUGARCREPE_PP_FORMAT)
    return [t for f in files for t in read_sugarcrepe_pp(f)], 0
  triplets, skipped = [], 0
  for f in _files(path, (".tsv", ".csv"), "VISLA", VISLA_FORMAT):
    read, skipped_here = read_visla(f, columns, skip_incomplete)
    triplets += read
    skipped += skipped_here
  return triplets, skipped
