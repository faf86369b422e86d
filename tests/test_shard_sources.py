"""WebDataset tar shards and Parquet files as pipeline sources (`webdataset_source.py`, `parquet_source.py`).

The reference is the manifest pipeline over the same samples written as files plus a JSONL
manifest: an independent path (media read from files by name, texts from the manifest). The shard
sources must give exactly its batches (same record order, so the same shuffle, crops and tokens),
split disjointly across processes, resume exactly, and count damaged data as skips.
"""
import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import media_files
from conftest import assert_batches_equal
from conftest import REPO
from conftest import run_cli
from vljepa_jax import cpu_devices
from vljepa_jax.data import media as media_lib
from vljepa_jax.data import parquet_source
from vljepa_jax.data import pipeline
from vljepa_jax.data import shard_index_cache
from vljepa_jax.data import sources
from vljepa_jax.data import tokenizer as tokenizer_lib
from vljepa_jax.data import webdataset_source

NUM_SHARDS = 3
SHARD_PATTERN = "shard-{000000..000002}.tar"
PARQUET_BYTES_ROWS = 5  # the first rows go to a file with a bytes column, the rest to one with paths
# img2dataset's bookkeeping in every sample's json, which the source must ignore.
IMG2DATASET_FIELDS = {"url": "http://example.com/x.jpg", "status": "success", "error_message": None,
                      "width": 16, "height": 16, "original_width": 640, "original_height": 480, "exif": "{}",
                      "sha256": "0" * 64}


