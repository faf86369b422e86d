"""The demo VL-JEPA with each predictor backbone, side by side: Llama (attention) vs Mamba-3 (state space).

    python experiments/predictor_backbones/run.py [--backbones=llama,mamba3] [--steps=200] [--workdir=/tmp/vljepa_backbones]

Trains `configs/demo.py`'s image and video stages once per backbone, switching nothing but
`--config.model.predictor.backbone` (Mamba-3's config is matched to the demo Llama's width, depth,
vocabulary and MLP size: `predictor_backbones.matched_config`), with `--steps` steps per stage,
and evaluates both with the same evaluators on the same held-out data (zero-shot classification,
text-to-video retrieval, VQA, inverse dynamics, and hard negatives, which read only the text side:
the frozen Y-encoder and its trained head). Writes next to this file:
  results.json   {"backbones": {NAME: {"predictor_parameters", "train_seconds", "samples_per_second",
                  "metrics": {task: {metric: value}}}}, "steps_per_stage", "command", "seconds"}
  results.md     the side-by-side table
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# The metrics the table shows: (task, metric, label).
SHOWN = (("zero_shot_actions", "top1", "zero-shot top-1"), ("zero_shot_actions", "top5", "zero-shot top-5"),
         ("text_to_video", "t2v_R@1", "t2v R@1"), ("text_to_video", "v2t_R@1", "v2t R@1"),
         ("vqa", "accuracy", "VQA accuracy"), ("inverse_dynamics", "accuracy", "inverse dynamics"),
         ("hard_negatives", "accuracy", "hard negatives (text side only)"))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbones", default="llama,mamba3")
  parser.add_argument("--steps", type=int, default=200, help="training steps of each stage (image, video)")
  parser.add_argument("--workdir", default="/tmp/vljepa_backbones")
  parser.add_argument("--output", default=HERE)
  return parser.parse_args(argv)


def train_command(backbone: str, steps: int, workdir: str) -> list[str]:
  return [sys.executable, "-m", "vljepa_jax.main", "--config=configs/demo.py:image,video", f"--workdir={workdir}",
          f"--config.model.predictor.backbone={backbone}", f"--config.stages.image.total_steps={steps}",
          f"--config.stages.video.total_steps={steps}"]


def final_metrics(workdir: str) -> dict:
  """The evaluations of the last recorded step (`eval_results.json`)."""
  with open(os.path.join(workdir, "eval_results.json")) as f:
    results = json.load(f)
  last = max(results, key=int)
  return results[last]["tasks"]


def throughput(workdir: str) -> float:
  """Median samples per second of the logged video-stage steps (`metrics.jsonl`)."""
  path = os.path.join(workdir, "video", "metrics.jsonl")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  values = [r["samples_per_second"] for r in rows if "samples_per_second" in r]
  return float(np.median(values[1:] or values)) if values else float("nan")


def predictor_parameters(backbone: str) -> int:
  sys.path.insert(0, REPO)
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import vljepa  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import config_base  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = config_base.sibling_config(os.path.join(REPO, "configs", "demo.py"), "demo").get_config("image,video")
  model = vljepa.VLJEPAConfig.from_dict(config.model.to_dict())
  predictor = model.predictor
  matched = predictor_backbones.matched_config(backbone, predictor.backbone_config)
  module = vljepa.VLJEPA(model.replace(predictor=predictor.replace(backbone=backbone, backbone_config=matched)))
  video = jnp.zeros((1, config.data.num_frames, config.data.crop_size, config.data.crop_size, 3))
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), video, ids, ids, ids, ids))["params"]
  return int(sum(np.prod(x.value.shape if hasattr(x, "value") else x.shape)
                 for x in jax.tree.leaves(shapes["predictor"], is_leaf=lambda x: hasattr(x, "value"))))


def markdown(results: dict) -> str:
  names = list(results["backbones"])
  lines = [f"| | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
  rows = [("predictor parameters", lambda r: f"{r['predictor_parameters']:,}"),
          ("run time, training and evaluation (s)", lambda r: f"{r['train_seconds']:.0f}"),
          ("video-stage samples/s", lambda r: f"{r['samples_per_second']:.1f}")]
  for task, metric, label in SHOWN:
    rows.append((label, lambda r, t=task, m=metric: f"{r['metrics'].get(t, {}).get(m, float('nan')):.3f}"))
  for label, cell in rows:
    lines.append(f"| {label} | {' | '.join(cell(results['backbones'][n]) for n in names)} |")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  results = {"backbones": {}, "steps_per_stage": args.steps, "command": " ".join(["python"] + sys.argv)}
  for backbone in [b for b in args.backbones.split(",") if b]:
    workdir = os.path.join(args.workdir, backbone)
    command = train_command(backbone, args.steps, workdir)
    print(f"[{backbone}] {' '.join(command[1:])}", flush=True)
    began = time.time()
    subprocess.run(command, cwd=REPO, check=True)
    results["backbones"][backbone] = {
        "predictor_parameters": predictor_parameters(backbone), "train_seconds": time.time() - began,
        "samples_per_second": throughput(workdir), "metrics": final_metrics(workdir)}
  results["seconds"] = time.time() - start
  os.makedirs(args.output, exist_ok=True)
  with open(os.path.join(args.output, "results.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  print(write_markdown(results, args.output), flush=True)


def write_markdown(results: dict, output: str) -> str:
  """Writes `results.md` from the results (a saved `results.json` can be re-rendered without training)."""
  table = markdown(results)
  with open(os.path.join(output, "results.md"), "w") as f:
    f.write(f"# Predictor backbones on the demo ({results['steps_per_stage']} steps per stage)\n\n"
            f"`{results['command']}`\n\n{table}\n")
  return table


if __name__ == "__main__":
  main()
