"""What every evaluator shares: its config, its data, and the registry that picks one by name.

An experiment config lists evaluators under `config.evals.<name>`, each a dict with a `type`
(a key of `EVALUATORS`) and that type's options. `make_evaluators(evals, predictions, context)`
builds them once per run from two things: the model's prediction functions
(`eval/predictions.py`; an evaluator names the capabilities it needs in `REQUIRES`, checked here)
and one `EvalContext` (tokenizers, data defaults, batch size, mesh, workdir). `run(params)`
returns `{metric: value}` and may be called for many checkpoints (the prediction functions
compile once).

To add an evaluator: subclass `Evaluator` in a new module of `eval/`, declare `OPTIONS` (name ->
default) and `REQUIRES`, implement `run`, and add one line to `EVALUATORS`.

Every evaluator reads its data through the training input pipeline in a single ordered pass
(`shuffle=False`, one epoch, a padded final batch), so the embedded dataset, JSONL manifests,
ArrayRecord and TFDS all work; `data` in the evaluator's config overrides the defaults the
trainer passes in (the training stage's frame count, crop and text lengths).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vljepa_jax import registry
from vljepa_jax.data import pipeline
from vljepa_jax.eval import predictions as predictions_lib

# Evaluator type -> "module:Class", imported on first use.
EVALUATORS = {
    "classification": "vljepa_jax.eval.zero_shot:ZeroShotClassification",
    "retrieval": "vljepa_jax.eval.retrieval:Retrieval",
    "vqa": "vljepa_jax.eval.vqa:DiscriminativeVQA",
    "inverse_dynamics": "vljepa_jax.eval.inverse_dynamics:InverseDynamics",
    "hard_negatives": "vljepa_jax.eval.hard_negatives:HardNegatives",
    "captioning": "vljepa_jax.eval.captioning:Captioning",
    "selective_decoding": "vljepa_jax.eval.stream_decoding:SelectiveDecoding",
}
# Data-pipeline defaults for evaluation: one ordered pass with every record.
EVAL_DATA = {"shuffle": False, "num_epochs": 1, "sample_paraphrase": False}


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What every evaluator of a run shares besides the model's prediction functions.

  `data_defaults` are the data settings an evaluator inherits unless its own `data` overrides
  them (the trainer passes the training stage's frame count, crop and text lengths);
  `batch_size` is the default of an evaluator's `batch_size` option.
  """
  query_tokenizer: Any
  target_tokenizer: Any
  data_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  batch_size: int = 64
  mesh: Any = None
  workdir: str | None = None


class Evaluator:
  """Base class: the options, the resolved data config and tokenizers, and the prediction functions."""

  OPTIONS: Mapping[str, Any] = {}  # option name -> default, besides `type`, `data` and `batch_size`
  REQUIRES: tuple[str, ...] = ()  # capabilities of the prediction functions (`predictions.CAPABILITIES`)

  def __init__(self, name: str, config: Mapping[str, Any], predictions: Any, context: EvalContext):
    config = dict(config)
    config.pop("type", None)
    known = set(self.OPTIONS) | {"data", "batch_size"}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"evals.{name}: unknown option(s) {unknown}; a {type(self).__name__} takes {sorted(known)}")
    self.name = name
    self.options = {**self.OPTIONS, **{k: v for k, v in config.items() if k in self.OPTIONS}}
    missing = [c for c in self.requires() if c not in predictions_lib.provides(predictions)]
    if missing:
      raise ValueError(f"evals.{name}: a {type(self).__name__} needs {missing} of the model's prediction functions; "
                       f"{type(predictions).__name__} provides {list(predictions_lib.provides(predictions))}")
    self.predictions, self.context = predictions, context
    self.batch_size = int(config.get("batch_size", context.batch_size))
    self.data = pipeline.DataConfig.from_dict({**context.data_defaults, **dict(config.get("data", {})), **EVAL_DATA})
    # Texts the evaluator tokenizes itself (class names, all captions) get the pipeline's lengths too.
    self.query_tokenizer = context.query_tokenizer.with_max_length(self.data.query_length)
    self.target_tokenizer = context.target_tokenizer.with_max_length(self.data.target_length)

  def check_sources(self) -> None:
    """Opens every data source once: a wrong path (a config placeholder left as it is, a missing
    manifest) fails when the evaluators are built, before anything is compiled or trained."""
    for index, spec in enumerate(self.data.sources):
      try:
        self.source(index)
      except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"evals.{self.name}: data source {index} ({spec.get('type')!r}) cannot be opened: {e}") from e

  def requires(self) -> tuple[str, ...]:
    """The capabilities this evaluator calls with its options (`REQUIRES` unless an option changes them)."""
    return self.REQUIRES

  def batches(self):
    """The evaluation data as padded host batches (one epoch, in order)."""
    return pipeline.make_iterator(self.data, global_batch_size=self.batch_size,
                                  query_tokenizer=self.query_tokenizer, target_tokenizer=self.target_tokenizer,
                                  drop_remainder=False)

  def source(self, index: int = 0):
    """The data source behind the pipeline (records carry the texts the batches do not)."""
    return pipeline.make_source(self.data.sources[index], self.data)

  def run(self, params: Any) -> dict[str, float]:
    raise NotImplementedError


def make_evaluators(evals: Mapping[str, Mapping[str, Any]], predictions: Any,
                    context: EvalContext) -> dict[str, Evaluator]:
  """`{name: Evaluator}` from `config.evals`; an unknown `type` fails by name before anything runs."""
  evaluators = {}
  for name, config in evals.items():
    kind = config.get("type")
    evaluators[name] = registry.lookup(EVALUATORS, kind, f"evals.{name}.type")(name, config, predictions, context)
    if "data" in config:  # evaluators with their own data; the others read the embedded dataset or generate theirs
      evaluators[name].check_sources()
  return evaluators