@pytest.fixture(scope="module")
def tok(minilm_dir):
  return tokenizer_lib.from_directory(minilm_dir, "bert")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """The same 9 samples as media files + manifest, as 3 WebDataset shards, and as 2 Parquet files."""
  root = tmp_path_factory.mktemp("shards")
  media = root / "media"
  (media / "img").mkdir(parents=True)
  (media / "clips").mkdir()
  rng = np.random.default_rng(0)
  entries = []
  for i in range(6):
    name = f"img/{i}.{'jpg' if i % 2 else 'png'}"
    media_files.write_image(str(media / name), rng.integers(0, 256, (16 + 4 * i, 20, 3), np.uint8),
                            "JPEG" if i % 2 else "PNG")
    entries.append({"media": name, "caption": f"picture number {i}", "label": "odd" if i % 2 else "even"})
  for i in range(2):
    name = f"clips/{i}.mp4"
    media_files.write_video(str(media / name), media_files.numbered_frames(20 + 10 * i, 24, height=16), fps=10)
  entries.append({"media": "clips/0.mp4", "captions": ["clip zero", "video zero"], "label": "even"})
  entries.append({"media": "clips/1.mp4", "query": "which clip is it?", "answer": "clip one", "label": "odd",
                  "question_type": "which"})
  # A window of clip 1: the json's start_s/end_s must reach the decoder.
  entries.append({"media": "clips/1.mp4", "caption": "a window", "start_s": 1.0, "end_s": 2.5, "label": "odd"})
  with open(media / "manifest.jsonl", "w") as f:
    for entry in entries:
      f.write(json.dumps(entry) + "\n")

  # WebDataset shards, laid out as img2dataset writes them: {key}.jpg, {key}.txt, {key}.json.
  shards = root / "wds"
  shards.mkdir()
  for shard, start in enumerate(range(0, len(entries), len(entries) // NUM_SHARDS)):
    with tarfile.open(shards / f"shard-{shard:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
      for i in range(start, start + len(entries) // NUM_SHARDS):
        write_sample(tar, f"{i:09d}", entries[i], media)

  # Parquet: media bytes (small row groups), and media paths relative to the file's folder, both in column "image".
  texts = ("caption", "captions", "query", "answer", "question_type", "label", "start_s", "end_s")
  columns = {name: [e.get(name) for e in entries] for name in texts}
  columns["captions"] = pa.array(columns["captions"], pa.list_(pa.string()))
  columns["start_s"] = pa.array(columns["start_s"], pa.float64())
  columns["end_s"] = pa.array(columns["end_s"], pa.float64())
  table = pa.table(columns)
  k = PARQUET_BYTES_ROWS
  blobs = [(media / e["media"]).read_bytes() for e in entries[:k]]
  pq.write_table(table.slice(0, k).append_column("image", pa.array(blobs, pa.binary())), root / "bytes.parquet",
                 row_group_size=2)
  pq.write_table(table.slice(k).append_column("image", pa.array([e["media"] for e in entries[k:]])),
                 media / "paths.parquet", row_group_size=3)
  return {"root": root, "media": media, "entries": entries, "shards": shards,
          "parquet_bytes": root / "bytes.parquet", "parquet_paths": media / "paths.parquet"}


def add_member(tar, name, payload: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_sample(tar, key, entry, media, *, with_media=True):
  extension = entry["media"].rsplit(".", 1)[1]
  if with_media:
    add_member(tar, f"{key}.{extension}", (media / entry["media"]).read_bytes())
  meta = dict(IMG2DATASET_FIELDS, key=key)
  meta.update({k: v for k, v in entry.items() if k not in ("media", "caption")})
  if "caption" in entry:
    add_member(tar, f"{key}.txt", entry["caption"].encode())
    # img2dataset also keeps the caption in the json; the txt member must win.
    meta["caption"] = "alt text that must lose to the txt member"
  else:
    meta["caption"] = None
  add_member(tar, f"{key}.json", json.dumps(meta).encode())


def wds_spec(data, **kwargs):
  return {"type": "webdataset", "path": str(data["shards"] / SHARD_PATTERN), **kwargs}


def parquet_spec(data, **kwargs):
  spec = {"type": "parquet", "path": [str(data["parquet_bytes"]), str(data["parquet_paths"])],
          "media_column": "image", "captions_column": "captions", "query_column": "query", "answer_column": "answer",
          "question_type_column": "question_type", "label_column": "label", "start_column": "start_s",
          "end_column": "end_s"}
  spec.update(kwargs)
  return spec


def manifest_spec(data):
  return {"type": "manifest", "manifest": str(data["media"] / "manifest.jsonl")}


def config(source, **overrides):
  values = dict(sources=[source], num_frames=3, crop_size=16, query_length=12, target_length=12,
                label_names=["even", "odd"], text_mode="auto", default_query="describe", num_threads=2,
                prefetch_batches=0, error_budget_min_seen=1000, seed=3)
  values.update(overrides)
  return pipeline.DataConfig.from_dict(values)


def iterator(cfg, tok, *, batch=3, process_index=0, process_count=1, **kwargs):
  return pipeline.make_iterator(cfg, global_batch_size=batch, process_index=process_index,
                                process_count=process_count, query_tokenizer=tok, target_tokenizer=tok, **kwargs)


def take(it, n):
  return [next(it) for _ in range(n)]


SHARD_SOURCES = {"webdataset": wds_spec, "parquet": parquet_spec}


# ---------------------------------------------------------------- same samples as the manifest


@pytest.mark.parametrize("kind", sorted(SHARD_SOURCES))
def test_shard_source_gives_the_manifest_pipelines_batches(data, tok, kind):
  """Two shuffled epochs: videos, tokens, labels and indices equal the manifest pipeline's."""
  reference = take(iterator(config(manifest_spec(data)), tok), 6)
  it = iterator(config(SHARD_SOURCES[kind](data)), tok)
  got = take(it, 6)
  assert_batches_equal(got, reference)
  assert sorted(np.concatenate([b["source_index"] for b in got[:3]])) == list(range(9))  # one whole epoch
  assert it.stats()["skipped"] == 0 and it.stats()["samples"] == 18
  assert {"query_ids", "target_ids", "video", "label"} <= set(got[0])


@pytest.mark.parametrize("kind", sorted(SHARD_SOURCES))
def test_shard_source_records_carry_the_manifest_fields(data, kind):
  source = pipeline.make_source(SHARD_SOURCES[kind](data), config(manifest_spec(data)))
  entries = data["entries"]
  assert len(source) == len(entries)
  for i, entry in enumerate(entries):
    record = source[i]
    media = record.pop("media")
    want_media = (data["media"] / entry["media"])
    if isinstance(media, bytes):
      assert media == want_media.read_bytes()
    else:
      assert media == str(want_media)
    record.pop("id")
    assert record == {k: v for k, v in entry.items() if k != "media"}, i
  ids = [source[i]["id"] for i in (0, 3, 8)]
  if kind == "webdataset":
    assert ids == ["shard-000000.tar/000000000", "shard-000001.tar/000000003", "shard-000002.tar/000000008"]
  else:
    assert ids == ["bytes.parquet:0", "bytes.parquet:3", "paths.parquet:3"]
  assert repr(source).startswith(("WebDatasetSource(", "ParquetSource(")) and "len=9" in repr(source)


@pytest.mark.parametrize("kind", sorted(SHARD_SOURCES))
def test_shard_source_pickles_for_worker_processes(data, kind):
  source = pipeline.make_source(SHARD_SOURCES[kind](data), config(manifest_spec(data)))
  first = source[1]  # fills the Parquet row-group cache, whose lock must not reach the pickle
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == len(source)
  for i in (1, 6, 8):
    assert copy[i]["media"] == source[i]["media"] and copy[i]["id"] == source[i]["id"]
  assert copy[1]["caption"] == first["caption"] == "picture number 1"


# ---------------------------------------------------------------- processes, resume


@pytest.mark.parametrize("kind", sorted(SHARD_SOURCES))
def test_two_processes_get_disjoint_records_covering_the_epoch(data, tok, kind):
  seen = []
  for process in range(2):
    def run(spec):
      cfg = config(spec, num_epochs=1)
      return list(iterator(cfg, tok, batch=4, process_index=process, process_count=2, drop_remainder=False))
    got, want = run(SHARD_SOURCES[kind](data)), run(manifest_spec(data))
    assert_batches_equal(got, want)
    seen.append(np.concatenate([b["source_index"][b["valid"]] for b in got]))
  assert len(seen[0]) and len(seen[1])
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(9))


@pytest.mark.parametrize("kind", sorted(SHARD_SOURCES))
def test_resume_from_state_gives_the_next_batches(data, tok, kind):
  cfg = config(SHARD_SOURCES[kind](data), prefetch_batches=2)
  reference = take(iterator(cfg, tok), 7)
  it = iterator(cfg, tok)
  take(it, 3)  # into the second epoch's shuffle after the next batch
  state = json.loads(json.dumps(it.get_state()))  # the state must survive JSON
  resumed = iterator(cfg, tok)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), reference[3:])
  assert resumed.stats()["samples"] == 7 * 3


# ---------------------------------------------------------------- damage and mistakes


def test_damaged_shards_are_counted_skips(data, tok, tmp_path):
  """A truncated shard keeps its complete samples; it, a non-tar shard and a sample without media are
  one counted skip each; the rest decodes as through the manifest."""
  entries, media = data["entries"], data["media"]
  whole = (data["shards"] / "shard-000000.tar").read_bytes()
  names = ["a.tar", "b.tar", "c.tar", "d.tar", "e.tar"]
  (tmp_path / "a.tar").write_bytes(whole)  # samples 0, 1, 2
  # Cut inside sample 1's media: sample 0 survives, the rest of the shard is one bad sample.
  with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
    cut_member = tar.getmember("000000001.jpg")
  (tmp_path / "b.tar").write_bytes(whole[:cut_member.offset_data + 100])
  (tmp_path / "c.tar").write_bytes(b"this is not a tar file at all" * 40)
  # Cut between samples, where tarfile stops without complaint: the missing end-of-archive block shows
  # the damage; sample 0 may lack members that followed, so it goes too.
  (tmp_path / "d.tar").write_bytes(whole[:cut_member.offset])
  with tarfile.open(tmp_path / "e.tar", "w") as tar:  # sample 3 lacks its media, sample 4 is fine
    write_sample(tar, "000000003", entries[3], media, with_media=False)
    write_sample(tar, "000000004", entries[4], media)
  spec = {"type": "webdataset", "path": [str(tmp_path / n) for n in names]}
  source = pipeline.make_source(spec, config(spec))
  assert len(source) == 3 + (1 + 1) + 1 + 1 + 2  # good, 1 kept + placeholder, 2 placeholders, 2 samples
  with pytest.raises(media_lib.BadSample, match=r"b\.tar: corrupt tar") as error:
    source[4]
  assert error.value.reason == media_lib.UNREADABLE_MEDIA
  with pytest.raises(media_lib.BadSample, match=r"d\.tar: corrupt tar.*no end-of-archive block"):
    source[6]
  with pytest.raises(media_lib.BadSample, match=r"e\.tar/000000003: the sample has no media") as error:
    source[7]
  assert error.value.reason == media_lib.MISSING_FILE

  cfg = config(spec, num_epochs=1, shuffle=False, error_budget=0.5)
  it = iterator(cfg, tok, batch=1)
  got = list(it)
  stats = it.stats()
  assert stats["samples"] == 5 and stats["skipped"] == 4
  assert stats["skipped/unreadable_media"] == 3 and stats["skipped/missing_file"] == 1
  # The surviving samples are entries 0, 1, 2, 0 (the cut shard's first) and 4, decoded as the manifest does.
  by_index = {int(b["source_index"][0]): b for b in got}
  reference = list(iterator(config(manifest_spec(data), num_epochs=1, shuffle=False), tok, batch=1))
  for index, entry_index in [(0, 0), (1, 1), (2, 2), (3, 0), (8, 4)]:
    for key in ("video", "target_ids", "label"):
      np.testing.assert_array_equal(by_index[index][key], reference[entry_index][key], err_msg=f"{index} {key}")


def run_stats(cfg, tok):
  it = iterator(cfg, tok, batch=1)
  for _ in it:
    pass
  return it.stats()


def test_damaged_parquet_is_counted_not_fatal(data, tok, tmp_path):
  table = pq.read_table(data["parquet_bytes"])
  media = table.column("image").to_pylist()
  media[1] = None  # a row without media
  pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(media, pa.binary())),
                 tmp_path / "a.parquet", row_group_size=2)
  # First in the directory's order: the pipeline reports skips with the next good sample.
  (tmp_path / "0.parquet").write_bytes(b"PAR1 but not really a parquet file" * 10)
  spec = parquet_spec(data, path=str(tmp_path))  # a directory: its *.parquet, sorted
  source = pipeline.make_source(spec, config(spec))
  assert len(source) == 1 + 5
  with pytest.raises(media_lib.BadSample, match=r"0\.parquet: not a readable Parquet file") as error:
    source[0]
  assert error.value.reason == media_lib.UNREADABLE_MEDIA
  stats = run_stats(config(spec, num_epochs=1, shuffle=False, error_budget=0.5), tok)
  assert stats["samples"] == 4 and stats["skipped/missing_file"] == 1 and stats["skipped/unreadable_media"] == 1


