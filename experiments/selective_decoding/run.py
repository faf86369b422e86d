"""Selective decoding benchmark (paper §4.6) on the embedded long streams, with a demo-trained model.

    python -m vljepa_jax.main --config=configs/demo.py --workdir=/tmp/vljepa_demo   # train first
    python experiments/selective_decoding/run.py --workdir=/tmp/vljepa_demo [--num_streams=16]

For uniform decoding at several rates and adaptive (Ward) decoding at several segment counts,
each ground-truth annotation of a stream is matched to the decode nearest in time and scored with
CIDEr-D (`vljepa_jax.eval.stream_decoding`). Writes, next to this file:
  results.json   every curve point and the summary (the reduction factor at matched quality)
  results.md     the table
  curve.png      CIDEr-D against decodes per second, uniform vs adaptive (and online)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax

from vljepa_jax.eval import results as results_lib
from vljepa_jax.eval import stream_decoding
from vljepa_jax.train import checkpointing
from vljepa_jax.train import config_base
from vljepa_jax.train import evaluation
from vljepa_jax.train import model_setup
from vljepa_jax.train import param_layout as param_layout_lib
from vljepa_jax.train import sharding
from vljepa_jax.train import stages as stages_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RATES = (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.025)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/vljepa_demo", help="a finished demo run (configs/demo.py)")
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.py"))
  parser.add_argument("--num_streams", type=int, default=16)
  parser.add_argument("--duration_s", type=float, default=180.0)
  parser.add_argument("--pooling", default="mean", choices=("mean", "midpoint"))
  parser.add_argument("--online_thresholds", default="0.02,0.05,0.1,0.2,0.3",
                      help="variance thresholds of the online trigger (unit-norm embeddings)")
  parser.add_argument("--output", default=HERE)
  return parser.parse_args()


class Trained:
  """The last stage of a finished run of `config_file` in `workdir`: its config, model and parameters."""

  def __init__(self, config_file: str, workdir: str):
    config = config_base.sibling_config(config_file, os.path.splitext(os.path.basename(config_file))[0]).get_config()
    self.name, self.stage_config = stages_lib.resolve(config)[-1]
    self.stage_dir = os.path.join(workdir, self.name)
    if not evaluation.checkpoint_steps(self.stage_dir):
      sys.exit(f"error: no checkpoints in {self.stage_dir}/checkpoints; train first:\n  python -m vljepa_jax.main "
               f"--config={os.path.relpath(config_file, REPO)} --workdir={workdir}")
    self.mesh = sharding.make_mesh(dict(config.mesh))
    self.setup = model_setup.build(config, cache_dir=workdir)
    self.params, self.step = checkpointing.restore_params(
        self.stage_dir, param_layout_lib.param_layout(self.stage_config, self.setup, self.mesh))

  def evaluators(self, specs: dict) -> dict:
    """Evaluators built from `specs` (name -> evaluator config), sharing one set of compiled prediction functions."""
    with self.stage_config.unlocked():
      self.stage_config.evals = specs
    return evaluation.Evaluation(self.stage_config, self.setup, self.mesh).evaluators


def main():
  args = parse_args()
  trained = Trained(args.config, args.workdir)
  name, step, stage_config = trained.name, trained.step, trained.stage_config
  spec = dict(stage_config.evals.selective_decoding)
  spec.update(streams={**dict(spec["streams"]), "num_streams": args.num_streams, "duration_s": args.duration_s},
              uniform_rates_hz=RATES, adaptive_rates_hz=RATES, pooling=args.pooling, report_curve=True,
              online_thresholds=tuple(float(t) for t in args.online_thresholds.split(",") if t))
  evaluator = trained.evaluators({"selective_decoding": spec})["selective_decoding"]
  params = trained.params
  start = time.time()
  print(f"{len(evaluator.streams)} streams of {args.duration_s:g} s from {trained.stage_dir} (step {step}); embedding and "
        "decoding ...", flush=True)
  curves, _ = evaluator.curves(params)
  # The paper's reference is uniform decoding at 1 Hz; every uniform rate is a reference here too.
  summaries = []
  for rate in sorted({c.setting for c in curves if c.strategy == "uniform"}, reverse=True):
    summary = stream_decoding.summarize(curves, rate)
    summary.pop("_reference_setting", None)
    summaries.append(summary)
  summary = summaries[0]
  elapsed = time.time() - start
  os.makedirs(args.output, exist_ok=True)
  record = {"workdir": args.workdir, "stage": name, "step": step, "num_streams": len(evaluator.streams),
            "num_annotations": sum(len(s.annotation_captions) for s in evaluator.streams),
            "duration_s": args.duration_s, "pooling": args.pooling, "seconds": elapsed, "summary": summary,
            "summaries": summaries,
            "curves": [vars(c) for c in curves], "devices": str(jax.devices()[0].device_kind)}
  results_lib.write_json_atomic(os.path.join(args.output, "results.json"), record)
  results_lib.write_atomic(os.path.join(args.output, "results.md"), table(record))
  plot(curves, summaries, os.path.join(args.output, "curve.png"))
  print(table(record))
  print(f"wrote {args.output}/results.json, results.md, curve.png ({elapsed:.0f} s)")


def table(record) -> str:
  lines = [f"{record['num_streams']} streams x {record['duration_s']:g} s, {record['num_annotations']} annotations, "
           f"pooling={record['pooling']}, model {record['workdir']} ({record['stage']}:{record['step']})", "",
           "| strategy | setting | decodes/s | CIDEr-D |", "|---|---|---|---|"]
  for c in sorted(record["curves"], key=lambda c: (c["strategy"], -c["decodes_per_second"])):
    lines.append(f"| {c['strategy']} | {c['setting']:g} | {c['decodes_per_second']:.3f} | {c['cider_d']:.3f} |")
  lines += ["", "Matched quality: the adaptive rate whose CIDEr-D (interpolated) equals uniform decoding at each rate.",
            "", "| uniform decodes/s | uniform CIDEr-D | adaptive decodes/s at equal CIDEr-D | reduction factor |",
            "|---|---|---|---|"]
  for s in record["summaries"]:
    rate, factor = s["adaptive_rate_matching_reference"], s["reduction_factor"]
    matched = "not reached" if rate != rate else f"{rate:.3f}" + (" (lowest measured)" if s["reduction_factor_is_bound"]
                                                                  else "")
    lines.append(f"| {s['reference_decodes_per_s']:.3f} | {s['reference_cider_d']:.3f} | {matched} | "
                 + ("–" if factor != factor else f"{factor:.2f}x" + (" (at least)" if s["reduction_factor_is_bound"]
                                                                       else "")) + " |")
  return "\n".join(lines) + "\n"


def plot(curves, summaries, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
  for strategy, style in (("uniform", "o-"), ("adaptive", "s-"), ("online", "^--")):
    points = sorted((c.decodes_per_second, c.cider_d) for c in curves if c.strategy == strategy)
    if points:
      ax.plot(*zip(*points), style, label=strategy)
  matched = [s for s in summaries if s and s["reduction_factor"] == s["reduction_factor"]]
  if matched:
    best = matched[0]  # the highest uniform rate that adaptive decoding matches
    ax.axhline(best["reference_cider_d"], color="grey", lw=0.8, ls=":")
    ax.axvline(best["adaptive_rate_matching_reference"], color="grey", lw=0.8, ls=":")
    ax.set_title(f"adaptive matches uniform {best['reference_decodes_per_s']:.2f}/s at "
                 f"{best['adaptive_rate_matching_reference']:.3f}/s ({best['reduction_factor']:.2f}x fewer decodes)",
                 fontsize=9)
  ax.set_xscale("log")
  ax.set_xlabel("decodes per second")
  ax.set_ylabel("CIDEr-D (annotations vs nearest decode)")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  results_lib.write_figure(fig, path)


if __name__ == "__main__":
  main()
