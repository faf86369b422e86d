"""Parity with a one-layer Mamba-3, and the ablations that lose it (Mamba-3 paper §3.2, Table 5b), at CPU scale.

    python experiments/mamba3_state_tracking/run.py [--seed=0] [--out=experiments/mamba3_state_tracking]

A sequence is a BOS token followed by random bits; the target at every bit is the running parity
(the parity of the bits so far). Training uses lengths up to `train_length` with a curriculum; the
score is the fraction of held-out sequences, of the training length and of 2x and 4x it, whose
final parity the model gets right (chance 50%). Three variants share width, depth, steps, seed and
hyperparameters:

  mamba3               the default `Mamba3Config` (trapezoid rule, data-dependent rotation)
  mamba3_no_rotation   rotation=False: a real, positive decay only
  mamba2_like          trapezoid=False, rotation=False: Mamba-2's exponential-Euler update

Why rotation matters: with the complex state realised as a rotation of B and C by the cumulative
phase φ_t, the output reads `C_tᵀ R(φ_t − φ_s) B_s` from every earlier token s; a phase step of π
per 1-bit makes the BOS token's contribution flip sign with each 1, i.e. read out the parity. A
real positive decay cannot flip a sign, and parity is out of reach of such a linear recurrence.

Writes into --out:
  results.json         per variant: train_length, accuracy per evaluation length, per-position
                       accuracy, training curve; the command and the wall time
  results.md           the table, the paper's figures beside it
  learning_curves.png  training loss and accuracy against step, and accuracy against position
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vljepa_jax import trace_guard
from vljepa_jax.eval import results as results_lib
from vljepa_jax.models import mamba3_block

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

BOS = 2  # token ids: 0 and 1 are the bits
VOCAB_SIZE = 3

# The ablations, by name: overrides of the shared Mamba3Config.
VARIANTS: dict[str, dict[str, Any]] = {
    "mamba3": {},
    "mamba3_no_rotation": dict(rotation=False),
    "mamba2_like": dict(trapezoid=False, rotation=False),
}

# Table 5b of the Mamba-3 paper (parity, scaled accuracy %, 1 layer, state 64, curriculum up to 160,
# evaluated at 256). Variants the paper does not list map to None.
PAPER_SCALED_ACCURACY = {"mamba3": 100.00, "mamba3_no_rotation": 2.27, "mamba2_like": 0.90}

log_line = functools.partial(print, flush=True)  # progress shows up while a redirected run trains


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything a run depends on; every variant uses the same settings."""

  seed: int = 0
  train_length: int = 64  # longest training sequence (bits, BOS not counted)
  curriculum_start: int = 8  # the curriculum's first length
  curriculum_fraction: float = 0.5  # of the steps over which the length grows linearly to train_length
  # Evaluation lengths in multiples of train_length: 1, the paper's ratio 256 / 160 = 1.6, 2 and 4.
  eval_multiples: tuple[float, ...] = (1, 1.6, 2, 4)
  steps: int = 2000
  batch_size: int = 32
  learning_rate: float = 3e-3
  warmup_steps: int = 100
  weight_decay: float = 0.01
  eval_batch_size: int = 512
  log_every: int = 100
  # The model (Mamba3Config fields); one layer as in the paper, mixer only.
  hidden_size: int = 32
  num_layers: int = 1
  num_heads: int = 4
  head_dim: int = 16
  state_size: int = 32
  intermediate_size: int = 0
  chunk_size: int = 16

  def __post_init__(self):
    for name in ("train_length", "curriculum_start", "steps", "batch_size", "eval_batch_size", "log_every"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"Settings.{name} must be a positive int, got {getattr(self, name)!r}")
    if self.curriculum_start > self.train_length:
      raise ValueError(f"Settings.curriculum_start ({self.curriculum_start}) must be <= train_length "
                       f"({self.train_length})")
    if not 0 <= self.curriculum_fraction <= 1:
      raise ValueError(f"Settings.curriculum_fraction must be in [0, 1], got {self.curriculum_fraction}")
    if not self.eval_multiples or any(not isinstance(m, (int, float)) or m < 1 for m in self.eval_multiples):
      raise ValueError(f"Settings.eval_multiples must be numbers >= 1, got {self.eval_multiples!r}")

  @property
  def eval_lengths(self) -> tuple[int, ...]:
    return tuple(sorted({int(round(m * self.train_length)) for m in self.eval_multiples}))


