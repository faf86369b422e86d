"""Hugging Face Hub repo ids as checkpoint inputs: `owner/name[@revision]` -> a local folder or file.

    python -m vljepa_jax.convert --model llama --input meta-llama/Llama-3.2-1B --layers 8:16 --output DIR
    --config.init.y_encoder=google/embeddinggemma-300m            (converted into the workdir once)

Wherever a converter or `config.init.*` takes a local path, a string that is not an existing path
and reads `owner/name`, optionally `@revision` (a branch, tag or commit), is fetched with
`huggingface_hub`: its cache (`HF_HUB_CACHE`, `HF_HOME`), its token (`HF_TOKEN` or `hf auth
login`) and its offline mode (`HF_HUB_OFFLINE=1`, where only the cache is read) all apply. Only
the files a conversion reads are fetched: configs, safetensors weights and tokenizer files
(PyTorch `.bin`/`.pt` weights only when a repo has no safetensors). Failures (a gated repo whose
licence is not accepted, a missing repo, revision or file, a repo not in the cache when offline)
become one `HubError` that says what to do.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

from vljepa_jax.convert.mapping import ConversionError

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
# What conversions read: configs (model, tokenizer, Sentence-Transformers modules and their Dense
# layers), safetensors weights and tokenizer files.
CONFIG_AND_TOKENIZER = ("*.json", "*.model", "*.txt", "tokenizer*", "*/config.json", "*/*.json")
SAFETENSORS = ("*.safetensors", "*/*.safetensors")
TORCH_WEIGHTS = ("*.bin", "*.pt", "*/*.bin")
HUB_URL = "https://huggingface.co"


class HubError(ConversionError):
  """A Hub input that cannot be fetched; the message says why and what to do."""


def parse(spec: str) -> tuple[str, str | None] | None:
  """`(repo id, revision)` when `spec` names a Hub repo rather than an existing local path, else None."""
  if not spec or os.path.exists(spec):
    return None
  match = REPO_ID.match(spec)
  return (match["repo"], match["revision"]) if match else None


def _explain(error: Exception, repo: str, revision: str | None, what: str) -> HubError:
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  at = f"{repo}@{revision}" if revision else repo
  if isinstance(error, errors.GatedRepoError):
    return HubError(f"{at} is a gated repository: accept its licence at {HUB_URL}/{repo} with your account, "
                    "then log in (`hf auth login`, or set HF_TOKEN) and run again")
  if isinstance(error, errors.RepositoryNotFoundError):
    return HubError(f"no Hugging Face repository {repo!r} (or it is private: log in with `hf auth login` or set "
                    "HF_TOKEN); if you meant a local path, it does not exist")
  if isinstance(error, errors.RevisionNotFoundError):
    return HubError(f"{repo} has no revision {revision!r} (a branch, tag or commit hash)")
  if isinstance(error, errors.LocalEntryNotFoundError):
    return HubError(f"{at}{what} is not in the Hugging Face cache ({_cache_dir()}), and the Hub cannot be "
                    "reached (HF_HUB_OFFLINE=1, or no network): fetch it where the Hub is reachable "
                    f"(`hf download {repo}{f' --revision {revision}' if revision else ''}`) into this cache, or "
                    "pass a local folder; if you meant a local path, it does not exist")
  if isinstance(error, errors.EntryNotFoundError):
    return HubError(f"{at} has no file{what}")
  return HubError(f"could not fetch {at}{what} from the Hugging Face Hub: {type(error).__name__}: {error}")


def _cache_dir() -> str:
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  return constants.HF_HUB_CACHE


def fetch(repo: str, revision: str | None = None, *, filename: str | None = None,
          allow_patterns: Sequence[str] | None = None) -> str:
  """The local path of `filename` in the repo, or (None) of its snapshot folder with the conversion files."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  try:
    if filename is not None:
      return huggingface_hub.hf_hub_download(repo, filename, revision=revision)
    patterns = list(allow_patterns or CONFIG_AND_TOKENIZER + SAFETENSORS)
    folder = huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=patterns)
    if allow_patterns is None and not _has_weights(folder):  # an older repo: PyTorch weights only
      folder = huggingface_hub.snapshot_download(repo, revision=revision,
                                                 allow_patterns=list(CONFIG_AND_TOKENIZER + TORCH_WEIGHTS))
    return folder
  except Exception as e:  # pylint: disable=broad-except  # the Hub raises HTTP, OS and its own errors
    raise _explain(e, repo, revision, f" (file {filename!r})" if filename else "") from e


def _has_weights(folder: str) -> bool:
  return any(name.endswith(".safetensors") for _, _, names in os.walk(folder) for name in names)


def resolve(spec: str, *, filename: str | None = None) -> str:
  """`spec` itself when it is a local path; the fetched folder (or `filename` in it) when it is a repo id."""
  parsed = parse(spec)
  if parsed is None:
    return spec
  return fetch(*parsed, filename=filename)


def describe(spec: str, local: str) -> str:
  """What a converted checkpoint records as its source: `hf://repo@commit` for a Hub input, else the path."""
  parsed = parse(spec)
  if parsed is None:
    return os.path.abspath(local)
  commit = revision_of(local)
  return f"hf://{parsed[0]}@{commit or parsed[1] or 'main'}"


def revision_of(local: str) -> str | None:
  """The commit hash of a path inside the Hub cache (`.../snapshots/<commit>/...`), else None."""
  parts = os.path.normpath(local).split(os.sep)
  return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
