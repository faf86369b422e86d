"""The paper's ablations (§4.8, Table 7) at laptop scale, one command, one table beside the paper's.

    python experiments/ablations/run.py [--workdir=W] [--size=tiny|default] [--seed=S] [--groups=a,b,c,d]
        [--config.KEY=VALUE ...]

Every cell is `configs/vljepa_ablation.py:base=demo,AXIS=VALUE` (the same axes as the paper-scale
ablations, on the demo's video stage and the embedded dataset; that file's docstring says what
each axis means at this scale) trained from scratch for the size's steps and evaluated on Table
7's three columns: zero-shot action classification top-1, text-to-video R@1 and VQA accuracy, on
held-out clips (another generator seed). The groups:

  (a) pretraining: without (the base run) and with the demo's image stage first;
  (b) the Y-encoder's (MiniLM's) learning-rate multiplier: 0.05 (base), 1, 0.1, 0.01, 0 (frozen);
  (c) the loss, with the Y-encoder and its head frozen: InfoNCE, cosine, L1, L2, and SigLIP as an
      extra row;
  (d) the predictor: which layers of the source language model (4:8 of 8, the base, as the paper's
      8-16 of 16; then 0:1, 0:2, 0:4, 0:8 as the paper's 0-2, 0-4, 0-8, 0-16), causal attention,
      and a random initialisation.

No pretrained ViT or Llama installs offline, so the runner first trains what the paper downloads:
the X-encoder is the ViT of the demo's image stage, exported as a converted folder and frozen in
every run (as V-JEPA 2 is); the "language model" the predictor's layers come from is the
token-space baseline's 8-layer decoder (`objective="tokens"`, models/token_vlm.py) trained on the
same clips, its layers exported as converted Llama slices (`export_slice`). Unlike Llama it has
read these captions (conditioned on the clips), so "LM initialisation" here is an in-domain
initialisation: a stronger one than the paper's.

The base run is trained once and is the default row of (a), (b) and (d), as in the paper. It is
also trained with a second seed (the "seed" row), so that a difference can be read against the
run-to-run spread. Writes, next to this file unless --output says otherwise:
  results.json  {"rows": [{"group", "setting", "arg", "ours": {...}, "paper": {...}}, ...], "command", "seconds", ...}
  results.md    the table: ours and the paper's, each with its delta to the group's default row
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from vljepa_jax.convert import checkpoint as converted
from vljepa_jax.eval import results as results_lib
from vljepa_jax.train import checkpointing
from vljepa_jax.train import config_base
from vljepa_jax.train import model_setup
from vljepa_jax.train import overrides
from vljepa_jax.train import param_layout
from vljepa_jax.train import sharding
from vljepa_jax.train import stages as stages_lib
from vljepa_jax.train import trainer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIGS = os.path.join(REPO, "configs")
ablation = config_base.sibling_config(os.path.join(CONFIGS, "demo.py"), "vljepa_ablation")
demo = config_base.sibling_config(os.path.join(CONFIGS, "demo.py"), "demo")

SIZES = {
    # steps/batch_size: every cell; source_steps: the token-baseline language model; image_steps: the
    # image stage (every run's X-encoder, and (a)'s pretrained model); eval_clips: held-out clips per evaluator.
    "tiny": {"steps": 30, "batch_size": 16, "source_steps": 30, "image_steps": 30, "eval_clips": 64},
    "default": {"steps": 200, "batch_size": 64, "source_steps": 300, "image_steps": 300, "eval_clips": 512},
}
METRICS = (("cls", "zero_shot_actions", "top1"), ("ret", "text_to_video", "t2v_R@1"), ("vqa", "vqa", "accuracy"))
# (group, setting, ablation arg after "base=demo", the paper's Table 7 row as (cls, ret, vqa), or None).
# The first row of each group is its default, against which deltas are taken.
ROWS = (
    ("a", "without pretraining (base)", "", (27.3, 30.2, 42.5)),
    ("a", "with pretraining (the image stage)", "pretrain=on", (49.0, 47.5, 46.1)),
    ("b", "Y-encoder LR x0.05 (base)", "", (27.3, 30.2, 42.5)),
    ("b", "x1.00", "y_lr=1", (23.7, 28.8, 40.7)),
    ("b", "x0.10", "y_lr=0.1", (26.9, 30.2, 42.9)),
    ("b", "x0.01", "y_lr=0.01", (25.6, 27.7, 41.0)),
    ("b", "x0 (frozen)", "y_lr=0", (20.0, 25.9, 41.4)),
    ("c", "InfoNCE (frozen Y-encoder, no head)", "loss=infonce", (23.3, 30.3, 44.3)),
    ("c", "cosine", "loss=cosine", (16.5, 20.2, 46.6)),
    ("c", "L1", "loss=l1", (14.8, 15.5, 41.9)),
    ("c", "L2", "loss=l2", (13.5, 11.7, 43.7)),
    ("c", "SigLIP (extra)", "loss=siglip", None),
    ("d", "layers 4:8 of 8 (base; paper 8-16 of 16)", "", (27.3, 30.2, 42.5)),
    ("d", "layers 0:1 (paper 0-2)", "layers=0:1", (24.3, 27.8, 40.1)),
    ("d", "layers 0:2 (paper 0-4)", "layers=0:2", (25.1, 28.9, 43.6)),
    ("d", "layers 0:4 (paper 0-8)", "layers=0:4", (27.2, 29.3, 43.4)),
    ("d", "layers 0:8 (paper 0-16)", "layers=0:8", (27.4, 31.0, 45.5)),
    ("d", "causal", "causal=on", (26.7, 31.2, 40.6)),
    ("d", "random init", "llama_init=off", (28.1, 30.4, 40.6)),
)
GROUPS = ("a", "b", "c", "d")
GROUP_NAMES = {"a": "(a) pretraining", "b": "(b) Y-encoder LR multiplier", "c": "(c) loss",
               "d": "(d) predictor", "seed": "run-to-run spread"}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/vljepa_ablations")
  parser.add_argument("--size", default="default", choices=sorted(SIZES))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--groups", default=",".join(GROUPS), help=f"some of {','.join(GROUPS)}")
  parser.add_argument("--output", default=HERE)
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)} (config overrides are --config.KEY=VALUE)")
  args.groups = tuple(g for g in args.groups.split(",") if g)
  bad = [g for g in args.groups if g not in GROUPS]
  if bad or not args.groups:
    parser.error(f"--groups={','.join(args.groups)}: expected some of {','.join(GROUPS)}")
  args.config_overrides = rest
  return args


def sized(config, size: dict, seed: int, steps: int, config_overrides=(), **values):
  """`config` (a stage config of the demo) at the size: steps, batch, held-out clips, seed, then the overrides."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
    config.batch_size = size["batch_size"]
    config.total_steps = steps
    config.checkpoint_every = steps
    config.keep_checkpoints = 1
    config.log_every = max(1, steps // 4)
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 4)
    for stage in config.stages.values():
      for key in ("total_steps", "batch_size"):
        if key in stage:
          del stage[key]
    for spec in config.evals.values():
      for source in spec.get("data", {}).get("sources", {}).values():
        source.size = size["eval_clips"]
    for path, value in values.items():
      overrides.set_path(config, path, value)
  for path, value in overrides.parse_against(config, list(config_overrides), "config", "config").items():
    overrides.set_path(config, path, value)
  return config


