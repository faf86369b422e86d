r"""What the frozen X-encoder's feature cache buys: train-step and data-pipeline speed-up, storage per sample.

  python benchmarks/feature_cache.py                                # demo (video stage) and small, defaults
  python benchmarks/feature_cache.py --configs=demo --records=256 --rounds=2      # a quick run
  python benchmarks/feature_cache.py --configs=small --small_batch=8 --cache_dtype=float32

For each config (`--configs`: `demo` = `configs/demo.py:video`, `small` = `configs/small.py`, or any
`path[:arg]` spec) it builds the last stage exactly as `python -m vljepa_jax.main` does, with the
X-encoder **frozen** as the paper freezes V-JEPA 2: `model.freeze_x_encoder=True`, which stops its
gradient and puts it at learning rate 0 (`trainer.stage_lr_rules`: no Adam moments, no weight decay).
Neither config freezes it as shipped (both train their small ViT from scratch); the project's
ablations (`configs/vljepa_ablation.py`, base=demo) run the demo's video stage frozen the same way.
Compute is `--compute_dtype` (float32 by default, as `benchmarks/train_step.py --dtype=float32` on a CPU,
where bf16 matmuls are emulated). Then:

 1. **Cache.** The stage's training source, limited to its first `--records` records (the `limit`
    key every source spec takes), goes through `feature_cache_writer.write_cache` (the library's writer:
    the pipeline's own decode, the stage's X-encoder, ArrayRecord shards + features.json) into a
    temporary directory. Printed: the write's wall time (it includes building the model, its init
    and the X-encoder's compilation, as a real `python -m vljepa_jax.data.cache_features` run
    would; `--cache_batch` clips per X-encoder call), and **storage per sample**: the bytes of the
    `.array_record` shards over the records (tokens in `--cache_dtype`, plus each record's texts and
    msgpack framing, zstd-compressed by ArrayRecord's default options; each shard ends padded to a
    whole block, a few percent at a few hundred records), the mean record before compression, the
    tokens alone, and the bytes of the decoded clip the pipeline would otherwise hand over per
    sample, float32 (`video_dtype="float32"`, the default) and uint8 (`video_dtype="uint8"`). The
    procedural clips are mostly plain background, whose patches give identical tokens, so they
    compress far better on disk than a real video's tokens would: the uncompressed figure is the
    one to carry over to real data.

 2. **Data pipeline.** Host samples/s of `pipeline.make_iterator` over the original source and over
    the cache (`{"type": "features", "path": DIR}`), same data config, tokenizers, batch size (the
    config's own, `--pipeline_batch` to change) and `num_threads`, as `benchmarks/data_pipeline.py`
    measures: a new iterator, one warm-up batch (thread pools, first reads), then
    `--pipeline_batches` batches timed. The two sides alternate for `--rounds` rounds, each round
    with fresh iterators (a live iterator keeps reading ahead in the background, which would steal
    the other side's cores and pre-fill its own buffer); medians. For both configs the original
    source is the embedded procedural `shapes` dataset, so its "decoding" is rendering the clip
    (no file reads, no codec): a real video dataset costs more per clip to decode, so its speed-up
    would be larger.

 3. **Train step.** The library's jitted, donated train step (`trainer.Stage(...).step_fn` on a
    `TrainState` from `init_state`, as `benchmarks/train_step.py` builds it) of the stage reading
    video and of the same stage reading the cache, each on one fixed device batch: the first
    pipeline batch of each side. Both pipelines shuffle the same number of records with the same
    seed, so the two batches hold the same rows (checked: record indices and texts equal), and both
    states start from the same parameters. The cache is checked against the stage's X-encoder first
    (`feature_check.check_feature_sources`, as training does), and the first step's loss on video and
    on tokens is printed (equal up to the tokens' storage rounding). Each step is compiled (timed),
    run 3 times to warm up, then timed `--steps` steps at a time (default: those the video side
    runs in about 3 s, at least 2), video and tokens alternating for `--rounds` rounds (a pause
    between them lets XLA's worker threads sleep); medians. The small config's batch is
    `--small_batch` (4: ~3 s a step on 2 cores; its own 32 takes ~20 s); the demo's is its own 64
    (`--demo_batch` to change).

Then a table of every figure, and one summary line per config:

  feature cache <config>: step x<ratio> (<video> -> <tokens> samples/s), pipeline x<ratio> (<video> ->
  <tokens> samples/s), <bytes> B/sample (<dtype> tokens <shape>; <bytes> B uncompressed) vs <bytes> B
  float32 clip

The step's speed-up is 1 / (1 - f), f the share of the step the frozen X-encoder's forward pass takes
(the only work the cache removes from it): small in the demo (a 4-layer, 128-wide ViT on 32 tokens a
clip, beside MiniLM and a 4-layer predictor), larger in small (a 12-layer ViT-S on 256 tokens a clip);
f grows with the X-encoder and the clip. The pipeline's ratio is the
cost of producing a clip (here rendering it) against reading and unpacking its tokens; the texts are
tokenised on both sides.

`--host_memory` is the main job's flag, applied as `benchmarks/train_step.py` applies it.
"""
import os
import resource
import shutil
import statistics
import tempfile
import time

