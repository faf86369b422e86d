"""The Grain pipeline: determinism, sharding, resume, mixtures, every source, bad input.

References are independent of the pipeline: frames are decoded here with Pillow / PyAV directly
and normalised with a hand-written NumPy formula; texts are checked by decoding the token ids.
"""
import json
import os
import pickle
import socket
import subprocess
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import media_files
from conftest import REPO, assert_batches_equal, run_cli
from vljepa_jax.data import global_batch
from vljepa_jax.data import manifest as manifest_lib
from vljepa_jax.data import pipeline
from vljepa_jax.data import shapes
from vljepa_jax.data import tokenizer as tokenizer_lib

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SHAPES = {"type": "shapes", "kind": "video", "size": 40, "image_size": 32, "num_frames": 4, "seed": 3}


def reference_normalize(frames_uint8):
  return (frames_uint8.astype(np.float32) / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def tok(minilm_dir):
  return tokenizer_lib.from_directory(minilm_dir, "bert")


def config(**overrides):
  values = dict(sources=[SHAPES], num_frames=4, crop_size=32, query_length=16, target_length=24,
                num_threads=2, error_budget_min_seen=10, seed=5)
  values.update(overrides)
  return pipeline.DataConfig.from_dict(values)


def batches(cfg, n, *, batch=8, **kwargs):
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  it = pipeline.make_iterator(cfg, global_batch_size=batch, **kwargs)
  out = [next(it) for _ in range(n)]
  return out, it


# ---------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_bad_values():
  with pytest.raises(ValueError, match="crop_sise"):
    pipeline.DataConfig.from_dict({"crop_sise": 3})
  with pytest.raises(ValueError, match="short_side"):
    pipeline.DataConfig(crop_size=256, short_side=200)
  with pytest.raises(ValueError, match="text_mode"):
    pipeline.DataConfig(sources=({"type": "shapes", "text_mode": "qna"},))
  with pytest.raises(ValueError, match="unknown data source type 'nope'"):
    pipeline.make_dataset({"sources": [{"type": "nope"}]}, global_batch_size=2, process_index=0,
                          process_count=1)
  with pytest.raises(ValueError, match="multiple of the number of JAX processes"):
    pipeline.make_dataset(config(), global_batch_size=7, process_index=0, process_count=2)


# ---------------------------------------------------------------- embedded dataset content


def test_batch_content_matches_source_and_tokenizer(tok):
  cfg = config(shuffle=False, sample_paraphrase=True, default_query="describe the clip")
  (batch,), it = batches(cfg, 1, query_tokenizer=tok, target_tokenizer=tok)
  source = shapes.ShapesSource(shapes.ShapesConfig(image_size=32, num_frames=4), kind="video", size=40, seed=3)
  assert batch["video"].shape == (8, 4, 32, 32, 3) and batch["video"].dtype == np.float32
  assert batch["query_ids"].shape == (8, 16) and batch["target_ids"].shape == (8, 24)
  assert batch["valid"].all() and (batch["source"] == 0).all()
  for row, index in enumerate(batch["source_index"]):
    record = source[int(index)]
    np.testing.assert_allclose(batch["video"][row], reference_normalize(record["frames"]), atol=1e-6)
    assert batch["label"][row] == record["label"]
    target = tok.decode(batch["target_ids"][row][batch["target_mask"][row] == 1])
    assert target in [c.lower() for c in record["captions"]]
    assert tok.decode(batch["query_ids"][row][batch["query_mask"][row] == 1]) == "describe the clip"
  assert it.stats()["samples"] == 8 and it.stats()["skipped"] == 0


def test_qa_mode_uses_query_and_answer(tok):
  (batch,), _ = batches(config(text_mode="qa", shuffle=False), 1, query_tokenizer=tok, target_tokenizer=tok)
  source = shapes.ShapesSource(shapes.ShapesConfig(image_size=32, num_frames=4), kind="video", size=40, seed=3)
  for row, index in enumerate(batch["source_index"]):
    record = source[int(index)]
    assert tok.decode(batch["query_ids"][row][batch["query_mask"][row] == 1]) == record["query"].lower()
    assert tok.decode(batch["target_ids"][row][batch["target_mask"][row] == 1]) == record["answer"].lower()


def test_paraphrases_are_sampled_across_epochs(tok):
  cfg = config(shuffle=False, sources=[dict(SHAPES, size=4)])
  out, _ = batches(cfg, 8, batch=4, target_tokenizer=tok)
  seen = {}
  for b in out:
    for index, ids, mask in zip(b["source_index"], b["target_ids"], b["target_mask"]):
      seen.setdefault(int(index), set()).add(tok.decode(ids[mask == 1]))
  assert all(len(texts) > 1 for texts in seen.values()), seen


# ---------------------------------------------------------------- determinism, sharding, epochs


def test_same_seed_same_batches_other_seed_other_order():
  a, _ = batches(config(), 4)
  b, _ = batches(config(), 4)
  assert_batches_equal(a, b)
  c, _ = batches(config(seed=6), 4)
  assert not np.array_equal(a[0]["source_index"], c[0]["source_index"])


def test_processes_get_disjoint_shards_covering_the_epoch():
  cfg = config(num_epochs=1, sources=[dict(SHAPES, size=40)])
  seen = []
  for process in range(2):
    out, _ = batches(cfg, 5, batch=8, process_index=process, process_count=2)  # 5 x 4 per process
    seen.append(np.concatenate([b["source_index"] for b in out]))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(40))


