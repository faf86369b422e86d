"""The X-encoder on device, for the feature cache: writing it, and checking a run may read it.

`XEncoder(model, mesh, rules)(params, video)` is the model's `encode_visual` jitted over the mesh
(batch split over the batch axes, parameters as the run lays them out): what
`python -m vljepa_jax.data.cache_features` stores. `check_feature_sources` runs it on the cache's
probe clip with the run's own parameters and refuses a cache another X-encoder wrote
(`data/feature_cache.py`), before the first train or evaluation step.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vljepa_jax.data import feature_cache
from vljepa_jax.data import global_batch
from vljepa_jax.data import pipeline


class XEncoder:
  """`(params, video (B, T, S, S, 3) host or global array) -> tokens (B, N, Dv)`, one program per shape."""

  def __init__(self, model: nn.Module, mesh: jax.sharding.Mesh, rules: Any = None):
    self.model, self.mesh = model, mesh

    def encode(params, video):
      with nn.logical_axis_rules(rules or ()):
        return model.apply({"params": params}, global_batch.normalize_video(video), method="encode_visual")

    self._encode = jax.jit(encode, out_shardings=global_batch.batch_sharding(mesh))
    # The probe's one row, replicated: every process holds the whole output without a gather.
    self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._encode_replicated = jax.jit(encode, out_shardings=self._replicated)

  def __call__(self, params: Any, video: Any) -> jax.Array:
    with jax.set_mesh(self.mesh):
      return self._encode(params, video)

  def probe(self, params: Any, num_frames: int, crop_size: int) -> np.ndarray:
    """Tokens `(1, N, Dv)` of the fixed probe clip (`feature_cache.probe_clip`), on every process."""
    clip = jax.device_put(feature_cache.probe_clip(num_frames, crop_size), self._replicated)
    with jax.set_mesh(self.mesh):
      tokens = self._encode_replicated(params, clip)
    return np.asarray(jax.device_get(tokens), np.float32)


def check_feature_sources(data: pipeline.DataConfig, model: nn.Module, params: Any, mesh: jax.sharding.Mesh,
                          rules: Any = None) -> int:
  """Refuses `data`'s `features` sources unless the run's X-encoder wrote them; returns how many were checked.

  The preprocessing was checked when the pipeline opened them; here: architecture, chunking and the
  probe clip's tokens under `params`.
  """
  specs = [spec for spec in data.sources if spec["type"] == pipeline.FEATURES_SOURCE]
  if not specs:
    return 0
  if not model.config.freeze_x_encoder:
    raise feature_cache.CacheError("data.sources reads cached X-encoder features, but the model trains its X-encoder "
                                   "(model.freeze_x_encoder=False): the cache would be stale after the first step")
  tokens = XEncoder(model, mesh, rules).probe(params, data.num_frames, data.crop_size)
  for spec in specs:
    path = spec["path"]
    feature_cache.check_x_encoder(path, feature_cache.read_metadata(path), model.config, tokens)
  return len(specs)
