"""Benchmark annotation files, as their owners distribute them, -> this library's JSONL manifests.

    python -m vljepa_jax.data.benchmarks NAME --annotations PATH [--split S] --media-root DIR \\
        --output manifest.jsonl [--skip-missing] [--label-names-out PATH] [--labels PATH] \\
        [--granularity segment|paragraph]

Each importer follows the official layout and the conventions of
`../shared/reference/benchmark-formats.md` (§0), so that a manifest is the same wherever it is made:
  * one record per evaluation item, in annotation-file order; `id` as the conventions name it;
  * texts stripped of surrounding whitespace and otherwise unchanged; class names as spelled;
  * `media` relative to `--media-root` ('/'-separated): the first of the benchmark's candidate
    file names that exists; a full video plus `start_s`/`end_s` where only that is present;
  * a record whose media is missing fails the import (nothing is written, the ids are listed)
    unless `--skip-missing`, which leaves it out and says so;
  * `--split` is required where one file holds several splits (its absence lists the values
    present), optional where it filters; an unknown value fails listing the valid ones;
  * windows are clamped into [0, duration] where the annotation gives a duration; a segment
    empty after clamping is dropped (`invalid_segment`), counted and listed, never looked up.

Importers (`IMPORTERS`): msrvtt (the 1k-A test CSV, or the MSR-VTT JSON or open-vljepa's
`annotations.json` with `--split`),
kinetics400 (the official CSVs), ssv2 (a split's JSON and `labels.json`), activitynet_captions
(a split's JSON; `--granularity segment` (default) or `paragraph`), youcook2 (the trainval JSON
with `--split`; `--granularity` as ActivityNet's), pope (a variant's JSON Lines file), and
coco_karpathy (`dataset_coco.json` with `--split`). `--labels` and `--granularity` are refused by
the importers that do not read them. The output is written to a temporary file and renamed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

from vljepa_jax.data import manifest
from vljepa_jax.eval import results

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
MAX_LISTED = 20  # missing (or dropped) ids printed
GRANULARITIES = ("segment", "paragraph")  # of the timed-sentence benchmarks: one record per sentence / per video
INVALID_SEGMENT = "invalid_segment"  # why a segment is dropped: empty after clamping into [0, duration]


class AnnotationError(ValueError):
  """Annotations that cannot be imported as asked; the message says what and where."""


@dataclasses.dataclass
class Item:
  """One evaluation item before its media is looked up: its record, and where its media may be.

  `candidates`: (relative path, extra record fields) in order of preference; the first that
  exists is the record's media (extra fields: a clip window into a full video).
  `dropped`: why the item is left out before its media is looked up (e.g. `INVALID_SEGMENT`), or None.
  """
  record: dict[str, Any]
  candidates: list[tuple[str, dict[str, Any]]]
  dropped: str | None = None


@dataclasses.dataclass
class Imported:
  records: list[dict[str, Any]]
  missing: list[str]  # ids of the items whose media is missing
  label_names: list[str] | None
  dropped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # reason -> ids, in file order


def _choose_split(split: str | None, present: Sequence[str], name: str, *, required: bool) -> str | None:
  values = sorted(set(present))
  if split is None:
    if required:
      raise AnnotationError(f"{name}: --split is required (this file holds several splits); values present: {values}")
    return None
  if split not in values:
    raise AnnotationError(f"{name}: --split={split!r} is not in the annotations; valid values: {values}")
  return split


def _refuse_split(split: str | None, name: str) -> None:
  """For the formats whose splits are separate files."""
  if split is not None:
    raise AnnotationError(f"{name}: each split is its own file; pass it as --annotations, not --split={split!r}")


def _video_candidates(stem: str, extra: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
  return [(stem + ext, dict(extra or {})) for ext in VIDEO_EXTENSIONS]


def _load_json_object(path: str, name: str, what: str, keys: Sequence[str] = ()) -> dict[str, Any]:
  """The file's JSON object, which must have `keys` (else it is not `what`, e.g. "MSR-VTT's JSON")."""
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict) or any(k not in data for k in keys):
    expected = f"the key(s) {list(keys)}" if keys else "a JSON object"
    raise AnnotationError(f"{name}: {path} is not {what} (expected {expected}; got a {type(data).__name__})")
  return data


