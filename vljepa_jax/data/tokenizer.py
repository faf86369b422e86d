"""Text tokenizers for every text tower: strings -> fixed-shape `(ids, mask)` NumPy batches.

One interface covers the three tokenizer kinds the towers ship with:

  Llama-3 (predictor / Y-decoder)  tokenizer.json, byte-level BPE; the file's template prepends
                                   BOS 128000; PAD is `<|finetune_right_pad_id|>` (128004).
  EmbeddingGemma (Y-encoder)       SentencePiece tokenizer.model; BOS and EOS added; pad 0.
  BERT / all-MiniLM-L6-v2          tokenizer.json, WordPiece; template `[CLS] A [SEP]`; pad 0.

Every call returns arrays exactly `max_length` long, right-padded: jitted steps need static
shapes, and right padding keeps RoPE positions (which the models derive from the index, not
from the mask) identical to an unpadded run. Truncation cuts content, never the special tokens,
so a truncated query still starts with BOS / [CLS] and ends with EOS / [SEP] where the model
expects them.

Tokenization is host-side NumPy on purpose: it runs in the input pipeline, not under `jit`.
"""
from __future__ import annotations

import abc
import copy
import json
import os
from typing import Any, Sequence

import numpy as np

DEFAULT_MAX_LENGTH = 512
# Pad tokens recognised in a tokenizer.json that does not say which one it pads with.
KNOWN_PAD_TOKENS = ("[PAD]", "<pad>", "<|finetune_right_pad_id|>")
SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZERS_FILE = "tokenizer.json"
# Layout of a converted model directory; mirrors `vljepa_jax.convert.checkpoint` without importing
# it, so tokenizing text does not pull in JAX and Orbax.
METADATA_FILE = "model.json"
TOKENIZER_DIR = "tokenizer"

# Per-family constructor defaults. Llama-3's BOS comes from its tokenizer.json template, so only
# the pad token is chosen here; the VL-JEPA paper does not state one, and 128004 is the id Meta
# reserves for right padding.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"hf": {"pad_token": "<|finetune_right_pad_id|>"},
              "spm": {"add_bos": True, "add_eos": False}},
    "embeddinggemma": {"hf": {"pad_id": 0}, "spm": {"add_bos": True, "add_eos": True, "pad_id": 0}},
    "bert": {"hf": {"pad_id": 0}, "spm": {"pad_id": 0}},
}


