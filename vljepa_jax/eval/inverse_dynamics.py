"""Inverse dynamics (WorldPrediction-WM, paper §4.3): which action turns the initial state into the final one?

Each item has an initial and a final state image and K candidate action clips (K = 4 in the
benchmark), exactly one of which leads from the first state to the second. Following the paper,
the two state images are duplicated and concatenated into one clip (frames [0, T // 2) show the
initial state, frames [T // 2, T) the final one, T = data.num_frames, so the change sits where
the embedded dataset's events switch) and mapped to Ŝ_Y with the query `state_query`; every
candidate clip is mapped to Ŝ_Y with `action_query`. The prediction is the candidate nearest
(cosine) to the state embedding; it is correct when the true candidate is strictly nearer than
every other (ties count against the model, as in `metrics.ranks`). Metrics: `accuracy`,
`chance_accuracy` (the mean of 1 / K), `num_samples`.

Options:
  state_query, action_query   the predictor's query for each kind of clip (default: data.default_query)
  source   where the items come from:
    {"type": "shapes", "size": 256, "seed": 1000, **ShapesConfig fields}   (the default)
        `shapes.make_state_action_item`, rendered at data.crop_size with data.num_frames frames
        unless `image_size` / `num_frames` say otherwise;
    {"type": "manifest", "path": "items.jsonl", "media_root": None}
        a JSONL file, one item per line:
          {"id": "item-0", "initial": "states/0_a.png", "final": "states/0_b.png",
           "candidates": ["clips/0_0.mp4", "clips/0_1/", "clips/0_2.mp4", "clips/0_3.mp4"],
           "answer": 2}
        `initial`/`final` are image files; each candidate is a video file, a single image, or
        a directory of frame images (taken in name order, numbers compared as numbers);
        relative paths are under `media_root` (default: the manifest's folder); `answer` is the
        0-based index of the true candidate; `id` is optional (default: the line number).
        Media are decoded by `media.load_frames` with the data's num_frames, crop_size and
        short_side (videos and frame directories sampled uniformly to T frames).

The whole manifest is validated when the evaluator is built, so a malformed line fails before any
compilation, naming the file and line; media that cannot be read fail the run naming the item.

Batching: the clips of all items are flattened into rows (item, slot), slot 0 the state clip and
slot k the k-th candidate, and streamed in fixed-size batches of the layout `Embedder.visual_query`
expects (padding rows `valid=False`), so the jitted forward compiles once and only one batch of
decoded clips is in host memory at a time. `source_index` carries the item and `label` the slot
(k >= 1 on candidate rows; -1 - answer on the state row, so the true candidate travels with the
embeddings and an item is generated once): that is how rows are matched up again after the
embedder drops padding and gathers processes.
"""
from __future__ import annotations

import concurrent.futures
import functools
import itertools
import json
import os
import re
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from vljepa_jax.data import media
from vljepa_jax.data import pipeline
from vljepa_jax.data import shapes
from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics

MANIFEST_FORMAT = ('one JSON object per line: {"id": str (optional), "initial": image path, "final": image path, '
                   '"candidates": [video file, image or frame-directory paths], "answer": index of the true candidate}')
_MANIFEST_KEYS = {"id", "initial", "final", "candidates", "answer"}
SHAPES_DEFAULTS = {"size": 256, "seed": 1000}


def _natural_key(name: str) -> list[Any]:
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class ShapesItems:
  """`shapes.make_state_action_item` items: arrays for the states and K = 4 candidate clips."""

  def __init__(self, spec: Mapping[str, Any], data: pipeline.DataConfig):
    spec = {**SHAPES_DEFAULTS, **spec}
    self.size, self.seed = int(spec.pop("size")), int(spec.pop("seed"))
    if self.size < 1 or self.seed < 0:
      raise ValueError(f"inverse dynamics source: size must be >= 1 and seed >= 0, got {self.size}, {self.seed}")
    fields = set(shapes.ShapesConfig.__dataclass_fields__)
    unknown = sorted(set(spec) - fields)
    if unknown:
      raise ValueError(f"inverse dynamics source 'shapes': unknown key(s) {unknown}; expected size, seed or "
                       f"ShapesConfig fields {sorted(fields)}")
    # Rendered at the evaluation's resolution and clip length unless told otherwise: no resampling.
    spec.setdefault("image_size", data.crop_size)
    spec.setdefault("num_frames", data.num_frames)
    self.config = shapes.ShapesConfig(**spec)
    # A batch decodes each item once; the cache spares regenerating one whose rows straddle two batches.
    self.item = functools.lru_cache(maxsize=2)(self._item)

  def __len__(self) -> int:
    return self.size

  def num_candidates(self, index: int) -> int:
    return 4

  def _item(self, index: int) -> dict[str, Any]:
    item = shapes.make_state_action_item(self.config, self.seed, index)
    return {"id": f"shapes-state-action-{self.seed}-{index}", "initial": item["initial"], "final": item["final"],
            "candidates": list(item["candidates"]), "answer": int(item["answer"])}

  def __repr__(self) -> str:
    return f"ShapesItems(size={self.size}, seed={self.seed}, {self.config})"


