"""Selective decoding with a streaming predictor: the recurrent stream mode against sliding windows.

    python experiments/selective_decoding/streaming.py [--workdir=/tmp/vljepa_streaming] [--num_streams=16]

trains the model first (`python -m vljepa_jax.main --config=configs/demo_streaming.py --workdir=...`,
every stage of the demo) unless the workdir holds a finished run.

One trained model (`configs/demo_streaming.py`: a causal Mamba-3 predictor that pools the query, an
X-encoder that reads one tubelet at a time), the same long streams, and two ways of turning a
video into a stream of Ŝ_Y (`eval/stream_decoding.py`, option `stream_mode`):

  window     every `step` raw frames the model reads the last `window` frames afresh (what an
             attention predictor must do): each Ŝ_Y costs a whole clip's forward;
  recurrent  every frame is read once: each step feeds the next frames into a carried state and
             reads the query from it, at constant cost and memory per step.

For each mode: the analytic forward FLOPs per raw frame of video (`models/flops.py`: X-encoder and
predictor per emitted Ŝ_Y, divided by the raw frames between emissions), the measured wall time per
raw frame of computing the Ŝ_Y stream (compiled beforehand; the frames are rendered on the same
cores, in both modes alike), the recurrent state per stream, and the selective-decoding curves
(CIDEr-D of uniform and adaptive decoding at the same rates, `run.py`'s protocol). Writes, next to
this file: streaming_results.json, streaming_results.md and streaming_curve.png.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax

import run as run_lib  # this folder's run.py: the trained run, rates and the matched-quality summary
from vljepa_jax.eval import results as results_lib
from vljepa_jax.eval import stream_decoding
from vljepa_jax.models import flops
from vljepa_jax.models import vljepa
from vljepa_jax.train import config_base
from vljepa_jax.train import evaluation
from vljepa_jax.train import stages as stages_lib

HERE = os.path.dirname(os.path.abspath(__file__))


def variants(resets: str) -> dict[str, dict]:
  """Variant label -> the evaluator options it sets: both stream modes, then the recurrent one reset every R steps."""
  out = {"window": {"stream_mode": "window"}, "recurrent": {"stream_mode": "recurrent"}}
  for r in (int(r) for r in resets.split(",") if r):
    out[f"recurrent, reset every {r}"] = {"stream_mode": "recurrent", "reset_every": r}
  return out


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/vljepa_streaming", help="a finished run of --config")
  parser.add_argument("--config", default=os.path.join(run_lib.REPO, "configs", "demo_streaming.py"))
  parser.add_argument("--num_streams", type=int, default=16)
  parser.add_argument("--duration_s", type=float, default=180.0)
  parser.add_argument("--resets", default="1,2,4,8",
                      help="also run the recurrent mode emptying its state every R steps, for each R (diagnostic)")
  parser.add_argument("--output", default=HERE)
  return parser.parse_args()


def flops_per_raw_frame(model_config, evaluator, mode: str) -> float:
  """Forward FLOPs (X-encoder + predictor) per raw frame of video in `mode`."""
  data = evaluator.data
  frames = evaluator.window if mode == "window" else evaluator.frames_per_step
  per_emission = flops.forward_flops(model_config, num_frames=frames, crop_size=data.crop_size,
                                     query_length=data.query_length, target_length=data.target_length)
  return (per_emission["x_encoder"] + per_emission["predictor"]) / int(evaluator.options["step"])


def state_bytes_per_stream(model_config, evaluator) -> int:
  """Bytes of carried state per stream: one predictor state per phase-shifted sub-stream."""
  phases = len(evaluator.recurrent_rows()[0]) // len(evaluator.streams)
  state = vljepa.initial_stream_state(model_config, 1)
  return phases * sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))


def train_if_needed(config_file: str, workdir: str) -> None:
  """Trains `config_file` into `workdir` (the main job, every stage) unless its last stage has a checkpoint."""
  name = stages_lib.resolve(config_base.sibling_config(
      config_file, os.path.splitext(os.path.basename(config_file))[0]).get_config())[-1][0]
  if evaluation.checkpoint_steps(os.path.join(workdir, name)):
    return
  command = [sys.executable, "-m", "vljepa_jax.main", f"--config={config_file}", f"--workdir={workdir}"]
  print("no trained model in", workdir, "- training:", " ".join(command), flush=True)
  subprocess.run(command, check=True, cwd=run_lib.REPO)


def main():
  args = parse_args()
  train_if_needed(args.config, args.workdir)
  trained = run_lib.Trained(args.config, args.workdir)
  base = dict(trained.stage_config.evals.selective_decoding)
  streams = {**dict(base["streams"]), "num_streams": args.num_streams, "duration_s": args.duration_s}
  specs, labels = {}, variants(args.resets)
  for i, (label, options) in enumerate(labels.items()):
    spec = {**base, **options, "uniform_rates_hz": run_lib.RATES, "adaptive_rates_hz": run_lib.RATES,
            "pooling": "mean", "report_curve": True, "online_thresholds": ()}
    specs[f"v{i}"] = {**spec, "streams": streams}
    specs[f"warmup_v{i}"] = {**spec, "streams": {**streams, "num_streams": 1}}  # same batch shape: compiles
  evaluators = trained.evaluators(specs)
  model_config = trained.setup.model.config
  start = time.time()
  record = {"workdir": args.workdir, "config": os.path.relpath(args.config, run_lib.REPO), "stage": trained.name,
            "step": trained.step, "duration_s": args.duration_s, "devices": str(jax.devices()[0].device_kind),
            "modes": {}}
  for i, label in enumerate(labels):
    evaluator = evaluators[f"v{i}"]
    mode = evaluator.options["stream_mode"]
    evaluators[f"warmup_v{i}"].stream_embeddings(trained.params)
    raw_frames = sum(s.num_frames for s in evaluator.streams)
    print(f"{label}: embedding {len(evaluator.streams)} streams ({raw_frames} raw frames) ...", flush=True)
    begin = time.perf_counter()
    embedded = evaluator.stream_embeddings(trained.params)
    seconds = time.perf_counter() - begin
    curves, _ = evaluator.curves(trained.params, embedded)
    summaries = []
    for rate in sorted({c.setting for c in curves if c.strategy == "uniform"}, reverse=True):
      summary = stream_decoding.summarize(curves, rate)
      summary.pop("_reference_setting", None)
      summaries.append(summary)
    emissions = sum(len(t) for t, _ in embedded)
    record["modes"][label] = {
        "stream_mode": mode, "reset_every": evaluator.options["reset_every"],
        "embeddings_per_s_of_video": emissions / sum(s.num_frames / s.fps for s in evaluator.streams),
        "gflop_per_raw_frame": flops_per_raw_frame(model_config, evaluator, mode) / 1e9,
        "ms_per_raw_frame": 1e3 * seconds / raw_frames, "embedding_seconds": seconds,
        "state_kib_per_stream": state_bytes_per_stream(model_config, evaluator) / 1024 if mode == "recurrent"
                                else None,
        "num_streams": len(evaluator.streams),
        "num_annotations": sum(len(s.annotation_captions) for s in evaluator.streams),
        "curves": [vars(c) for c in curves], "summaries": summaries}
  record["seconds"] = time.time() - start
  record["command"] = (f"python experiments/selective_decoding/streaming.py --workdir={args.workdir} "
                       f"--num_streams={args.num_streams} --duration_s={args.duration_s:g} --resets={args.resets}")
  os.makedirs(args.output, exist_ok=True)
  results_lib.write_json_atomic(os.path.join(args.output, "streaming_results.json"), record)
  results_lib.write_atomic(os.path.join(args.output, "streaming_results.md"), table(record))
  plot(record, os.path.join(args.output, "streaming_curve.png"))
  print(table(record))
  print(f"wrote {args.output}/streaming_results.json, streaming_results.md, streaming_curve.png "
        f"({record['seconds']:.0f} s)")


def _cider(mode_record, strategy, setting):
  return next(c["cider_d"] for c in mode_record["curves"] if c["strategy"] == strategy and c["setting"] == setting)


def table(record) -> str:
  modes = record["modes"]
  first = next(iter(modes.values()))
  lines = [f"{first['num_streams']} streams x {record['duration_s']:g} s, {first['num_annotations']} annotations, "
           f"model {record['workdir']} ({record['config']}, {record['stage']}:{record['step']}), {record['devices']}",
           "", "| stream mode | Ŝ_Y per s of video | GFLOP per raw frame | ms per raw frame (measured) | "
           "state per stream | CIDEr-D, uniform 0.5/s | CIDEr-D, adaptive 0.1/s | adaptive rate matching uniform "
           "0.5/s |", "|---|---|---|---|---|---|---|---|"]
  for mode, m in modes.items():
    ref = next((s for s in m["summaries"] if abs(s["reference_decodes_per_s"] - 0.5) < 0.01), None)
    matched = "–" if ref is None or ref["adaptive_rate_matching_reference"] != ref["adaptive_rate_matching_reference"] \
        else f"{ref['adaptive_rate_matching_reference']:.3f}/s ({ref['reduction_factor']:.2f}x fewer)"
    state = "–" if m["state_kib_per_stream"] is None else f"{m['state_kib_per_stream']:.0f} KiB"
    lines.append(f"| {mode} | {m['embeddings_per_s_of_video']:.2f} | {m['gflop_per_raw_frame']:.4f} | "
                 f"{m['ms_per_raw_frame']:.2f} | {state} | {_cider(m, 'uniform', 0.5):.3f} | "
                 f"{_cider(m, 'adaptive', 0.1):.3f} | {matched} |")
  lines += ["", "CIDEr-D at each decoding rate (decodes per second of video):", "",
            "| strategy | rate | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
  for strategy in ("uniform", "adaptive"):
    for rate in run_lib.RATES:
      lines.append(f"| {strategy} | {rate:g} | " + " | ".join(f"{_cider(m, strategy, rate):.3f}" for m in modes.values())
                   + " |")
  lines += ["", f"Command: `{record['command']}` ({record['seconds']:.0f} s)."]
  return "\n".join(lines) + "\n"


def plot(record, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
  for (mode, m), colour in zip(record["modes"].items(), ("tab:blue", "tab:orange", "tab:green", "tab:red",
                                                         "tab:purple", "tab:brown", "tab:grey")):
    for strategy, style in (("uniform", "o-"), ("adaptive", "s--")):
      points = sorted((c["decodes_per_second"], c["cider_d"]) for c in m["curves"] if c["strategy"] == strategy)
      ax.plot(*zip(*points), style, color=colour, label=f"{mode}, {strategy}", ms=3)
  ax.set_xscale("log")
  ax.set_xlabel("decodes per second")
  ax.set_ylabel("CIDEr-D (annotations vs nearest decode)")
  ax.set_title("sliding windows vs a carried Mamba-3 state (same model, same streams)", fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=6)
  results_lib.write_figure(fig, path)


if __name__ == "__main__":
  main()
