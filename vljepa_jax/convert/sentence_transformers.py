"""The Sentence-Transformers layer of a text-encoder folder (`modules.json`, `*_Dense/`).

Supported pipeline: Transformer -> Pooling (mean) -> Dense* (identity activation, no bias)
-> Normalize?, which covers all-MiniLM-L6-v2 and EmbeddingGemma-300M. Anything else is
refused with a message naming the module, rather than silently converted differently.
Dense weights enter the state dict as `st_dense.{i}.linear.weight`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from vljepa_jax.convert import source as source_lib
from vljepa_jax.convert.mapping import ConversionError, Rule, linear

_ST = "sentence_transformers.models."
_IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")


@dataclasses.dataclass(frozen=True)
class Pipeline:
  dense_dims: tuple[int, ...] = ()
  normalize: bool = False
  state: dict = dataclasses.field(default_factory=dict)  # st_dense.{i}.linear.weight -> array


def read_pipeline(path: str, *, weights: bool = True) -> Pipeline | None:
  """Parses `modules.json` next to the weights; None when the folder is a plain HF model.

  `weights=False` reads only the module configs (enough for the architecture).
  """
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  modules_json = os.path.join(folder, "modules.json")
  if not os.path.exists(modules_json):
    return None
  modules = source_lib.read_json(modules_json)
  dims, state, normalize = [], {}, False
  for m in sorted(modules, key=lambda m: m.get("idx", 0)):
    kind = m.get("type", "").removeprefix(_ST)
    mpath = os.path.join(folder, m.get("path", ""))
    if kind == "Transformer":
      continue
    if kind == "Pooling":
      cfg = source_lib.read_json(os.path.join(mpath, "config.json"))
      modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
      if modes != ["pooling_mode_mean_tokens"]:
        raise ConversionError(f"{mpath}: pooling {modes} is not supported; only mean pooling is")
    elif kind == "Dense":
      cfg = source_lib.read_json(os.path.join(mpath, "config.json"))
      if cfg.get("bias", True) or cfg.get("activation_function", _IDENTITY[0]) not in _IDENTITY:
        raise ConversionError(f"{mpath}: only Dense layers without bias and with identity activation are "
                              f"supported, got bias={cfg.get('bias', True)}, "
                              f"activation={cfg.get('activation_function')}")
      if weights:
        tensors = source_lib.select_state_dict(source_lib.read_checkpoint(mpath), None, mpath)
        if set(tensors) != {"linear.weight"}:
          raise ConversionError(f"{mpath}: expected exactly one tensor 'linear.weight', found {sorted(tensors)}")
        w = tensors["linear.weight"]
        if w.shape != (cfg["out_features"], cfg["in_features"]):
          raise ConversionError(f"{mpath}: linear.weight has shape {w.shape}, config says "
                                f"[{cfg['out_features']}, {cfg['in_features']}]")
        state[f"st_dense.{len(dims)}.linear.weight"] = np.asarray(w)
      dims.append(int(cfg["out_features"]))
    elif kind == "Normalize":
      normalize = True
    else:
      raise ConversionError(f"{modules_json}: Sentence-Transformers module {m.get('type')!r} is not supported")
  return Pipeline(tuple(dims), normalize, state)


def add_dense_weights(state: dict, path: str) -> dict:
  """`state` plus the folder's `st_dense.{i}.linear.weight` tensors (none for a plain HF folder)."""
  pipeline = read_pipeline(path)
  return {**state, **(pipeline.state if pipeline else {})}


def text_encoder_config(backbone: str, backbone_config, path: str):
  """A `TextEncoderConfig` around `backbone_config` with the folder's ST pooling/dense/normalise.

  A plain HF folder (no `modules.json`) gets neither a dense stack nor normalisation.
  """
  from vljepa_jax.models import text_encoder  # pylint: disable=g-import-not-at-top
  pipeline = read_pipeline(path, weights=False) or Pipeline()
  return text_encoder.TextEncoderConfig(backbone=backbone, backbone_config=backbone_config,
                                        dense_dims=pipeline.dense_dims, normalize=pipeline.normalize)


RULES = (Rule(r"st_dense\.(?P<i>\d+)\.linear\.weight", "dense_{i}/kernel", linear()),)
