"""vljepa_jax.data.benchmarks: official annotation layouts (written here) -> the expected manifest records.

The layouts and the expected mapping are ../shared/reference/benchmark-formats.md's; every
expected record below is written out by hand from it, not computed by the importer's code.
"""
import json
import os

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
  assert proc.returncode == 1 and "unknown benchmark 'imagenet'; expected one of ['kinetics400', 'msrvtt', 'ssv2']" in proc.stderr
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
