"""benchmarks/predictor_scaling.py end to end at toy sizes: its JSON schema, table and plot, no timing.

The script's figures are speed and memory, which unit tests never assert; what is checked is that
every (backbone, length) it was asked for comes back measured (finite, positive numbers) in the
documented JSON layout, that the `--max_seconds` guard leaves the longer lengths untimed but with
their compiled memory, and that a kernel the CPU would only interpret is refused before anything
compiles.
"""
from __future__ import annotations

import json
import math
import os
import sys

from absl import app
from absl.testing import flagsaver
import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import predictor_scaling  # pylint: disable=g-import-not-at-top,wrong-import-position

# Every flag the script reads (unparsed flags cannot be read under pytest); toy sizes. One length for
# both backbones: Mamba-3's forward + backward takes XLA:CPU 5-10 s to compile even at this size.
TINY = dict(lengths="64", backbones="llama,mamba3", width="32", layers="1", intermediate_size="64",
            head_dim="8", batch="1", repeats="1", llama_attention="xla", max_seconds="0", json="", plot="",
            dtype="float32", host_memory="system")


def _run(**overrides):
  with flagsaver.as_parsed(**{**TINY, **overrides}):
    predictor_scaling.main([])


def test_json_has_every_backbone_and_length_measured(tmp_path, capsys):
  path, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
  _run(json=str(path), plot=str(png))
  data = json.loads(path.read_text())
  assert set(data) == {"llama", "mamba3", "meta"}
  for backbone in ("llama", "mamba3"):
    assert set(data[backbone]) == {"64"}
    for length, figures in data[backbone].items():
      assert set(figures) == {"fwd_s", "fwd_bwd_s", "temp_mib"}, (backbone, length, figures)
      for key, value in figures.items():
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (backbone, length, key, value)
  meta = data["meta"]
  # Matched size: the Mamba-3 config has Llama's width, depth and MLP.
  for field, value in (("hidden_size", 32), ("num_layers", 1), ("intermediate_size", 64)):
    assert meta["configs"]["llama"][field] == meta["configs"]["mamba3"][field] == value
  assert meta["llama_attention"] == "xla" and meta["configs"]["llama"]["attention_impl"] == "xla"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  out = capsys.readouterr().out
  assert "| length | llama fwd s | llama fwd+bwd s | llama temp MiB | mamba3 fwd s |" in out
  assert "crossover mamba3: " in out


def test_max_seconds_leaves_longer_lengths_untimed_with_their_memory(tmp_path, capsys):
  path = tmp_path / "scaling.json"
  _run(backbones="llama", lengths="128,64,256", max_seconds="1e-9", json=str(path))
  data = json.loads(path.read_text())["llama"]
  assert list(data) == ["64", "128", "256"]  # ascending: the guard skips the longer ones
  assert data["64"]["fwd_s"] > 0 and data["64"]["fwd_bwd_s"] > 0 and "error" not in data["64"]
  for length in ("128", "256"):
    assert data[length]["fwd_s"] is None and data[length]["fwd_bwd_s"] is None
    assert "--max_seconds" in data[length]["error"]
  # Still compiled: attention's (L, L) logits make the temporaries grow faster than L.
  assert data["256"]["temp_mib"] > 2 * data["128"]["temp_mib"] > 0
  assert "longer lengths are compiled for temp MiB only" in capsys.readouterr().out


def test_interpreted_kernel_is_refused_on_cpu():
  with pytest.raises(app.UsageError, match="interpret mode"):
    _run(llama_attention="pallas")