def test_configuration_mistakes_fail_clearly(data, tmp_path):
  tar_bytes = (data["shards"] / "shard-000000.tar").read_bytes()
  (tmp_path / "x.tar.gz").write_bytes(gzip.compress(tar_bytes))
  with pytest.raises(ValueError, match=r"x\.tar\.gz' is compressed \(gzip\); random access needs uncompressed"):
    webdataset_source.WebDatasetSource(str(tmp_path / "x.tar.gz"))
  (tmp_path / "disguised.tar").write_bytes(gzip.compress(tar_bytes))  # found by its magic number
  with pytest.raises(ValueError, match=r"disguised\.tar' is compressed \(gzip\)"):
    webdataset_source.WebDatasetSource(str(tmp_path / "disguised.tar"))
  with pytest.raises(FileNotFoundError, match=r"no WebDataset shards at '.*nothing-\*\.tar'"):
    webdataset_source.WebDatasetSource(str(tmp_path / "nothing-*.tar"))
  with pytest.raises(FileNotFoundError, match=r"1 of the 4 WebDataset shards .* do not exist: .*shard-000003\.tar"):
    webdataset_source.WebDatasetSource(str(data["shards"] / "shard-{000000..000003}.tar"))
  with pytest.raises(FileNotFoundError, match="no Parquet files at"):
    parquet_source.ParquetSource(str(tmp_path))
  with pytest.raises(KeyError, match=r"bytes\.parquet' has no column 'TEXT' \(text_column\); its columns: "
                                     r"\['caption', 'captions'.*'image'\]"):
    parquet_source.ParquetSource(str(data["parquet_bytes"]), media_column="image", text_column="TEXT")
  with pytest.raises(TypeError, match="media column 'start_s' has type double; expected string"):
    parquet_source.ParquetSource(str(data["parquet_bytes"]), media_column="start_s")
  (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
  with pytest.raises(ValueError, match="hold no usable sample"):
    webdataset_source.WebDatasetSource(str(tmp_path / "junk.tar"))


# ---------------------------------------------------------------- mixtures, patterns


def test_mixture_of_webdataset_and_parquet_follows_weights(data, tok):
  """3:1 WebDataset (all 9 samples) to Parquet (the bytes file: the first 5); every sample is its source's."""
  wds = wds_spec(data, weight=3.0)
  parquet = parquet_spec(data, path=str(data["parquet_bytes"]), weight=1.0)
  out = take(iterator(config(wds, sources=[wds, parquet]), tok, batch=8), 20)
  source = np.concatenate([b["source"] for b in out])
  index = np.concatenate([b["source_index"] for b in out])
  assert abs((source == 0).mean() - 0.75) < 0.06
  assert set(index[source == 1]) == set(range(PARQUET_BYTES_ROWS))  # only the Parquet file's rows
  assert set(index[source == 0]) == set(range(9))
  reference = list(iterator(config(manifest_spec(data), num_epochs=1, shuffle=False), tok, batch=1))
  videos = np.concatenate([b["video"] for b in out])
  for row in range(0, len(videos), 7):
    np.testing.assert_array_equal(videos[row], reference[index[row]]["video"][0], err_msg=row)


def test_brace_patterns_expand_in_their_order(data):
  shards = data["shards"]
  want = [str(shards / f"shard-00000{i}.tar") for i in range(3)]
  assert sources.expand_paths(str(shards / SHARD_PATTERN), suffix=".tar", kind="shards") == want
  assert sources.expand_paths(str(shards), suffix=".tar", kind="shards") == want  # a directory
  assert sources.expand_paths(str(shards / "shard-*.tar"), suffix=".tar", kind="shards") == want
  reordered = str(shards / "shard-{000002,000000}.tar")
  assert sources.expand_paths([reordered, want[1]], suffix=".tar", kind="shards") == [want[2], want[0],
                                                                                               want[1]]
  source = webdataset_source.WebDatasetSource(reordered)
  assert [source[i]["id"] for i in range(len(source))] == [
      "shard-000002.tar/000000006", "shard-000002.tar/000000007", "shard-000002.tar/000000008",
      "shard-000000.tar/000000000", "shard-000000.tar/000000001", "shard-000000.tar/000000002"]
  assert webdataset_source.split_key("dir/000001.seg.PNG") == ("dir/000001", "seg.png")
  assert webdataset_source.split_key("README") is None


def test_grain_worker_processes_read_both_sources(data, tok):
  """Through a Grain worker process (the sources are pickled into it): the batches of an in-process run."""
  wds, parquet = wds_spec(data, weight=1.0), parquet_spec(data, weight=1.0)
  reference = take(iterator(config(wds, sources=[wds, parquet]), tok, batch=4), 4)
  got = take(iterator(config(wds, sources=[wds, parquet], num_workers=1), tok, batch=4), 4)
  assert_batches_equal(got, reference)
  assert set(np.concatenate([b["source"] for b in got])) == {0, 1}


# ---------------------------------------------------------------- the WebDataset index cache


def all_records(source):
  """Every record of a source, or the BadSample message where reading it fails."""
  out = []
  for i in range(len(source)):
    try:
      out.append(source[i])
    except media_lib.BadSample as e:
      out.append(f"BadSample({e.reason}): {e}")
  return out


def cached_source(paths, cache_dir, **kwargs):
  return webdataset_source.WebDatasetSource(paths, index_cache_dir=str(cache_dir), **kwargs)


def test_a_later_source_reads_its_index_from_the_cache_not_the_tars(data, tmp_path, monkeypatch):
  """Shards indexed once are not opened as tars again, in any order or combination, and give the same records."""
  shards = [str(data["shards"] / f"shard-00000{i}.tar") for i in range(3)]
  cache = tmp_path / "cache"
  reference = all_records(webdataset_source.WebDatasetSource(shards, cache_index=False))
  reversed_reference = all_records(webdataset_source.WebDatasetSource(shards[::-1], cache_index=False))
  assert all_records(cached_source(shards, cache)) == reference
  assert len(list(cache.glob("*.npz"))) == 3 and not list(cache.glob(".tmp-*"))  # one entry per shard, no leftovers

  def no_headers(*args, **kwargs):
    raise AssertionError("a tar's headers were read although its index is cached")
  monkeypatch.setattr(webdataset_source.tarfile, "open", no_headers)
  assert all_records(cached_source(shards, cache)) == reference
  # Each entry belongs to its shard, not to the place the shard had in the first source.
  assert all_records(cached_source(shards[::-1], cache)) == reversed_reference


def test_a_changed_shard_is_indexed_again(data, tmp_path):
  """An entry serves only the size and modification time it was made from, even at the same size."""
  shard = tmp_path / "x.tar"
  original = (data["shards"] / "shard-000000.tar").read_bytes()
  shard.write_bytes(original)
  cache = tmp_path / "cache"
  before = all_records(cached_source(str(shard), cache))
  assert [r["id"] for r in before] == ["x.tar/000000000", "x.tar/000000001", "x.tar/000000002"]
  # Sample 1's members renamed (the same length, so the same size): only the index knows the keys.
  changed = io.BytesIO()
  with tarfile.open(fileobj=io.BytesIO(original)) as src, \
       tarfile.open(fileobj=changed, mode="w", format=tarfile.GNU_FORMAT) as dst:
    for member in src.getmembers():
      payload = src.extractfile(member).read()
      member.name = member.name.replace("000000001.", "000000007.")
      dst.addfile(member, io.BytesIO(payload))
  assert len(changed.getvalue()) == len(original) and changed.getvalue() != original
  shard.write_bytes(changed.getvalue())
  stat = shard.stat()
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the filesystem's time resolution
  after = all_records(cached_source(str(shard), cache))
  assert after == all_records(webdataset_source.WebDatasetSource(str(shard), cache_index=False))
  assert [r["id"] for r in after] == ["x.tar/000000000", "x.tar/000000007", "x.tar/000000002"]
  # Different extensions picked from the same shard are another entry, not the first one's.
  no_txt = all_records(cached_source(str(shard), cache, caption_key=None))
  assert no_txt == all_records(webdataset_source.WebDatasetSource(str(shard), caption_key=None, cache_index=False))
  assert no_txt[0]["caption"] == "alt text that must lose to the txt member"  # the json's, not the txt member's


def test_damaged_entries_damaged_shards_and_an_unwritable_cache_do_not_stop_a_run(data, tmp_path, caplog,
                                                                                    monkeypatch):
  whole = (data["shards"] / "shard-000000.tar").read_bytes()
  with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
    cut = tar.getmember("000000001.jpg").offset_data + 100
  (tmp_path / "cut.tar").write_bytes(whole[:cut])
  shards = [str(data["shards"] / "shard-000001.tar"), str(tmp_path / "cut.tar")]
  reference = all_records(webdataset_source.WebDatasetSource(shards, cache_index=False))
  assert reference[4].startswith("BadSample(unreadable_media):") and "cut.tar: corrupt tar" in reference[4]
  cache = tmp_path / "cache"
  for attempt in range(2):  # indexed, then from the cache: the damage is remembered and reported again
    caplog.clear()
    with caplog.at_level("INFO"):
      assert all_records(cached_source(shards, cache)) == reference
    assert "WebDataset shard " + shards[1] + " is damaged" in caplog.text, attempt
    assert f"{attempt * 2} from the index cache" in caplog.text, (attempt, caplog.text)
  for entry in cache.glob("*.npz"):
    entry.write_bytes(b"not an npz file")
  with caplog.at_level("INFO"):
    assert all_records(cached_source(shards, cache)) == reference
  assert "0 from the index cache" in caplog.text  # damaged entries are misses ...
  assert all(entry.read_bytes()[:2] == b"PK" for entry in cache.glob("*.npz"))  # ... and are rewritten
  # An I/O error while reading headers may pass (a network filesystem's hiccup): reported, never cached.
  flaky = tmp_path / "flaky-cache"
  with monkeypatch.context() as patch:
    def io_error(*args, **kwargs):
      raise OSError(5, "Input/output error")
    patch.setattr(webdataset_source.tarfile, "open", io_error)
    with pytest.raises(ValueError, match="hold no usable sample"):
      cached_source(shards[0], flaky)
  assert all_records(cached_source(shards[0], flaky)) == reference[:3]
  blocked = tmp_path / "a-file"
  blocked.write_text("a file where the cache directory should be")
  caplog.clear()
  assert all_records(cached_source(shards, blocked / "cache")) == reference
  assert f"could not write the WebDataset index cache at {blocked / 'cache'}" in caplog.text


def test_the_index_cache_location_and_switch(data, tmp_path, monkeypatch):
  monkeypatch.setenv(shard_index_cache.CACHE_DIR_ENV, str(tmp_path / "root"))
  assert shard_index_cache.default_directory("webdataset-index") == str(tmp_path / "root" / "webdataset-index")
  webdataset_source.WebDatasetSource(str(data["shards"] / "shard-000000.tar"))
  assert len(list((tmp_path / "root" / "webdataset-index").glob("*.npz"))) == 1  # on by default, there
  monkeypatch.delenv(shard_index_cache.CACHE_DIR_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert shard_index_cache.default_directory("k") == str(tmp_path / "xdg" / "vljepa_jax" / "k")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert shard_index_cache.default_directory("k") == str(tmp_path / "home" / ".cache" / "vljepa_jax" / "k")
  webdataset_source.WebDatasetSource(str(data["shards"] / "shard-000000.tar"), cache_index=False)
  assert not (tmp_path / "home").exists()  # off: nothing written
  for unused in ({"index_cache_dir": "/x"}, {"index_processes": 4}):
    with pytest.raises(ValueError, match=r"cache_index=False, but index_cache_dir=.* only act through the cache"):
      webdataset_source.WebDatasetSource(str(data["shards"] / "shard-000000.tar"), cache_index=False, **unused)


def test_index_shards_fills_the_cache_a_source_then_reads(data, tmp_path, monkeypatch):
  """The command line indexes in worker processes into the entries a source with the same arguments uses."""
  pattern, cache = str(data["shards"] / SHARD_PATTERN), tmp_path / "cache"
  reference = all_records(webdataset_source.WebDatasetSource(pattern, caption_key=None, cache_index=False))
  proc = run_cli("vljepa_jax.data.index_shards", f"--path={pattern}", "--caption_key=", "--processes=2",
                 f"--index_cache_dir={cache}")
  assert "3 WebDataset shard(s), 9 sample(s): 3 indexed now, 0 already cached, 0 damaged" in proc.stderr, proc.stderr
  monkeypatch.setattr(webdataset_source.tarfile, "open", lambda *a, **k: pytest.fail("headers read"))
  assert all_records(cached_source(pattern, cache, caption_key=None)) == reference
  proc = run_cli("vljepa_jax.data.index_shards", f"--path={tmp_path / 'nothing-*.tar'}", check=False)
  assert proc.returncode == 1 and "no WebDataset shards at" in proc.stderr, proc.stderr


def test_webdataset_index_benchmark_times_every_variant():
  proc = subprocess.run([sys.executable, "benchmarks/webdataset_index.py", "--shards=2", "--samples=5",
                         "--threads=1,2", "--processes=1"], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split(" | ")[0].lstrip("| ") for line in proc.stdout.splitlines() if line.startswith("| ")]
  assert rows[1:] == ["source, cache off, num_threads=1", "source, cache off, num_threads=2",
                      "index_shards, 1 process(es), empty cache",
                      f"source, empty cache (its defaults: {cpu_devices.available_cores()} processes from "
                      f"{webdataset_source.MIN_SHARDS_FOR_PROCESSES} missing shards)",
                      "source, every shard in the cache"], proc.stdout
  assert "2 shards x 5 samples" in proc.stdout


def test_many_missing_shards_are_indexed_in_worker_processes(data, tmp_path, monkeypatch, caplog):
  """Past the threshold, the shards the cache lacks are indexed by `index_shards` in a child process, not here."""
  shards = [str(data["shards"] / f"shard-00000{i}.tar") for i in range(3)]
  reference = all_records(webdataset_source.WebDatasetSource(shards, cache_index=False))
  monkeypatch.setattr(webdataset_source, "MIN_SHARDS_FOR_PROCESSES", 2)
  # Too few missing: the threads index them (the second shard is already cached).
  cached_source(shards[1], tmp_path / "few")
  with caplog.at_level("INFO"):
    assert all_records(cached_source(shards[:2], tmp_path / "few", index_processes=2)) == reference[:6]
  assert "missing from the index cache in" not in caplog.text
  caplog.clear()
  with monkeypatch.context() as patch, caplog.at_level("INFO"):
    patch.setattr(webdataset_source.tarfile, "open", lambda *a, **k: pytest.fail("headers read in this process"))
    assert all_records(cached_source(shards, tmp_path / "many", index_processes=2)) == reference
  assert "indexing 3 WebDataset shard(s) missing from the index cache in 2 processes" in caplog.text
  assert "3 from the index cache" in caplog.text
  # The command failing is not fatal: this process indexes what it left.
  caplog.clear()
  monkeypatch.setattr(webdataset_source.sys, "executable", "/bin/false")
  with caplog.at_level("INFO"):
    assert all_records(cached_source(shards, tmp_path / "failed", index_processes=2)) == reference
  assert "`python -m vljepa_jax.data.index_shards` exited 1" in caplog.text and "0 from the index cache" in caplog.text
