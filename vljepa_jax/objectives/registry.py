"""The objectives a config can name by `config.objective`, and `make_objective` that builds one.

Adding an objective: a module with an `objectives.base.Objective` subclass (see `contrastive.py`,
`y_decoder.py`), and one line here.
"""
from __future__ import annotations

import jax
import ml_collections

from vljepa_jax import registry
from vljepa_jax.objectives import base

# Objective name -> "module:Class", imported on first use.
OBJECTIVES = {
    "contrastive": "vljepa_jax.objectives.contrastive:Contrastive",
    "y_decoder": "vljepa_jax.objectives.y_decoder:YDecoder",
    "tokens": "vljepa_jax.objectives.tokens:Tokens",
}


def objective_class(name: str) -> type[base.Objective]:
  """The objective class `config.objective=name` selects; an unknown name fails listing the known."""
  return registry.lookup(OBJECTIVES, name, "config.objective")


def make_objective(config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> base.Objective:
  """The objective `config.objective` names, built from the stage's config; an unknown name fails listing the known.

  `mesh`: where the loss runs (a contrastive loss then shards its logits over the batch axes).
  """
  return objective_class(config.objective).from_config(config, mesh=mesh)
