"""Hugging Face Hub repo ids as inputs, offline: a cache the test lays out as huggingface_hub does.

Every run has `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` pointing at a cache the test populates
(`models--OWNER--NAME/refs/main` -> a commit, `snapshots/<commit>/` holding the files), so
huggingface_hub reads the cache the way it reads a real one and never reaches the network. The
converted model is compared with the Hugging Face model that wrote the files.
"""
import os

import httpx
import numpy as np
import pytest
import torch
import transformers

import tiny_train_config
from conftest import run_cli
from vljepa_jax import convert
from vljepa_jax.convert import hub
from vljepa_jax.train import model_setup

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "acme/tiny-bert"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
  """A Hub cache holding `acme/tiny-bert` at COMMIT (branch main), and the torch model it holds."""
  cache = tmp_path_factory.mktemp("hf_cache")
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=160, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=40, attn_implementation="eager")
  model = transformers.BertModel(config, add_pooling_layer=False).eval()
  repo = cache / "models--acme--tiny-bert"
  model.save_pretrained(repo / "snapshots" / COMMIT)
  os.makedirs(repo / "refs")
  (repo / "refs" / "main").write_text(COMMIT)
  return cache, model


@pytest.fixture()
def offline(hub_cache, monkeypatch):
  cache, _ = hub_cache
  from huggingface_hub import constants
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
  return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


def _hidden(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def _ids():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 160, size=(2, 9))
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  return ids * mask, mask


def test_the_converter_reads_a_repo_id_from_the_cache(hub_cache, offline, tmp_path):
  _, model = hub_cache
  out = tmp_path / "converted"
  proc = run_cli("vljepa_jax.convert", "--model", "bert", "--input", f"{REPO}@{COMMIT}", "--output", str(out),
                 env=offline)
  assert f"converted bert checkpoint {REPO}@{COMMIT}" in proc.stdout
  flax_model, params = convert.load(str(out))
  ids, mask = _ids()
  np.testing.assert_allclose(np.asarray(flax_model.apply({"params": params}, ids, mask)), _hidden(model, ids, mask),
                             atol=1e-4)
  assert convert.checkpoint.read_metadata(str(out))["source"] == f"hf://{REPO}@{COMMIT}"


@pytest.mark.parametrize("spec, message", [
    ("acme/missing-model", "acme/missing-model is not in the Hugging Face cache"),
    (f"{REPO}@v2", f"{REPO}@v2 is not in the Hugging Face cache"),
])
def test_a_repo_missing_from_the_cache_fails_saying_what_to_do(offline, tmp_path, spec, message):
  out = tmp_path / "converted"
  proc = run_cli("vljepa_jax.convert", "--model", "bert", "--input", spec, "--output", str(out), env=offline,
                 check=False)
  assert proc.returncode == 1 and message in proc.stderr and "hf download" in proc.stderr
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # nothing half-written


def test_hub_errors_are_explained(monkeypatch):
  import huggingface_hub
  from huggingface_hub import errors
  response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/api/models/meta-llama/x"))

  def gated(*args, **kwargs):
    raise errors.GatedRepoError("403 Client Error", response=response)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
  with pytest.raises(hub.HubError, match=r"meta-llama/Llama-3.2-1B is a gated repository: accept its licence at "
                                         r"https://huggingface.co/meta-llama/Llama-3.2-1B .* HF_TOKEN"):
    hub.resolve("meta-llama/Llama-3.2-1B")

  def missing(*args, **kwargs):
    raise errors.RepositoryNotFoundError("404 Client Error", response=httpx.Response(404, request=response.request))

  monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
  with pytest.raises(hub.HubError, match=r"no Hugging Face repository 'acme/nothing'"):
    hub.resolve("acme/nothing")
  # Local paths are never looked up on the Hub; strings that are neither fail as paths elsewhere.
  assert hub.resolve(os.path.dirname(__file__)) == os.path.dirname(__file__)
  assert hub.parse("not a repo id") is None and hub.parse("a/b/c") is None
  assert hub.parse("meta-llama/Llama-3.2-1B@v1.0") == ("meta-llama/Llama-3.2-1B", "v1.0")


def test_init_towers_take_repo_ids_converted_once_into_the_workdir(hub_cache, offline, tmp_path):
  _, model = hub_cache
  config = tiny_train_config.get_config_with(**{"init.y_encoder": REPO, "tokenizers.target": "shapes"})
  setup = model_setup.build(config, cache_dir=str(tmp_path))
  folder = setup.checkpoints["y_encoder"]
  assert folder.startswith(str(tmp_path)) and COMMIT in folder
  stamp = os.path.getmtime(os.path.join(folder, convert.checkpoint.METADATA_FILE))
  again = model_setup.build(config, cache_dir=str(tmp_path))
  assert again.checkpoints["y_encoder"] == folder
  assert os.path.getmtime(os.path.join(folder, convert.checkpoint.METADATA_FILE)) == stamp  # not converted again
  flax_model, params = convert.load(folder)
  ids, mask = _ids()
  np.testing.assert_allclose(np.asarray(flax_model.apply({"params": params}, ids, mask)), _hidden(model, ids, mask),
                             atol=1e-4)


def test_a_training_run_with_a_repo_missing_from_the_cache_exits_1_saying_what_to_do(offline, tmp_path):
  proc = run_cli("vljepa_jax.main", "--config=tests/tiny_train_config.py", f"--workdir={tmp_path / 'run'}",
                 "--config.init.y_encoder=acme/missing-model", env=offline, check=False)
  assert proc.returncode == 1, proc.stderr
  assert "error: acme/missing-model is not in the Hugging Face cache" in proc.stderr and "hf download" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_a_tokenizer_named_by_repo_id_is_read_with_its_family(hub_cache, offline, tmp_path):
  """`config.tokenizers.query=OWNER/NAME` (a repo holding only tokenizer and config files) is read from the cache,
  and the family of its config.json (`bert`: pad id 0) sets the defaults."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  cache, _ = hub_cache
  vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "red": 4, "square": 5}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                               ("[SEP]", 3)])
  tokenizer_repo = cache / "models--acme--tiny-tokenizer"
  snapshot = tokenizer_repo / "snapshots" / COMMIT
  os.makedirs(snapshot)
  tok.save(str(snapshot / "tokenizer.json"))
  (snapshot / "config.json").write_text('{"model_type": "bert"}')
  os.makedirs(tokenizer_repo / "refs")
  (tokenizer_repo / "refs" / "main").write_text(COMMIT)
  config = tiny_train_config.get_config_with(**{"tokenizers.query": "acme/tiny-tokenizer"})
  setup = model_setup.build(config, cache_dir=str(tmp_path))
  ids, mask = setup.query_tokenizer.with_max_length(6)(["red square", "square"])
  np.testing.assert_array_equal(ids, [[2, 4, 5, 3, 0, 0], [2, 5, 3, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
  bad = tiny_train_config.get_config_with(**{"tokenizers.query": "acme/no-such-tokenizer"})
  with pytest.raises(hub.HubError, match="acme/no-such-tokenizer is not in the Hugging Face cache"):
    model_setup.build(bad, cache_dir=str(tmp_path))
