"""Registries: kinds of things (predictor backbones, text encoders, objectives, evaluators) chosen by name.

Each registry is a dict from the name a config uses to `"module:attribute"`, imported the first
time a config names it, so a registered kind costs nothing (not even its imports) until used and a
new kind is one module plus one line in its registry. The registries live beside what they choose
from: `models/predictor_backbones.BACKBONES`, `models/text_encoder.BACKBONES`,
`objectives/registry.OBJECTIVES`, `eval/evaluator.EVALUATORS` (data sources, whose
constructors are all in one module, are a plain dict in `data/sources.SOURCE_TYPES`).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping


def lookup(registry: Mapping[str, str], name: str, what: str) -> Any:
  """The object registered as `name`; an unknown name fails with `what={name!r}` and the registered names."""
  if name not in registry:
    raise ValueError(f"{what}={name!r}; expected one of {sorted(registry)}")
  module, attribute = registry[name].split(":")
  return getattr(importlib.import_module(module), attribute)
