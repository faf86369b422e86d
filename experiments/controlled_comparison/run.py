"""The paper's controlled comparison (§4.5, Figure 3): predicting embeddings vs predicting tokens.

    python experiments/controlled_comparison/run.py [--workdir=W] [--size=tiny|default] [--seed=S]
        [--token_lm=DIR] [--config.KEY=VALUE ...]

Two models trained with everything else held equal: the demo's video stage (`configs/demo.py:video`:
the embedded dataset's clips, the same X-encoder and visual projection, the same batch, optimizer,
schedule and steps), once with VL-JEPA's objective (bidirectional InfoNCE against the frozen
MiniLM's embeddings) and once with `config.objective="tokens"`: the token-space VLM whose decoder
is the predictor's Llama twice as deep, trained by next-token cross-entropy (`models/token_vlm.py`).

Both are evaluated at a log-spaced ladder of samples seen on the same held-out clips:
  * zero-shot action classification top-5 (the demo's class templates; VL-JEPA by cosine to the
    averaged template embeddings, the baseline by the mean per-token log-likelihood of the class's
    caption in the first template, the likelihood scorer's default: `eval/likelihood.py`);
  * captioning CIDEr-D: the baseline generates (greedy, KV cache); VL-JEPA decodes Ŝ_Y with a
    Y-decoder trained at that checkpoint for `ydecoder_steps` steps with everything else frozen
    (the demo's ydecoder stage: the paper's decoder is likewise fitted to a trained model).

Training runs in segments that resume one run (a warmup-then-constant learning rate, so the
segments equal one uninterrupted run). Writes, next to this file unless --output says otherwise:
  results.json   {"samples_seen": [...], "vljepa": {"cider_d": [...], "top5": [...]},
                  "tokens": {"cider_d": [...], "top5": [...]}, "trainable_params": {"vljepa": n, "tokens": n},
                  "command": str, "seconds": float, ...}
  results.md     the table
  curve.png      both metrics against samples seen (the analogue of the paper's Figure 3)

`--config.KEY=VALUE` overrides the base config (both models) before anything runs, e.g. a larger
`--config.batch_size` or `--config.data.sources...` on an accelerator. There, as in the paper,
VL-JEPA's predictor starts from a pretrained language model's last half
(`--config.init.predictor=<converted --layers 8:16>`) and the baseline from the whole of it:
`--token_lm=<the same model converted without --layers>` (the baseline refuses a slice).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from vljepa_jax.eval import results as results_lib
from vljepa_jax.train import config_base
from vljepa_jax.train import model_setup
from vljepa_jax.train import optimizer
from vljepa_jax.train import overrides
from vljepa_jax.train import sharding
from vljepa_jax.train import stages as stages_lib
from vljepa_jax.train import trainer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STAGE = "video"  # the demo stage both models train
# ladder: the steps at which both are evaluated (samples seen = step x batch_size).
SIZES = {
    "tiny": {"ladder": (25, 50, 100), "batch_size": 32, "ydecoder_steps": 60, "eval_clips": 128},
    "default": {"ladder": (50, 100, 200, 400, 800), "batch_size": 64, "ydecoder_steps": 150, "eval_clips": 256},
}
MODELS = ("vljepa", "tokens")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/vljepa_controlled_comparison")
  parser.add_argument("--size", default="default", choices=sorted(SIZES))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=HERE)
  parser.add_argument("--token_lm", default="",
                      help="converted whole language model the token baseline starts from (its init.predictor)")
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)} (config overrides are --config.KEY=VALUE)")
  args.config_overrides = rest
  return args


def base_config(size: dict, seed: int, config_overrides: list[str]):
  """The demo's video stage with the comparison's settings, shared by both models."""
  c = config_base.sibling_config(os.path.join(REPO, "configs", "demo.py"), "demo").get_config(STAGE)
  demo_evals = c.evals
  with c.unlocked():
    c.seed = seed
    c.batch_size = size["batch_size"]
    c.checkpoint_every = size["ladder"][0]
    c.keep_checkpoints = 2
    c.log_every = max(1, size["ladder"][0] // 2)
    # Warmup, then constant: training to each rung in turn equals one uninterrupted run.
    c.optimizer.schedule = "warmup_constant"
    c.optimizer.warmup_steps = size["ladder"][0] // 2
    held_out = {"sources": {"shapes": {**dict(demo_evals.zero_shot_actions.data.sources.shapes),
                                       "size": size["eval_clips"]}}}
    c.evals = {"zero_shot_actions": {**demo_evals.zero_shot_actions.to_dict(), "data": held_out},
               "captioning": {"type": "captioning", "data": held_out}}
  for path, value in overrides.parse_against(c, config_overrides, "config", "config").items():
    overrides.set_path(c, path, value)
  return c


def with_values(config, **values):
  """A copy of `config` with dotted keys set."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for path, value in values.items():
      overrides.set_path(config, path, value)
  return config


