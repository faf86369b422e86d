"""Writing a feature cache: the frozen X-encoder run once over a config's data source.

The library side of `python -m vljepa_jax.data.cache_features` (whose docstring describes what is
cached and how), callable from Python and tests without that command's flags:

    metadata = feature_cache_writer.write_cache(config, "/data/feats", batch_size=64)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from absl import logging
import numpy as np

from vljepa_jax.data import feature_cache
from vljepa_jax.eval import results as results_lib

LOG_EVERY_S = 30.0


def data_config(config: Any, stage: str | None, source: str | None, eval_name: str | None
                ) -> tuple[str, Any, Any, str]:
  """(stage name, its config, `DataConfig` of the one source to cache (unshuffled, one epoch), the source's name)."""
  from vljepa_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import stages as stages_lib  # pylint: disable=g-import-not-at-top
  stages = dict(stages_lib.resolve(config))
  name = stage or list(stages)[-1]
  if name not in stages:
    raise ValueError(f"--stage={name!r} is not in config.stage_order {list(stages)}")
  stage_config = stages[name]
  data = stage_config.data.to_dict()
  if eval_name is not None:
    if eval_name not in stage_config.evals or "data" not in stage_config.evals[eval_name]:
      with_data = [n for n in stage_config.evals if "data" in stage_config.evals[n]]
      raise ValueError(f"--eval={eval_name!r}: expected an evaluator with a data config, one of {with_data}")
    own = stage_config.evals[eval_name].data.to_dict()
    data = {**{k: data[k] for k in evaluation.INHERITED_DATA}, **own}
  sources = data["sources"]
  names = sorted(sources) if isinstance(sources, dict) else [str(i) for i in range(len(sources))]
  specs = dict(zip(names, [sources[n] for n in names] if isinstance(sources, dict) else sources))
  if source is None and len(specs) > 1:
    raise ValueError(f"the data has several sources {names}; choose one with --source (cache each on its own and "
                     "mix the caches with weights)")
  chosen = source if source is not None else names[0]
  if chosen not in specs:
    raise ValueError(f"--source={chosen!r}: expected one of {names}")
  if specs[chosen]["type"] == pipeline.FEATURES_SOURCE:
    raise ValueError(f"source {chosen!r} is a feature cache already")
  data.update(sources={chosen: specs[chosen]}, shuffle=False, num_epochs=1)
  return name, stage_config, pipeline.DataConfig.from_dict(data), chosen


def write_cache(config: Any, output: str, *, stage: str | None = None, source: str | None = None,
                eval_name: str | None = None, batch_size: int | None = None, dtype: str = "bfloat16",
                overwrite: bool = False) -> dict[str, Any]:
  """Writes the cache (module docstring) and returns its metadata."""
  import grain  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import media as media_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import feature_check  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import model_setup  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import sharding  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top

  if dtype not in feature_cache.STORAGE_DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected one of {list(feature_cache.STORAGE_DTYPES)}")
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"--output {output!r} exists; pass --overwrite to replace it")
  stage, stage_config, data, source_name = data_config(config, stage, source, eval_name)
  if not stage_config.model.get("freeze_x_encoder", True):
    raise ValueError("the config trains its X-encoder (model.freeze_x_encoder=False): its output changes every step, "
                     "so a cache of it would be stale; set --config.model.freeze_x_encoder=True if it is frozen")
  process, processes = jax.process_index(), jax.process_count()
  batch_size = batch_size or stage_config.eval_batch_size
  local_batch = pipeline.per_process_batch_size(batch_size, processes)

  mesh = sharding.make_mesh(dict(stage_config.mesh))
  staging = output + ".tmp"
  if process == 0:
    shutil.rmtree(staging, ignore_errors=True)
  _barrier("staging", processes)
  os.makedirs(staging, exist_ok=True)
  setup = model_setup.build(stage_config, cache_dir=os.path.join(staging, "models"))
  stage_runner = trainer.Stage(stage_config, stage, setup, mesh, os.path.join(staging, "stage"))
  params = stage_runner.init_params()
  encoder = feature_check.XEncoder(setup.model, mesh, stage_runner.rules)
  probe = encoder.probe(params, data.num_frames, data.crop_size)

  spec = data.sources[0]
  source = pipeline.make_source(spec, data)
  indices = grain.MapDataset.range(len(source))[process::processes]

  def load(index: int) -> tuple[int, Any, Any]:
    """(index, record, uint8 frames) or (index, record id, BadSample)."""
    record = None
    try:
      record = source[int(index)]
      frames, _ = pipeline.decode_frames(record, data)
      return int(index), record, frames
    except media_lib.BadSample as e:
      return int(index), (record or {}).get("id", f"{source!r}[{int(index)}]"), e

  elements = iter(indices.map(load).to_iter_dataset(grain.ReadOptions(num_threads=data.num_threads,
                                                                      prefetch_buffer_size=4 * local_batch)))
  writer = array_record_module.ArrayRecordWriter(
      os.path.join(staging, feature_cache.shard_name(process, processes)), "group_size:1")
  seen, written, skipped, examples = 0, 0, {}, []
  token_shape = None
  start = last_log = time.time()
  total = len(indices)
  try:
    exhausted = False
    # Every process runs the same number of global batches (the X-encoder is one SPMD program), so a
    # process whose records ran out feeds padding rows until all have.
    most = -(-len(source) // processes)  # process 0's records: [0::processes] gets the most
    batches = -(-most // local_batch)
    for _ in range(batches):
      rows: list[tuple[int, Any, np.ndarray]] = []
      while not exhausted and len(rows) < local_batch:
        try:
          index, record, frames = next(elements)
        except StopIteration:
          exhausted = True
          break
        seen += 1
        if isinstance(frames, media_lib.BadSample):
          skipped[frames.reason] = skipped.get(frames.reason, 0) + 1
          if len(examples) < 5:
            examples.append(f"{record}: {frames.reason}: {frames.detail}")
          continue
        rows.append((index, record, frames))
      video = np.zeros((local_batch, data.num_frames, data.crop_size, data.crop_size, 3), np.uint8)
      for r, (_, _, frames) in enumerate(rows):
        video[r] = frames
      host = media_lib.normalize(video) if data.video_dtype == "float32" else video  # as the pipeline would
      tokens = encoder(params, global_batch.to_global_batch({"video": host}, mesh)["video"])
      local = np.asarray(multihost_utils.global_array_to_host_local_array(
          tokens, mesh, global_batch.batch_sharding(mesh).spec))
      token_shape = local.shape[1:]
      for r, (index, record, _) in enumerate(rows):
        record = dict(record)
        record.setdefault("id", f"{source_name}#{index}")
        writer.write(feature_cache.encode_record(local[r], record, dtype))
        written += 1
      if time.time() - last_log > LOG_EVERY_S:
        last_log = time.time()
        logging.info("feature cache: %d/%d records (%.1f/s)", seen, total, seen / (last_log - start))
    for _, record, frames in elements:  # bad records after the last good one: counted like the others
      seen += 1
      if not isinstance(frames, media_lib.BadSample):
        raise AssertionError(f"record {record.get('id')!r} was read but not encoded")
      skipped[frames.reason] = skipped.get(frames.reason, 0) + 1
  finally:
    writer.close()
  bad = sum(skipped.values())
  if bad > data.error_budget * max(seen, 1):
    raise RuntimeError(f"{bad} of {seen} records could not be used ({skipped}), over data.error_budget="
                       f"{data.error_budget}; no cache written. Examples:\n  " + "\n  ".join(examples))
  counts = np.asarray([written, seen] + [skipped.get(r, 0) for r in media_lib.SKIP_REASONS], np.int64)
  if processes > 1:
    counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(processes, -1).sum(axis=0)
  metadata = {
      "format": feature_cache.FORMAT_VERSION,
      "num_records": int(counts[0]),
      "records_read": int(counts[1]),
      "skipped": {r: int(n) for r, n in zip(media_lib.SKIP_REASONS, counts[2:]) if n},
      "shards": [feature_cache.shard_name(p, processes) for p in range(processes)],
      "token_shape": list(token_shape or ()),
      "dtype": dtype,
      "source": {"name": source_name, "spec": {k: v for k, v in spec.items()}},
      "label_names": list(getattr(source, "label_names", None) or []) or None,
      **feature_cache.fingerprint(setup.model.config, data, probe),
  }
  _barrier("written", processes)
  if process == 0:
    for scratch in ("models", "stage"):
      shutil.rmtree(os.path.join(staging, scratch), ignore_errors=True)
    results_lib.write_atomic(os.path.join(staging, feature_cache.METADATA_FILE), json.dumps(metadata, indent=1))
    if os.path.exists(output):
      shutil.rmtree(output)
    os.replace(staging, output)
    logging.info("feature cache: %d records (%d skipped) in %.1f s -> %s", metadata["num_records"], bad,
                 time.time() - start, output)
  _barrier("renamed", processes)
  return metadata


def _barrier(name: str, processes: int) -> None:
  if processes > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"cache_features:{name}")