def test_every_epoch_is_a_new_permutation():
  cfg = config(sources=[dict(SHAPES, size=16)], num_epochs=3)
  out, it = batches(cfg, 6, batch=8)
  order = np.concatenate([b["source_index"] for b in out])
  epochs = order.reshape(3, 16)
  for epoch in epochs:
    assert sorted(epoch) == list(range(16))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  with pytest.raises(StopIteration):
    next(it)


def test_eval_pads_the_last_batch():
  cfg = config(shuffle=False, num_epochs=1, sources=[dict(SHAPES, size=10)])
  it = pipeline.make_iterator(cfg, global_batch_size=4, process_index=0, process_count=1, drop_remainder=False)
  out = list(it)
  assert [int(b["valid"].sum()) for b in out] == [4, 4, 2]
  assert out[-1]["video"].shape == (4, 4, 32, 32, 3)
  assert not out[-1]["video"][2:].any()
  assert sorted(np.concatenate([b["source_index"][b["valid"]] for b in out])) == list(range(10))


def test_a_source_limit_keeps_its_first_records_for_any_source_type(tmp_path):
  """`limit: N` on a source spec: its first N records through the pipeline, the same records as the whole
  source's first N; a bad limit fails naming it."""
  cfg = config(shuffle=False, num_epochs=1, sources=[dict(SHAPES, size=40, limit=6)])
  out = list(pipeline.make_iterator(cfg, global_batch_size=4, process_index=0, process_count=1,
                                    drop_remainder=False))
  assert sorted(np.concatenate([b["source_index"][b["valid"]] for b in out])) == list(range(6))
  whole = list(pipeline.make_iterator(config(shuffle=False, num_epochs=1), global_batch_size=4, process_index=0,
                                      process_count=1, drop_remainder=False))
  np.testing.assert_array_equal(out[0]["video"], whole[0]["video"])
  limited = pipeline.make_source(cfg.sources[0], cfg)
  assert len(limited) == 6 and limited.label_names == pipeline.make_source(SHAPES, cfg).label_names  # for class_names="source"
  with pytest.raises(IndexError, match="record 6 of"):
    limited[6]
  copy = pickle.loads(pickle.dumps(limited))  # as data worker processes receive it
  assert len(copy) == 6 and copy[5]["caption"] == limited[5]["caption"]
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match=rf"data source 'shapes': limit={bad!r}; expected a positive number"):
      pipeline.make_source(dict(SHAPES, limit=bad), cfg)
  root = tmp_path / "m"
  root.mkdir()
  (root / "m.jsonl").write_text("".join(f'{{"media": "x{i}.png", "caption": "c{i}"}}\n' for i in range(5)))
  manifest = pipeline.make_source({"type": "manifest", "manifest": str(root / "m.jsonl"), "limit": 3}, cfg)
  assert len(manifest) == 3 and [manifest[i]["caption"] for i in range(3)] == ["c0", "c1", "c2"]