def trainable_params(config, workdir: str) -> int:
  """Parameters the objective trains in the config's first stage (LR multiplier > 0), the Y-decoder aside.

  VL-JEPA's model also holds the Y-decoder, which its contrastive stage leaves alone (it is fitted
  afterwards, at inference); the comparison counts what each objective learns, as the paper does.
  """
  setup = model_setup.build(config, workdir)
  name, stage_config = stages_lib.resolve(config)[0]
  mesh = sharding.make_mesh(dict(config.mesh))
  stage = trainer.Stage(stage_config, name, setup, mesh, os.path.join(workdir, name))
  rules = trainer.stage_lr_rules(stage_config, stage.abstract_params, stage.objective)
  multipliers = optimizer.lr_multipliers(stage.abstract_params, rules)
  leaves = jax.tree_util.tree_leaves_with_path(stage.abstract_params)
  return int(sum(leaf.size for (path, leaf), multiplier in zip(leaves, jax.tree.leaves(multipliers))
                 if multiplier > 0 and not optimizer.param_path(path).startswith("y_decoder/")))


def last_evaluation(workdir: str) -> dict:
  with open(os.path.join(workdir, "eval_results.json")) as f:
    results = json.load(f)
  return results[max(results, key=int)]["tasks"]


def tokens_config(base, token_lm: str = "", **values):
  """The token baseline's config: `base` with objective='tokens' (and its language model, if given)."""
  return with_values(base, objective="tokens", **({"init.predictor": token_lm} if token_lm else {}), **values)


def run_ladder(base, size: dict, workdir: str, token_lm: str = "") -> dict:
  """Trains both models rung by rung and evaluates each at every rung; {model: {"cider_d", "top5"}}."""
  curves = {m: {"cider_d": [], "top5": []} for m in MODELS}
  for rung in size["ladder"]:
    samples = rung * size["batch_size"]
    # The token baseline: train to the rung (resuming), then its evaluators run at the stage's end.
    tokens_dir = os.path.join(workdir, "tokens")
    print(f"[tokens] training to step {rung} ({samples} samples seen)", flush=True)
    trainer.run(tokens_config(base, token_lm, **{f"stages.{STAGE}.total_steps": rung}), tokens_dir)
    tasks = last_evaluation(tokens_dir)
    curves["tokens"]["top5"].append(tasks["zero_shot_actions"]["top5"])
    curves["tokens"]["cider_d"].append(tasks["captioning"]["cider_d"])
    # VL-JEPA: train to the rung without evaluators, then fit a Y-decoder to that checkpoint and evaluate.
    vljepa_dir = os.path.join(workdir, "vljepa")
    print(f"[vljepa] training to step {rung} ({samples} samples seen)", flush=True)
    trainer.run(with_values(base, evals={}, **{f"stages.{STAGE}.total_steps": rung}), vljepa_dir)
    decoder_dir = os.path.join(workdir, f"vljepa_ydecoder_{rung}")
    print(f"[vljepa] Y-decoder at step {rung}: {size['ydecoder_steps']} steps", flush=True)
    trainer.run(ydecoder_config(base, size, os.path.join(vljepa_dir, STAGE)), decoder_dir)
    tasks = last_evaluation(decoder_dir)
    curves["vljepa"]["top5"].append(tasks["zero_shot_actions"]["top5"])
    curves["vljepa"]["cider_d"].append(tasks["captioning"]["cider_d"])
    print(f"  step {rung}: top-5 vljepa {curves['vljepa']['top5'][-1]:.3f} tokens {curves['tokens']['top5'][-1]:.3f}; "
          f"CIDEr-D vljepa {curves['vljepa']['cider_d'][-1]:.3f} tokens {curves['tokens']['cider_d'][-1]:.3f}",
          flush=True)
  return curves


