"""Runs the frozen X-encoder once over a data source and writes its tokens: a feature cache.

    python -m vljepa_jax.data.cache_features --config=configs/vljepa_pretrain.py:video8 --output=$DATA/feats \\
        --config.init.x_encoder=$CKPT/vitl --config.init.predictor=... --config.init.y_encoder=... \\
        --config.data.sources.main.path=$DATA/action100m [--stage=NAME] [--source=NAME] [--eval=NAME] \\
        [--batch_size=N] [--dtype=bfloat16|float32] [--overwrite]

then train (or evaluate) on it with `--config.data.sources.main.type=features
--config.data.sources.main.path=$DATA/feats`: batches carry `visual_tokens` instead of `video`,
and the model starts at the predictor (layout and checks in `feature_cache.py`).

What is cached is what the run would read: one source of the stage's `data.sources` (`--source`
when it has several; `--eval=NAME` for an evaluator's data, with the settings it inherits),
decoded by the pipeline's own `decode_frames` with the stage's `num_frames`, `crop_size` and
`short_side`, through the X-encoder the config loads (`init.x_encoder`, `init.checkpoint`), which
must be frozen. Records come in the source's order; the pipeline shuffles the cache as it would
the source. Unusable records are skipped and counted per reason against `data.error_budget`.

Sharded like training: each global batch is split over the mesh's batch axes, and with several
JAX processes (`--coordinator_address`, ...) each process encodes and writes its own records
(`[process_index::process_count]`) to its own shard. `config.cpu_devices`, `--host_memory` and the
`jax.distributed` flags apply as in `vljepa_jax.main` (`main.start_process`). Everything is
written under `OUTPUT.tmp`, and process 0 writes `features.json` last and renames the directory
to OUTPUT, so an interrupted run leaves no cache behind that looks complete.
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import jax

from vljepa_jax import main as main_lib
from vljepa_jax.data import feature_cache
from vljepa_jax.train import feature_cache_writer

_OUTPUT = flags.DEFINE_string("output", None, "The cache directory to write.")
_STAGE = flags.DEFINE_string("stage", None, "Whose data and X-encoder: a stage of config.stage_order (default: the "
                             "last).")
_SOURCE = flags.DEFINE_string("source", None, "Which of the data's sources (a name in data.sources); needed when it "
                              "has several.")
_EVAL = flags.DEFINE_string("eval", None, "Cache an evaluator's data (config.evals.NAME.data) instead of the stage's.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch of the X-encoder (default: the config's "
                                   "eval_batch_size).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", list(feature_cache.STORAGE_DTYPES), "Storage dtype of the tokens.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing cache at --output.")

def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/vljepa_pretrain.py:video8")
  if not _OUTPUT.value:
    raise app.UsageError("--output is required: the cache directory to write")
  if flags.FLAGS.workdir or flags.FLAGS["mode"].present or flags.FLAGS["eval_steps"].present:
    raise app.UsageError("--workdir, --mode and --eval_steps are vljepa_jax.main's; this tool writes to --output")
  main_lib.start_process(config)  # config.cpu_devices, --host_memory and jax.distributed, as training
  try:
    metadata = feature_cache_writer.write_cache(config, _OUTPUT.value, stage=_STAGE.value, source=_SOURCE.value,
                                                eval_name=_EVAL.value,
                           batch_size=_BATCH_SIZE.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
  except (FileExistsError, ValueError, RuntimeError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  skipped = sum(metadata["skipped"].values())
  print(f"cached {metadata['num_records']} records ({skipped} skipped), tokens {tuple(metadata['token_shape'])} "
        f"{metadata['dtype']} -> {os.path.abspath(_OUTPUT.value)} ({jax.device_count()} devices)")


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
