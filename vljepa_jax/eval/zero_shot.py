"""Zero-shot classification: the class whose text embedding is nearest to the prediction.

Each class name is written through every prompt template ("a shape {}", ...), embedded by the
Y-encoder, L2-normalised and averaged over templates (then normalised again), as in CLIP's
protocol. Each sample's Ŝ_Y for (visual input, classification query) is compared by cosine with
every class embedding; top-1 and top-5 accuracy are reported with their chance levels.

`class_names` is a list of names indexed by the data's integer labels, or one of:
  "shapes_actions"   the embedded dataset's video actions (`shapes.action_classes()`)
  "shapes_objects"   its image classes, "colour shape" (`shapes.object_classes(config)`)
  "source"           the source's own `label_names` (TFDS class names)
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vljepa_jax.data import shapes
from vljepa_jax.eval import evaluator
from vljepa_jax.eval import metrics


class ZeroShotClassification(evaluator.Evaluator):
  OPTIONS = {"class_names": "source", "templates": ("{}",), "top_k": (1, 5)}

  def class_names(self) -> list[str]:
    names = self.options["class_names"]
    if isinstance(names, str):
      if names == "shapes_actions":
        return shapes.action_classes()
      if names == "shapes_objects":
        return shapes.object_classes(self.source().config)
      if names == "source":
        label_names = getattr(self.source(), "label_names", None)
        if not label_names:
          raise ValueError(f"evals.{self.name}: class_names='source' but the source has no label_names; "
                           "give the class names as a list")
        return list(label_names)
      raise ValueError(f"evals.{self.name}.class_names={names!r}: expected a list of names, 'shapes_actions', "
                       "'shapes_objects' or 'source'")
    return list(names)

  def class_embeddings(self, params: Any, names: Sequence[str]) -> np.ndarray:
    templates = list(self.options["templates"])
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
      raise ValueError(f"evals.{self.name}.templates: each must contain '{{}}' exactly once, got {bad}")
    texts = [t.format(name) for name in names for t in templates]
    emb = evaluator.normalize(self.embedder.texts(params, texts, self.target_tokenizer))
    return evaluator.normalize(emb.reshape(len(names), len(templates), -1).mean(axis=1))

  def run(self, params: Any) -> dict[str, float]:
    names = self.class_names()
    classes = self.class_embeddings(params, names)
    predictions, info = self.embedder.visual_query(params, self.batches())
    labels = info["label"]
    if (labels < 0).any():
      raise ValueError(f"evals.{self.name}: {int((labels < 0).sum())} samples have no label")
    scores = evaluator.normalize(predictions) @ classes.T
    ks = [k for k in self.options["top_k"] if k <= len(names)]
    result = metrics.top_k_accuracy(scores, labels, ks)
    result.update({f"chance_top{k}": k / len(names) for k in ks})
    result["num_samples"] = int(len(labels))
    return result
