"""Text <-> video retrieval with several captions per video.

Every video (visual input + the retrieval query, `data.default_query`) is scored against every
caption of the evaluated records (`Predictions.score_candidates`; for VL-JEPA the cosine of Ŝ_Y
and the Y-encoder's S_Y), giving one (videos x captions) matrix. Text -> video: each caption ranks all videos
and hits when its own video is within the top K. Video -> text: each video ranks all captions
and hits when any of its captions is within the top K. Ties count against the model
(`metrics.ranks`). Captions come from the source records (`captions`, else `caption`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics
from vljepa_jax.eval import predictions as predictions_lib


class Retrieval(evaluator.Evaluator):
  OPTIONS = {"ks": (1, 5, 10), "directions": ("t2v", "v2t")}
  REQUIRES = ("score_candidates",)

  def captions(self) -> tuple[list[str], np.ndarray]:
    """Every caption of the source's records, and the record each belongs to."""
    source = self.source()
    texts, owner = [], []
    for index in range(len(source)):
      record = source[index]
      captions = [c for c in record.get("captions") or () if c and c.strip()] or [record.get("caption")]
      if not captions[0]:
        raise ValueError(f"evals.{self.name}: record {index} of {source!r} has no caption")
      texts += captions
      owner += [index] * len(captions)
    return texts, np.asarray(owner, np.int64)

  def run(self, params: Any) -> dict[str, float]:
    if len(self.data.sources) != 1:
      raise ValueError(f"evals.{self.name}: retrieval reads one source, got {len(self.data.sources)}")
    all_texts, all_owners = self.captions()
    scored = self.predictions.score_candidates(params, self.batches(), predictions_lib.Candidates(
        [[t] for t in all_texts]), self.target_tokenizer)
    # Only the captions of videos that were evaluated (the pipeline skips unreadable records).
    row_of_record = {int(index): row for row, index in enumerate(scored.source_index)}
    kept = np.array([int(o) in row_of_record for o in all_owners])
    texts = [t for t, keep in zip(all_texts, kept) if keep]
    owner = np.array([row_of_record[int(o)] for o in all_owners[kept]], np.int64)
    scores = scored.scores[:, kept].T  # (num_captions, num_videos)
    num_videos = len(scored.source_index)
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
