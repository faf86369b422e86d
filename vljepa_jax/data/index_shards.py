"""Fills the WebDataset index cache before a run, with every core: `python -m vljepa_jax.data.index_shards`.

    python -m vljepa_jax.data.index_shards --path='/data/laion/{00000..09999}.tar' [--processes=N] \\
        [--media_keys=jpg,png] [--caption_key=txt] [--json_key=json] [--index_cache_dir=DIR]

A `webdataset` source indexes the shards its cache lacks when a run builds it (`webdataset_source.py`):
with this command in a child process when 16 or more are missing, in its threads otherwise. On a
large dataset that first start takes the cores for a long time, and on a pod every host spends it.
Run ahead of the run, this indexes the shards once, one process per core, into the cache the run
then reads: give it the source's own `path`, `media_keys`, `caption_key`, `json_key` and
`index_cache_dir` (the defaults are the source's), on a machine that sees the shards at the paths
the run will (the cache is keyed by absolute path), with `--index_cache_dir` on a filesystem every
host reads, or on each host. Shards already cached are skipped, so it can be rerun after new shards
arrive. Exits 1 if an entry could not be written.
"""
from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from vljepa_jax import cpu_devices
from vljepa_jax.data import webdataset_source

_PATH = flags.DEFINE_multi_string("path", None, "The shards, as the source's `path`: a directory, glob, brace "
                                  "pattern or path; repeat it for several.", required=True)
_MEDIA_KEYS = flags.DEFINE_list("media_keys", None, "The source's media_keys (default: any image or video "
                                "extension).")
_CAPTION_KEY = flags.DEFINE_string("caption_key", "txt", "The source's caption_key ('' for none).")
_JSON_KEY = flags.DEFINE_string("json_key", "json", "The source's json_key ('' for none).")
_INDEX_CACHE_DIR = flags.DEFINE_string("index_cache_dir", None, "The source's index_cache_dir (default: the "
                                       "library's cache directory, under $VLJEPA_JAX_CACHE_DIR or ~/.cache).")
_PROCESSES = flags.DEFINE_integer("processes", None, "Worker processes (default: one per core this process may "
                                  "use).", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  processes = _PROCESSES.value or cpu_devices.available_cores()
  try:
    summary = webdataset_source.fill_index_cache(
        _PATH.value, media_keys=_MEDIA_KEYS.value, caption_key=_CAPTION_KEY.value or None,
        json_key=_JSON_KEY.value or None, index_cache_dir=_INDEX_CACHE_DIR.value, processes=processes)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  logging.info("%d WebDataset shard(s), %d sample(s): %d indexed now, %d already cached, %d damaged; index cache "
               "at %s", summary["shards"], summary["samples"], summary["shards"] - summary["cached"],
               summary["cached"], summary["damaged"], summary["directory"])
  if summary["write_error"] is not None:
    logging.error("could not write the index cache at %s: %s", summary["directory"], summary["write_error"])
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