def _timed_sentences(name: str, key: str, segments: Sequence[tuple[Any, Any, str]], duration: Any,
                     candidates: list[tuple[str, dict[str, Any]]], granularity: str) -> list[Item]:
  """The items of one video annotated with timed sentences (ActivityNet Captions, YouCook2).

  `segments`: (id suffix, [start, end] in seconds, sentence) in annotation order. `segment`: one
  item per sentence, id `{key}#{suffix}`, its window clamped into [0, duration] (dropped as
  `INVALID_SEGMENT` when that leaves it empty). `paragraph`: one item, id `key`, the stripped
  sentences joined by " ", the whole video (every sentence, windows unused).
  """
  if granularity == "paragraph":
    if not segments:
      raise AnnotationError(f"{name}: {key} has no sentence (--granularity paragraph)")
    return [Item({"id": key, "caption": " ".join(sentence.strip() for _, _, sentence in segments)}, candidates)]
  if granularity != "segment":
    raise AnnotationError(f"{name}: --granularity={granularity!r} is unknown; valid values: {list(GRANULARITIES)}")
  items = []
  for suffix, window, sentence in segments:
    if len(window) != 2:
      raise AnnotationError(f"{name}: {key}#{suffix}: segment {window!r} is not [start, end]")
    start, end = max(0.0, float(window[0])), min(float(window[1]), float(duration))
    record = {"id": f"{key}#{suffix}", "caption": sentence.strip(), "start_s": start, "end_s": end}
    items.append(Item(record, candidates) if start < end else Item(record, [], dropped=INVALID_SEGMENT))
  return items


def _read_csv(path: str, name: str, required: Sequence[str]) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in required if c not in (reader.fieldnames or ())]
    if missing:
      raise AnnotationError(f"{name}: {path} has no column(s) {missing}; its header is {reader.fieldnames}")
    return list(reader)


def msrvtt(annotations: str, split: str | None) -> tuple[list[Item], None]:
  """The 1k-A test CSV (`key,vid_key,video_id,sentence`: one caption per video), the MSR-VTT JSON
  (`videos`, `sentences`; one record per video of `--split`, all its captions by `sen_id`), or
  open-vljepa's `annotations.json` (`{video_id: {"captions": [...], "split": ...}}`, the file its
  `scripts/download_msrvtt.py` writes; one record per video of `--split`, in file order, captions as listed)."""
  if annotations.endswith(".csv"):
    if split is not None:
      raise AnnotationError(f"msrvtt: --split applies to the JSON annotations, not to the CSV {annotations} "
                         "(its rows are the 1k-A test set)")
    rows = _read_csv(annotations, "msrvtt", ("video_id", "sentence"))
    items = [Item({"id": row["video_id"], "caption": row["sentence"].strip()}, _video_candidates(row["video_id"]))
             for row in rows]
    return items, None
  data = _load_json_object(annotations, "msrvtt", "MSR-VTT's JSON")
  if "videos" not in data and "sentences" not in data:
    return _msrvtt_open_vljepa(data, annotations, split), None
  if "videos" not in data or "sentences" not in data:
    raise AnnotationError(f"msrvtt: {annotations} is not MSR-VTT's JSON (expected the keys ['videos', 'sentences'])")
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


def _msrvtt_open_vljepa(data: dict[str, Any], annotations: str, split: str | None) -> list[Item]:
  """open-vljepa's layout. Its evaluation pool is the first N test videos in this file's order (its
  `--n_videos`), so the order is kept exactly; the evaluation takes them with the source's `limit`
  (configs/eval_open_vljepa.py)."""
  bad = [key for key, value in data.items() if not isinstance(value, dict) or not isinstance(value.get("captions"), list)]
  if bad:
    raise AnnotationError(f"msrvtt: {annotations} is neither MSR-VTT's JSON (keys 'videos', 'sentences') nor "
                          f"open-vljepa's annotations.json ({{video_id: {{'captions': [...], 'split': ...}}}}): "
                          f"entry {bad[0]!r} has no caption list")
  # open-vljepa's reader counts an entry without "split" as train.
  split = _choose_split(split, [v.get("split", "train") for v in data.values()], "msrvtt", required=True)
  items = []
  for video_id, video in data.items():
    if video.get("split", "train") != split:
      continue
    texts = [text.strip() for text in video["captions"]]
    if not texts:
      raise AnnotationError(f"msrvtt: {video_id} of split {split!r} has no caption in {annotations}")
    items.append(Item({"id": video_id, "captions": texts}, _video_candidates(video_id)))
  return items


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
  _refuse_split(split, "ssv2")
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


