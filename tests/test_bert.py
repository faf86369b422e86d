"""BERT / all-MiniLM-L6-v2: parity with Hugging Face `BertModel`, real pretrained weights, bad input."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from conftest import run_cli
from vljepa_jax import convert
from vljepa_jax.data import tokenizer as tokenizer_lib

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a stringed instrument.",
    "A chef is slicing vegetables in a kitchen.",
    "The cat sleeps on a sunny windowsill.",
    "Two dogs chase a ball across the park.",
    "Stock markets fell sharply after the announcement.",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=40, attn_implementation="eager")
  model = transformers.BertModel(cfg, add_pooling_layer=True).eval()
  src = tmp_path_factory.mktemp("bert_src")
  model.save_pretrained(src)
  out = tmp_path_factory.mktemp("bert_out") / "converted"
  run_cli("vljepa_jax.convert", "--model", "bert", "--input", str(src), "--output", str(out))
  return model, str(src), str(out)


def test_tiny_bert_matches_transformers(tiny_bert):
  model, _, out = tiny_bert
  flax_model, params = convert.load(out)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 99, size=(3, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # right padding
  mask[2, 3:] = 0
  ids = ids * mask
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  ours = np.asarray(flax_model.apply({"params": params}, ids, mask))
  assert np.abs(ours - ref).max() <= 1e-4


@pytest.fixture(scope="module")
def minilm_converted(minilm_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("minilm") / "converted"
  run_cli("vljepa_jax.convert", "--model", "bert", "--input", minilm_dir, "--output", str(out))
  return str(out)


def test_minilm_sentence_embeddings_match_pytorch(minilm_dir, minilm_converted):
  """The Sentence-Transformers recipe done by hand in torch: masked mean, then L2 normalise."""
  ref_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  batch = ref_tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
  ref_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
  with torch.no_grad():
    hidden = ref_model(**batch).last_hidden_state
  m = batch["attention_mask"].unsqueeze(-1).float()
  ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy()

  model, params = convert.load(minilm_converted)
  tok = tokenizer_lib.for_converted_model(minilm_converted, max_length=64)
  ids, mask = tok(SENTENCES)
  ours = np.asarray(model.apply({"params": params}, ids, mask, method="embed"))
  cosine = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
  assert cosine.min() >= 0.9999, cosine
  # And the embeddings mean something: each paraphrase pair is the other's nearest neighbour.
  sims = ours @ ours.T
  np.fill_diagonal(sims, -1)
  assert sims[0].argmax() == 1 and sims[1].argmax() == 0


def test_wrong_family_fails_cleanly(tiny_bert, tmp_path):
  _, src, _ = tiny_bert
  out = tmp_path / "as_llama"
  proc = run_cli("vljepa_jax.convert", "--model", "llama", "--input", src, "--output", str(out), check=False)
  assert proc.returncode != 0
  assert "encoder.layer" in proc.stderr or "not a Llama" in proc.stderr, proc.stderr
  assert not out.exists() and os.listdir(tmp_path) == []


def test_missing_and_misshaped_tensors_are_named(tiny_bert, tmp_path):
  model, src, _ = tiny_bert
  state = {k: v.clone() for k, v in model.state_dict().items()}
  del state["encoder.layer.1.output.dense.bias"]
  state["encoder.layer.0.attention.self.query.weight"] = torch.zeros(32, 31)
  broken = tmp_path / "broken"
  broken.mkdir()
  shutil.copy(os.path.join(src, "config.json"), broken / "config.json")
  save_file(state, str(broken / "model.safetensors"))
  out = tmp_path / "out"
  proc = run_cli("vljepa_jax.convert", "--model", "bert", "--input", str(broken), "--output", str(out), check=False)
  assert proc.returncode != 0
  assert "encoder.layer.0.attention.self.query.weight" in proc.stderr and "(32, 31)" in proc.stderr
  assert "backbone/layers_1/mlp/wo/bias" in proc.stderr  # the missing parameter, by its Flax path
  assert not out.exists()


def test_missing_input_and_existing_output(tiny_bert, tmp_path):
  _, src, out = tiny_bert
  proc = run_cli("vljepa_jax.convert", "--model", "bert", "--input", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "o"), check=False)
  assert proc.returncode != 0 and "does not exist" in proc.stderr
  before = json.load(open(os.path.join(out, "model.json")))
  proc = run_cli("vljepa_jax.convert", "--model", "bert", "--input", src, "--output", out, check=False)
  assert proc.returncode != 0 and "already exists" in proc.stderr
  assert json.load(open(os.path.join(out, "model.json"))) == before
