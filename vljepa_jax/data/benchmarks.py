"""Benchmark annotation files, as their owners distribute them, -> this library's JSONL manifests.

    python -m vljepa_jax.data.benchmarks NAME --annotations PATH [--split S] --media-root DIR \\
        --output manifest.jsonl [--skip-missing] [--label-names-out PATH]

Each importer follows the official layout and the conventions of
`../shared/reference/benchmark-formats.md` (§0), so that a manifest is the same wherever it is made:
  * one record per evaluation item, in annotation-file order; `id` as the conventions name it;
  * texts stripped of surrounding whitespace and otherwise unchanged; class names as spelled;
  * `media` relative to `--media-root` ('/'-separated): the first of the benchmark's candidate
    file names that exists; a full video plus `start_s`/`end_s` where only that is present;
  * a record whose media is missing fails the import (nothing is written, the ids are listed)
    unless `--skip-missing`, which leaves it out and says so;
  * `--split` is required where one file holds several splits (its absence lists the values
    present), optional where it filters; an unknown value fails listing the valid ones.

Importers (`IMPORTERS`): msrvtt (the 1k-A test CSV, or the MSR-VTT JSON with `--split`),
kinetics400 (the official CSVs), ssv2 (a split's JSON and `labels.json`). The output is written
to a temporary file and renamed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

from vljepa_jax.eval import results

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
MAX_LISTED = 20  # missing ids printed


class AnnotationError(ValueError):
  """Annotations that cannot be imported as asked; the message says what and where."""


@dataclasses.dataclass
class Item:
  """One evaluation item before its media is looked up: its record, and where its media may be.

  `candidates`: (relative path, extra record fields) in order of preference; the first that
  exists is the record's media (extra fields: a clip window into a full video).
  """
  record: dict[str, Any]
  candidates: list[tuple[str, dict[str, Any]]]


@dataclasses.dataclass
class Imported:
  records: list[dict[str, Any]]
  missing: list[str]  # ids of the items whose media is missing
  label_names: list[str] | None


def _choose_split(split: str | None, present: Sequence[str], name: str, *, required: bool) -> str | None:
  values = sorted(set(present))
  if split is None:
    if required:
      raise AnnotationError(f"{name}: --split is required (this file holds several splits); values present: {values}")
    return None
  if split not in values:
    raise AnnotationError(f"{name}: --split={split!r} is not in the annotations; valid values: {values}")
  return split


def _video_candidates(stem: str, extra: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
  return [(stem + ext, dict(extra or {})) for ext in VIDEO_EXTENSIONS]


def _read_csv(path: str, name: str, required: Sequence[str]) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in required if c not in (reader.fieldnames or ())]
    if missing:
      raise AnnotationError(f"{name}: {path} has no column(s) {missing}; its header is {reader.fieldnames}")
    return list(reader)


def msrvtt(annotations: str, split: str | None) -> tuple[list[Item], None]:
  """The 1k-A test CSV (`key,vid_key,video_id,sentence`: one caption per video) or the MSR-VTT
  JSON (`videos`, `sentences`; one record per video of `--split`, all its captions by `sen_id`)."""
  if annotations.endswith(".csv"):
    if split is not None:
      raise AnnotationError(f"msrvtt: --split applies to the JSON annotations, not to the CSV {annotations} "
                         "(its rows are the 1k-A test set)")
    rows = _read_csv(annotations, "msrvtt", ("video_id", "sentence"))
    items = [Item({"id": row["video_id"], "caption": row["sentence"].strip()}, _video_candidates(row["video_id"]))
             for row in rows]
    return items, None
  with open(annotations, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
    raise AnnotationError(f"msrvtt: {annotations} is not MSR-VTT's JSON (expected the keys 'videos' and 'sentences')")
  split = _choose_split(split, [v["split"] for v in data["videos"]], "msrvtt", required=True)
  captions: dict[str, list[tuple[int, str]]] = {}
  for sentence in data["sentences"]:
    captions.setdefault(sentence["video_id"], []).append((int(sentence["sen_id"]), sentence["caption"].strip()))
  items = []
  for video in data["videos"]:
    if video["split"] != split:
      continue
    texts = [text for _, text in sorted(captions.get(video["video_id"], []))]
    if not texts:
      raise AnnotationError(f"msrvtt: {video['video_id']} of split {split!r} has no sentence in {annotations}")
    items.append(Item({"id": video["video_id"], "captions": texts}, _video_candidates(video["video_id"])))
  return items, None


def kinetics400(annotations: str, split: str | None) -> tuple[list[Item], list[str]]:
  """The official CSV (`label,youtube_id,time_start,time_end,split[,is_cc]`): one record per clip,
  the trimmed clip `{youtube_id}_{start:06d}_{end:06d}` if present (flat, or in a folder per
  label, spaces kept or made '_'), else the full video `{youtube_id}` with the window."""
  rows = _read_csv(annotations, "kinetics400", ("label", "youtube_id", "time_start", "time_end"))
  if split is not None:
    if rows and "split" not in rows[0]:
      raise AnnotationError(f"kinetics400: --split={split!r}, but {annotations} has no 'split' column")
    split = _choose_split(split, [r["split"] for r in rows], "kinetics400", required=False)
    rows = [r for r in rows if r["split"] == split]
  items = []
  for row in rows:
    yid, label = row["youtube_id"], row["label"]
    start, end = float(row["time_start"]), float(row["time_end"])
    clip = f"{yid}_{int(start):06d}_{int(end):06d}"
    folders = ("", f"{label}/", f"{label.replace(' ', '_')}/")
    candidates = [(folder + clip + ext, {}) for folder in folders for ext in VIDEO_EXTENSIONS]
    candidates += _video_candidates(yid, {"start_s": start, "end_s": end})
    items.append(Item({"id": clip, "label": label}, candidates))
  return items, sorted({row["label"] for row in rows})


SSV2_LABEL_FILES = ("something-something-v2-labels.json", "labels.json")


def ssv2(annotations: str, split: str | None, labels: str | None = None) -> tuple[list[Item], list[str]]:
  """A split's JSON list (`id`, `label` = the filled-in sentence, `template`, `placeholders`): the
  class is the template without its brackets, as `labels.json` (`--labels`, else found next to the
  annotations) names it; the sentence is the caption. Test-split entries carry only `id`."""
  if split is not None:
    raise AnnotationError(f"ssv2: each split is its own file; pass it as --annotations, not --split={split!r}")
  if labels is None:
    folder = os.path.dirname(os.path.abspath(annotations))
    labels = next((os.path.join(folder, f) for f in SSV2_LABEL_FILES if os.path.isfile(os.path.join(folder, f))),
                  None)
    if labels is None:
      raise AnnotationError(f"ssv2: no class list next to {annotations} (looked for {list(SSV2_LABEL_FILES)}); "
                            "pass --labels PATH")
  with open(labels, encoding="utf-8") as f:
    classes = {name: int(index) for name, index in json.load(f).items()}
  with open(annotations, encoding="utf-8") as f:
    entries = json.load(f)
  items = []
  for entry in entries:
    record: dict[str, Any] = {"id": str(entry["id"])}
    if "template" in entry:
      name = entry["template"].replace("[", "").replace("]", "")
      if name not in classes:
        raise AnnotationError(f"ssv2: entry {entry['id']}: class {name!r} (from its template) is not in {labels}")
      record.update(label=name, caption=entry["label"].strip())
    items.append(Item(record, [(f"{entry['id']}.webm", {})]))
  return items, sorted(classes, key=classes.get)


IMPORTERS: dict[str, Callable[..., tuple[list[Item], list[str] | None]]] = {
    "msrvtt": msrvtt,
    "kinetics400": kinetics400,
    "ssv2": ssv2,
}
# Importers that read a class-list file (`--labels`).
TAKES_LABELS = ("ssv2",)


def import_benchmark(name: str, annotations: str, media_root: str, split: str | None = None,
                     labels: str | None = None) -> Imported:
  """The benchmark's items with their media found under `media_root`; missing ones listed, not dropped."""
  if name not in IMPORTERS:
    raise AnnotationError(f"unknown benchmark {name!r}; expected one of {sorted(IMPORTERS)}")
  for flag, path in (("--annotations", annotations), ("--labels", labels)):
    if path is not None and not os.path.exists(path):
      raise AnnotationError(f"{name}: {flag} {path} does not exist")
  if labels is not None and name not in TAKES_LABELS:
    raise AnnotationError(f"{name}: --labels is read by {list(TAKES_LABELS)} only")
  extra = {"labels": labels} if name in TAKES_LABELS else {}
  items, label_names = IMPORTERS[name](annotations, split, **extra)
  records, missing = [], []
  for item in items:
    found = next(((path, extra) for path, extra in item.candidates
                  if os.path.isfile(os.path.join(media_root, *path.split("/")))), None)
    if found is None:
      missing.append(item.record["id"])
      continue
    path, extra = found
    records.append({"media": path, **item.record, **extra})
  return Imported(records, missing, label_names)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", help=f"one of {sorted(IMPORTERS)}")
  parser.add_argument("--annotations", required=True)
  parser.add_argument("--split")
  parser.add_argument("--media-root", required=True)
  parser.add_argument("--output", required=True)
  parser.add_argument("--skip-missing", action="store_true")
  parser.add_argument("--label-names-out")
  parser.add_argument("--labels", help="ssv2: its labels.json, when not next to --annotations")
  args = parser.parse_args(argv)
  try:
    imported = import_benchmark(args.name, args.annotations, args.media_root, args.split, args.labels)
  except (AnnotationError, KeyError, ValueError, json.JSONDecodeError) as error:
    detail = f"missing key {error}" if isinstance(error, KeyError) else str(error)
    print(f"error: {args.name}: {detail}", file=sys.stderr)
    return 1
  listed = ", ".join(imported.missing[:MAX_LISTED]) + (" ..." if len(imported.missing) > MAX_LISTED else "")
  if imported.missing and not args.skip_missing:
    print(f"error: {len(imported.missing)} record(s) have no media under {args.media_root}: {listed}; nothing "
          "written (--skip-missing leaves them out)", file=sys.stderr)
    return 1
  results.write_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in imported.records))
  if args.label_names_out and imported.label_names is not None:
    results.write_atomic(args.label_names_out, "".join(name + "\n" for name in imported.label_names))
  if imported.missing:
    print(f"{len(imported.missing)} record(s) skipped: missing media: {listed}")
  skipped = f" ({len(imported.missing)} skipped: missing media)" if imported.missing else ""
  print(f"wrote {len(imported.records)} records to {args.output}{skipped}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
