r"""How long a WebDataset source takes to index its shards: threads, processes, and the index cache.

  python benchmarks/webdataset_index.py                           # 40 shards of 1,000 samples
  python benchmarks/webdataset_index.py --shards=200 --samples=500 --threads=1,16 --processes=1,2

Writes `--shards` uncompressed tars laid out as img2dataset writes them ({key}.jpg, {key}.txt,
{key}.json per sample; the payloads are small, so the figures are the indexing and not the disk),
then times, each in a fresh cache directory unless said otherwise:

- a `WebDatasetSource` with the cache off, for each `--threads` (its `num_threads`): every header
  parsed in this process;
- `webdataset_source.fill_index_cache` (what `python -m vljepa_jax.data.index_shards` runs) for each
  `--processes`, spawned worker processes included;
- a `WebDatasetSource` with its defaults and an empty cache (the first start of a run: from
  `MIN_SHARDS_FOR_PROCESSES` missing shards, `index_shards` in a child process, one worker per core);
- a `WebDatasetSource` whose every shard is in the cache (the second start of a run).

The files sit in the page cache after they are written: the figures are the CPU's work, what a
local disk costs. On a network filesystem each header read also waits for the network, which the
source's threads overlap.
"""
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from vljepa_jax import cpu_devices  # pylint: disable=g-import-not-at-top,wrong-import-position
from vljepa_jax.data import webdataset_source  # pylint: disable=g-import-not-at-top,wrong-import-position

_SHARDS = flags.DEFINE_integer("shards", 40, "Shards to write.", lower_bound=1)
_SAMPLES = flags.DEFINE_integer("samples", 1000, "Samples per shard (3 members each).", lower_bound=1)
_THREADS = flags.DEFINE_list("threads", ["1", "16"], "num_threads of the source, cache off.")
_PROCESSES = flags.DEFINE_list("processes", ["1", str(cpu_devices.available_cores())],
                               "Worker processes of fill_index_cache.")


def write_shards(folder: str, shards: int, samples: int) -> None:
  for shard in range(shards):
    with tarfile.open(os.path.join(folder, f"shard-{shard:06d}.tar"), "w") as tar:
      for i in range(samples):
        key = f"{shard:05d}{i:05d}"
        for extension, payload in (("jpg", b"\xff\xd8" + bytes(2000)), ("txt", f"caption {i}".encode()),
                                   ("json", json.dumps({"key": key, "status": "success"}).encode())):
          info = tarfile.TarInfo(f"{key}.{extension}")
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _PROCESSES.value:
    raise app.UsageError("--processes needs at least one count: the cached start reads the cache it fills")
  print(harness.machine_line(), flush=True)
  root = tempfile.mkdtemp(prefix="vljepa-wds-index-")
  try:
    shards = os.path.join(root, "shards")
    os.makedirs(shards)
    write_shards(shards, _SHARDS.value, _SAMPLES.value)
    samples = _SHARDS.value * _SAMPLES.value
    rows = []

    def row(what: str, seconds: float, count: int) -> None:
      assert count == samples, (what, count, samples)  # every variant saw every sample
      rows.append((what, f"{seconds:.2f}", f"{samples / seconds:,.0f}"))
      print(f"  {what}: {seconds:.2f} s", flush=True)

    for threads in map(int, _THREADS.value):
      start = time.perf_counter()
      source = webdataset_source.WebDatasetSource(shards, num_threads=threads, cache_index=False)
      row(f"source, cache off, num_threads={threads}", time.perf_counter() - start, len(source))
    for processes in map(int, _PROCESSES.value):
      cache = os.path.join(root, f"cache-{processes}")
      start = time.perf_counter()
      summary = webdataset_source.fill_index_cache(shards, index_cache_dir=cache, processes=processes)
      row(f"index_shards, {processes} process(es), empty cache", time.perf_counter() - start, summary["samples"])
    start = time.perf_counter()
    source = webdataset_source.WebDatasetSource(shards, index_cache_dir=os.path.join(root, "cache-source"))
    row(f"source, empty cache (its defaults: {cpu_devices.available_cores()} processes from "
        f"{webdataset_source.MIN_SHARDS_FOR_PROCESSES} missing shards)", time.perf_counter() - start, len(source))
    start = time.perf_counter()
    source = webdataset_source.WebDatasetSource(shards, index_cache_dir=cache)
    row("source, every shard in the cache", time.perf_counter() - start, len(source))
    print(f"\n{_SHARDS.value} shards x {_SAMPLES.value} samples (3 members each)\n")
    harness.print_table(("indexing", "s", "samples/s"), rows)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