def ydecoder_config(base, size: dict, checkpoint: str):
  """The demo's ydecoder stage from a VL-JEPA checkpoint: the decoder learns to write captions from Ŝ_Y."""
  demo = config_base.sibling_config(os.path.join(REPO, "configs", "demo.py"), "demo").get_config("ydecoder")
  decoder_stage = demo.stages.ydecoder.to_dict()
  decoder_stage["total_steps"] = size["ydecoder_steps"]
  decoder_stage["optimizer"] = {**decoder_stage.get("optimizer", {}),
                                "warmup_steps": min(20, size["ydecoder_steps"] // 3)}
  config = with_values(base, **{"init.checkpoint": checkpoint})
  with config.unlocked():
    config.stages = {"ydecoder": decoder_stage}
    config.stage_order = ("ydecoder",)
  return config


def main(argv=None):
  args = parse_args(argv)
  size = SIZES[args.size]
  start = time.time()
  base = base_config(size, args.seed, args.config_overrides)
  os.makedirs(args.workdir, exist_ok=True)
  params = {"vljepa": trainable_params(base, os.path.join(args.workdir, "vljepa")),
            "tokens": trainable_params(tokens_config(base, args.token_lm), os.path.join(args.workdir, "tokens"))}
  print(f"trainable parameters: VL-JEPA {params['vljepa']:,}, token baseline {params['tokens']:,}", flush=True)
  curves = run_ladder(base, size, args.workdir, args.token_lm)
  command = " ".join(["python experiments/controlled_comparison/run.py", f"--workdir={args.workdir}",
                      f"--size={args.size}", f"--seed={args.seed}",
                      *([f"--token_lm={args.token_lm}"] if args.token_lm else []), *args.config_overrides])
  record = {"samples_seen": [r * size["batch_size"] for r in size["ladder"]], **curves, "trainable_params": params,
            "command": command, "seconds": time.time() - start, "size": args.size, "seed": args.seed,
            "steps": list(size["ladder"]), "batch_size": size["batch_size"],
            "ydecoder_steps": size["ydecoder_steps"], "eval_clips": size["eval_clips"],
            "devices": str(jax.devices()[0].device_kind)}
  os.makedirs(args.output, exist_ok=True)
  results_lib.write_json_atomic(os.path.join(args.output, "results.json"), record)
  results_lib.write_atomic(os.path.join(args.output, "results.md"), table(record))
  plot(record, os.path.join(args.output, "curve.png"))
  print(table(record))
  print(f"wrote {args.output}/results.json, results.md, curve.png ({record['seconds']:.0f} s)")


def table(record) -> str:
  params = record["trainable_params"]
  lines = [f"Controlled comparison ({record['size']}, seed {record['seed']}, {record['devices']}): trainable parameters "
           f"VL-JEPA {params['vljepa']:,}, token baseline {params['tokens']:,} "
           f"({params['tokens'] / params['vljepa']:.2f}x).", "",
           "| samples seen | step | top-5 VL-JEPA | top-5 tokens | CIDEr-D VL-JEPA | CIDEr-D tokens |",
           "|---|---|---|---|---|---|"]
  for i, samples in enumerate(record["samples_seen"]):
    lines.append(f"| {samples:,} | {record['steps'][i]} | {record['vljepa']['top5'][i]:.3f} | "
                 f"{record['tokens']['top5'][i]:.3f} | {record['vljepa']['cider_d'][i]:.3f} | "
                 f"{record['tokens']['cider_d'][i]:.3f} |")
  lines += ["", f"Command: `{record['command']}` ({record['seconds']:.0f} s)."]
  return "\n".join(lines) + "\n"


def plot(record, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=110)
  for ax, metric, label in zip(axes, ("cider_d", "top5"), ("captioning CIDEr-D", "zero-shot top-5 accuracy")):
    for model, style, name in (("vljepa", "o-", "VL-JEPA (embeddings)"), ("tokens", "s--", "token-space VLM")):
      ax.plot(record["samples_seen"], record[model][metric], style, label=name)
    ax.set_xscale("log")
    ax.set_xticks(record["samples_seen"], [f"{n:,}" for n in record["samples_seen"]], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("samples seen")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=8)
  results_lib.write_figure(fig, path)


if __name__ == "__main__":
  sys.exit(main())