def model_config(settings: Settings, variant: str) -> mamba3_block.Mamba3Config:
  """The shared small config with the variant's ablation switches."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
  return mamba3_block.Mamba3Config(
      vocab_size=VOCAB_SIZE, hidden_size=settings.hidden_size, num_layers=settings.num_layers,
      num_heads=settings.num_heads, head_dim=settings.head_dim, state_size=settings.state_size,
      intermediate_size=settings.intermediate_size, chunk_size=settings.chunk_size, **VARIANTS[variant])


def parity_batch(key: jax.Array, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
  """Random bit sequences behind a BOS token, and their running parity.

  Returns tokens `(batch, length + 1)` int32 (BOS, then the bits) and labels of the same shape:
  `labels[:, t]` is the parity of the first t bits (`labels[:, 0] = 0`, the empty prefix), so the
  label at a token is the parity of everything up to and including it.
  """
  bits = jax.random.bernoulli(key, 0.5, (batch, length)).astype(jnp.int32)
  tokens = jnp.concatenate([jnp.full((batch, 1), BOS, jnp.int32), bits], axis=1)
  labels = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), jnp.cumsum(bits, axis=1) % 2], axis=1)
  return tokens, labels


class ParityModel(nn.Module):
  """`Mamba3Stack` (causal) and a linear readout to the two parities: `(B, L) ids -> (B, L, 2)` logits."""

  config: mamba3_block.Mamba3Config

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    hidden = mamba3_block.Mamba3Stack(self.config, name="backbone")(input_ids=tokens, causal=True)
    return nn.Dense(2, name="readout")(hidden).astype(jnp.float32)


def curriculum_length(settings: Settings, step: int) -> int:
  """Longest prefix the loss sees at `step`: linear from curriculum_start to train_length, then flat."""
  ramp = max(1, round(settings.curriculum_fraction * settings.steps))
  frac = min(1.0, step / ramp)
  return int(round(settings.curriculum_start + frac * (settings.train_length - settings.curriculum_start)))


def make_train_step(model: ParityModel, optimizer: optax.GradientTransformation, settings: Settings) -> Callable:
  """One jitted step on a fresh batch at the full training length; the curriculum only masks the loss.

  The model is causal, so masking the loss past length n trains exactly on sequences of length n
  while every step keeps one shape (one compilation). Every position up to n carries a target.
  """

  def step(params, opt_state, key, length):
    tokens, labels = parity_batch(key, settings.batch_size, settings.train_length)
    positions = jnp.arange(settings.train_length + 1)
    weights = ((positions >= 1) & (positions <= length)).astype(jnp.float32)[None]  # BOS has no target

    def loss_fn(p):
      logits = model.apply(p, tokens)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
      total = weights.sum() * settings.batch_size
      return (loss * weights).sum() / total, (correct * weights).sum() / total

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  return jax.jit(trace_guard.at_most(1, step))


def evaluate(model: ParityModel, params, key: jax.Array, batch: int, length: int) -> tuple[float, np.ndarray]:
  """Accuracy of the final parity over `batch` fresh sequences of `length` bits, and per-position accuracy."""
  tokens, labels = parity_batch(key, batch, length)
  predictions = jnp.argmax(jax.jit(model.apply)(params, tokens), -1)
  correct = np.asarray(predictions == labels, np.float64)[:, 1:]  # per bit position 1..length
  return float(correct[:, -1].mean()), correct.mean(0)


def scaled(accuracy: float) -> float:
  """The paper's "scaled accuracy" for two classes: (acc − 0.5) / 0.5, 0 at chance and 1 when perfect."""
  return (accuracy - 0.5) / 0.5