from absl import app
from absl import flags

import harness  # benchmarks/, beside this script
from vljepa_jax import host_memory  # no JAX import: the allocator is set before a backend starts
from vljepa_jax.train import feature_cache_writer

CONFIGS = {"demo": "configs/demo.py:video", "small": "configs/small.py"}
_ROUND_S = 3.0  # the video side's timed seconds per round when --steps is not given
_CONFIGS = flags.DEFINE_list("configs", ["demo", "small"], f"Configs to measure: names of {CONFIGS} or path[:arg] "
                             "specs (the last stage).")
_RECORDS = flags.DEFINE_integer("records", 512, "Records of the training source to cache (its first N, via the "
                                "source spec's `limit`); both sides of every measurement read these.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating video / cache rounds, for the step and the pipeline "
                               "(medians).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed train steps per side per round (default: as many as take about "
                              f"{_ROUND_S:.0f} s on the video side, at least 2: ~9 for the demo, 2 for small).")
_SMALL_BATCH = flags.DEFINE_integer("small_batch", 4, "Global batch of the small config's train step (its own is "
                                    "32: ~20 s a step on 2 CPU cores; 4: ~3 s).")
_DEMO_BATCH = flags.DEFINE_integer("demo_batch", None, "Global batch of the demo's train step (default: its own, 64).")
_PIPELINE_BATCH = flags.DEFINE_integer("pipeline_batch", None, "Batch size of the pipeline measurement (default: the "
                                       "config's own, 64 demo, 32 small).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 10, "Timed pipeline batches per side per round, after "
                                         "one warm-up batch.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", None, "data.num_threads of both pipelines (default: the config's; "
                                    "demo 2, small 4).")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "Compute dtype of the configs "
                           "(float32 on a CPU, as benchmarks/train_step.py --dtype=float32).")
_CACHE_DTYPE = flags.DEFINE_enum("cache_dtype", "bfloat16", ["bfloat16", "float32"], "Storage dtype of the cached "
                                 "tokens (the writer's --dtype; bfloat16 is its default).")
_CACHE_BATCH = flags.DEFINE_integer("cache_batch", 64, "X-encoder batch of the cache writer (its "
                                    "--batch_size; its default, eval_batch_size=256, needs more host memory).")
_HOST_MEMORY = flags.DEFINE_enum("host_memory", "auto", host_memory.MODES, "As the main job's flag "
                                  "(vljepa_jax/host_memory.py).")

_PAUSE_S = 0.5  # between timed runs of the two sides: XLA's and Grain's threads spin for a moment after a call
_WARMUP_STEPS = 3


def _only_source(data) -> tuple[str, dict]:
  """(name, spec) of a data config's one source."""
  sources = data.sources.to_dict() if hasattr(data.sources, "to_dict") else data.sources
  if not isinstance(sources, dict) or len(sources) != 1:
    raise app.UsageError(f"expected one named training source, got {sources!r}")
  return next(iter(sources.items()))