class Tokenizer(abc.ABC):
  """Strings -> `(ids, mask)`, both int32 `(batch, max_length)`; mask is 1 on tokens, 0 on pad.

  Subclasses implement `_encode` (special tokens included, already truncated to `max_length`),
  `decode`, `num_special_tokens` and `vocab_size`; padding and input checks live here so every
  kind pads and fails the same way.
  """

  _max_length: int
  _pad_id: int

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can emit (special and added tokens included)."""

  @property
  @abc.abstractmethod
  def num_special_tokens(self) -> int:
    """Special tokens added to every sequence; `max_length` must leave room for them."""

  @abc.abstractmethod
  def _encode(self, texts: list[str]) -> list[list[int]]:
    """Ids with special tokens, each at most `max_length` long."""

  @property
  @abc.abstractmethod
  def source(self) -> str:
    """The file this tokenizer was read from, for error messages."""

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    """Text of in-vocabulary ids, skipping pad and special tokens."""

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of one row of ids, skipping pad and special tokens."""
    ids = _ids_list(ids)
    for i in ids:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size}) of {self.source}")
    return self._decode(ids)

  def decode_batch(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
    return [self.decode(row) for row in ids]

  def with_max_length(self, max_length: int) -> "Tokenizer":
    """A copy that pads / truncates to `max_length` (e.g. 2048 for EmbeddingGemma)."""
    other = copy.copy(self)
    other._set_max_length(max_length)
    return other

  def _set_max_length(self, max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
      raise ValueError(f"max_length must be an int, got {max_length!r}")
    if max_length < max(self.num_special_tokens, 1):
      raise ValueError(
          f"max_length={max_length} is too short for {type(self).__name__}: every sequence gets "
          f"{self.num_special_tokens} special token(s), so max_length must be at least "
          f"{max(self.num_special_tokens, 1)}")
    self._max_length = int(max_length)

  def _check_pad_id(self, pad_id: int) -> int:
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)) or not 0 <= pad_id < self.vocab_size:
      raise ValueError(f"pad_id={pad_id!r} is not a token id: expected an int in [0, {self.vocab_size})")
    return int(pad_id)

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, mask)` int32 `(len(texts), max_length)`, right-padded with `pad_id`."""
    texts = _check_texts(texts)
    rows = self._encode(texts)
    ids = np.full((len(rows), self._max_length), self._pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), self._max_length), dtype=np.int32)
    for i, row in enumerate(rows):
      if len(row) > self._max_length:  # A backend that ignored truncation must not pass silently.
        raise RuntimeError(f"{type(self).__name__} produced {len(row)} ids for text {i}, "
                           f"more than max_length={self._max_length}")
      ids[i, :len(row)] = row
      mask[i, :len(row)] = 1
    return ids, mask

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(max_length={self._max_length}, pad_id={self._pad_id}, "
            f"vocab_size={self.vocab_size})")


def _check_texts(texts: Any) -> list[str]:
  # A bare string is a sequence of characters: tokenizing it letter by letter is never meant.
  if isinstance(texts, (str, bytes)):
    raise ValueError(f"texts must be a list of strings, got a single {type(texts).__name__} "
                     f"{texts[:40]!r}; wrap it in a list")
  try:
    texts = list(texts)
  except TypeError:
    raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}") from None
  if not texts:
    raise ValueError("texts is an empty batch: expected at least one string")
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise ValueError(f"texts[{i}] is {type(t).__name__} {t!r:.60}, expected str")
  return [str(t) for t in texts]  # np.str_ -> str for the C++ / Rust backends.


def _ids_list(ids: Sequence[int] | np.ndarray) -> list[int]:
  arr = np.asarray(ids)
  if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f"decode expects one 1-D row of integer ids, got shape {arr.shape} dtype {arr.dtype}; "
                     f"use decode_batch for a batch")
  return [int(i) for i in arr]


def _check_file(path: str | os.PathLike, what: str) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  return path


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece `tokenizer.model` (EmbeddingGemma) with BOS / EOS added by hand.

  SentencePiece itself only segments text; the special tokens are ours to add, which is why
  `add_bos` / `add_eos` are arguments. Truncation keeps BOS and EOS and cuts the content in between.
  """

  def __init__(self, model_file: str | os.PathLike, *, max_length: int = DEFAULT_MAX_LENGTH,
               add_bos: bool = True, add_eos: bool = True, pad_id: int | None = None):
    import sentencepiece as spm

    self.model_file = _check_file(model_file, "SentencePiece model file")
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(self.model_file)
    except (OSError, RuntimeError) as e:
      # Meta's original Llama-3 `tokenizer.model` is a tiktoken file that shares the name.
      raise ValueError(f"{self.model_file} is not a SentencePiece model ({e}); a Llama-3 "
                       f"tokenizer needs its tokenizer.json instead") from None
    self._prefix = self._special_id("bos", self._sp.bos_id()) if add_bos else []
    self._suffix = self._special_id("eos", self._sp.eos_id()) if add_eos else []
    if pad_id is None:
      # Models without a pad piece report -1; 0 is then the conventional choice (and Gemma's).
      pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
    self._pad_id = self._check_pad_id(pad_id)
    self._set_max_length(max_length)

  def _special_id(self, name: str, i: int) -> list[int]:
    if i < 0:
      raise ValueError(f"{self.model_file} defines no {name.upper()} piece; pass add_{name}=False")
    return [i]

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def num_special_tokens(self) -> int:
    return len(self._prefix) + len(self._suffix)

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def _encode(self, texts: list[str]) -> list[list[int]]:
    keep = self._max_length - self.num_special_tokens
    return [self._prefix + ids[:keep] + self._suffix for ids in self._sp.Encode(texts)]

  @property
  def source(self) -> str:
    return self.model_file

  def _decode(self, ids: list[int]) -> str:
    # Control pieces (pad / BOS / EOS) decode to nothing in SentencePiece; filtering them and
    # the pad id explicitly also covers a pad id that is an ordinary piece.
    keep = [i for i in ids if i != self._pad_id and not self._sp.IsControl(i)]
    return self._sp.Decode(keep)


class HuggingFaceTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json` (Llama-3, BERT) run with the `tokenizers` library.

  The file's own padding and truncation settings are dropped (MiniLM's pads and truncates to 128,
  which would silently cap every query); special tokens come from the file's post-processor
  template, and the library's truncation reserves room for them.
  """

  def __init__(self, tokenizer_json: "str | os.PathLike | Any", *, max_length: int = DEFAULT_MAX_LENGTH,
               pad_id: int | None = None, pad_token: str | None = None):
    import tokenizers

    if isinstance(tokenizer_json, tokenizers.Tokenizer):
      self._source = "<tokenizers.Tokenizer>"
      tok = tokenizers.Tokenizer.from_str(tokenizer_json.to_str())  # Our own copy: we mutate it.
    else:
      self._source = _check_file(tokenizer_json, "tokenizer.json")
      try:
        tok = tokenizers.Tokenizer.from_file(self.source)
      except Exception as e:  # The Rust error type is not exported; any parse failure lands here.
        raise ValueError(f"{self.source} is not a valid tokenizer.json: {e}") from None
    file_padding = tok.padding
    tok.no_padding()
    tok.no_truncation()
    self._tok = tok
    self._pad_id = self._check_pad_id(self._resolve_pad_id(pad_id, pad_token, file_padding))
    self._set_max_length(max_length)

  def _resolve_pad_id(self, pad_id, pad_token, file_padding) -> int:
    if pad_id is not None and pad_token is not None:
      if self._tok.token_to_id(pad_token) != pad_id:
        raise ValueError(f"pad_id={pad_id} and pad_token={pad_token!r} (id {self._tok.token_to_id(pad_token)}) "
                         f"disagree; pass one of them")
      return pad_id
    if pad_id is not None:
      return pad_id
    if pad_token is not None:
      i = self._tok.token_to_id(pad_token)
      if i is None:
        raise ValueError(f"pad_token={pad_token!r} is not in the vocabulary of {self.source}")
      return i
    if file_padding is not None:
      return file_padding["pad_id"]
    for token in KNOWN_PAD_TOKENS:
      i = self._tok.token_to_id(token)
      if i is not None:
        return i
    raise ValueError(f"{self.source} names no pad token (no padding config, none of {KNOWN_PAD_TOKENS} in "
                     f"its vocabulary); pass pad_id= or pad_token=")

  def _set_max_length(self, max_length: int) -> None:
    super()._set_max_length(max_length)
    # `tokenizers` would silently skip truncation when max_length < the special tokens; the check
    # above rules that out. Direction right: keep the start of the text.
    self._tok.enable_truncation(self._max_length, strategy="longest_first", direction="right")

  def with_max_length(self, max_length: int) -> "HuggingFaceTokenizer":
    import tokenizers

    other = copy.copy(self)
    other._tok = tokenizers.Tokenizer.from_str(self._tok.to_str())  # Truncation is per-object state.
    other._set_max_length(max_length)
    return other

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def num_special_tokens(self) -> int:
    post = self._tok.post_processor
    return post.num_special_tokens_to_add(False) if post is not None else 0

  @property
  def backend(self) -> Any:
    """The underlying `tokenizers.Tokenizer` (padding off, truncation at `max_length`)."""
    return self._tok

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def _encode(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=True)]

  @property
  def source(self) -> str:
    return self._source

  def _decode(self, ids: list[int]) -> str:
    # The pad id need not be marked special in the file, so drop it explicitly.
    return self._tok.decode([i for i in ids if i != self._pad_id], skip_special_tokens=True)


def from_directory(path: str | os.PathLike, family: str | None = None, max_length: int = DEFAULT_MAX_LENGTH,
                   **overrides: Any) -> Tokenizer:
  """The tokenizer in a model folder, with the family's special-token and pad defaults.

  `tokenizer.model` (SentencePiece) wins over `tokenizer.json`, as for Gemma, which ships both;
  except for "llama", whose SentencePiece-named file, when present, is Meta's tiktoken format.
  `overrides` go to the constructor (e.g. `pad_id=`, `add_eos=`).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory not found: {path}")
  if family is not None and family not in FAMILY_DEFAULTS:
    raise ValueError(f"unknown tokenizer family {family!r}; expected one of {sorted(FAMILY_DEFAULTS)} or None")
  spm_file = os.path.join(path, SENTENCEPIECE_FILE)
  json_file = os.path.join(path, TOKENIZERS_FILE)
  has_spm, has_json = os.path.isfile(spm_file), os.path.isfile(json_file)
  if has_spm and not (family == "llama" and has_json):
    kwargs = {**FAMILY_DEFAULTS.get(family, {}).get("spm", {}), **overrides}
    return SentencePieceTokenizer(spm_file, max_length=max_length, **kwargs)
  if has_json:
    kwargs = {**FAMILY_DEFAULTS.get(family, {}).get("hf", {}), **overrides}
    if "pad_id" in overrides or "pad_token" in overrides:  # An explicit choice replaces the default.
      kwargs = {k: v for k, v in kwargs.items() if k not in ("pad_id", "pad_token") or k in overrides}
    return HuggingFaceTokenizer(json_file, max_length=max_length, **kwargs)
  raise FileNotFoundError(f"{path} has no tokenizer: expected {SENTENCEPIECE_FILE} (SentencePiece) or "
                          f"{TOKENIZERS_FILE} (Hugging Face tokenizers)")


