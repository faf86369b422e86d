"""What every evaluator shares: its config, its data, and the registry that picks one by name.

An experiment config lists evaluators under `config.evals.<name>`, each a dict with a `type`
(a key of `EVALUATORS`) and that type's options. `make_evaluators` builds them once per run;
`run(params)` returns `{metric: value}` and may be called for many checkpoints (the embedding
functions compile once).

Every evaluator reads its data through the training input pipeline in a single ordered pass
(`shuffle=False`, one epoch, a padded final batch), so the embedded dataset, JSONL manifests,
ArrayRecord and TFDS all work; `data` in the evaluator's config overrides the defaults the
trainer passes in (the training stage's frame count, crop and text lengths).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vljepa_jax import registry
from vljepa_jax.data import pipeline
from vljepa_jax.eval import embedding

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


def normalize(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (cosine similarity is then a dot product)."""
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Evaluator:
  """Base class: holds the embedder, tokenizers and the resolved data config."""

  OPTIONS: Mapping[str, Any] = {}  # option name -> default, besides `type`, `data` and `batch_size`

  def __init__(self, name: str, config: Mapping[str, Any], *, embedder: embedding.Embedder, query_tokenizer,
               target_tokenizer, data_defaults: Mapping[str, Any], model: Any = None, mesh: Any = None,
               rules: Any = None, workdir: str | None = None):
    config = dict(config)
    config.pop("type", None)
    known = set(self.OPTIONS) | {"data", "batch_size"}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"evals.{name}: unknown option(s) {unknown}; a {type(self).__name__} takes {sorted(known)}")
    self.name = name
    self.options = {**self.OPTIONS, **{k: v for k, v in config.items() if k in self.OPTIONS}}
    self.batch_size = int(config.get("batch_size", 64))
    self.data = pipeline.DataConfig.from_dict({**data_defaults, **dict(config.get("data", {})), **EVAL_DATA})
    self.embedder = embedder
    # What evaluators that run more than the two embedding functions need (the Y-decoder, streams).
    self.model, self.mesh, self.rules, self.workdir = model, mesh, rules, workdir
    # Texts the evaluator embeds itself (class names, all captions) get the pipeline's lengths too.
    self.query_tokenizer = query_tokenizer.with_max_length(self.data.query_length)
    self.target_tokenizer = target_tokenizer.with_max_length(self.data.target_length)

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


def make_evaluators(evals: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> dict[str, Evaluator]:
  """`{name: Evaluator}` from `config.evals`; an unknown `type` fails by name before anything runs."""
  evaluators = {}
  for name, config in evals.items():
    kind = config.get("type")
    evaluators[name] = registry.lookup(EVALUATORS, kind, f"evals.{name}.type")(name, config, **kwargs)
  return evaluators