def frozen_config(spec: str, name: str):
  """The config, its X-encoder frozen (flag and LR rule), its one training source limited to `--records`, and
  the step's batch size and compute dtype; also (stage name, resolved stage config, the config's own batch)."""
  from vljepa_jax.train import stages as stages_lib  # pylint: disable=g-import-not-at-top
  config = harness.load_config(spec)
  with config.unlocked():
    config.model.freeze_x_encoder = True  # the library then puts the X-encoder at LR 0 (trainer.stage_lr_rules)
    config.dtype = _DTYPE.value
    source_name, _ = _only_source(config.data)
    config.data.sources[source_name]["limit"] = _RECORDS.value
    if _NUM_THREADS.value:
      config.data.num_threads = _NUM_THREADS.value
    own_batch = stages_lib.resolve(config)[-1][1].batch_size
    batch = _SMALL_BATCH.value if name == "small" else _DEMO_BATCH.value if name == "demo" else None
    if batch:
      config.batch_size = batch
  stage_name, stage_config = stages_lib.resolve(config)[-1]
  # A stage that overrides one of these keys itself would not see the top-level change: refuse rather than
  # measure something else.
  _, stage_source = _only_source(stage_config.data)
  if (stage_source.get("limit") != _RECORDS.value or not stage_config.model.freeze_x_encoder
      or (batch and stage_config.batch_size != batch)):
    raise app.UsageError(f"{spec}: stage {stage_name!r} overrides the data source, model, LR rules or batch size "
                         "this benchmark sets at the top level")
  return config, stage_name, stage_config, own_batch


def cached_stage_config(config, path: str):
  """The last stage's config with the feature cache at `path` in place of its training source."""
  from vljepa_jax.train import stages as stages_lib  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.sources = {"cache": {"type": "features", "path": path}}
  stage_name, stage_config = stages_lib.resolve(config)[-1]
  if _only_source(stage_config.data)[1]["type"] != "features":
    raise app.UsageError(f"stage {stage_name!r} overrides data.sources")
  return stage_config


def storage(path: str, metadata: dict, data) -> dict:
  """Bytes per cached sample: on disk (the shards over the records: zstd-compressed by ArrayRecord's default
  options, each shard padded to whole blocks, which a few hundred records do not amortise fully), the record
  before compression (msgpack: tokens + texts), the tokens alone, and the decoded clip."""
  import grain  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import feature_cache  # pylint: disable=g-import-not-at-top
  shards = [os.path.join(path, name) for name in metadata["shards"]]
  records = metadata["num_records"]
  source = grain.sources.ArrayRecordDataSource(shards)
  record_bytes = statistics.mean(len(source[i]) for i in range(len(source)))
  shape = tuple(metadata["token_shape"])
  clip = data.num_frames * data.crop_size * data.crop_size * 3
  return {"records": records, "bytes_per_sample": sum(os.path.getsize(s) for s in shards) / records,
          "record_bytes": record_bytes,
          "token_bytes": int(np.prod(shape)) * np.dtype(feature_cache.STORAGE_DTYPES[metadata["dtype"]]).itemsize,
          "metadata_bytes": os.path.getsize(os.path.join(path, feature_cache.METADATA_FILE)),
          "token_shape": shape, "dtype": metadata["dtype"], "float32_clip": 4 * clip, "uint8_clip": clip,
          "clip": f"{data.num_frames}x{data.crop_size}^2"}


