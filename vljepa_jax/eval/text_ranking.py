"""Rank candidate texts against query texts with any sentence encoder (cosine similarity).

The smallest useful evaluator: it exercises a converted text tower end to end (tokenizer ->
jitted forward -> embeddings -> similarity) and is what the README's conversion example
and the pre-training demo print.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

EmbedFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def make_embed_fn(model) -> EmbedFn:
  """A jitted `(params, ids, mask) -> L2-normalised embeddings` for a `TextEncoder`."""

  @jax.jit
  def embed(params, ids, mask):
    e = model.apply({"params": params}, ids, mask, method="embed")
    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

  return embed


def rank_texts(embed: EmbedFn, params: Any, tokenizer, queries: Sequence[str],
               candidates: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Returns `(order, scores)`: per query, candidate indices best-first and their cosines."""
  q = embed(params, *tokenizer(list(queries)))
  c = embed(params, *tokenizer(list(candidates)))
  scores = np.asarray(q @ c.T)
  order = np.argsort(-scores, axis=1, kind="stable")
  return order, np.take_along_axis(scores, order, axis=1)