def train_source_lm(size: dict, seed: int, workdir: str, config_overrides):
  """The token-space baseline of the demo (8-layer causal decoder) on the training clips: the predictor's 'Llama'."""
  config = sized(demo.get_config("video"), size, seed, size["source_steps"], config_overrides,
                 objective="tokens", evals={})
  print(f"[source LM] token baseline, {size['source_steps']} steps", flush=True)
  trainer.run(config, workdir)
  return config


def train_image_stage(size: dict, seed: int, workdir: str, config_overrides):
  """The demo's image stage: the pretrained X-encoder of every run, and (a)'s pretrained model."""
  config = sized(demo.get_config("image"), size, seed, size["image_steps"], config_overrides, evals={})
  print(f"[image stage] {size['image_steps']} steps", flush=True)
  trainer.run(config, workdir)
  return config


def trained_params(config, workdir: str, stage: str):
  """(the model of `config`'s only stage, its trained parameters on the host, the step) of run `workdir`."""
  stage_config = stages_lib.resolve(config)[0][1]
  setup = model_setup.build(stage_config, workdir)
  layout = param_layout.param_layout(stage_config, setup, sharding.make_mesh(dict(stage_config.mesh)))
  params, step = checkpointing.restore_params(os.path.join(workdir, stage), layout)
  return setup.model, jax.device_get(params), step