def activitynet_captions(annotations: str, split: str | None,
                         granularity: str = "segment") -> tuple[list[Item], None]:
  """A split's JSON (`train.json`, `val_1.json`, ...): an object keyed by `v_` + YouTube id, each
  with `duration`, `timestamps` ([start, end] per sentence) and `sentences` (most begin with
  spaces). `segment`: one record per sentence, id `{key}#{i}`, the window clamped; `paragraph`:
  one record per video, id `key`. The video is `{key}{ext}`, else `{key without 'v_'}{ext}`."""
  _refuse_split(split, "activitynet_captions")
  data = _load_json_object(annotations, "activitynet_captions", "ActivityNet Captions' JSON")
  items = []
  for key, video in data.items():
    timestamps, sentences = video["timestamps"], video["sentences"]
    if len(timestamps) != len(sentences):
      raise AnnotationError(f"activitynet_captions: {key} has {len(timestamps)} timestamps but {len(sentences)} "
                            "sentences")
    candidates = _video_candidates(key) + (_video_candidates(key[2:]) if key.startswith("v_") else [])
    segments = [(i, window, sentence) for i, (window, sentence) in enumerate(zip(timestamps, sentences))]
    items += _timed_sentences("activitynet_captions", key, segments, video["duration"], candidates, granularity)
  return items, None


def youcook2(annotations: str, split: str | None, granularity: str = "segment") -> tuple[list[Item], None]:
  """`youcookii_annotations_trainval.json` (`{"database": {vid: {"subset", "recipe_type",
  "duration", "annotations": [{"id", "segment", "sentence"}]}}}`), `--split` training or
  validation: one record per annotation, id `{vid}#{annotation id}`, the window clamped
  (`--granularity paragraph`: one per video, id `vid`). The video is
  `{subset}/{recipe_type}/{vid}{ext}` (the download script's layout), else `{vid}{ext}`."""
  database = _load_json_object(annotations, "youcook2", "YouCook2's annotations", ("database",))["database"]
  split = _choose_split(split, [video["subset"] for video in database.values()], "youcook2", required=True)
  items = []
  for vid, video in database.items():
    if video["subset"] != split:
      continue
    candidates = _video_candidates(f"{video['subset']}/{video['recipe_type']}/{vid}") + _video_candidates(vid)
    segments = [(a["id"], a["segment"], a["sentence"]) for a in video["annotations"]]
    items += _timed_sentences("youcook2", vid, segments, video["duration"], candidates, granularity)
  return items, None


POPE_SPLITS = ("random", "popular", "adversarial")
POPE_FILE_NAME = re.compile(r"coco_pope_(\w+)\.json")
POPE_ANSWERS = ("yes", "no")


def pope(annotations: str, split: str | None) -> tuple[list[Item], None]:
  """A variant's file `coco_pope_{random,popular,adversarial}.json`, which is JSON Lines (blank
  lines skipped; the older release's `image_id` ignored): one record per question, id
  `{split}/{question_id}`, media the val2014 image `image`.

  The split (variant) is the file name's (`POPE_FILE_NAME`: `coco_pope_<variant>.json`), or
  `--split` (one of `POPE_SPLITS`) for a renamed file; when both give it they must agree (a
  disagreement fails rather than mislabel the questions); when neither does, the import fails.
  """
  if split is not None and split not in POPE_SPLITS:
    raise AnnotationError(f"pope: --split={split!r} is not a POPE variant; valid values: {list(POPE_SPLITS)}")
  match = POPE_FILE_NAME.fullmatch(os.path.basename(annotations))
  if match and split is not None and match.group(1) != split:
    raise AnnotationError(f"pope: --split={split!r} disagrees with the file name {os.path.basename(annotations)} "
                          f"(variant {match.group(1)!r}); leave --split out or pass the right file")
  split = split or (match.group(1) if match else None)
  if split is None:
    raise AnnotationError(f"pope: no variant in the file name {os.path.basename(annotations)} (expected "
                          f"coco_pope_<variant>.json); pass --split, one of {list(POPE_SPLITS)}")
  items = []
  for where, question in manifest.iter_json_lines(annotations):
    answer = question["label"].strip()
    if answer not in POPE_ANSWERS:
      raise AnnotationError(f"pope: {where}: label {question['label']!r} is not one of {list(POPE_ANSWERS)}")
    record = {"id": f"{split}/{question['question_id']}", "query": question["text"].strip(), "answer": answer,
              "answer_candidates": list(POPE_ANSWERS), "question_type": split}
    items.append(Item(record, [(question["image"], {})]))
  return items, None


# `--split` values that name a union of the file's splits ("Karpathy train" is train + restval).
KARPATHY_UNIONS = {"train+restval": ("train", "restval")}


def coco_karpathy(annotations: str, split: str | None) -> tuple[list[Item], None]:
  """Karpathy's `dataset_coco.json` (`images`: `filepath`, `filename`, `split`, `cocoid`,
  `sentences[].raw`), `--split` train / restval / val / test (or train+restval): one record per
  image, id `str(cocoid)`, media `{filepath}/{filename}`, `captions` the raw sentences stripped."""
  images = _load_json_object(annotations, "coco_karpathy", "Karpathy's dataset_coco.json", ("images",))["images"]
  present = [image["split"] for image in images] + list(KARPATHY_UNIONS)
  split = _choose_split(split, present, "coco_karpathy", required=True)
  selected = KARPATHY_UNIONS.get(split, (split,))
  items = []
  for image in images:
    if image["split"] not in selected:
      continue
    captions = [sentence["raw"].strip() for sentence in image["sentences"]]
    if not captions:
      raise AnnotationError(f"coco_karpathy: image {image['cocoid']} of split {split!r} has no sentence")
    media = f"{image['filepath']}/{image['filename']}"
    items.append(Item({"id": str(image["cocoid"]), "captions": captions}, [(media, {})]))
  return items, None


