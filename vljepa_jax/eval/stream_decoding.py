"""Selective decoding on long video streams: how few decodes keep the captions right (paper §2, §4.6).

The predictor runs over sliding windows of a long video, giving a stream of Ŝ_Y, one per step.
A captioning system must turn that stream into text; decoding every step is wasteful because
meaning changes slowly. Strategies compared at equal decoding rates (decodes per second):

  uniform    one decode every 1/rate seconds (contiguous blocks of steps, decoded at their middle)
  adaptive   Ward clustering with temporal connectivity into N = rate x duration contiguous segments
             (`selective_decoding.ward_segments`), decoded at each segment's midpoint
  online     decode when the variance of the embeddings since the last decode exceeds a threshold
             (`selective_decoding.online_trigger`); its rate is whatever the threshold gives

A decode reads the segment's mean embedding (`pooling: "mean"`, which the paper finds helps both
strategies) or the embedding at the midpoint (`"midpoint"`). Each ground-truth annotation
(time t_i, caption y_i) is matched to the decode nearest in time, and CIDEr-D is computed over all
matched pairs. The reduction factor is how many times fewer decodes adaptive needs to match
uniform decoding at `reference_rate_hz` (the paper: adaptive at 0.35 Hz matches uniform at 1 Hz,
≈2.85x), read off the adaptive curve by linear interpolation.

How the stream of Ŝ_Y is made (option `stream_mode`):

  window     (default) the model reads a sliding window of `window` frames, `frame_stride` raw
             frames apart, every `step` raw frames; each step costs a whole clip's forward, and
             Ŝ_Y is stamped at the window's centre.
  recurrent  a streaming predictor (causal Mamba-3, query pooling: `VLJEPA.stream_step`) reads
             each frame once: every step feeds its next k frames (`x_encoder_chunk_frames`),
             `frame_stride` raw frames apart, into a carried state and reads the query from it,
             at constant cost and memory per step. To emit as often as the window mode (every
             `step` raw frames), k x frame_stride / step phase-shifted streams run side by side,
             each sampling the video at the training clips' frame spacing. Ŝ_Y is stamped where a
             window ending at the same frame would be centred, so both modes' embeddings at a time
             have seen the same latest frames. `reset_every` (steps; None: never) empties every
             state periodically, bounding how much history a model trained on short clips carries.

Streams (option `streams`; `data/streams.py` reads them): the embedded dataset's
`shapes.LongStream`s (one event per 4-30 s segment, captioned at its midpoint), or a JSONL
manifest of real videos with timed captions, one line per video, sampled with PyAV at `fps`:

    {"id": "v1", "media": "videos/v1.mp4", "annotations": [[12.5, "cut the onion"], [30.0, "..."]]}
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np

from vljepa_jax.data import media
from vljepa_jax.data import pipeline
from vljepa_jax.data import streams as streams_lib
from vljepa_jax.eval import captioning
from vljepa_jax.eval import cider
from vljepa_jax.eval import evaluator
from vljepa_jax.eval import predictions as predictions_lib
from vljepa_jax.eval import selective_decoding

def window_starts(num_frames: int, window: int, frame_stride: int, step: int) -> np.ndarray:
  """First frame of each sliding window; the last windows are clamped to the stream's end."""
  span = (window - 1) * frame_stride
  return np.arange(0, max(num_frames - span, 1), step)


@dataclasses.dataclass
class Curve:
  strategy: str
  setting: float  # the requested rate (Hz) or the online threshold
  decodes_per_second: float
  cider_d: float


def _segments_uniform(num_steps: int, every: float) -> np.ndarray:
  """Labels of contiguous blocks of `every` steps (the uniform strategy's segments)."""
  return np.minimum((np.arange(num_steps) / every).astype(np.int64), max(int(math.ceil(num_steps / every)) - 1, 0))


def _segments_from_indices(num_steps: int, decodes: np.ndarray) -> np.ndarray:
  """Online decodes start segments: step t belongs to the last decode at or before t."""
  return np.searchsorted(decodes, np.arange(num_steps), side="right") - 1


def decode_points(embeddings: np.ndarray, labels: np.ndarray, pooling: str) -> tuple[np.ndarray, np.ndarray]:
  """(step index, embedding) of each segment's decode: its midpoint, with the mean or the midpoint embedding."""
  mids = selective_decoding.segment_midpoints(labels)
  if pooling == "mean":
    return mids, selective_decoding.segment_means(embeddings, labels).astype(np.float32)
  return mids, embeddings[mids]