# ---------------------------------------------------------------- resume


def test_resume_from_state_gives_the_same_next_batches(tok):
  cfg = config(prefetch_batches=2, num_threads=3)
  reference, _ = batches(cfg, 7, target_tokenizer=tok)
  _, it = batches(cfg, 3, target_tokenizer=tok)
  state = json.loads(json.dumps(it.get_state()))  # the state must survive JSON
  resumed = pipeline.make_iterator(cfg, global_batch_size=8, process_index=0, process_count=1,
                                   target_tokenizer=tok)
  resumed.set_state(state)
  assert_batches_equal([next(resumed) for _ in range(4)], reference[3:])
  assert resumed.stats()["samples"] == 7 * 8


def test_resume_through_orbax_checkpoint_manager(tmp_path):
  cfg = config()
  reference, _ = batches(cfg, 5)
  _, it = batches(cfg, 2)
  options = ocp.CheckpointManagerOptions(max_to_keep=2)
  handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options, item_handlers=handlers) as manager:
    manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.arange(3.0)}),
                                            data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  fresh = pipeline.make_iterator(cfg, global_batch_size=8, process_index=0, process_count=1)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_handlers=handlers) as manager:
    restored = manager.restore(2, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"w": np.zeros(3)}), data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored["state"]["w"], np.arange(3.0))
  assert_batches_equal([next(restored["data"]) for _ in range(3)], reference[2:])


# ---------------------------------------------------------------- mixtures


def test_mixture_follows_weights_and_keeps_sources_apart():
  image = {"type": "shapes", "kind": "image", "size": 50, "image_size": 32, "seed": 1, "weight": 3.0}
  video = dict(SHAPES, weight=1.0)
  out, _ = batches(config(sources=[image, video]), 25, batch=8)
  source = np.concatenate([b["source"] for b in out])
  assert abs((source == 0).mean() - 0.75) < 0.05
  videos = np.concatenate([b["video"] for b in out])
  # Images are one frame repeated over time; videos move.
  still = np.abs(videos[:, 1:] - videos[:, :1]).max(axis=(1, 2, 3, 4)) == 0
  np.testing.assert_array_equal(still[source == 0], True)
  assert not still[source == 1].all()


# ---------------------------------------------------------------- real files


