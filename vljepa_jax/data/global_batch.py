"""Host batches -> global `jax.Array`s sharded over the mesh's batch axes.

Every process feeds its own slice of the global batch (the pipeline's per-process batch);
`jax.make_array_from_process_local_data` stitches the slices into one array whose leading
dimension is the global batch, laid out over the batch mesh axes. Training and evaluation both
use this one function, so a batch is never silently replicated or gathered on one host.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vljepa_jax.data import media

DEFAULT_BATCH_AXES = ("data", "fsdp")
# The visual field of a pipeline batch: pixels, or the X-encoder's cached tokens (`features` sources).
VIDEO = "video"
VISUAL_TOKENS = "visual_tokens"


def batch_sharding(mesh: jax.sharding.Mesh, batch_axes: Sequence[str] = DEFAULT_BATCH_AXES
                   ) -> jax.sharding.NamedSharding:
  """Leading dimension split over the batch axes the mesh has; everything else replicated."""
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  if not axes:
    raise ValueError(f"mesh axes {mesh.axis_names} contain none of the batch axes {tuple(batch_axes)}")
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))


def to_global_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
                    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES) -> dict[str, jax.Array]:
  """Puts this process's host batch onto the mesh as global arrays (one call per leaf).

  The per-process batch must split evenly over the batch shards this process's devices hold;
  the global shape is inferred by JAX from the sharding (processes that share batch shards, e.g.
  across a tensor-parallel axis, must feed identical rows).
  """
  sharding = batch_sharding(mesh, batch_axes)

  def put(name: str, value: Any) -> jax.Array:
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(f"batch field {name!r} is a scalar; every field needs a leading batch dimension")
    try:
      return jax.make_array_from_process_local_data(sharding, value)
    except ValueError as e:
      raise ValueError(f"batch field {name!r} with shape {value.shape} does not fit {sharding}: {e}") from None

  return {name: put(name, value) for name, value in batch.items()}


def normalize_video(video: jax.Array, dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """Device-side ImageNet normalisation of uint8 frames (pipeline `video_dtype="uint8"`).

  The same formula as `media.normalize`, fused by XLA into the first op that reads the video.
  Float input is returned unchanged: it was normalised on the host.
  """
  if jnp.issubdtype(video.dtype, jnp.floating):
    return video.astype(dtype)
  scale = 1.0 / (255.0 * jnp.asarray(media.IMAGENET_STD, jnp.float32))
  offset = -jnp.asarray(media.IMAGENET_MEAN, jnp.float32) / jnp.asarray(media.IMAGENET_STD, jnp.float32)
  return (video.astype(jnp.float32) * scale + offset).astype(dtype)


def visual_field(batch: Mapping[str, Any]) -> str:
  """Which visual field `batch` carries: "visual_tokens" from a feature cache, else "video"."""
  return VISUAL_TOKENS if VISUAL_TOKENS in batch else VIDEO


def prepare_visual(visual: jax.Array) -> jax.Array:
  """The model's visual input: video `(B, T, H, W, C)` normalised (`normalize_video`), or cached
  X-encoder tokens `(B, N, Dv)` as they are (the model skips its X-encoder for them)."""
  return visual if visual.ndim == 3 else normalize_video(visual)