IMPORTERS: dict[str, Callable[..., tuple[list[Item], list[str] | None]]] = {
    "msrvtt": msrvtt,
    "kinetics400": kinetics400,
    "ssv2": ssv2,
    "activitynet_captions": activitynet_captions,
    "youcook2": youcook2,
    "pope": pope,
    "coco_karpathy": coco_karpathy,
}
# Importer-specific options: keyword argument -> (command-line flag, the importers that read it).
IMPORTER_OPTIONS = {
    "labels": ("--labels", ("ssv2",)),
    "granularity": ("--granularity", ("activitynet_captions", "youcook2")),
}


def _listed(ids: Sequence[str]) -> str:
  return ", ".join(ids[:MAX_LISTED]) + (" ..." if len(ids) > MAX_LISTED else "")


def import_benchmark(name: str, annotations: str, media_root: str, split: str | None = None,
                     labels: str | None = None, granularity: str | None = None) -> Imported:
  """The benchmark's items with their media found under `media_root`; missing ones listed, not
  dropped; invalid ones (`Item.dropped`) counted by reason and never looked up."""
  if name not in IMPORTERS:
    raise AnnotationError(f"unknown benchmark {name!r}; expected one of {sorted(IMPORTERS)}")
  for flag, path in (("--annotations", annotations), ("--labels", labels)):
    if path is not None and not os.path.exists(path):
      raise AnnotationError(f"{name}: {flag} {path} does not exist")
  options = {"labels": labels, "granularity": granularity}
  for keyword, value in options.items():
    flag, readers = IMPORTER_OPTIONS[keyword]
    if value is not None and name not in readers:
      raise AnnotationError(f"{name}: {flag} is read by {list(readers)} only")
  items, label_names = IMPORTERS[name](annotations, split,
                                       **{k: v for k, v in options.items() if v is not None})
  records, missing, dropped = [], [], {}
  for item in items:
    if item.dropped is not None:
      dropped.setdefault(item.dropped, []).append(item.record["id"])
      continue
    found = next(((path, extra) for path, extra in item.candidates
                  if os.path.isfile(os.path.join(media_root, *path.split("/")))), None)
    if found is None:
      missing.append(item.record["id"])
      continue
    path, extra = found
    records.append({"media": path, **item.record, **extra})
  return Imported(records, missing, label_names, dropped)


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
  parser.add_argument("--granularity", choices=GRANULARITIES,
                      help=f"activitynet_captions, youcook2: one of {list(GRANULARITIES)} "
                      "(default segment: one record per timed sentence; paragraph: one per video)")
  args = parser.parse_args(argv)
  try:
    imported = import_benchmark(args.name, args.annotations, args.media_root, args.split, args.labels,
                                args.granularity)
  except (AnnotationError, KeyError, ValueError, json.JSONDecodeError) as error:
    detail = f"missing key {error}" if isinstance(error, KeyError) else str(error)
    prefix = "" if detail.startswith(f"{args.name}:") else f"{args.name}: "  # most messages name it already
    print(f"error: {prefix}{detail}", file=sys.stderr)
    return 1
  for reason, ids in imported.dropped.items():
    print(f"{len(ids)} record(s) dropped: {reason}: {_listed(ids)}")
  listed = _listed(imported.missing)
  if imported.missing and not args.skip_missing:
    print(f"error: {len(imported.missing)} record(s) have no media under {args.media_root}: {listed}; nothing "
          "written (--skip-missing leaves them out)", file=sys.stderr)
    print(f"wrote nothing to {args.output} ({len(imported.missing)} missing media)")
    return 1
  results.write_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in imported.records))
  if args.label_names_out and imported.label_names is not None:
    results.write_atomic(args.label_names_out, "".join(name + "\n" for name in imported.label_names))
  if imported.missing:
    print(f"{len(imported.missing)} record(s) skipped: missing media: {listed}")
  notes = [f"{len(imported.missing)} skipped: missing media"] if imported.missing else []
  notes += [f"{len(ids)} dropped: {reason}" for reason, ids in imported.dropped.items()]
  print(f"wrote {len(imported.records)} records to {args.output}" + (f" ({'; '.join(notes)})" if notes else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
