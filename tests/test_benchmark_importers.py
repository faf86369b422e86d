"""vljepa_jax.data.benchmarks: official annotation layouts (written here) -> the expected manifest records.

The layouts and the expected mapping are ../shared/reference/benchmark-formats.md's; every
expected record below is written out by hand from it, not computed by the importer's code.
"""
import json
import os

import pytest

from conftest import run_cli
from vljepa_jax.data import benchmarks
from vljepa_jax.data import manifest as manifest_lib


def _touch(root, *paths):
  for path in paths:
    full = os.path.join(root, *path.split("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    open(full, "wb").close()


def _run(capsys, *argv):
  code = benchmarks.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def _read(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_msrvtt_1k_a_csv(tmp_path, capsys):
  (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
      "key,vid_key,video_id,sentence\n"
      "ret0,msr9770,video9770,a person is connecting something to system\n"
      "ret1,msr7365,video7365,  a little girl does gymnastics \n"
      "ret2,msr8000,video8000,car s features\n", encoding="utf-8")
  media = tmp_path / "videos"
  _touch(media, "video9770.mp4", "video7365.webm", "video7365.mkv")
  out = tmp_path / "m.jsonl"
  code, stdout, stderr = _run(capsys, "msrvtt", "--annotations", tmp_path / "MSRVTT_JSFUSION_test.csv",
                              "--media-root", media, "--output", out)
  assert code == 1 and "1 record(s) have no media" in stderr and "video8000" in stderr and not out.exists()
  code, stdout, _ = _run(capsys, "msrvtt", "--annotations", tmp_path / "MSRVTT_JSFUSION_test.csv",
                         "--media-root", media, "--output", out, "--skip-missing")
  assert code == 0 and "1 record(s) skipped: missing media: video8000" in stdout
  assert f"wrote 2 records to {out} (1 skipped: missing media)" in stdout
  assert _read(out) == [
      {"media": "video9770.mp4", "id": "video9770", "caption": "a person is connecting something to system"},
      {"media": "video7365.mkv", "id": "video7365", "caption": "a little girl does gymnastics"},  # .mkv before .webm
  ]
  code, _, stderr = _run(capsys, "msrvtt", "--annotations", tmp_path / "MSRVTT_JSFUSION_test.csv", "--split", "test",
                         "--media-root", media, "--output", out)
  assert code == 1 and "--split applies to the JSON annotations" in stderr


def test_msrvtt_json_one_record_per_video_of_the_split_with_all_its_captions(tmp_path, capsys):
  data = {"info": {"year": "2016"},
          "videos": [{"category": 9, "url": "u", "video_id": "video0", "start time": 137.72, "end time": 149.44,
                      "split": "train", "id": 0},
                     {"category": 3, "url": "u", "video_id": "video7010", "start time": 1.0, "end time": 9.0,
                      "split": "test", "id": 7010},
                     {"category": 3, "url": "u", "video_id": "video7011", "start time": 1.0, "end time": 9.0,
                      "split": "test", "id": 7011}],
          "sentences": [{"sen_id": 5, "video_id": "video7010", "caption": "second caption "},
                        {"sen_id": 1, "video_id": "video0", "caption": "train caption"},
                        {"sen_id": 2, "video_id": "video7011", "caption": "Ünïcode stays, as written."},
                        {"sen_id": 3, "video_id": "video7010", "caption": " first caption"}]}
  (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data), encoding="utf-8")
  _touch(tmp_path / "v", "video7010.mp4", "video7011.mp4")  # the train video is never looked up
  out = tmp_path / "m.jsonl"
  code, _, stderr = _run(capsys, "msrvtt", "--annotations", tmp_path / "MSRVTT_data.json", "--media-root",
                         tmp_path / "v", "--output", out)
  assert code == 1 and "--split is required" in stderr and "['test', 'train']" in stderr
  code, _, stderr = _run(capsys, "msrvtt", "--annotations", tmp_path / "MSRVTT_data.json", "--split", "val",
                         "--media-root", tmp_path / "v", "--output", out)
  assert code == 1 and "--split='val' is not in the annotations; valid values: ['test', 'train']" in stderr
  code, stdout, _ = _run(capsys, "msrvtt", "--annotations", tmp_path / "MSRVTT_data.json", "--split", "test",
                         "--media-root", tmp_path / "v", "--output", out)
  assert code == 0 and f"wrote 2 records to {out}" in stdout
  assert _read(out) == [
      {"media": "video7010.mp4", "id": "video7010", "captions": ["first caption", "second caption"]},
      {"media": "video7011.mp4", "id": "video7011", "captions": ["Ünïcode stays, as written."]},
  ]


def test_msrvtt_open_vljepa_annotations_one_record_per_test_video_in_file_order(tmp_path, capsys):
  """open-vljepa's annotations.json ({video_id: {captions, split, url}}): its pool is the first N test
  videos in file order (scripts/eval.py --n_videos) with all their captions, so the order is the file's."""
  data = {"video9": {"captions": ["a train clip"], "split": "train", "url": "u"},
          "video7020": {"captions": [" a man cooks ", "someone is cooking"], "split": "test", "url": "u"},
          "video7003": {"captions": ["a dog runs"], "split": "test", "url": "u"},
          "video7001": {"captions": ["a third one"], "split": "test", "url": "u"}}
  ann = tmp_path / "annotations.json"
  ann.write_text(json.dumps(data), encoding="utf-8")  # insertion order is the file's order
  _touch(tmp_path / "videos", "video7020.mp4", "video7003.mp4", "video7001.mp4")
  out = tmp_path / "m.jsonl"
  code, stdout, _ = _run(capsys, "msrvtt", "--annotations", ann, "--split", "test", "--media-root",
                         tmp_path / "videos", "--output", out)
  assert code == 0 and f"wrote 3 records to {out}" in stdout
  assert _read(out) == [
      {"media": "video7020.mp4", "id": "video7020", "captions": ["a man cooks", "someone is cooking"]},
      {"media": "video7003.mp4", "id": "video7003", "captions": ["a dog runs"]},
      {"media": "video7001.mp4", "id": "video7001", "captions": ["a third one"]},
  ]
  code, _, stderr = _run(capsys, "msrvtt", "--annotations", ann, "--media-root", tmp_path / "videos", "--output", out)
  assert code == 1 and "--split is required" in stderr and "['test', 'train']" in stderr
  ann.write_text(json.dumps({"video1": {"split": "test"}}), encoding="utf-8")
  code, _, stderr = _run(capsys, "msrvtt", "--annotations", ann, "--split", "test", "--media-root",
                         tmp_path / "videos", "--output", out)
  assert code == 1 and "entry 'video1' has no caption list" in stderr


def test_kinetics400_csv_clips_label_folders_full_videos_and_split(tmp_path, capsys):
  (tmp_path / "val.csv").write_text(
      "label,youtube_id,time_start,time_end,split,is_cc\n"
      "abseiling,-3B32lodo2M,59,69,val,0\n"
      '"air drumming",_dbcJuKJQNs,40,50,val,0\n'
      "passing American football (in game),a_b-c_d_e_f,12.0,22.0,val,1\n"
      "petting animal (not cat),zzzzzzzzzzz,0,10,val,0\n"
      "abseiling,trainonly__,1,11,train,0\n", encoding="utf-8")
  media = tmp_path / "k400"
  _touch(media, "-3B32lodo2M_000059_000069.mp4",                    # flat trimmed clip
         "air drumming/_dbcJuKJQNs_000040_000050.mp4",               # per-label folder, spaces kept
         "passing_American_football_(in_game)/a_b-c_d_e_f_000012_000022.webm",  # '_' folder
         "a_b-c_d_e_f.mp4",                                          # full video: the trimmed clip wins
         "zzzzzzzzzzz.mkv")                                          # only the full video
  out, names = tmp_path / "m.jsonl", tmp_path / "labels.txt"
  code, _, stderr = _run(capsys, "kinetics400", "--annotations", tmp_path / "val.csv", "--split", "validate",
                         "--media-root", media, "--output", out)
  assert code == 1 and "valid values: ['train', 'val']" in stderr
  code, stdout, _ = _run(capsys, "kinetics400", "--annotations", tmp_path / "val.csv", "--split", "val",
                         "--media-root", media, "--output", out, "--label-names-out", names)
  assert code == 0 and f"wrote 4 records to {out}" in stdout
  assert _read(out) == [
      {"media": "-3B32lodo2M_000059_000069.mp4", "id": "-3B32lodo2M_000059_000069", "label": "abseiling"},
      {"media": "air drumming/_dbcJuKJQNs_000040_000050.mp4", "id": "_dbcJuKJQNs_000040_000050",
       "label": "air drumming"},
      {"media": "passing_American_football_(in_game)/a_b-c_d_e_f_000012_000022.webm",
       "id": "a_b-c_d_e_f_000012_000022", "label": "passing American football (in game)"},
      {"media": "zzzzzzzzzzz.mkv", "id": "zzzzzzzzzzz_000000_000010", "label": "petting animal (not cat)",
       "start_s": 0.0, "end_s": 10.0},
  ]
  assert names.read_text().splitlines() == ["abseiling", "air drumming", "passing American football (in game)",
                                            "petting animal (not cat)"]
  assert len(manifest_lib.read_manifest(out)) == 4  # a valid manifest, clip window included


def test_unknown_benchmark_missing_files_and_the_module_entry_point(tmp_path):
  proc = run_cli("vljepa_jax.data.benchmarks", "imagenet", "--annotations", str(tmp_path), "--media-root",
                 str(tmp_path), "--output", str(tmp_path / "m.jsonl"), check=False)
  assert proc.returncode == 1 and ("unknown benchmark 'imagenet'; expected one of ['activitynet_captions', "
                                   "'coco_karpathy', 'kinetics400', 'msrvtt', 'pope', 'ssv2', 'youcook2']"
                                   in proc.stderr)
  proc = run_cli("vljepa_jax.data.benchmarks", "msrvtt", "--annotations", str(tmp_path / "none.csv"), "--media-root",
                 str(tmp_path), "--output", str(tmp_path / "m.jsonl"), check=False)
  assert proc.returncode == 1 and "none.csv does not exist" in proc.stderr
  assert not (tmp_path / "m.jsonl").exists()


def test_ssv2_classes_are_templates_without_brackets_and_captions_the_filled_sentences(tmp_path, capsys):
  labels = {"Putting something onto something": "1", "Approaching something with your camera": "0",
            "Lifting up one end of something, then letting it drop down": "2",
            "Putting something similar to other things that are already on the table": "3"}
  (tmp_path / "something-something-v2-labels.json").write_text(json.dumps(labels), encoding="utf-8")
  validation = [
      {"id": "45", "label": "putting wood onto cable", "template": "Putting [something] onto [something]",
       "placeholders": ["wood", "cable"]},
      {"id": "31", "label": "putting coconut kernel ",
       "template": "Putting [something similar to other things that are already on the table]",
       "placeholders": ["coconut kernel"]},
      {"id": "7", "label": "lifting up one end of café table, then letting it drop down",
       "template": "Lifting up one end of [something], then letting it drop down", "placeholders": ["café table"]}]
  (tmp_path / "something-something-v2-validation.json").write_text(json.dumps(validation), encoding="utf-8")
  _touch(tmp_path / "v", "45.webm", "31.webm", "7.webm")
  out, names = tmp_path / "m.jsonl", tmp_path / "names.txt"
  code, stdout, _ = _run(capsys, "ssv2", "--annotations", tmp_path / "something-something-v2-validation.json",
                         "--media-root", tmp_path / "v", "--output", out, "--label-names-out", names)
  assert code == 0 and f"wrote 3 records to {out}" in stdout
  assert _read(out) == [
      {"media": "45.webm", "id": "45", "label": "Putting something onto something",
       "caption": "putting wood onto cable"},
      {"media": "31.webm", "id": "31",
       "label": "Putting something similar to other things that are already on the table",
       "caption": "putting coconut kernel"},
      {"media": "7.webm", "id": "7", "label": "Lifting up one end of something, then letting it drop down",
       "caption": "lifting up one end of café table, then letting it drop down"},
  ]
  assert names.read_text(encoding="utf-8").splitlines() == [  # labels.json's order by index
      "Approaching something with your camera", "Putting something onto something",
      "Lifting up one end of something, then letting it drop down",
      "Putting something similar to other things that are already on the table"]
  # The test split has ids only; a template outside the class list fails; --split is not this format's.
  (tmp_path / "test.json").write_text(json.dumps([{"id": "45"}]), encoding="utf-8")
  code, _, _ = _run(capsys, "ssv2", "--annotations", tmp_path / "test.json", "--media-root", tmp_path / "v",
                    "--output", out)
  assert code == 0 and _read(out) == [{"media": "45.webm", "id": "45"}]
  (tmp_path / "odd.json").write_text(json.dumps([{"id": "9", "label": "x", "template": "Spinning [something]"}]))
  code, _, stderr = _run(capsys, "ssv2", "--annotations", tmp_path / "odd.json", "--media-root", tmp_path / "v",
                         "--output", out)
  assert code == 1 and "entry 9: class 'Spinning something' (from its template) is not in" in stderr
  code, _, stderr = _run(capsys, "ssv2", "--annotations", tmp_path / "test.json", "--split", "test",
                         "--media-root", tmp_path / "v", "--output", out)
  assert code == 1 and "each split is its own file" in stderr
  code, _, stderr = _run(capsys, "msrvtt", "--annotations", tmp_path / "test.json", "--labels",
                         tmp_path / "something-something-v2-labels.json", "--media-root", tmp_path / "v",
                         "--output", out)
  assert code == 1 and "--labels is read by ['ssv2'] only" in stderr


def _check_windows_are_floats(records):
  for record in records:
    assert type(record["start_s"]) is float and type(record["end_s"]) is float, record


def test_activitynet_captions_segments_clamped_paragraphs_and_candidates(tmp_path, capsys):
  # val_1.json's first two entries (verbatim, but the elided sentences of the second), then a
  # video whose windows need clamping, and a video that is not on disk.
  text = (
      '{"v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 54.32]], "sentences": ["A weight '
      'lifting tutorial is given.", "  The coach helps the guy in red with the proper body placement and lifting '
      'technique."]},\n'
      ' "v_bXdq2zI1Ms0": {"duration": 73.1, "timestamps": [[0, 10.23], [10.6, 39.84], [38.01, 73.1]], "sentences": '
      '[" A man stands in a kitchen.", "  He slices the bread with a knife. ", " Il sert un café crème — très '
      'chaud ☕."]},\n'
      ' "v_clampme1234": {"duration": 12.2, "url": "https://www.youtube.com/watch?v=clampme1234", '
      '"timestamps": [[-1.5, 4.0], [3.0, 12.26], [12.2, 13.0], [5, 5]], "sentences": [" One.", " Two.", '
      '" Three.", " Four."]},\n'
      ' "v_missingvid1": {"duration": 9.0, "timestamps": [[1, 2], [3, 1]], "sentences": [" Gone.", " Reversed."]}}\n')
  (tmp_path / "val_1.json").write_text(text, encoding="utf-8")
  media = tmp_path / "anet"
  _touch(media, "uqiMw7tQ1Cc.mp4",                             # the 11-character name only
         "v_bXdq2zI1Ms0.webm", "bXdq2zI1Ms0.mp4",              # `{key}{ext}` (any ext) before `{key[2:]}{ext}`
         "v_clampme1234.mkv")
  out = tmp_path / "m.jsonl"
  args = ("activitynet_captions", "--annotations", tmp_path / "val_1.json", "--media-root", media, "--output", out)
  code, stdout, stderr = _run(capsys, *args)
  assert code == 1 and "1 record(s) have no media" in stderr and "v_missingvid1#0;" in stderr and not out.exists()
  assert "v_missingvid1#1" not in stderr  # a dropped segment is never looked up
  code, stdout, _ = _run(capsys, *args, "--skip-missing")
  assert code == 0
  assert "1 record(s) skipped: missing media: v_missingvid1#0\n" in stdout
  assert "3 record(s) dropped: invalid_segment: v_clampme1234#2, v_clampme1234#3, v_missingvid1#1\n" in stdout
  assert f"wrote 7 records to {out} (1 skipped: missing media; 3 dropped: invalid_segment)\n" in stdout
  expected = [
      {"media": "uqiMw7tQ1Cc.mp4", "id": "v_uqiMw7tQ1Cc#0", "caption": "A weight lifting tutorial is given.",
       "start_s": 0.28, "end_s": 55.15},
      {"media": "uqiMw7tQ1Cc.mp4", "id": "v_uqiMw7tQ1Cc#1",
       "caption": "The coach helps the guy in red with the proper body placement and lifting technique.",
       "start_s": 13.79, "end_s": 54.32},
      {"media": "v_bXdq2zI1Ms0.webm", "id": "v_bXdq2zI1Ms0#0", "caption": "A man stands in a kitchen.",
       "start_s": 0.0, "end_s": 10.23},
      {"media": "v_bXdq2zI1Ms0.webm", "id": "v_bXdq2zI1Ms0#1", "caption": "He slices the bread with a knife.",
       "start_s": 10.6, "end_s": 39.84},
      {"media": "v_bXdq2zI1Ms0.webm", "id": "v_bXdq2zI1Ms0#2",
       "caption": "Il sert un café crème — très chaud ☕.",
       "start_s": 38.01, "end_s": 73.1},
      {"media": "v_clampme1234.mkv", "id": "v_clampme1234#0", "caption": "One.", "start_s": 0.0, "end_s": 4.0},
      {"media": "v_clampme1234.mkv", "id": "v_clampme1234#1", "caption": "Two.", "start_s": 3.0, "end_s": 12.2},
  ]
  assert _read(out) == expected
  _check_windows_are_floats(_read(out))
  assert "☕" in out.read_text(encoding="utf-8")  # written as UTF-8, not escaped
  assert manifest_lib.read_manifest(out) == expected

  # Paragraph: one record per video, every stripped sentence joined by " ", no window.
  code, stdout, _ = _run(capsys, *args, "--skip-missing", "--granularity", "paragraph")
  assert code == 0 and f"wrote 3 records to {out} (1 skipped: missing media)\n" in stdout
  expected = [
      {"media": "uqiMw7tQ1Cc.mp4", "id": "v_uqiMw7tQ1Cc",
       "caption": "A weight lifting tutorial is given. The coach helps the guy in red with the proper body placement "
                  "and lifting technique."},
      {"media": "v_bXdq2zI1Ms0.webm", "id": "v_bXdq2zI1Ms0",
       "caption": "A man stands in a kitchen. He slices the bread with a knife. Il sert un café crème — très "
                  "chaud ☕."},
      {"media": "v_clampme1234.mkv", "id": "v_clampme1234", "caption": "One. Two. Three. Four."},
  ]
  assert _read(out) == expected and manifest_lib.read_manifest(out) == expected

  # Each split is its own file; the flag's values; the other files of the release are not this.
  code, _, stderr = _run(capsys, *args, "--split", "val_1")
  assert code == 1 and "activitynet_captions: each split is its own file; pass it as --annotations" in stderr
  with pytest.raises(SystemExit) as exit_info:  # refused by the argument parser, before any file is read
    _run(capsys, *args, "--granularity", "clip")
  assert exit_info.value.code == 2
  assert "argument --granularity: invalid choice: 'clip' (choose from 'segment', 'paragraph')" in capsys.readouterr().err
  (tmp_path / "val_ids.json").write_text('["v_uqiMw7tQ1Cc"]', encoding="utf-8")
  code, _, stderr = _run(capsys, "activitynet_captions", "--annotations", tmp_path / "val_ids.json",
                         "--media-root", media, "--output", out)
  assert code == 1 and ("val_ids.json is not ActivityNet Captions' JSON (expected a JSON object; got a list)"
                        in stderr)
  (tmp_path / "odd.json").write_text('{"v_x": {"duration": 5, "timestamps": [[0, 1]], "sentences": []}}')
  code, _, stderr = _run(capsys, "activitynet_captions", "--annotations", tmp_path / "odd.json",
                         "--media-root", media, "--output", out)
  assert code == 1 and "v_x has 1 timestamps but 0 sentences" in stderr


def test_granularity_is_refused_by_the_other_importers(tmp_path, capsys):
  (tmp_path / "coco_pope_random.json").write_text("", encoding="utf-8")
  for name in ("msrvtt", "kinetics400", "ssv2", "pope", "coco_karpathy"):
    code, _, stderr = _run(capsys, name, "--annotations", tmp_path / "coco_pope_random.json", "--granularity",
                           "paragraph", "--media-root", tmp_path, "--output", tmp_path / "m.jsonl")
    assert code == 1 and (f"{name}: --granularity is read by ['activitynet_captions', 'youcook2'] only"
                          in stderr)
  assert not (tmp_path / "m.jsonl").exists()


def test_youcook2_validation_segments_clamped_with_recipe_folders(tmp_path, capsys):
  database = {
      # The real validation entry (middle annotations elided), plus one clamped and one empty segment.
      "9GX8f5EwwE4": {"annotations": [{"id": 0, "segment": [25, 37], "sentence": "cut the onion in half and dice"},
                                      {"id": 12, "segment": [192, 213], "sentence": "bake the dish in the oven"},
                                      {"id": 13, "segment": [230, 250],
                                       "sentence": " leave it to cool, then serve — bon appétit "},
                                      {"id": 14, "segment": [245, 250], "sentence": "wash up"}],
                      "duration": 241.64, "recipe_type": "212", "subset": "validation",
                      "video_url": "https://www.youtube.com/watch?v=9GX8f5EwwE4"},
      "trainvideo1": {"annotations": [{"id": 0, "segment": [1, 5], "sentence": "boil water"}], "duration": 60.0,
                      "recipe_type": "101", "subset": "training", "video_url": "u"},
      "flatvideo01": {"annotations": [{"id": 3, "segment": [0, 10], "sentence": "crack the eggs"}], "duration": 100.0,
                      "recipe_type": "105", "subset": "validation", "video_url": "u"},
      "missingvid1": {"annotations": [{"id": 0, "segment": [2, 8], "sentence": "mix"}], "duration": 30.0,
                      "recipe_type": "105", "subset": "validation", "video_url": "u"},
  }
  path = tmp_path / "youcookii_annotations_trainval.json"
  path.write_text(json.dumps({"database": database}, ensure_ascii=False), encoding="utf-8")
  media = tmp_path / "raw_videos"
  _touch(media, "validation/212/9GX8f5EwwE4.mp4", "9GX8f5EwwE4.mp4",  # the recipe folder wins
         "flatvideo01.webm")                                          # flat
  out = tmp_path / "m.jsonl"
  args = ("youcook2", "--annotations", path, "--media-root", media, "--output", out)
  code, _, stderr = _run(capsys, *args)
  assert code == 1 and "youcook2: --split is required" in stderr and "['training', 'validation']" in stderr
  code, _, stderr = _run(capsys, *args, "--split", "testing")
  assert code == 1 and "--split='testing' is not in the annotations; valid values: ['training', 'validation']" in stderr
  code, _, stderr = _run(capsys, *args, "--split", "training")
  assert code == 1 and "1 record(s) have no media" in stderr and "trainvideo1#0;" in stderr
  code, stdout, stderr = _run(capsys, *args, "--split", "validation")
  assert code == 1 and "1 record(s) have no media" in stderr and "missingvid1#0;" in stderr and not out.exists()
  code, stdout, _ = _run(capsys, *args, "--split", "validation", "--skip-missing")
  assert code == 0 and "1 record(s) dropped: invalid_segment: 9GX8f5EwwE4#14\n" in stdout
  assert f"wrote 4 records to {out} (1 skipped: missing media; 1 dropped: invalid_segment)\n" in stdout
  expected = [
      {"media": "validation/212/9GX8f5EwwE4.mp4", "id": "9GX8f5EwwE4#0", "caption": "cut the onion in half and dice",
       "start_s": 25.0, "end_s": 37.0},
      {"media": "validation/212/9GX8f5EwwE4.mp4", "id": "9GX8f5EwwE4#12", "caption": "bake the dish in the oven",
       "start_s": 192.0, "end_s": 213.0},
      {"media": "validation/212/9GX8f5EwwE4.mp4", "id": "9GX8f5EwwE4#13",
       "caption": "leave it to cool, then serve — bon appétit", "start_s": 230.0, "end_s": 241.64},
      {"media": "flatvideo01.webm", "id": "flatvideo01#3", "caption": "crack the eggs", "start_s": 0.0, "end_s": 10.0},
  ]
  assert _read(out) == expected and manifest_lib.read_manifest(out) == expected
  _check_windows_are_floats(_read(out))
  # Paragraph: one record per video, its sentences joined by " " in annotation order, no window.
  code, stdout, _ = _run(capsys, *args, "--split", "validation", "--skip-missing", "--granularity", "paragraph")
  assert code == 0 and f"wrote 2 records to {out} (1 skipped: missing media)\n" in stdout
  expected = [
      {"media": "validation/212/9GX8f5EwwE4.mp4", "id": "9GX8f5EwwE4",
       "caption": "cut the onion in half and dice bake the dish in the oven leave it to cool, then serve — bon "
                  "appétit wash up"},
      {"media": "flatvideo01.webm", "id": "flatvideo01", "caption": "crack the eggs"},
  ]
  assert _read(out) == expected and manifest_lib.read_manifest(out) == expected
  (tmp_path / "other.json").write_text(json.dumps({"results": {}}), encoding="utf-8")
  code, _, stderr = _run(capsys, "youcook2", "--annotations", tmp_path / "other.json", "--split", "validation",
                         "--media-root", media, "--output", out)
  assert code == 1 and "is not YouCook2's annotations (expected the key(s) ['database']" in stderr


def test_pope_json_lines_split_from_the_file_name_or_flag(tmp_path, capsys):
  lines = [
      '{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", '
      '"label": "yes"}',
      '{"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": " Is there a café in the image? ", '
      '"label": "no"}',
      '',
      '{"question_id": 3, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?", '
      '"label": "no", "source": "coco"}',
      '{"question_id": 4, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a cat in the image?", '
      '"label": "yes"}',
      '   ',
  ]
  (tmp_path / "coco_pope_random.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
  media = tmp_path / "val2014"
  _touch(media, "COCO_val2014_000000310196.jpg", "COCO_val2014_000000548882.jpg")
  out = tmp_path / "m.jsonl"
  args = ("pope", "--annotations", tmp_path / "coco_pope_random.json", "--media-root", media, "--output", out)
  code, _, stderr = _run(capsys, *args)  # a missing image: all its questions are missing
  assert code == 1 and "2 record(s) have no media" in stderr and "random/3, random/4;" in stderr and not out.exists()
  code, stdout, _ = _run(capsys, *args, "--skip-missing")
  assert code == 0 and f"wrote 2 records to {out} (2 skipped: missing media)\n" in stdout
  expected = [
      {"media": "COCO_val2014_000000310196.jpg", "id": "random/1", "query": "Is there a snowboard in the image?",
       "answer": "yes", "answer_candidates": ["yes", "no"], "question_type": "random"},
      {"media": "COCO_val2014_000000310196.jpg", "id": "random/2", "query": "Is there a café in the image?",
       "answer": "no", "answer_candidates": ["yes", "no"], "question_type": "random"},
  ]
  assert _read(out) == expected and manifest_lib.read_manifest(out) == expected
  code, stdout, _ = _run(capsys, *args, "--skip-missing", "--split", "random")  # the flag may repeat the name
  assert code == 0 and _read(out) == expected

  # The older release: `image_id` (ignored), question ids from 0.
  (tmp_path / "coco_pope_adversarial.json").write_text(
      '{"question_id": 0, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, '
      '"text": "Is there a dining table in the image?", "label": "yes"}\n', encoding="utf-8")
  code, _, _ = _run(capsys, "pope", "--annotations", tmp_path / "coco_pope_adversarial.json", "--media-root", media,
                    "--output", out)
  expected = [{"media": "COCO_val2014_000000548882.jpg", "id": "adversarial/0",
               "query": "Is there a dining table in the image?", "answer": "yes", "answer_candidates": ["yes", "no"],
               "question_type": "adversarial"}]
  assert code == 0 and _read(out) == expected and manifest_lib.read_manifest(out) == expected

  # A renamed file needs --split; a --split that contradicts the file name, or is no variant, fails.
  (tmp_path / "pope_questions.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
  renamed = ("pope", "--annotations", tmp_path / "pope_questions.jsonl", "--media-root", media, "--output", out)
  code, _, stderr = _run(capsys, *renamed)
  assert code == 1 and ("pope: no variant in the file name pope_questions.jsonl (expected coco_pope_<variant>.json); "
                        "pass --split, one of ['random', 'popular', 'adversarial']") in stderr
  code, _, _ = _run(capsys, *renamed, "--split", "popular")
  assert code == 0 and _read(out) == [
      {"media": "COCO_val2014_000000310196.jpg", "id": "popular/1", "query": "Is there a snowboard in the image?",
       "answer": "yes", "answer_candidates": ["yes", "no"], "question_type": "popular"}]
  code, _, stderr = _run(capsys, *args, "--split", "popular")
  assert code == 1 and ("pope: --split='popular' disagrees with the file name coco_pope_random.json (variant "
                        "'random')") in stderr
  code, _, stderr = _run(capsys, *renamed, "--split", "radnom")
  assert code == 1 and ("--split='radnom' is not a POPE variant; valid values: ['random', 'popular', 'adversarial']"
                        in stderr)
  (tmp_path / "coco_pope_popular.json").write_text(lines[0].replace('"yes"', '"maybe"') + "\n", encoding="utf-8")
  code, _, stderr = _run(capsys, "pope", "--annotations", tmp_path / "coco_pope_popular.json", "--media-root", media,
                         "--output", out)
  assert code == 1 and "coco_pope_popular.json:1: label 'maybe' is not one of ['yes', 'no']" in stderr


def test_coco_karpathy_one_record_per_image_of_the_split_raw_captions(tmp_path, capsys):
  def image(filepath, cocoid, split, raws):
    filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
    return {"filepath": filepath, "sentids": list(range(len(raws))), "filename": filename, "imgid": cocoid,
            "split": split, "cocoid": cocoid,
            "sentences": [{"tokens": raw.lower().split(), "raw": raw, "imgid": cocoid, "sentid": i}
                          for i, raw in enumerate(raws)]}
  images = [
      {"filepath": "val2014", "sentids": [770337, 771687, 772707], "filename": "COCO_val2014_000000391895.jpg",
       "imgid": 0, "split": "test", "cocoid": 391895,
       "sentences": [{"tokens": ["a", "man", "with", "a", "red", "helmet", "on", "a", "small", "moped", "on", "a",
                                 "dirt", "road"],
                      "raw": "A man with a red helmet on a small moped on a dirt road. ", "imgid": 0, "sentid": 770337},
                     {"tokens": ["man", "riding"],
                      "raw": "Man riding a motor bike on a dirt road on the countryside.\n", "imgid": 0,
                      "sentid": 771687},
                     {"tokens": ["x"], "raw": " Un homme à moto, sur un chemin — «rouge».", "imgid": 0,
                      "sentid": 772707}]},
      image("train2014", 9, "train", ["Closeup of bins of food. "]),
      image("val2014", 42, "restval", ["A pizza on a plate.\n", "Pizza. "]),
      image("val2014", 73, "val", ["A motorcycle parked."]),
      image("val2014", 74, "test", ["Nowhere to be found."]),
  ]
  path = tmp_path / "dataset_coco.json"
  path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
  media = tmp_path / "coco"
  _touch(media, "val2014/COCO_val2014_000000391895.jpg", "train2014/COCO_train2014_000000000009.jpg",
         "val2014/COCO_val2014_000000000042.jpg")  # 73 (val) is absent and never looked up for test
  out = tmp_path / "m.jsonl"
  args = ("coco_karpathy", "--annotations", path, "--media-root", media, "--output", out)
  code, _, stderr = _run(capsys, *args)
  assert code == 1 and ("--split is required (this file holds several splits); values present: "
                        "['restval', 'test', 'train', 'train+restval', 'val']") in stderr
  code, _, stderr = _run(capsys, *args, "--split", "validation")
  assert code == 1 and "valid values: ['restval', 'test', 'train', 'train+restval', 'val']" in stderr
  code, _, stderr = _run(capsys, *args, "--split", "test")
  assert code == 1 and "1 record(s) have no media" in stderr and ": 74;" in stderr and not out.exists()
  code, stdout, _ = _run(capsys, *args, "--split", "test", "--skip-missing")
  assert code == 0 and f"wrote 1 records to {out} (1 skipped: missing media)\n" in stdout
  expected = [{"media": "val2014/COCO_val2014_000000391895.jpg", "id": "391895",
               "captions": ["A man with a red helmet on a small moped on a dirt road.",
                            "Man riding a motor bike on a dirt road on the countryside.",
                            "Un homme à moto, sur un chemin — «rouge»."]}]
  assert _read(out) == expected and manifest_lib.read_manifest(out) == expected
  code, _, _ = _run(capsys, *args, "--split", "train")  # exactly `train`
  assert code == 0 and _read(out) == [
      {"media": "train2014/COCO_train2014_000000000009.jpg", "id": "9", "captions": ["Closeup of bins of food."]}]
  code, _, _ = _run(capsys, *args, "--split", "train+restval")  # Karpathy's train, in file order
  expected = [
      {"media": "train2014/COCO_train2014_000000000009.jpg", "id": "9", "captions": ["Closeup of bins of food."]},
      {"media": "val2014/COCO_val2014_000000000042.jpg", "id": "42", "captions": ["A pizza on a plate.", "Pizza."]},
  ]
  assert code == 0 and _read(out) == expected and manifest_lib.read_manifest(out) == expected
  code, _, stderr = _run(capsys, *args, "--split", "test", "--granularity", "segment")
  assert code == 1 and "--granularity is read by ['activitynet_captions', 'youcook2'] only" in stderr
