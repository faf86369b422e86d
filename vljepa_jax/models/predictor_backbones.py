"""Predictor backbones by name: the sequence model inside the VL-JEPA predictor.

The predictor (`models/predictor.py`) projects the visual tokens to the backbone's width, embeds
the query with the backbone's own token embedding, runs the backbone over [visual ; query] and
pools its hidden states into the head. `config.model.predictor.backbone` names the backbone here;
everything outside the backbone that depends on which one it is asks its `Backbone` entry: the
predictor (module and config class), model setup (which converted checkpoints load into it),
the FLOP count, and the LR rule freezing its token-embedding table (the paper's rule).

A backbone's parameters live under `predictor/<name>/`, so the Llama backbone's stay at
`predictor/llama/`, where converted Llama checkpoints and the paper's LR rules expect them.

Adding a backbone is one module that defines the Linen module, its config and a `Backbone`
describing them, plus one line in `BACKBONES`:

    BACKBONES["mamba3"] = "vljepa_jax.models.mamba3_block:PREDICTOR_BACKBONE"
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import flax.linen as nn

from vljepa_jax import registry
from vljepa_jax.models.config import ArchConfig

# Backbone name -> "module:attribute" of its `Backbone`, imported on first use (so that a registered
# backbone costs nothing until a config names it).
BACKBONES = {
    "llama": "vljepa_jax.models.llama:PREDICTOR_BACKBONE",
    "mamba3": "vljepa_jax.models.mamba3_block:PREDICTOR_BACKBONE",
    "hybrid": "vljepa_jax.models.hybrid:PREDICTOR_BACKBONE",
}


def shared_fields(other: ArchConfig) -> dict:
  """The fields every backbone config shares with `other`: what a matched config keeps."""
  keep = ("vocab_size", "hidden_size", "num_layers", "intermediate_size", "dtype", "param_dtype", "remat")
  return {k: getattr(other, k) for k in keep if hasattr(other, k)}


@dataclasses.dataclass(frozen=True)
class Backbone:
  """What the rest of the code needs to know about one kind of predictor backbone.

  Attributes:
    module: Linen module class, built as `module(config)`, with two methods:
      `embed(ids (B, L) int) -> (B, L, hidden_size)` token embeddings in the compute dtype, and
      `__call__(*, inputs_embeds (B, L, hidden_size), attention_mask (B, L) 1/0, causal: bool)
      -> (B, L, hidden_size)` the last hidden states. Padding is on the right; `causal=False`
      lets every token see every non-pad token.
    config: its `ArchConfig` subclass, with `hidden_size` (the width of the embeddings it takes
      and returns) and `vocab_size` (the rows of its token-embedding table).
    token_embedding: the '/'-joined path of the token-embedding table below the backbone's
      parameters, e.g. "embed_tokens" (the paper keeps it frozen).
    forward_flops: `(config, tokens) -> float`, forward FLOPs over one sequence of `tokens`
      tokens, counted as `models/flops.py` does (multiply-add = 2; norms, elementwise left out).
    checkpoint_family: the `vljepa_jax.convert` family whose converted folders load into this
      backbone through `config.init.predictor` (their config must be a `config`), or None.
    matched_config: `(other backbone's config) -> config` of this backbone at the same width,
      depth, vocabulary, MLP size, dtypes and remat: what `--config.model.predictor.backbone=<name>`
      switches to (`train/overrides.switch_predictor_backbone`), and what comparisons at matched
      size build.
    initial_state: `(config, batch) -> state`, the empty history of a backbone that streams with a
      constant-size state, or None (it cannot). Such a module's `__call__` also takes
      `initial_state=state` and `return_state=True` (causal only) and returns `(hidden, state)`:
      one call over a sequence equals calls over its pieces with the state carried. The
      streaming predictor (`Predictor.stream_visual` / `stream_query`) runs on it.
  """

  module: type[nn.Module]
  config: type[ArchConfig]
  token_embedding: str
  forward_flops: Callable[[ArchConfig, int], float]
  checkpoint_family: str | None = None
  matched_config: Callable[[ArchConfig], ArchConfig] | None = None
  initial_state: Callable[[ArchConfig, int], Any] | None = None


def get(name: str) -> Backbone:
  """The registered backbone called `name`."""
  backbone = registry.lookup(BACKBONES, name, "predictor backbone")
  if not isinstance(backbone, Backbone):
    raise TypeError(f"predictor backbone {name!r}: {BACKBONES[name]} is a {type(backbone).__name__}, "
                    "expected a predictor_backbones.Backbone")
  return backbone


def matched_config(name: str, other: ArchConfig) -> ArchConfig:
  """A config of backbone `name` at `other`'s width, depth and vocabulary (`Backbone.matched_config`)."""
  spec = get(name)
  if isinstance(other, spec.config):
    return other
  if spec.matched_config is None:
    raise ValueError(f"predictor backbone {name!r} cannot be matched to a {type(other).__name__}: give its "
                     f"backbone_config (a {spec.config.__name__}) explicitly")
  return spec.matched_config(other)


def token_embedding_rule(name: str) -> str:
  """The LR-rule regex matching the token-embedding table of backbone `name` in the model's parameters."""
  return f"predictor/{re.escape(name)}/{re.escape(get(name).token_embedding)}/.*"
