"""The optional W&B run, in offline mode, read back from the run's own transaction log.

wandb (the `wandb` extra, also in the test extra) writes an offline run to
`<dir>/wandb/offline-run-*/run-<id>.wandb`: a LevelDB-style log (`:W&B` header, then records
framed as CRC32 of type and payload, length, type, in 32 KiB blocks) of wandb's own `Record`
protobufs. The reader below checks every CRC and decodes with `wandb.proto`, so what is compared
is what wandb stored, not what our code meant to send. No network: `WANDB_MODE=offline`.
"""
from __future__ import annotations

import glob
import importlib.util
import io
import json
import math
import os
import zlib

import numpy as np
import pytest

from vljepa_jax.train import metrics_log
from vljepa_jax.train import wandb_log

import wandb  # the test extra installs wandb
from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7  # CRC (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: str) -> list[wandb_internal_pb2.Record]:
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", data[:8]
  records, pos, parts = [], 7, b""
  while pos < len(data):
    if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
      pos += _BLOCK - pos % _BLOCK
      continue
    crc, length, kind = int.from_bytes(data[pos:pos + 4], "little"), int.from_bytes(data[pos + 4:pos + 6],
                                                                                    "little"), data[pos + 6]
    payload = data[pos + _HEADER:pos + _HEADER + length]
    pos += _HEADER + length
    if kind == 0 and length == 0:
      continue  # zero padding at the end of a block
    assert crc == zlib.crc32(bytes([kind]) + payload), f"bad CRC at {pos}"
    parts += payload
    if kind in (_FULL, _LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(parts)
      records.append(record)
      parts = b""
  assert not parts
  return records


def _run_files(workdir) -> list[str]:
  # `run.finish()` returns before wandb's service process has written an offline run's file to the
  # end; shutting the service down waits for that (the next `wandb.init` starts a new one).
  wandb.teardown()
  return sorted(glob.glob(os.path.join(str(workdir), "wandb", "offline-run-*", "run-*.wandb")))


def _history(records) -> list[tuple[int, dict]]:
  """[(step, {key: value})] of the logged values (wandb's own `_step`, `_runtime`, ... left out)."""
  out = []
  for r in records:
    if r.WhichOneof("record_type") == "history":
      items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
      out.append((r.history.step.num, {k: v for k, v in items.items() if not k.startswith("_")}))
  return out


def _run(records) -> wandb_internal_pb2.RunRecord:
  (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
  return run


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
    monkeypatch.setenv(var, str(tmp_path / "wandb_home"))


def _config(**overrides) -> dict:
  return {"project": "vljepa-test", "entity": "", "group": "", "mode": "offline", **overrides}


def _logger(workdir, wandb_config, **kwargs) -> metrics_log.MetricsLogger:
  return metrics_log.MetricsLogger(str(workdir), total_steps=8, stage="train", wandb_config=wandb_config,
                                   stream=io.StringIO(), **kwargs)


def test_offline_run_holds_the_logged_scalars(tmp_path):
  workdir = tmp_path / "exp1" / "train"
  logger = _logger(workdir, _config(), run_config={"total_steps": 8, "optimizer": {"learning_rate": 1e-3}})
  logged = {2: {"loss": np.float32(0.75), "learning_rate": 1e-3, "nonfinite_total": np.int64(0), "finite": True},
            4: {"loss": float("nan"), "learning_rate": 2e-3, "nonfinite_total": np.int64(1), "finite": False}}
  for step, metrics in logged.items():
    logger.log(step, {**metrics, "note": "text is not a scalar"})
  logger.close()

  (path,) = _run_files(workdir)
  records = _records(path)
  run = _run(records)
  assert run.run_id == (workdir / wandb_log.RUN_ID_FILE).read_text().strip()
  assert (run.project, run.run_group, run.display_name, run.job_type) == ("vljepa-test", "exp1", "exp1/train",
                                                                         "train")
  config = {u.key: json.loads(u.value_json) for u in run.config.update}
  assert config["total_steps"] == 8 and config["optimizer"] == {"learning_rate": 1e-3}

  history = _history(records)
  assert [step for step, _ in history] == [2, 4]
  first, second = history[0][1], history[1][1]
  assert first == {"loss": 0.75, "learning_rate": 1e-3, "nonfinite_total": 0, "finite": 1}
  assert math.isnan(second.pop("loss")) and second == {"learning_rate": 2e-3, "nonfinite_total": 1, "finite": 0}


def test_resume_continues_the_run_and_a_fresh_start_begins_a_new_one(tmp_path):
  workdir = tmp_path / "exp" / "train"
  config = _config(group="ablation")
  logger = _logger(workdir, config)
  for step in (1, 2, 3):
    logger.log(step, {"loss": float(step)})
  logger.close()
  logger = _logger(workdir, config, resume_step=2)  # the checkpoint was step 2
  for step in (3, 4):
    logger.log(step, {"loss": 10.0 * step})
  logger.close()
  logger = _logger(workdir, config)  # from scratch
  logger.log(1, {"loss": 100.0})
  logger.close()

  runs = [_records(path) for path in _run_files(workdir)]
  assert len(runs) == 3
  first, resumed, fresh = sorted(runs, key=lambda r: _history(r)[0][1]["loss"])
  assert _run(first).run_id == _run(resumed).run_id != _run(fresh).run_id
  assert _run(resumed).display_name == "ablation/train" and _run(resumed).run_group == "ablation"
  assert _history(first) == [(1, {"loss": 1.0}), (2, {"loss": 2.0}), (3, {"loss": 3.0})]
  assert _history(resumed) == [(3, {"loss": 30.0}), (4, {"loss": 40.0})]
  assert _history(fresh) == [(1, {"loss": 100.0})]
  assert (workdir / wandb_log.RUN_ID_FILE).read_text().strip() == _run(fresh).run_id


def test_off_by_default_and_on_other_processes(tmp_path):
  logger = _logger(tmp_path / "a", _config(project=""))
  logger.log(1, {"loss": 1.0})
  logger.close()
  logger = _logger(tmp_path / "b", _config(), enabled=False)
  logger.log(1, {"loss": 1.0})
  logger.close()
  assert not os.path.exists(tmp_path / "a" / "wandb") and not os.path.exists(tmp_path / "b")
  assert not glob.glob(str(tmp_path / "wandb_home" / "**" / "*.wandb"), recursive=True)


def test_bad_mode_fails_naming_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"config\.wandb\.mode='onlin'"):
    _logger(tmp_path, _config(mode="onlin"), enabled=False)


def test_missing_wandb_fails_naming_the_extra(tmp_path, monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
  with pytest.raises(ImportError, match=r"config\.wandb\.project='vljepa-test'.*vljepa-jax\[wandb\]"):
    _logger(tmp_path, _config(), enabled=False)  # every process checks, not only the one that logs
  wandb_log.check_config(_config(project=""))  # off: wandb is not needed
