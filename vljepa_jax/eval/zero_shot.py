"""Zero-shot classification: the class whose text best matches the prediction.

Each class name is written through every prompt template ("a shape {}", ...) and the classes are
scored as candidates (`Predictions.score_candidates`): VL-JEPA embeds every phrasing with the
Y-encoder, L2-normalises and averages them over templates (then normalises again), as in CLIP's
protocol, and scores each sample's Ŝ_Y for (visual input, classification query) by cosine. Top-1
and top-5 accuracy are reported with their chance levels; a tie counts against the model.

`class_names` is a list of names indexed by the data's integer labels, or "source" (the default):
the source's own `label_names` (TFDS class names; the embedded shapes source names its actions
for videos and its "colour shape" classes for images).
"""
from __future__ import annotations

from typing import Any

from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics
from vljepa_jax.eval import predictions as predictions_lib


class ZeroShotClassification(evaluator.Evaluator):
  OPTIONS = {"class_names": "source", "templates": ("{}",), "top_k": (1, 5)}
  REQUIRES = ("score_candidates",)

  def __init__(self, name, config, predictions, context):
    super().__init__(name, config, predictions, context)
    bad = [t for t in self.options["templates"] if not isinstance(t, str) or t.count("{}") != 1]
    if bad or not self.options["templates"]:
      raise ValueError(f"evals.{name}.templates: expected a non-empty list of strings each containing '{{}}' "
                       f"exactly once, got {list(self.options['templates'])}")

  def class_names(self) -> list[str]:
    names = self.options["class_names"]
    if isinstance(names, str):
      if names != "source":
        raise ValueError(f"evals.{self.name}.class_names={names!r}: expected a list of names or 'source'")
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