def _write_media_folder(root, *, bad=False):
  """JPEG, PNG and mp4 files plus a manifest; with `bad`, also broken entries of every kind."""
  rng = np.random.default_rng(0)
  os.makedirs(root / "img", exist_ok=True)
  os.makedirs(root / "clips", exist_ok=True)
  entries = []
  for i in range(6):
    frame = rng.integers(0, 256, (40 + 8 * i, 56, 3), np.uint8)
    name = f"img/{i}.{'jpg' if i % 2 else 'png'}"
    media_files.write_image(str(root / name), frame, "JPEG" if i % 2 else "PNG")
    entries.append({"media": name, "caption": f"picture number {i}", "label": "odd" if i % 2 else "even"})
  for i in range(3):
    name = f"clips/{i}.mp4"
    media_files.write_video(str(root / name), media_files.numbered_frames(30 + 10 * i, 48, height=64), fps=10)
    entries.append({"media": name, "captions": [f"clip {i}", f"video {i}"], "query": "which clip?",
                    "answer": f"clip {i}", "label": "odd" if i % 2 else "even"})
  if bad:
    (root / "img" / "truncated.jpg").write_bytes(
        media_files.image_bytes(rng.integers(0, 256, (40, 40, 3), np.uint8), "JPEG")[:300])
    (root / "clips" / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    media_files.write_video(str(root / "clips" / "short.mp4"), media_files.numbered_frames(2, 48), fps=10)
    entries += [
        {"media": "img/missing.jpg", "caption": "gone"},
        {"media": "img/truncated.jpg", "caption": "cut"},
        {"media": "clips/garbage.mp4", "caption": "noise"},
        {"media": "img/0.png", "caption": "   "},
        {"media": "clips/short.mp4", "caption": "a short clip"},
    ]
  with open(root / "manifest.jsonl", "w") as f:
    for entry in entries:
      f.write(json.dumps(entry) + "\n")
  return entries


def _reference_frames(path, num_frames, crop):
  """Independent decode: Pillow / full PyAV decode, numpy sampling, Pillow resize, numpy crop."""
  if path.endswith((".jpg", ".png")):
    frames = np.asarray(Image.open(path).convert("RGB"))[None]
    indices = np.zeros(num_frames, int)
  else:
    import av
    with av.open(path) as container:
      frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    indices = [int((i + 0.5) * len(frames) / num_frames) for i in range(num_frames)]
  out = []
  for frame in frames[indices]:
    h, w = frame.shape[:2]
    scale = crop / min(h, w)
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    if min(h, w) != crop:
      frame = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
    top, left = (frame.shape[0] - crop) // 2, (frame.shape[1] - crop) // 2
    out.append(frame[top:top + crop, left:left + crop])
  return np.stack(out)


def _manifest_config(root, **overrides):
  source = {"type": "manifest", "manifest": str(root / "manifest.jsonl")}
  values = dict(sources=[source], num_frames=4, crop_size=32, shuffle=False, num_epochs=1,
                label_names=["even", "odd"], text_mode="caption", sample_paraphrase=False,
                error_budget_min_seen=1000)
  values.update(overrides)
  return pipeline.DataConfig.from_dict(values)


def _all_examples(cfg, batch=3):
  it = pipeline.make_iterator(cfg, global_batch_size=batch, process_index=0, process_count=1, drop_remainder=False)
  out = list(it)
  merged = {k: np.concatenate([b[k][b["valid"]] for b in out]) for k in out[0]}
  return merged, it


def test_manifest_source_decodes_real_images_and_videos(tmp_path):
  entries = _write_media_folder(tmp_path)
  examples, it = _all_examples(_manifest_config(tmp_path))
  assert list(examples["source_index"]) == list(range(len(entries)))
  for row, entry in enumerate(entries):
    want = _reference_frames(str(tmp_path / entry["media"]), 4, 32)
    got, want = examples["video"][row], reference_normalize(want)
    if entry["media"].endswith((".jpg", ".png")):  # Pillow resizes on both sides
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=entry["media"])
    else:
      # The pipeline resizes videos with PyAV's swscale while decoding, the reference with Pillow:
      # the two bilinear filters (and YUV->RGB rounding) differ by about one grey level on average
      # and a few on sharp edges (0.15 here is about 9 levels). Numbered frames spell their index
      # in bright/dark cells, so a wrong frame differs by ~200 levels over whole cells.
      np.testing.assert_allclose(got, want, atol=0.15, err_msg=entry["media"])
      assert np.abs(got - want).mean() < 0.03, entry["media"]
    assert examples["label"][row] == ["even", "odd"].index(entry["label"])
  assert it.stats()["skipped"] == 0


def test_bad_records_are_counted_and_skipped(tmp_path):
  _write_media_folder(tmp_path, bad=True)
  examples, it = _all_examples(_manifest_config(tmp_path, error_budget=0.5))
  stats = it.stats()
  assert stats["samples"] == 9 + 1  # 6 images + 3 clips + the short clip (padded, not skipped)
  assert stats["skipped/missing_file"] == 1
  assert stats["skipped/truncated_media"] + stats["skipped/unreadable_media"] == 2
  assert stats["skipped/empty_text"] == 1
  assert stats["notes/short_video"] == 1
  assert stats["skipped"] == 4