def export_converted(output: str, family: str, tower_config, params, source: str) -> str:
  """A tower as a converted folder of `family` (what `python -m vljepa_jax.convert` writes), atomically."""
  with converted.atomic_directory(output, overwrite=True) as tmp:
    converted.save(tmp, family=family, config=tower_config.to_dict(), params=params, source=source)
  return output


def export_slice(model, params, step: int, start: int, stop: int, output: str) -> str:
  """Layers [start, stop) of the token baseline's decoder as a converted Llama slice (as `--layers START:STOP`)."""
  decoder = params["decoder"]
  sliced = {k: v for k, v in decoder.items() if not k.startswith("layers_")}
  sliced.update({f"layers_{i}": decoder[f"layers_{start + i}"] for i in range(stop - start)})
  return export_converted(output, "llama", model.config.decoder.slice_layers(start, stop), sliced,
                          f"token-baseline decoder (step {step}), layers {start}:{stop}")


def ablation_arg(arg: str) -> str:
  return ",".join(["base=demo"] + ([arg] if arg else []))


def cell_config(arg: str, size: dict, seed: int, pretrained: dict, config_overrides):
  """The cell's config with its placeholders replaced by what the runner trained (`pretrained`)."""
  config = ablation.get_config(ablation_arg(arg))
  values = {}
  if config.init.predictor:
    values["init.predictor"] = pretrained["slices"][ablation.parse(ablation_arg(arg))["layers"]]
  if config.init.x_encoder:
    values["init.x_encoder"] = pretrained["x_encoder"]
  if config.init.checkpoint:
    values["init.checkpoint"] = pretrained["image_stage"]
  return sized(config, size, seed, size["steps"], config_overrides, **values)


def last_evaluation(workdir: str) -> dict:
  with open(os.path.join(workdir, "eval_results.json")) as f:
    results = json.load(f)
  tasks = results[max(results, key=int)]["tasks"]
  return {name: tasks[task][key] for name, task, key in METRICS}


def run(args) -> dict:
  size = SIZES[args.size]
  rows = [r for r in ROWS if r[0] in args.groups]
  cells = list(dict.fromkeys([""] + [arg for _, _, arg, _ in rows]))  # each distinct run once, the base first
  image_workdir = os.path.join(args.workdir, "image")
  image = train_image_stage(size, args.seed, image_workdir, args.config_overrides)
  model, params, step = trained_params(image, image_workdir, "image")
  pretrained = {"image_stage": os.path.join(image_workdir, "image"), "slices": {},
                "x_encoder": export_converted(os.path.join(image_workdir, "x_encoder"), "vjepa2",
                                              model.config.x_encoder, params["x_encoder"],
                                              f"the demo's image stage (step {step}), X-encoder")}
  layers = {ablation.parse(ablation_arg(a))["layers"] for a in cells if ablation.get_config(ablation_arg(a)).init.predictor}
  if layers:
    source_workdir = os.path.join(args.workdir, "source_lm")
    source = train_source_lm(size, args.seed, source_workdir, args.config_overrides)
    model, params, step = trained_params(source, source_workdir, "video")
    for start, stop in sorted(layers):
      pretrained["slices"][(start, stop)] = export_slice(model, params, step, start, stop,
                                                         os.path.join(source_workdir, f"layers_{start}_{stop}"))
  results = {}
  runs = [(arg, args.seed) for arg in cells] + [("", args.seed + 1)]  # the base again: the run-to-run spread
  for arg, seed in runs:
    name = f"{arg.replace('=', '_').replace(':', '_') or 'base'}_seed{seed}"
    print(f"[{name}] {size['steps']} steps of {size['batch_size']}", flush=True)
    cell_dir = os.path.join(args.workdir, name)
    trainer.run(cell_config(arg, size, seed, pretrained, args.config_overrides), cell_dir)
    results[(arg, seed)] = last_evaluation(cell_dir)
    print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[(arg, seed)].items()), flush=True)
  table_rows = [{"group": group, "setting": setting, "arg": arg, "ours": results[(arg, args.seed)],
                 "paper": dict(zip(("cls", "ret", "vqa"), paper)) if paper else None}
                for group, setting, arg, paper in rows]
  table_rows += [{"group": "seed", "setting": f"base, seed {seed}", "arg": "", "ours": results[("", seed)],
                  "paper": None} for seed in (args.seed, args.seed + 1)]
  return {"rows": table_rows}


