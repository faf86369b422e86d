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
  source   where the items come from (`data/state_action_items.py` reads them):
    {"type": "shapes", "size": 256, "seed": 1000, **ShapesConfig fields}   (the default)
    {"type": "manifest", "path": "items.jsonl", "media_root": None}   one JSON item per line:
        {"id": "item-0", "initial": "states/0_a.png", "final": "states/0_b.png",
         "candidates": ["clips/0_0.mp4", "clips/0_1/", "clips/0_2.mp4", "clips/0_3.mp4"], "answer": 2}

The whole manifest is validated when the evaluator is built, so a malformed line fails before any
compilation, naming the file and line; media that cannot be read fail the run naming the item.

Batching: the clips of all items are flattened into rows (item, slot), slot 0 the state clip and
slot k the k-th candidate, and streamed in fixed-size batches of the layout `embed_visual_query`
expects (padding rows `valid=False`), so the jitted forward compiles once and only one batch of
decoded clips is in host memory at a time. `source_index` carries the item and `label` the slot
(k >= 1 on candidate rows; -1 - answer on the state row, so the true candidate travels with the
embeddings and an item is generated once): that is how rows are matched up again after the
embedder drops padding and gathers processes.
"""
from __future__ import annotations

import concurrent.futures
import itertools
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from vljepa_jax.data import media
from vljepa_jax.data import pipeline
from vljepa_jax.data import state_action_items
from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics
from vljepa_jax.eval import predictions as predictions_lib


class InverseDynamics(evaluator.Evaluator):
  OPTIONS = {"source": {"type": "shapes"}, "state_query": None, "action_query": None}
  REQUIRES = ("embed_visual_query",)  # the state clip's prediction is compared with the candidates'

  def __init__(self, name: str, config: Mapping[str, Any], predictions: Any, context: evaluator.EvalContext):
    super().__init__(name, config, predictions, context)
    if self.data.num_frames < 2:
      raise ValueError(f"evals.{name}: inverse dynamics needs data.num_frames >= 2 (the state clip shows the "
                       f"initial and the final state), got {self.data.num_frames}")
    self.items = state_action_items.make_items(self.options["source"], self.data, f"evals.{name}.source")
    default = self.data.default_query
    queries = [self.options["state_query"], self.options["action_query"]]
    self.queries = self.query_tokenizer([default if q is None else q for q in queries])  # rows: state, action

  def clip(self, item: Mapping[str, Any], slot: int) -> np.ndarray:
    """Slot `slot` of an item as uint8 (T, S, S, 3): slot 0 the state clip, slot k the k-th candidate."""
    try:
      return state_action_items.item_clip(item, slot, self.data)
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
    out, info = self.predictions.embed_visual_query(params, self.batches())
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
    states = predictions_lib.normalize(states)
    width = max(len(c) for c in candidates)
    scores = np.full((len(states), width), -np.inf, np.float32)  # absent candidates never win
    for i, clips in enumerate(candidates):
      scores[i, :len(clips)] = predictions_lib.normalize(clips) @ states[i]
    positives = np.arange(width)[None, :] == answers[:, None]
    correct = metrics.ranks(scores, positives) == 1
    return {"accuracy": float(np.mean(correct)),
            "chance_accuracy": float(np.mean([1.0 / len(c) for c in candidates])),
            "num_samples": int(len(states))}