def _bad_records_last(tmp_path):
  """The media folder's manifest with its 9 good records first and 4 bad ones after the last good one."""
  entries = _write_media_folder(tmp_path, bad=True)
  entries = entries[:9] + [e for e in entries[9:] if e["media"] != "clips/short.mp4"]
  with open(tmp_path / "manifest.jsonl", "w") as f:
    for entry in entries:
      f.write(json.dumps(entry) + "\n")


@pytest.mark.parametrize("batch", [2, 3])
def test_bad_records_after_the_last_good_one_are_counted(tmp_path, batch):
  # 9 good records: batch 2 ends on a partial batch (the counts ride on a padding row), batch 3
  # on a full one (the counts arrive alone, and no extra batch is returned).
  _bad_records_last(tmp_path)
  it = pipeline.make_iterator(_manifest_config(tmp_path, error_budget=0.5), global_batch_size=batch,
                              process_index=0, process_count=1, drop_remainder=False)
  batches = list(it)
  assert len(batches) == -(-9 // batch)
  for b in batches:
    assert len(b["valid"]) == batch and b["valid"].any()
    assert not np.any(np.diff(b["valid"].astype(int)) > 0)  # the valid rows come first
  assert list(np.concatenate([b["source_index"][b["valid"]] for b in batches])) == list(range(9))
  stats = it.stats()
  assert stats["samples"] == 9
  assert stats["skipped"] == 4
  assert stats["skipped/missing_file"] == 1 and stats["skipped/empty_text"] == 1
  assert stats["skipped/truncated_media"] + stats["skipped/unreadable_media"] == 2


def test_training_batches_never_carry_trailing_counts(tmp_path):
  # 9 good records and batches of 5: a carrier row after them would complete the second batch.
  _bad_records_last(tmp_path)
  it = pipeline.make_iterator(_manifest_config(tmp_path, error_budget=0.5), global_batch_size=5,
                              process_index=0, process_count=1, drop_remainder=True)
  batches = list(it)
  assert len(batches) == 1 and batches[0]["valid"].all()
  assert list(batches[0]["source_index"]) == list(range(5))


def test_error_budget_stops_the_run_naming_bad_records(tmp_path):
  _write_media_folder(tmp_path, bad=True)
  cfg = _manifest_config(tmp_path, error_budget=0.05, error_budget_min_seen=5, num_epochs=None)
  it = pipeline.make_iterator(cfg, global_batch_size=2, process_index=0, process_count=1)
  with pytest.raises(pipeline.DataErrorBudgetExceeded, match=r"img/missing\.jpg: missing_file"):
    for _ in range(20):
      next(it)


def test_all_bad_source_fails_instead_of_hanging(tmp_path):
  with open(tmp_path / "manifest.jsonl", "w") as f:
    for i in range(3):
      f.write(json.dumps({"media": f"nothing{i}.png", "caption": "x"}) + "\n")
  cfg = _manifest_config(tmp_path, num_epochs=None, error_budget_min_seen=50)
  it = pipeline.make_iterator(cfg, global_batch_size=2, process_index=0, process_count=1)
  with pytest.raises(pipeline.DataErrorBudgetExceeded, match="50 of 50 records"):
    next(it)


def test_manifest_errors_name_the_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"media": "a.jpg", "caption": "ok"}\n\n{"media": "b.jpg", "caption": "oops",}\n')
  with pytest.raises(manifest_lib.ManifestError, match=r"m\.jsonl:3: invalid JSON"):
    manifest_lib.read_manifest(path)
  path.write_text('{"media": "a.jpg", "captoin": "typo"}\n')
  with pytest.raises(manifest_lib.ManifestError, match=r":1: unknown key\(s\) \['captoin'\]"):
    manifest_lib.read_manifest(path)
  path.write_text('{"media": "a.jpg", "label": true}\n')
  with pytest.raises(manifest_lib.ManifestError, match="'label' must be str or int"):
    manifest_lib.read_manifest(path)
  with pytest.raises(manifest_lib.ManifestError, match="does not exist"):
    manifest_lib.read_manifest(tmp_path / "absent.jsonl")