def for_converted_model(directory: str | os.PathLike, max_length: int = DEFAULT_MAX_LENGTH,
                        **overrides: Any) -> Tokenizer:
  """The tokenizer saved with a converted model (`model.json` family + `tokenizer/` files)."""
  directory = os.fspath(directory)
  meta_path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{directory} is not a converted vljepa-jax model: {METADATA_FILE} is missing")
  with open(meta_path) as f:
    try:
      family = json.load(f).get("family")
    except (json.JSONDecodeError, AttributeError) as e:
      raise ValueError(f"{meta_path} is not a JSON object with a 'family': {e}") from None
  if family not in FAMILY_DEFAULTS:
    raise ValueError(f"{meta_path} has family {family!r}, which has no text tokenizer; expected one of "
                     f"{sorted(FAMILY_DEFAULTS)}")
  folder = os.path.join(directory, TOKENIZER_DIR)
  if not any(os.path.isfile(os.path.join(folder, n)) for n in (SENTENCEPIECE_FILE, TOKENIZERS_FILE)):
    raise FileNotFoundError(
        f"converted model {directory} ({family}) has no tokenizer files: expected {TOKENIZER_DIR}/"
        f"{SENTENCEPIECE_FILE} or {TOKENIZER_DIR}/{TOKENIZERS_FILE}; re-convert from a source folder that "
        f"contains them, or use from_directory() on the original model folder")
  return from_directory(folder, family=family, max_length=max_length, **overrides)


WORD_LEVEL_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def word_level(words: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> HuggingFaceTokenizer:
  """A BERT-style word-level tokenizer over a closed vocabulary (`[CLS] words [SEP]`, pad 0).

  For towers trained from scratch on a closed-vocabulary dataset (the embedded shapes data) when
  no pretrained tokenizer is installed. Text is lower-cased and split on whitespace and
  punctuation; out-of-vocabulary words become `[UNK]`.
  """
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers, processors

  words = [w for w in dict.fromkeys(words) if w not in WORD_LEVEL_SPECIALS]
  vocab = {token: i for i, token in enumerate(list(WORD_LEVEL_SPECIALS) + words)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  tok.add_special_tokens(list(WORD_LEVEL_SPECIALS))
  return HuggingFaceTokenizer(tok, max_length=max_length, pad_id=vocab["[PAD]"])