def pipeline_rates(sides: dict, batch_size: int, tokenizers: dict) -> dict[str, list[float]]:
  """Samples/s of each side's pipeline (`sides`: name -> DataConfig), alternating rounds of fresh iterators."""
  from vljepa_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  rates = {name: [] for name in sides}
  for r in range(_ROUNDS.value):
    for name, data in sides.items():
      time.sleep(_PAUSE_S)
      it = pipeline.make_iterator(data, global_batch_size=batch_size, process_index=0, process_count=1, **tokenizers)
      next(it)  # warm-up: thread pools, first reads
      start = time.perf_counter()
      for _ in range(_PIPELINE_BATCHES.value):
        next(it)
      rates[name].append(_PIPELINE_BATCHES.value * batch_size / (time.perf_counter() - start))
      it.close()
    print(f"    round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()) + " samples/s", flush=True)
  return rates


def _host_batch(stage) -> dict:
  """The stage's first pipeline batch, as host arrays (bookkeeping fields kept for the row check)."""
  it = stage.make_iterator()
  host = next(it)
  it.close()
  return host


def _check_same_rows(video_host: dict, token_host: dict) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  for key in ("source_index", "query_ids", "target_ids"):
    if key in video_host and not np.array_equal(video_host[key], token_host[key]):
      raise AssertionError(f"the video and cached batches differ in {key}: not the same rows")


def step_rates(stages: dict, hosts: dict) -> dict:
  """Compile seconds, first-step loss and seconds per step (one per round) of each side's train step."""
  import jax  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import feature_check  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import train_step  # pylint: disable=g-import-not-at-top

  steps, out = {}, {"compile_s": {}, "loss": {}, "warm_s": {}, "seconds": {name: [] for name in stages}}
  for name, stage in stages.items():
    state = stage.init_state(None)
    if name == "cache":  # as the trainer does before its first step: the cache is this X-encoder's
      feature_check.check_feature_sources(stage.data, stage.setup.model, state.params, stage.mesh, stage.rules)
    batch = global_batch.to_global_batch(train_step.batch_inputs(hosts[name]), stage.mesh)
    start = time.perf_counter()
    with jax.set_mesh(stage.mesh):
      stage.step_fn.jitted.lower(state, batch).compile()
    out["compile_s"][name] = time.perf_counter() - start
    holder = {"state": state}

    def run(stage=stage, holder=holder, batch=batch):
      holder["state"], metrics = stage.step_fn(holder["state"], batch)
      return metrics

    steps[name] = run
    for i in range(_WARMUP_STEPS):
      start = time.perf_counter()
      metrics = jax.block_until_ready(run())
      warm_s = time.perf_counter() - start
      if i == 0:
        out["loss"][name] = float(metrics["loss"])
    out["warm_s"][name] = warm_s
    print(f"    {name}: compiled in {out['compile_s'][name]:.1f} s, first-step loss {out['loss'][name]:.5f}, "
          f"last warm-up step {warm_s * 1e3:.0f} ms", flush=True)
  calls = _STEPS.value or max(2, round(_ROUND_S / out["warm_s"]["video"]))
  out["steps"] = calls
  print(f"    timing {calls} steps per side per round", flush=True)
  for r in range(_ROUNDS.value):
    for name, run in steps.items():
      time.sleep(_PAUSE_S)
      out["seconds"][name].append(harness.median_time(run, calls, jax.block_until_ready))
    print(f"    round {r + 1}: " + ", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in out["seconds"].items())
          + " per step", flush=True)
  return out


def measure(name: str, spec: str, root: str) -> dict:
  from vljepa_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import model_setup, sharding, trainer  # pylint: disable=g-import-not-at-top

  config, stage_name, stage_config, own_batch = frozen_config(spec, name)
  source_name, source_spec = _only_source(stage_config.data)
  print(f"\n{name} ({spec}, stage {stage_name!r}): X-encoder frozen (model.freeze_x_encoder=True, "
        f"which sets its LR to 0), {stage_config.dtype} compute; source {source_name!r} = {source_spec}"
        + (" (the embedded procedural dataset: its 'decoding' is rendering the clip)"
           if source_spec["type"] == "shapes" else ""), flush=True)
  workdir = os.path.join(root, name)
  path = os.path.join(workdir, "features")

  start = time.perf_counter()
  metadata = feature_cache_writer.write_cache(config, path, batch_size=_CACHE_BATCH.value, dtype=_CACHE_DTYPE.value)
  write_s = time.perf_counter() - start
  plain_data = pipeline.DataConfig.from_dict(stage_config.data)
  store = storage(path, metadata, plain_data)
  print(f"  cache: {store['records']} records in {write_s:.1f} s ({store['records'] / write_s:.1f} records/s, "
        f"including model setup and compilation)\n"
        f"  storage: {store['bytes_per_sample']:,.0f} B/sample on disk (zstd, shards padded to whole blocks), "
        f"{store['record_bytes']:,.0f} B/record uncompressed, of which tokens {store['token_bytes']:,} B "
        f"({store['dtype']} {store['token_shape']}); decoded clip {store['clip']}: {store['float32_clip']:,} B "
        f"float32, {store['uint8_clip']:,} B uint8; features.json {store['metadata_bytes']:,} B", flush=True)

  features_stage_config = cached_stage_config(config, path)
  setup = model_setup.build(config, cache_dir=os.path.join(workdir, "models"))  # one model serves both sides
  mesh = sharding.make_mesh(dict(stage_config.mesh))
  stages = {"video": trainer.Stage(stage_config, stage_name, setup, mesh, os.path.join(workdir, "video")),
            "cache": trainer.Stage(features_stage_config, stage_name, setup, mesh, os.path.join(workdir, "cache"))}

  pipeline_batch = _PIPELINE_BATCH.value or own_batch
  threads = stages["video"].data.num_threads
  print(f"  data pipeline: batch {pipeline_batch}, num_threads {threads}, {_PIPELINE_BATCHES.value} batches per "
        "side per round after one warm-up batch", flush=True)
  tokenizers = {"query_tokenizer": setup.query_tokenizer, "target_tokenizer": setup.target_tokenizer}
  rates = pipeline_rates({n: s.data for n, s in stages.items()}, pipeline_batch, tokenizers)

  hosts = {n: _host_batch(s) for n, s in stages.items()}
  _check_same_rows(hosts["video"], hosts["cache"])
  batch = stage_config.batch_size
  print(f"  train step: batch {batch} (same rows on both sides), {_WARMUP_STEPS} warm-up steps per side, then "
        f"{_ROUNDS.value} alternating rounds", flush=True)
  timed = step_rates(stages, hosts)

  step_sps = {n: batch / statistics.median(v) for n, v in timed["seconds"].items()}
  pipe_sps = {n: statistics.median(v) for n, v in rates.items()}
  shutil.rmtree(workdir, ignore_errors=True)
  return {"name": name, "spec": spec, "batch": batch, "pipeline_batch": pipeline_batch, "threads": threads,
          "write_s": write_s, "storage": store, "step": step_sps, "pipeline": pipe_sps, **timed,
          "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _rate(samples_per_s: float) -> str:
  return f"{samples_per_s:.1f}" if samples_per_s >= 10 else f"{samples_per_s:.2f}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  retained = host_memory.retain_freed_memory(_HOST_MEMORY.value)  # before any backend starts, as main.py does
  print(harness.machine_line() + f", host memory {'retained' if retained else 'system malloc'}", flush=True)
  start = time.perf_counter()
  results = []
  with tempfile.TemporaryDirectory() as root:
    for name in _CONFIGS.value:
      results.append(measure(name, CONFIGS.get(name, name), root))
  print()
  harness.print_table(["config", "step batch", "video step samples/s", "cache step samples/s", "step x",
                "compile s video / cache", "pipeline batch, threads", "video pipeline samples/s",
                "cache pipeline samples/s", "pipeline x", "cache B/sample on disk (uncompressed)", "tokens",
                "float32 / uint8 clip B", "cache write s (records)"],
               [[r["name"], r["batch"], _rate(r["step"]["video"]), _rate(r["step"]["cache"]),
                 f"{r['step']['cache'] / r['step']['video']:.2f}",
                 f"{r['compile_s']['video']:.1f} / {r['compile_s']['cache']:.1f}",
                 f"{r['pipeline_batch']}, {r['threads']}", _rate(r["pipeline"]["video"]),
                 _rate(r["pipeline"]["cache"]), f"{r['pipeline']['cache'] / r['pipeline']['video']:.2f}",
                 f"{r['storage']['bytes_per_sample']:,.0f} ({r['storage']['record_bytes']:,.0f})",
                 f"{r['storage']['dtype']} {r['storage']['token_shape']}",
                 f"{r['storage']['float32_clip']:,} / {r['storage']['uint8_clip']:,}",
                 f"{r['write_s']:.1f} ({r['storage']['records']})"] for r in results])
  for r in results:
    s = r["storage"]
    print(f"feature cache {r['name']}: step x{r['step']['cache'] / r['step']['video']:.2f} "
          f"({_rate(r['step']['video'])} -> {_rate(r['step']['cache'])} samples/s), pipeline "
          f"x{r['pipeline']['cache'] / r['pipeline']['video']:.2f} ({_rate(r['pipeline']['video'])} -> "
          f"{_rate(r['pipeline']['cache'])} samples/s), {s['bytes_per_sample']:,.0f} B/sample ({s['dtype']} tokens "
          f"{s['token_shape']}; {s['record_bytes']:,.0f} B uncompressed) vs {s['float32_clip']:,} B float32 clip")
  print(f"(X-encoder frozen in every config; {_DTYPE.value} compute; peak host memory "
        f"{max(r['peak_host_mib'] for r in results):,.0f} MiB; {time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
  app.run(main)