def test_arrayrecord_cli_round_trip_matches_manifest_pipeline(tmp_path):
  entries = _write_media_folder(tmp_path / "media")
  # A clip window travels into the records (the same frames as through the manifest, not the whole clip).
  entries.append({"media": "clips/2.mp4", "caption": "a window", "start_s": 1.0, "end_s": 2.5})
  with open(tmp_path / "media" / "manifest.jsonl", "a") as f:
    f.write(json.dumps(entries[-1]) + "\n")
  out = tmp_path / "shards"
  proc = run_cli("vljepa_jax.data.write_arrayrecord", f"--manifest={tmp_path / 'media' / 'manifest.jsonl'}",
                 f"--media-root={tmp_path / 'media'}", f"--output={out}", "--shards=3")
  assert f"{len(entries)} records in 3 shard(s)" in proc.stdout
  assert sorted(os.listdir(out)) == ["dataset.json"] + [f"shard-0000{i}-of-00003.array_record" for i in range(3)]
  from_manifest, _ = _all_examples(_manifest_config(tmp_path / "media"))
  from_records, _ = _all_examples(_manifest_config(tmp_path, sources=[{"type": "array_record", "path": str(out)}]))
  for key in ("video", "label", "source_index"):
    np.testing.assert_array_equal(from_records[key], from_manifest[key], err_msg=key)
  window_row = list(from_manifest["source_index"]).index(len(entries) - 1)
  whole_row = list(from_manifest["source_index"]).index(len(entries) - 2)  # clips/2.mp4 whole
  assert not np.array_equal(from_manifest["video"][window_row], from_manifest["video"][whole_row])
  # Existing output is never clobbered by accident.
  again = run_cli("vljepa_jax.data.write_arrayrecord", f"--manifest={tmp_path / 'media' / 'manifest.jsonl'}",
                  f"--output={out}", check=False)
  assert again.returncode == 1 and "exists" in again.stderr


def test_arrayrecord_cli_fails_cleanly_on_bad_input(tmp_path):
  _write_media_folder(tmp_path, bad=True)
  out = tmp_path / "shards"
  proc = run_cli("vljepa_jax.data.write_arrayrecord", f"--manifest={tmp_path / 'manifest.jsonl'}",
                 f"--output={out}", "--error_budget=0", check=False)
  assert proc.returncode == 1 and "img/missing.jpg: missing_file" in proc.stderr
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".shards")]
  (tmp_path / "broken.jsonl").write_text('{"media": "x.jpg"}\n{"media": \n')
  proc = run_cli("vljepa_jax.data.write_arrayrecord", f"--manifest={tmp_path / 'broken.jsonl'}",
                 f"--output={out}", check=False)
  assert proc.returncode == 1 and "broken.jsonl:2: invalid JSON" in proc.stderr


# ---------------------------------------------------------------- TFDS


def test_tfds_source_through_mock_data(tok):
  tfds = pytest.importorskip("tensorflow_datasets")  # the test extra installs it
  source = {"type": "tfds", "name": "mnist", "split": "train", "caption_template": "a photo of the digit {}."}
  cfg = config(sources=[source], shuffle=False, num_epochs=1, text_mode="caption")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    raw = tfds.data_source("mnist", split="train")
    want = [raw[i] for i in range(6)]
    examples, _ = _all_examples(cfg)
    (batch,), _ = batches(cfg, 1, batch=6, target_tokenizer=tok)
  for row, example in enumerate(want):
    image = np.repeat(example["image"], 3, axis=-1)  # grayscale -> RGB
    resized = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(examples["video"][row, 0], reference_normalize(resized), atol=1e-5)
    assert examples["label"][row] == example["label"]
    assert tok.decode(batch["target_ids"][row][batch["target_mask"][row] == 1]) == \
        f"a photo of the digit {example['label']}."