class ManifestItems:
  """Items of an inverse-dynamics JSONL manifest (see the module docstring), validated up front."""

  def __init__(self, path: str | os.PathLike, media_root: str | os.PathLike | None = None):
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"inverse dynamics manifest {self.path!r} does not exist; expected a JSONL file, "
                              + MANIFEST_FORMAT)
    root = os.fspath(media_root) if media_root is not None else os.path.dirname(os.path.abspath(self.path))
    self._items = []
    with open(self.path, encoding="utf-8") as f:
      for line_number, line in enumerate(f, start=1):
        if line.strip():
          self._items.append(self._parse(line, f"{self.path}:{line_number}", root))
    if not self._items:
      raise ValueError(f"inverse dynamics manifest {self.path!r} has no items; expected {MANIFEST_FORMAT}")

  @staticmethod
  def _parse(line: str, where: str, root: str) -> dict[str, Any]:
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); expected {MANIFEST_FORMAT}") from None
    if not isinstance(entry, dict):
      raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}; expected {MANIFEST_FORMAT}")
    unknown, missing = sorted(set(entry) - _MANIFEST_KEYS), sorted(_MANIFEST_KEYS - {"id"} - set(entry))
    if unknown or missing:
      raise ValueError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}; expected {MANIFEST_FORMAT}")
    candidates, answer = entry["candidates"], entry["answer"]
    paths_ok = all(isinstance(entry[k], str) and entry[k] for k in ("initial", "final"))
    if not (paths_ok and isinstance(candidates, list) and len(candidates) >= 2
            and all(isinstance(c, str) and c for c in candidates)):
      raise ValueError(f"{where}: 'initial' and 'final' must be paths and 'candidates' a list of at least 2 "
                       f"paths; expected {MANIFEST_FORMAT}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(candidates):
      raise ValueError(f"{where}: 'answer' must be an int index into the {len(candidates)} candidates, got {answer!r}")
    resolve = lambda p: os.path.abspath(os.path.join(root, p))  # absolute paths pass through join unchanged
    return {"id": str(entry.get("id", where)), "initial": resolve(entry["initial"]), "final": resolve(entry["final"]),
            "candidates": [resolve(c) for c in candidates], "answer": answer}

  def __len__(self) -> int:
    return len(self._items)

  def num_candidates(self, index: int) -> int:
    return len(self._items[index]["candidates"])

  def item(self, index: int) -> dict[str, Any]:
    return self._items[index]

  def __repr__(self) -> str:
    return f"ManifestItems({self.path!r}, len={len(self)})"


SOURCE_TYPES = {"shapes": ShapesItems, "manifest": ManifestItems}


class InverseDynamics(evaluator.Evaluator):
  OPTIONS = {"source": {"type": "shapes"}, "state_query": None, "action_query": None}

  def __init__(self, name: str, config: Mapping[str, Any], **kwargs: Any):
    super().__init__(name, config, **kwargs)
    if self.data.num_frames < 2:
      raise ValueError(f"evals.{name}: inverse dynamics needs data.num_frames >= 2 (the state clip shows the "
                       f"initial and the final state), got {self.data.num_frames}")
    spec = dict(self.options["source"])
    kind = spec.pop("type", "shapes")
    if kind == "shapes":
      self.items = ShapesItems(spec, self.data)
    elif kind == "manifest":
      if "path" not in spec or not set(spec) <= {"path", "media_root"}:
        raise ValueError(f"evals.{name}.source: a manifest source takes 'path' and optionally 'media_root', got "
                         f"{sorted(spec)}; the file holds {MANIFEST_FORMAT}")
      self.items = ManifestItems(**spec)
    else:
      raise ValueError(f"evals.{name}.source.type={kind!r}; expected one of {sorted(SOURCE_TYPES)}")
    default = self.data.default_query
    queries = [self.options["state_query"], self.options["action_query"]]
    self.queries = self.query_tokenizer([default if q is None else q for q in queries])  # rows: state, action

  def load(self, media_item: Any) -> np.ndarray:
    """One clip or image -> uint8 (T, S, S, 3) as the pipeline would decode it (`media.load_frames`)."""
    data = self.data
    if isinstance(media_item, str) and os.path.isdir(media_item):
      names = sorted((n for n in os.listdir(media_item) if not n.startswith(".")), key=_natural_key)
      if not names:
        raise media.BadSample(media.MISSING_FILE, f"frame directory {media_item} is empty")
      chosen = media.sample_frame_indices(len(names), data.num_frames)
      frames = {i: self.load_image(os.path.join(media_item, names[i])) for i in set(chosen.tolist())}
      return np.concatenate([frames[i] for i in chosen.tolist()])
    return media.load_frames(media_item, data.num_frames, crop_size=data.crop_size, short_side=data.short_side)[0]

  def load_image(self, image: Any) -> np.ndarray:
    """One image -> uint8 (1, S, S, 3)."""
    return media.load_frames(image, 1, crop_size=self.data.crop_size, short_side=self.data.short_side)[0]

  def clip(self, item: Mapping[str, Any], slot: int) -> np.ndarray:
    """Slot `slot` of an item as uint8 (T, S, S, 3): slot 0 the state clip, slot k the k-th candidate."""
    try:
      if slot > 0:
        return self.load(item["candidates"][slot - 1])
      half = self.data.num_frames // 2
      initial, final = self.load_image(item["initial"]), self.load_image(item["final"])
      return np.concatenate([np.repeat(initial, half, axis=0), np.repeat(final, self.data.num_frames - half, axis=0)])
    except media.BadSample as e:
      what = "the state images" if slot == 0 else f"candidate {slot - 1}"
      raise ValueError(f"evals.{self.name}: item {item['id']!r} of {self.items!r}: cannot read {what}: "
                       f"{e.reason}: {e.detail}") from None

  def batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Every (item, slot) row in fixed-size padded batches; each process builds its own slice."""
    rows = [(i, slot) for i in range(len(self.items)) for slot in range(1 + self.items.num_candidates(i))]
    process_count, process_index = jax.process_count(), jax.process_index()
    local = pipeline.per_process_batch_size(self.batch_size, process_count)
    data = self.data

    def decode(job: tuple[int, list[tuple[int, int]]]) -> tuple[int, list[np.ndarray]]:
      item = self.items.item(job[0])  # fetched once: other threads' items may evict it from the cache
      return item["answer"], [self.clip(item, slot) for _, slot in job[1]]

    # Decoding (video files, rendering) dominates on the host; one thread per item of a batch, so an
    # item is generated once and its clips are decoded in parallel with other items'.
    with concurrent.futures.ThreadPoolExecutor(max(1, data.num_threads)) as pool:
      for start in range(0, len(rows), self.batch_size):
        mine = rows[start + process_index * local:start + (process_index + 1) * local]
        jobs = [(i, [(r, slot) for r, (_, slot) in group])
                for i, group in itertools.groupby(enumerate(mine), key=lambda row: row[1][0])]
        video = np.zeros((local, data.num_frames, data.crop_size, data.crop_size, 3), np.uint8)
        label, index = np.zeros(local, np.int32), np.zeros(local, np.int64)
        for (i, slots), (answer, clips) in zip(jobs, pool.map(decode, jobs)):
          for (r, slot), clip in zip(slots, clips):
            video[r], index[r], label[r] = clip, i, slot if slot else -1 - answer
        which = (label > 0).astype(np.int32)  # the state query for state rows, the action query for candidates
        yield {"video": media.normalize(video) if data.video_dtype == "float32" else video,
               "query_ids": self.queries[0][which], "query_mask": self.queries[1][which],
               "valid": np.arange(local) < len(mine), "label": label, "source_index": index}

  def embeddings(self, params: Any) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Per item: the state's Ŝ_Y (N, D), the candidates' Ŝ_Y [(K_i, D)], and the true candidate (N,)."""
    out, info = self.embedder.visual_query(params, self.batches())
    label = info["label"]
    slots = np.maximum(label, 0)  # state rows (label < 0) are slot 0
    row = {(int(i), int(s)): r for r, (i, s) in enumerate(zip(info["source_index"], slots))}
    counts = [self.items.num_candidates(i) for i in range(len(self.items))]
    if len(row) != len(out) or len(out) != len(counts) + sum(counts):
      raise RuntimeError(f"evals.{self.name}: got {len(out)} embeddings ({len(row)} distinct rows) for "
                         f"{len(counts) + sum(counts)} clips")
    state_rows = [row[i, 0] for i in range(len(counts))]
    candidates = [out[[row[i, k] for k in range(1, counts[i] + 1)]] for i in range(len(counts))]
    return out[state_rows], candidates, (-1 - label[state_rows]).astype(np.int64)

  def run(self, params: Any) -> dict[str, float]:
    states, candidates, answers = self.embeddings(params)
    states = evaluator.normalize(states)
    width = max(len(c) for c in candidates)
    scores = np.full((len(states), width), -np.inf, np.float32)  # absent candidates never win
    for i, clips in enumerate(candidates):
      scores[i, :len(clips)] = evaluator.normalize(clips) @ states[i]
    positives = np.arange(width)[None, :] == answers[:, None]
    correct = metrics.ranks(scores, positives) == 1
    return {"accuracy": float(np.mean(correct)),
            "chance_accuracy": float(np.mean([1.0 / len(c) for c in candidates])),
            "num_samples": int(len(states))}