class SelectiveDecoding(evaluator.Evaluator):
  """Decodes vs CIDEr-D for uniform, adaptive (Ward) and online decoding of embedding streams."""

  OPTIONS = {"streams": {"type": "shapes"}, "stream_mode": "window", "reset_every": None, "window": None,
             "frame_stride": 2, "step": 1, "query": None,
             "pooling": "mean", "uniform_rates_hz": (2.0, 1.0, 0.5, 0.35, 0.25, 0.1, 0.05),
             "adaptive_rates_hz": (1.0, 0.5, 0.35, 0.25, 0.1, 0.05), "online_window": 8,
             "online_thresholds": (), "reference_rate_hz": 1.0, "max_new_tokens": None, "beam_size": 1,
             "report_curve": True}

  REQUIRES = ("embed_visual_query", "text_decoder")  # decodes (means of) predictions along a stream
  STREAM_MODES = ("window", "recurrent")

  def __init__(self, name, config, predictions, context):
    mode = dict(config).get("stream_mode", self.OPTIONS["stream_mode"])
    if mode not in self.STREAM_MODES:
      raise ValueError(f"evals.{name}.stream_mode={mode!r}; expected one of {self.STREAM_MODES}")
    super().__init__(name, config, predictions, context)
    opts = self.options
    if opts["pooling"] not in ("mean", "midpoint"):
      raise ValueError(f"evals.{name}.pooling={opts['pooling']!r}; expected 'mean' or 'midpoint'")
    if mode != "recurrent" and opts["reset_every"] is not None:
      raise ValueError(f"evals.{name}.reset_every applies to stream_mode='recurrent' only (got {mode!r})")
    if mode == "recurrent":
      try:
        self.frames_per_step = int(predictions.stream_frames_per_step())
      except ValueError as e:
        raise ValueError(f"evals.{name}.stream_mode='recurrent': {e}") from None
      reset = opts["reset_every"]
      if reset is not None and (isinstance(reset, bool) or not isinstance(reset, int) or reset < 1):
        raise ValueError(f"evals.{name}.reset_every={reset!r}; expected None (never) or a positive number of steps")
      span, step = self.frames_per_step * int(opts["frame_stride"]), int(opts["step"])
      if span % step:
        raise ValueError(f"evals.{name}.step={step}: stream_mode='recurrent' emits every `step` raw frames with "
                         f"(frames per step {self.frames_per_step} x frame_stride {opts['frame_stride']}) / step "
                         f"phase-shifted streams, so step must divide {span}")
    self.streams = streams_lib.make_streams(opts["streams"], self.data, f"evals.{name}.streams")
    self.window = int(opts["window"] or self.data.num_frames)
    self.query = self.query_tokenizer([opts["query"] if opts["query"] is not None else self.data.default_query])
    self.decoder = predictions.text_decoder(
        self.target_tokenizer, max_new_tokens=int(opts["max_new_tokens"] or self.data.target_length),
        beam_size=int(opts["beam_size"]), batch_size=self.batch_size)

  def requires(self) -> tuple[str, ...]:
    if self.options["stream_mode"] == "recurrent":
      return ("embed_stream", "text_decoder")
    return self.REQUIRES

  # --- the embedding streams ---------------------------------------------------------------------

  def _rows(self) -> list[tuple[int, int]]:
    opts = self.options
    return [(s, int(start)) for s, stream in enumerate(self.streams)
            for start in window_starts(stream.num_frames, self.window, int(opts["frame_stride"]), int(opts["step"]))]

  def batches(self):
    """Every (stream, window) clip in fixed-size padded batches; each process builds its own slice."""
    rows = self._rows()
    stride = int(self.options["frame_stride"])
    local = pipeline.per_process_batch_size(self.batch_size, jax.process_count())
    data = self.data

    def clip(row):
      s, start = row
      stream = self.streams[s]
      return stream.frames(np.minimum(start + stride * np.arange(self.window), stream.num_frames - 1))

    with concurrent.futures.ThreadPoolExecutor(max(1, data.num_threads)) as pool:
      for begin in range(0, len(rows), self.batch_size):
        mine = rows[begin + jax.process_index() * local:begin + (jax.process_index() + 1) * local]
        video = np.zeros((local, self.window, data.crop_size, data.crop_size, 3), np.uint8)
        label, index = np.zeros(local, np.int32), np.zeros(local, np.int64)
        for r, (row, frames) in enumerate(zip(mine, pool.map(clip, mine))):
          video[r], label[r], index[r] = frames, row[0], row[1]
        yield {"video": media.normalize(video) if data.video_dtype == "float32" else video,
               "query_ids": np.repeat(self.query[0], local, 0), "query_mask": np.repeat(self.query[1], local, 0),
               "valid": np.arange(local) < len(mine), "label": label, "source_index": index}

  def stream_embeddings(self, params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stream: (times (T,) in seconds of each window's centre, Ŝ_Y (T, D)), in time order."""
    if self.options["stream_mode"] == "recurrent":
      return self.recurrent_embeddings(params)
    out, info = self.predictions.embed_visual_query(params, self.batches())
    centre = (self.window - 1) * int(self.options["frame_stride"]) / 2
    result = []
    for s, stream in enumerate(self.streams):
      rows = np.flatnonzero(info["label"] == s)
      rows = rows[np.argsort(info["source_index"][rows], kind="stable")]
      result.append(((info["source_index"][rows] + centre) / stream.fps, out[rows]))
    return result

  def recurrent_rows(self) -> tuple[list[tuple[int, int]], int]:
    """The phase-shifted streams as (stream, first raw frame) rows, and the raw frames one step advances."""
    stride, step = int(self.options["frame_stride"]), int(self.options["step"])
    span = self.frames_per_step * stride
    return [(s, p * step) for s in range(len(self.streams)) for p in range(span // step)], span

  def recurrent_embeddings(self, params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """`stream_embeddings` of the recurrent mode: each frame read once, the state carried (module docstring)."""
    stride, k = int(self.options["frame_stride"]), self.frames_per_step
    rows, span = self.recurrent_rows()
    # Row r's step i reads raw frames first + (i k + j) stride, j < k; its Ŝ_Y counts once its last frame exists.
    last_frame = lambda first, i: first + ((i + 1) * k - 1) * stride
    steps = [max(0, (self.streams[s].num_frames - 1 - last_frame(first, 0)) // span + 1) for s, first in rows]
    local = pipeline.per_process_batch_size(self.batch_size, jax.process_count())
    data = self.data
    per_stream = [([], []) for _ in self.streams]
    centre = (self.window - 1) * stride / 2

    def chunk(row, i):
      s, first = row
      stream = self.streams[s]
      return stream.frames(np.minimum(first + (i * k + np.arange(k)) * stride, stream.num_frames - 1))

    with concurrent.futures.ThreadPoolExecutor(max(1, data.num_threads)) as pool:
      for begin in range(0, len(rows), self.batch_size):
        group = rows[begin:begin + self.batch_size]
        mine = group[jax.process_index() * local:(jax.process_index() + 1) * local]
        num_steps = max(steps[begin:begin + len(group)])

        def frames(mine=mine, num_steps=num_steps):
          for i in range(num_steps):
            video = np.zeros((local, k, data.crop_size, data.crop_size, 3), np.uint8)
            for r, clip in enumerate(pool.map(lambda row: chunk(row, i), mine)):
              video[r] = clip
            yield media.normalize(video) if data.video_dtype == "float32" else video

        query_ids, query_mask = (np.repeat(q, local, 0) for q in self.query)
        out = self.predictions.embed_stream(params, frames(), query_ids, query_mask,  # (steps, batch, D)
                                            self.options["reset_every"])
        for r, (s, first) in enumerate(group):
          n = steps[begin + r]
          per_stream[s][0].extend((last_frame(first, i) - centre) / self.streams[s].fps for i in range(n))
          per_stream[s][1].extend(out[:n, r])
    result = []
    for stream, (times, embeddings) in zip(self.streams, per_stream):
      if not times:
        raise ValueError(f"stream {stream.name!r} has {stream.num_frames} frames, fewer than one recurrent step "
                         f"({k} frames {stride} apart)")
      order = np.argsort(np.asarray(times), kind="stable")
      result.append((np.asarray(times)[order], np.stack(embeddings)[order]))
    return result

  # --- strategies --------------------------------------------------------------------------------

  def plans(self, streams: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[tuple[str, float], list[np.ndarray]]:
    """(strategy, setting) -> per stream, the labels of its decode segments."""
    opts = self.options
    plans = {}
    for rate in opts["uniform_rates_hz"]:
      plans["uniform", float(rate)] = [
          _segments_uniform(len(t), max(1.0, 1.0 / (rate * _step_seconds(t)))) for t, _ in streams]
    for rate in opts["adaptive_rates_hz"]:
      plans["adaptive", float(rate)] = [
          selective_decoding.ward_segments(e, int(np.clip(round(rate * _duration(t)), 1, len(t)))) for t, e in streams]
    for threshold in opts["online_thresholds"]:
      plans["online", float(threshold)] = [
          _segments_from_indices(len(e), selective_decoding.online_trigger(
              predictions_lib.normalize(e), int(opts["online_window"]), float(threshold))) for _, e in streams]
    return plans

  def curves(self, params: Any, streams: Sequence[tuple[np.ndarray, np.ndarray]] | None = None
             ) -> tuple[list[Curve], dict[str, Any]]:
    """Every strategy's (decodes per second, CIDEr-D), plus the matched texts of the reference rate.

    `streams`: `stream_embeddings(params)` if already computed (a benchmark times it on its own).
    """
    streams = self.stream_embeddings(params) if streams is None else streams
    plans = self.plans(streams)
    # All decodes of all strategies in one batched pass of the Y-decoder.
    points, embeddings = {}, []
    for key, labels_per_stream in plans.items():
      points[key] = []
      for (times, emb), labels in zip(streams, labels_per_stream):
        mids, decode_emb = decode_points(emb, labels, self.options["pooling"])
        points[key].append((times[mids], len(embeddings), len(mids)))
        embeddings.extend(decode_emb)
    texts = self.decoder(params, np.stack(embeddings))
    gts = {(s, a): [c] for s, stream in enumerate(self.streams) for a, c in enumerate(stream.annotation_captions)}
    total_seconds = sum(_duration(t) for t, _ in streams)
    curves, matched = [], {}
    for key, per_stream in points.items():
      res = {}
      for s, (decode_times, offset, count) in enumerate(per_stream):
        nearest = selective_decoding.nearest_decode(self.streams[s].annotation_times, decode_times)
        for a, j in enumerate(nearest):
          res[s, a] = [texts[offset + int(j)]]
      score, _ = cider.cider_d(gts, res)
      decodes = sum(count for _, _, count in per_stream)
      curves.append(Curve(key[0], key[1], decodes / total_seconds, score))
      matched[key] = res
    return curves, {"gts": gts, "matched": matched}

  def run(self, params: Any) -> dict[str, Any]:
    curves, extra = self.curves(params)
    result = {}
    if self.options["report_curve"]:
      for c in curves:
        tag = f"{c.strategy}_{c.setting:g}"
        result[f"{tag}/cider_d"] = c.cider_d
        result[f"{tag}/decodes_per_s"] = c.decodes_per_second
    result.update(summarize(curves, self.options["reference_rate_hz"]))
    if "reference_cider_d" in result:
      gts = extra["gts"]
      ref_setting = result.pop("_reference_setting")
      texts = [extra["matched"]["uniform", ref_setting][k][0] for k in gts]
      result["chance_reference_cider_d"] = captioning.caption_scores(texts, [gts[k] for k in gts])["chance_cider_d"]
    result["num_streams"] = len(self.streams)
    result["num_annotations"] = sum(len(s.annotation_captions) for s in self.streams)
    return result


def summarize(curves: Sequence[Curve], reference_rate_hz: float) -> dict[str, Any]:
  """The uniform decode nearest `reference_rate_hz`, the adaptive rate that matches its CIDEr-D, and their ratio.

  `reduction_factor_is_bound` is 1 when even the lowest adaptive rate measured matches the
  reference: the factor is then only a lower bound (measure lower rates to pin it down).
  """
  uniform = [c for c in curves if c.strategy == "uniform"]
  adaptive = [c for c in curves if c.strategy == "adaptive"]
  if not uniform or not adaptive:
    return {}
  ref = min(uniform, key=lambda c: abs(c.setting - reference_rate_hz))
  rate = matching_rate(adaptive, ref.cider_d)
  lowest = min(c.decodes_per_second for c in adaptive)
  return {"_reference_setting": ref.setting, "reference_cider_d": ref.cider_d,
          "reference_decodes_per_s": ref.decodes_per_second, "adaptive_rate_matching_reference": rate,
          "reduction_factor": ref.decodes_per_second / rate if rate > 0 else float("nan"),
          "reduction_factor_is_bound": int(rate == lowest)}


def matching_rate(adaptive: Sequence[Curve], target: float) -> float:
  """The lowest decoding rate at which the adaptive curve reaches `target` CIDEr-D.

  Linear interpolation between measured rates, walking down from the highest one; NaN if even the
  highest rate falls short.
  """
  points = sorted((c.decodes_per_second, c.cider_d) for c in adaptive)
  if not points or points[-1][1] < target:  # the walk starts at the highest rate: it must reach the target
    return float("nan")
  best = points[-1][0]
  for (r0, s0), (r1, s1) in zip(reversed(points[:-1]), reversed(points[1:])):
    if s1 < target:
      break
    if s0 >= target:
      best = r0
      continue
    best = r0 + (target - s0) * (r1 - r0) / (s1 - s0)  # s0 < target <= s1
    break
  return best


def _step_seconds(times: np.ndarray) -> float:
  return float(times[1] - times[0]) if len(times) > 1 else 1.0


def _duration(times: np.ndarray) -> float:
  return float(len(times) * _step_seconds(times))