def train(settings: Settings, variant: str, log: Callable[[str], None] = log_line
          ) -> tuple[ParityModel, Any, dict[str, list]]:
  """Trains one variant from `settings.seed`; returns the model, its parameters and the training curve."""
  start = time.time()
  model = ParityModel(model_config(settings, variant))
  init_key, data_key = jax.random.split(jax.random.key(settings.seed))
  # Jitted: an eager init dispatches (and compiles) every op of the model one at a time.
  params = jax.jit(model.init)(init_key, jnp.zeros((1, settings.train_length + 1), jnp.int32))
  schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, min(settings.warmup_steps, settings.steps),
                                                settings.steps, end_value=0.1 * settings.learning_rate)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=settings.weight_decay))
  opt_state = optimizer.init(params)
  train_step = make_train_step(model, optimizer, settings)
  curve = {"step": [], "loss": [], "accuracy": [], "length": []}
  pending = []
  for step in range(settings.steps):
    length = curriculum_length(settings, step)
    params, opt_state, loss, accuracy = train_step(params, opt_state, jax.random.fold_in(data_key, step),
                                                   jnp.int32(length))
    pending.append((loss, accuracy))
    if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
      losses, accuracies = np.asarray(jax.device_get(pending), np.float64).T  # mean over the logging window
      curve["step"].append(step + 1)
      curve["loss"].append(float(losses.mean()))
      curve["accuracy"].append(float(accuracies.mean()))
      curve["length"].append(length)
      pending = []
      log(f"[{variant}] step {step + 1:5d}  length {length:4d}  loss {losses.mean():.4f}  "
          f"token accuracy {accuracies.mean():.3f}  ({time.time() - start:.0f} s)")
  return model, params, curve


def train_variant(settings: Settings, variant: str, log: Callable[[str], None] = log_line) -> dict[str, Any]:
  """Trains and evaluates one variant; returns its results.json entry."""
  start = time.time()
  model, params, curve = train(settings, variant, log)
  # Evaluation data comes from a key the training never splits off.
  eval_key = jax.random.fold_in(jax.random.key(settings.seed), 1 << 30)
  accuracy, per_position = {}, None
  for i, length in enumerate(settings.eval_lengths):
    accuracy[str(length)], per_position = evaluate(model, params, jax.random.fold_in(eval_key, i),
                                                   settings.eval_batch_size, length)
  log(f"[{variant}] final-parity accuracy " + ", ".join(f"length {k}: {v:.4f}" for k, v in accuracy.items()))
  return {"train_length": settings.train_length, "accuracy": accuracy,
          "scaled_accuracy": {k: scaled(v) for k, v in accuracy.items()},
          # of the longest evaluation: position t's accuracy is that of a length-t sequence (the model is causal)
          "per_position_accuracy": [float(a) for a in per_position],
          "curve": curve, "config": model.config.to_dict(), "seconds": time.time() - start}


def run(settings: Settings, variants: tuple[str, ...], command: str, log: Callable[[str], None] = log_line
        ) -> dict[str, Any]:
  """All `variants` under the same settings; the results.json record."""
  unknown = [v for v in variants if v not in VARIANTS]
  if not variants:
    raise ValueError(f"no variants to run; expected names from {sorted(VARIANTS)}")
  if unknown:
    raise ValueError(f"unknown variant(s) {unknown}; expected names from {sorted(VARIANTS)}")
  start = time.time()
  record = {"variants": {v: train_variant(settings, v, log) for v in variants}}
  record.update(command=command, seconds=time.time() - start, settings=dataclasses.asdict(settings),
                device=str(jax.devices()[0].device_kind), jax_version=jax.__version__)
  return record


