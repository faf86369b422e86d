"""Jitted, batched, sharded embedding of evaluation data: Ŝ_Y for (visual, query), S_Y for texts.

Every evaluator reduces to these two functions. Each is compiled once per input shape: batches
are padded to a fixed size (the pipeline's `valid=False` rows, or repeated texts) and padding is
removed before any metric sees the embeddings. Embeddings are gathered from every process, so
each host gets the full evaluation set and computes identical metrics.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np

from vljepa_jax.data import global_batch
from vljepa_jax.models import vljepa


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Embedder:
  """`visual_query(params, batches)` and `texts(params, texts, tokenizer)` as host NumPy arrays.

  `params` may be a training run's whole tree: `model.apply` reads only the model's own subtrees, not
  the objective's (`params["objective"]`).
  """

  def __init__(self, model: nn.Module, *, mesh: jax.sharding.Mesh | None = None, rules: Any = None,
               text_batch_size: int = 256):
    self._mesh = mesh
    self._text_batch_size = text_batch_size

    def visual_query(params, video, query_ids, query_mask):
      with nn.logical_axis_rules(rules or ()):
        return model.apply({"params": params}, global_batch.prepare_visual(video), query_ids, query_mask,
                           method="encode_visual_query")

    def text(params, ids, mask):
      with nn.logical_axis_rules(rules or ()):
        return model.apply({"params": params}, ids, mask, method="encode_text")

    def stream_step(params, frames, state, query_ids, query_mask):
      with nn.logical_axis_rules(rules or ()):
        return model.apply({"params": params}, global_batch.normalize_video(frames), state, query_ids, query_mask,
                           method="stream_step")

    self._model = model
    self._visual_query = jax.jit(visual_query)
    self._text = jax.jit(text)
    self._stream_step = jax.jit(stream_step, donate_argnums=(2,))  # the state is replaced every step

  def _put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if self._mesh is None:
      return {k: jax.device_put(v) for k, v in batch.items()}
    return global_batch.to_global_batch(batch, self._mesh)

  def _call(self, fn, *args):
    if self._mesh is None:
      return fn(*args)
    with jax.set_mesh(self._mesh):
      return fn(*args)

  def visual_query(self, params: Any, batches: Iterable[dict[str, np.ndarray]]
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ŝ_Y of every valid row of `batches`, and those rows' `label` / `source_index`."""
    embeddings, labels, indices = [], [], []
    for batch in batches:
      visual = global_batch.visual_field(batch)  # video, or cached X-encoder tokens
      inputs = self._put({k: batch[k] for k in (visual, "query_ids", "query_mask")})
      out = self._call(self._visual_query, params, inputs[visual], inputs["query_ids"], inputs["query_mask"])
      extra = {k: batch[k] for k in ("valid", "label", "source_index")}
      if jax.process_count() > 1:  # every host needs every row's bookkeeping, gathered like the embeddings
        extra = self._put(extra)
      valid = _to_host(extra["valid"])
      embeddings.append(_to_host(out)[valid])
      labels.append(_to_host(extra["label"])[valid])
      indices.append(_to_host(extra["source_index"])[valid])
    return np.concatenate(embeddings), {"label": np.concatenate(labels), "source_index": np.concatenate(indices)}

  def stream(self, params: Any, frames: Iterable[np.ndarray], query_ids: np.ndarray, query_mask: np.ndarray,
             reset_every: int | None = None) -> np.ndarray:
    """Ŝ_Y after every step of a batch of video streams fed together (`VLJEPA.stream_step`).

    `frames` yields each step's next frames `(b, k, H, W, C)` of this process's b rows of the
    global batch (the same rows every step), `query_ids` / `query_mask` `(b, Lq)` are their
    queries. The state stays on the device, donated from step to step; one program serves every
    step. `reset_every`: start every stream afresh (empty state) every that many steps; None never.
    Returns `(steps, global batch, D)`.
    """
    query = self._put({"ids": query_ids, "mask": query_mask})
    state, out = None, []
    for step, chunk in enumerate(frames):
      if state is None or (reset_every and step % reset_every == 0):
        empty = vljepa.initial_stream_state(self._model.config, chunk.shape[0])
        leaves, tree = jax.tree.flatten(jax.tree.map(np.asarray, empty))
        put = self._put({str(i): v for i, v in enumerate(leaves)})
        state = jax.tree.unflatten(tree, [put[str(i)] for i in range(len(leaves))])
      embedding, state = self._call(self._stream_step, params, self._put({"video": chunk})["video"], state,
                                    query["ids"], query["mask"])
      out.append(embedding)  # left on the device: the next step is dispatched without waiting
    return np.stack([_to_host(e) for e in out])

  def texts(self, params: Any, texts: Sequence[str], tokenizer) -> np.ndarray:
    """S_Y of each text, `(len(texts), D)`; every process passes the same texts."""
    n = len(texts)
    padded = list(texts) + [texts[-1]] * (-n % self._text_batch_size)
    ids, mask = tokenizer(padded)
    return self.map_rows(self._text, params, {"ids": ids, "mask": mask}, self._text_batch_size)[:n]

  def map_rows(self, fn, params: Any, rows: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """`fn(params, *rows)` over fixed-size batches of host rows that every process holds in full.

    The last batch is padded by repeating its last row (dropped from the output), so `fn`
    compiles once; under a mesh each process feeds its share of every global batch and the
    outputs are gathered back to every host.
    """
    n = len(next(iter(rows.values())))
    pad = -n % batch_size
    rows = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) if pad else v for k, v in rows.items()}
    out = []
    for start in range(0, n + pad, batch_size):
      batch = {k: v[start:start + batch_size] for k, v in rows.items()}
      if self._mesh is not None:
        # Every process holds all rows: give each its rows of the global batch.
        mine = np.array_split(np.arange(batch_size), jax.process_count())[jax.process_index()]
        batch = {k: v[mine] for k, v in batch.items()}
      put = self._put(batch)
      out.append(_to_host(self._call(fn, params, *put.values())))
    return np.concatenate(out)[:n]