def test_tfds_imagenet_mock_is_resized_and_cropped():
  tfds = pytest.importorskip("tensorflow_datasets")
  source = {"type": "tfds", "name": "imagenet2012", "split": "validation"}
  cfg = config(sources=[dict(source, caption_template="a photo of a {}.")], shuffle=False, num_epochs=1,
               crop_size=16, short_side=20)
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    raw = tfds.data_source("imagenet2012", split="validation")
    want = [raw[i] for i in range(5)]
    examples, _ = _all_examples(cfg)
    names = tfds.builder("imagenet2012").info.features["label"].names
  for row, example in enumerate(want):
    image = example["image"]  # mock images have random sizes
    h, w = image.shape[:2]
    size = (max(20, int(w * 20 / min(h, w) + 0.5)), max(20, int(h * 20 / min(h, w) + 0.5)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    top, left = (resized.shape[0] - 16) // 2, (resized.shape[1] - 16) // 2
    np.testing.assert_allclose(examples["video"][row, 0], reference_normalize(resized[top:top + 16, left:left + 16]),
                               atol=1e-5)
    assert examples["label"][row] == example["label"] and 0 <= example["label"] < len(names)


# ---------------------------------------------------------------- global arrays across processes


def test_two_processes_build_one_global_batch(tmp_path):
  """Two `jax.distributed` CPU processes x 2 devices: disjoint shards stitched into one array."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = os.path.join(REPO, "tests", "multiprocess_data.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, script, str(i), "2", str(port), str(tmp_path / f"{i}.json")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out
  results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
  local = [r["local"] for r in results]
  assert not set(local[0]) & set(local[1])
  for r in results:
    assert r["global_shape"] == [8, 4, 32, 32, 3]
    assert r["sharding"][0] == ["data", "fsdp"] and all(a is None for a in r["sharding"][1:])
    assert r["gathered"] == local[0] + local[1]


def test_uint8_video_is_normalised_on_device():
  (raw,), _ = batches(config(video_dtype="uint8", shuffle=False), 1)
  (host,), _ = batches(config(shuffle=False), 1)
  assert raw["video"].dtype == np.uint8
  np.testing.assert_allclose(host["video"], reference_normalize(raw["video"]), atol=1e-6)
  on_device = global_batch.normalize_video(raw["video"])
  np.testing.assert_allclose(np.asarray(on_device), reference_normalize(raw["video"]), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(global_batch.normalize_video(host["video"])), host["video"])


def test_worker_processes_are_deterministic_resumable_and_cover_the_data(tok):
  cfg = config(num_workers=2, num_epochs=1, sources=[dict(SHAPES, size=48)], prefetch_batches=0)
  first, it = batches(cfg, 3, batch=8, target_tokenizer=tok)
  state = it.get_state()
  rest = list(it)
  again, _ = batches(cfg, 6, batch=8, target_tokenizer=tok)
  assert_batches_equal(first + rest, again)
  assert sorted(np.concatenate([b["source_index"] for b in first + rest])) == list(range(48))
  resumed = pipeline.make_iterator(cfg, global_batch_size=8, process_index=0, process_count=1, target_tokenizer=tok)
  resumed.set_state(state)
  assert_batches_equal(list(resumed), rest)


def test_embedded_dataset_renders_at_the_pipeline_size():
  cfg = config(sources=[{"type": "shapes", "size": 8}], crop_size=48, num_frames=3, shuffle=False)
  (batch,), _ = batches(cfg, 1, batch=4)
  record = shapes.ShapesSource(shapes.ShapesConfig(image_size=48, num_frames=3), size=8)[int(batch["source_index"][0])]
  np.testing.assert_allclose(batch["video"][0], reference_normalize(record["frames"]), atol=1e-6)
