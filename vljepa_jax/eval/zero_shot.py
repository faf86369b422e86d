"""Zero-shot classification: the class whose text best matches the prediction.

Each class name is written through every prompt template ("a shape {}", ...) and the classes are
scored as candidates (`Predictions.score_candidates`): VL-JEPA embeds every phrasing with the
Y-encoder, L2-normalises and averages them over templates (then normalises again), as in CLIP's
protocol, and scores each sample's Ŝ_Y for (visual input, classification query) by cosine. Top-1
and top-5 accuracy are reported with their chance levels; a tie counts against the model.

`class_names` is a list of names indexed by the data's integer labels, "source" (the default):
the source's own `label_names` (TFDS class names; the embedded shapes source names its actions
for videos and its "colour shape" classes for images), or the path of a text file with one class
name per line, in label order (what `python -m vljepa_jax.data.benchmarks ... --label-names-out`
writes). Records whose labels are class-name strings (imported benchmarks) are mapped through
those names unless `data.label_names` is given, which must then be the same list.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics
from vljepa_jax.eval import predictions as predictions_lib


def read_class_names(path: str, what: str) -> list[str]:
  """One class name per line (surrounding whitespace stripped, blank lines skipped), in label order."""
  if not path or not os.path.isfile(path):
    raise ValueError(f"{what}={path!r}: expected 'source', a list of names, or a file with one class name per "
                     "line (`python -m vljepa_jax.data.benchmarks ... --label-names-out FILE` writes one)")
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f if line.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"{what}={path!r}: expected distinct class names, one per line; got {len(names)} lines with "
                     f"{len(set(names))} distinct names")
  return names


class ZeroShotClassification(evaluator.Evaluator):
  OPTIONS = {"class_names": "source", "templates": ("{}",), "top_k": (1, 5)}
  REQUIRES = ("score_candidates",)

  def __init__(self, name, config, predictions, context):
    super().__init__(name, config, predictions, context)
    # Only the visual input, the classification query and the label are read: label-only records
    # (Kinetics, SSv2 test answers) have no caption, and need none (a per-source mode is forced too).
    sources = tuple({**spec, "text_mode": "no_target"} for spec in self.data.sources)
    self.data = dataclasses.replace(self.data, text_mode="no_target", sources=sources)
    names = self.options["class_names"]
    if isinstance(names, str) and names != "source":
      self.options["class_names"] = names = read_class_names(names, f"evals.{name}.class_names")
    if not isinstance(names, str):
      if self.data.label_names is None:  # string labels map through the class list
        self.data = dataclasses.replace(self.data, label_names=tuple(names))
      elif list(self.data.label_names) != list(names):
        raise ValueError(f"evals.{name}: data.label_names and class_names differ; give one of them")
    bad = [t for t in self.options["templates"] if not isinstance(t, str) or t.count("{}") != 1]
    if bad or not self.options["templates"]:
      raise ValueError(f"evals.{name}.templates: expected a non-empty list of strings each containing '{{}}' "
                       f"exactly once, got {list(self.options['templates'])}")

  def class_names(self) -> list[str]:
    names = self.options["class_names"]
    if isinstance(names, str):  # "source" (a file was read at construction)
      label_names = getattr(self.source(), "label_names", None)
      if not label_names:
        raise ValueError(f"evals.{self.name}: class_names='source' but the source has no label_names; "
                         "give the class names as a list")
      return list(label_names)
    return list(names)

  def run(self, params: Any) -> dict[str, float]:
    names = self.class_names()
    candidates = predictions_lib.Candidates([[t.format(name) for t in self.options["templates"]] for name in names])
    scored = self.predictions.score_candidates(params, self.batches(), candidates, self.target_tokenizer)
    labels = scored.label
    if (labels < 0).any():
      raise ValueError(f"evals.{self.name}: {int((labels < 0).sum())} samples have no label")
    ks = [k for k in self.options["top_k"] if k <= len(names)]
    result = metrics.top_k_accuracy(scored.scores, labels, ks)
    result.update({f"chance_top{k}": k / len(names) for k in ks})
    result["num_samples"] = int(len(labels))
    return result
