"""Text <-> video retrieval with several captions per video.

Videos are embedded as Ŝ_Y (visual input + the retrieval query, `data.default_query`), captions
as S_Y by the Y-encoder; similarity is the cosine. Text -> video: each caption ranks all videos
and hits when its own video is within the top K. Video -> text: each video ranks all captions
and hits when any of its captions is within the top K. Ties count against the model
(`metrics.ranks`). Captions come from the source records (`captions`, else `caption`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics


class Retrieval(evaluator.Evaluator):
  OPTIONS = {"ks": (1, 5, 10), "directions": ("t2v", "v2t")}

  def captions(self, source_indices: np.ndarray) -> tuple[list[str], np.ndarray]:
    """All captions of the given records, and the row (video) each belongs to."""
    source = self.source()
    texts, owner = [], []
    for row, index in enumerate(source_indices):
      record = source[int(index)]
      captions = [c for c in record.get("captions") or () if c and c.strip()] or [record.get("caption")]
      if not captions[0]:
        raise ValueError(f"evals.{self.name}: record {int(index)} of {source!r} has no caption")
      texts += captions
      owner += [row] * len(captions)
    return texts, np.asarray(owner, np.int64)

  def run(self, params: Any) -> dict[str, float]:
    if len(self.data.sources) != 1:
      raise ValueError(f"evals.{self.name}: retrieval reads one source, got {len(self.data.sources)}")
    videos, info = self.embedder.visual_query(params, self.batches())
    texts, owner = self.captions(info["source_index"])
    captions = self.embedder.texts(params, texts, self.target_tokenizer)
    scores = evaluator.normalize(captions) @ evaluator.normalize(videos).T  # (num_captions, num_videos)
    num_videos = len(videos)
    ks = [k for k in self.options["ks"] if k <= num_videos]
    result: dict[str, float] = {}
    for direction in self.options["directions"]:
      if direction == "t2v":
        recall = metrics.recall_at_k(scores, metrics.text_to_video_positives(owner, num_videos), ks)
        chance = {k: k / num_videos for k in ks}
      elif direction == "v2t":
        recall = metrics.recall_at_k(scores.T, metrics.video_to_text_positives(owner, num_videos), ks)
        per_video = len(texts) / num_videos  # chance of >= 1 of a video's captions in a random top k
        chance = {k: 1 - np.prod([(len(texts) - per_video - j) / (len(texts) - j) for j in range(k)]) for k in ks}
      else:
        raise ValueError(f"evals.{self.name}.directions: expected 't2v' and/or 'v2t', got {direction!r}")
      result.update({f"{direction}_{name}": value for name, value in recall.items()})
      result.update({f"{direction}_chance_R@{k}": float(c) for k, c in chance.items()})
    result["num_videos"] = num_videos
    result["num_captions"] = len(texts)
    return result