def with_deltas(rows: list[dict]) -> list[dict]:
  """Each row's delta to its group's first row (the default), ours and the paper's."""
  defaults = {}
  out = []
  for row in rows:
    default = defaults.setdefault(row["group"], row)
    delta = lambda side: ({k: row[side][k] - default[side][k] for k in row[side]}
                          if row[side] and default[side] else None)
    out.append({**row, "ours_delta": delta("ours"), "paper_delta": delta("paper")})
  return out


def table(record) -> str:
  lines = [f"Ablations at laptop scale ({record['size']}: {record['steps']} steps of {record['batch_size']} per "
           f"cell, seed {record['seed']}, {record['eval_clips']} held-out clips, {record['devices']}). "
           "Ours: classification top-1, text-to-video R@1, VQA accuracy, as fractions; the paper's Table 7 in %. "
           "Deltas are to the group's first row.", "",
           "| group | setting | cls | ret | VQA | Δ cls | Δ ret | Δ VQA | paper cls / ret / VQA | paper Δ |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda d, k: f"{d[k]:+.3f}" if d else ""
  for row in record["rows"]:
    ours, delta, paper, paper_delta = row["ours"], row["ours_delta"], row["paper"], row["paper_delta"]
    paper_cell = f"{paper['cls']:.1f} / {paper['ret']:.1f} / {paper['vqa']:.1f}" if paper else "—"
    paper_delta_cell = (f"{paper_delta['cls']:+.1f} / {paper_delta['ret']:+.1f} / {paper_delta['vqa']:+.1f}"
                        if paper_delta else "")
    lines.append(f"| {GROUP_NAMES[row['group']]} | {row['setting']} | {ours['cls']:.3f} | {ours['ret']:.3f} | "
                 f"{ours['vqa']:.3f} | {fmt(delta, 'cls')} | {fmt(delta, 'ret')} | {fmt(delta, 'vqa')} | "
                 f"{paper_cell} | {paper_delta_cell} |")
  lines += ["", f"Command: `{record['command']}` ({record['seconds']:.0f} s)."]
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = parse_args(argv)
  size = SIZES[args.size]
  start = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  record = run(args)
  command = " ".join(["python experiments/ablations/run.py", f"--workdir={args.workdir}", f"--size={args.size}",
                      f"--seed={args.seed}", f"--groups={','.join(args.groups)}", *args.config_overrides])
  record = {"rows": with_deltas(record["rows"]), "command": command, "seconds": time.time() - start,
            "size": args.size, "seed": args.seed, "groups": list(args.groups), **size,
            "devices": str(jax.devices()[0].device_kind)}
  os.makedirs(args.output, exist_ok=True)
  results_lib.write_json_atomic(os.path.join(args.output, "results.json"), record)
  results_lib.write_atomic(os.path.join(args.output, "results.md"), table(record))
  print(table(record))
  print(f"wrote {args.output}/results.json, results.md ({record['seconds']:.0f} s)")


if __name__ == "__main__":
  sys.exit(main())