def table(record: dict[str, Any]) -> str:
  """results.md: final-parity accuracy per variant and length; the paper's Table 5b beside it."""
  settings = record["settings"]
  lengths = sorted({int(k) for v in record["variants"].values() for k in v["accuracy"]})
  head = " | ".join(f"len {n}" for n in lengths)
  lines = [f"Parity, final-bit accuracy (raw %, scaled % in brackets; chance 50 % raw, 0 scaled), "
           f"{settings['num_layers']} layer, state {settings['state_size']}, trained up to length "
           f"{settings['train_length']} for {settings['steps']} steps, seed {settings['seed']}, "
           f"{settings['eval_batch_size']} sequences per length.", "",
           f"| variant | {head} | paper, scaled at 256 (trained to 160) |",
           "|---|" + "---|" * len(lengths) + "---|"]
  for name, entry in record["variants"].items():
    cells = " | ".join(f"{100 * entry['accuracy'][str(n)]:.1f} ({100 * scaled(entry['accuracy'][str(n)]):.1f})"
                       for n in lengths)
    paper = PAPER_SCALED_ACCURACY.get(name)
    lines.append(f"| {name} | {cells} | {'–' if paper is None else f'{paper:.2f}'} |")
  lines += ["", "Scaled accuracy = (acc − 0.5) / 0.5. The paper's rows: Mamba-3 (100.00), Mamba-3 without RoPE "
            "(2.27) and Mamba-2 (0.90).", "", f"Command: `{record['command']}` ({record['seconds']:.0f} s on "
            f"{record['device']}, jax {record['jax_version']})."]
  return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: str) -> None:
  """Training loss and token accuracy against step, and per-position accuracy of the longest evaluation."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
  for name, entry in record["variants"].items():
    curve = entry["curve"]
    axes[0].plot(curve["step"], curve["loss"], label=name)
    axes[1].plot(curve["step"], curve["accuracy"], label=name)
    per_position = entry["per_position_accuracy"]
    axes[2].plot(np.arange(1, len(per_position) + 1), per_position, label=name, lw=1)
  train_length = record["settings"]["train_length"]
  axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss (curriculum-masked)")
  axes[1].set(xlabel="step", ylabel="token accuracy", title="training accuracy (running parity)")
  axes[2].axvline(train_length, color="grey", ls=":", lw=0.8)
  axes[2].set(xlabel="position (bits so far)", ylabel="accuracy", ylim=(0.4, 1.02),
              title=f"held-out accuracy by position (trained to {train_length})")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  results_lib.write_figure(fig, path)


def write(record: dict[str, Any], out: str) -> list[str]:
  """results.json, results.md and learning_curves.png into `out`; returns their paths."""
  paths = [os.path.join(out, name) for name in ("results.json", "results.md", "learning_curves.png")]
  results_lib.write_json_atomic(paths[0], record)
  results_lib.write_atomic(paths[1], table(record))
  plot(record, paths[2])
  return paths


def parse_args(argv: list[str]) -> argparse.Namespace:
  defaults = Settings()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--out", default=HERE, help="folder for results.json, results.md, learning_curves.png")
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--train_length", type=int, default=defaults.train_length)
  parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
  parser.add_argument("--weight_decay", type=float, default=defaults.weight_decay)
  parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {sorted(VARIANTS)}")
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  args = parse_args(argv[1:])
  settings = Settings(seed=args.seed, steps=args.steps, train_length=args.train_length,
                      learning_rate=args.learning_rate, weight_decay=args.weight_decay)
  variants = tuple(v for v in args.variants.split(",") if v)
  command = " ".join(["python", os.path.relpath(os.path.abspath(argv[0]), REPO)] + [shlex.quote(a) for a in argv[1:]])
  record = run(settings, variants, command)
  paths = write(record, args.out)
  print(table(record))
  print(f"wrote {', '.join(paths)} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
  main(sys.argv)
