"""On-disk layout of a converted model, written atomically.

    DIR/
      model.json      {"format": 1, "family": ..., "config": {...}, "source": ...[, "omitted": [...]]}
      params/         Orbax checkpoint of the parameter tree
      tokenizer/      the tokenizer files the model needs (when the source has them)

Everything is written into a sibling temporary directory that is renamed to DIR only once
complete, so an interrupted or failed conversion never leaves a partial DIR behind, and an
existing DIR is only replaced when asked to.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vljepa_jax.convert.mapping import ConversionError

FORMAT_VERSION = 1
METADATA_FILE = "model.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


@contextlib.contextmanager
def atomic_directory(output: str, *, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that becomes `output` when the block exits cleanly."""
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise ConversionError(f"output {output} already exists; choose another path or pass --overwrite")
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.exists(output):
    old = os.path.join(parent, f".{os.path.basename(output)}.old-{uuid.uuid4().hex[:8]}")
    os.rename(output, old)
  os.rename(tmp, output)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def save(directory: str, *, family: str, config: dict[str, Any], params: Any, source: str,
         tokenizer_files: list[str] = (), omitted: tuple[str, ...] = ()) -> None:
  """Writes a converted model into `directory` (normally an `atomic_directory`).

  `omitted`: top-level parameter subtrees of the model deliberately not in `params` (recorded
  as "omitted" in model.json, so `load` knows not to expect them).
  """
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(os.path.abspath(directory), PARAMS_DIR), params)
  checkpointer.wait_until_finished()
  if tokenizer_files:
    os.makedirs(os.path.join(directory, TOKENIZER_DIR))
    for f in tokenizer_files:
      shutil.copy2(f, os.path.join(directory, TOKENIZER_DIR, os.path.basename(f)))
  with open(os.path.join(directory, METADATA_FILE), "w") as f:
    meta = {"format": FORMAT_VERSION, "family": family, "config": config, "source": source}
    if omitted:
      meta["omitted"] = list(omitted)
    json.dump(meta, f, indent=2)


def read_metadata(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.exists(path):
    raise ConversionError(f"{directory} is not a converted vljepa-jax model: {METADATA_FILE} is missing")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT_VERSION:
    raise ConversionError(f"{path}: format {meta.get('format')!r} is not the supported {FORMAT_VERSION}")
  return meta


def restore_params(directory: str, abstract: Any) -> Any:
  """Restores the parameter tree with the structure, shapes and dtypes of `abstract`.

  Leaves of `abstract` that carry a `sharding` are restored directly onto it; the rest land
  on the default device.
  """
  def with_sharding(x):
    sharding = getattr(x, "sharding", None) or jax.sharding.make_single_device_sharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  target = jax.tree.map(with_sharding, abstract)
  restored = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(directory), PARAMS_DIR), target)
  return jax.tree.map(jnp.asarray, restored)
