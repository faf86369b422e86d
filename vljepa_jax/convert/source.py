"""Reading PyTorch-side checkpoints into `{name: np.ndarray}` without importing torch if possible.

Accepted inputs:
  * a Hugging Face model folder: `config.json` plus `model.safetensors`, sharded
    `model-0000x-of-0000y.safetensors` (with or without the index), or `pytorch_model.bin`;
  * a single `.safetensors` file;
  * a native PyTorch checkpoint (`.pt`, `.pth`, `.bin`): a state dict, or a dict of state
    dicts from which the caller picks one by key (V-JEPA 2's `encoder` / `target_encoder`).

Safetensors are read with NumPy (bf16 arrives as `ml_dtypes.bfloat16`); only `.bin`/`.pt`
files need torch, which is imported lazily and loaded with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from vljepa_jax.convert.mapping import ConversionError

StateDict = dict[str, np.ndarray]
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ConversionError(f"missing file {path}") from None
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path} is not valid JSON: {e}") from None


def read_hf_config(path: str) -> dict[str, Any] | None:
  """`config.json` next to the weights (folder or file), or None if there is none."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  config_path = os.path.join(folder, "config.json")
  return read_json(config_path) if os.path.exists(config_path) else None


def strip_prefixes(state: StateDict, prefixes: tuple[str, ...]) -> StateDict:
  """Removes wrapper prefixes from tensor names (`module.`, `model.`, ...), repeatedly, so
  stacked wrappers such as `module.backbone.` come off too. Prefixes are tried in order."""
  def strip(name: str) -> str:
    while True:
      for p in prefixes:
        if name.startswith(p):
          name = name[len(p):]
          break
      else:
        return name
  return {strip(name): value for name, value in state.items()}


def resolve_config(hf_config: dict[str, Any] | None, variant: str | None, *, family: str,
                   presets: dict[str, Any], model_types: tuple[str, ...], from_hf: Any) -> Any:
  """The architecture of a source: a named preset (`--variant`) or its `config.json`.

  `from_hf(hf_config)` builds the config; its KeyError/ValueError become a ConversionError
  that says which family's config.json was refused and why.
  """
  if variant:
    if variant not in presets:
      raise ConversionError(f"unknown {family} variant {variant!r}; expected one of {sorted(presets)}")
    return presets[variant]
  if hf_config is None:
    raise ConversionError(f"{family} conversion needs the model's config.json (or --variant)")
  model_type = hf_config.get("model_type", model_types[0])
  if model_type not in model_types:
    raise ConversionError(f"config.json has model_type {model_type!r}, expected one of {list(model_types)}")
  try:
    return from_hf(hf_config)
  except (KeyError, ValueError) as e:
    raise ConversionError(f"unsupported {family} config.json: {e}") from None


def _load_safetensors(path: str) -> StateDict:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return dict(load_file(path))
  except Exception as e:  # safetensors raises its own error types for corrupt headers.
    raise ConversionError(f"cannot read safetensors file {path}: {e}") from None


def load_torch_file(path: str) -> Any:
  """`torch.load(path, weights_only=True)`; tensors stay torch tensors."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(
        f"{path} is a PyTorch pickle; reading it needs torch (pip install 'vljepa-jax[torch]'), "
        "or convert the weights to safetensors first") from None
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConversionError(f"cannot read PyTorch checkpoint {path}: {e}") from None


def torch_state_dict_to_numpy(state: Any, path: str) -> StateDict:
  import torch  # pylint: disable=g-import-not-at-top
  if not isinstance(state, dict):
    raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
  out = {}
  for name, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(
          f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; if this checkpoint "
          "holds several state dicts, choose one (e.g. --checkpoint_key)")
    # bf16/fp16 are widened: conversion produces float32 master weights anyway.
    out[name] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
  return out


def _folder_weight_files(folder: str) -> list[str]:
  names = sorted(os.listdir(folder))
  safetensors = [n for n in names if n.endswith(".safetensors")]
  if safetensors:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
      shards = sorted(set(read_json(index).get("weight_map", {}).values()))
      missing = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
      if missing:
        raise ConversionError(f"{index} lists shards that are not in {folder}: {missing}")
      return [os.path.join(folder, s) for s in shards]
    return [os.path.join(folder, n) for n in safetensors if n.startswith("model")] or [
        os.path.join(folder, n) for n in safetensors]
  for candidate in ("pytorch_model.bin",):
    if candidate in names:
      return [os.path.join(folder, candidate)]
  torch_files = [n for n in names if n.endswith(_TORCH_SUFFIXES)]
  if len(torch_files) == 1:
    return [os.path.join(folder, torch_files[0])]
  raise ConversionError(
      f"no weights found in {folder}: expected model.safetensors, sharded *.safetensors or "
      f"pytorch_model.bin (found {names or 'an empty folder'})")


def read_checkpoint(path: str) -> Any:
  """Everything in the checkpoint at `path`, as `{name: np.ndarray}` or a nested dict.

  Native `.pt` files may nest state dicts (`{"encoder": {...}, "target_encoder": {...}}`);
  those come back nested, as torch tensors converted to NumPy only at the leaves the caller
  selects with `select_state_dict`.
  """
  if not os.path.exists(path):
    raise ConversionError(f"input {path} does not exist")
  files = _folder_weight_files(path) if os.path.isdir(path) else [path]
  state: dict[str, Any] = {}
  for f in files:
    if f.endswith(".safetensors"):
      part = _load_safetensors(f)
    elif f.endswith(_TORCH_SUFFIXES):
      part = load_torch_file(f)
      if not isinstance(part, dict):
        raise ConversionError(f"{f}: expected a dict, got {type(part).__name__}")
    else:
      raise ConversionError(
          f"unsupported checkpoint file {f}: expected .safetensors or a PyTorch pickle ({', '.join(_TORCH_SUFFIXES)})")
    duplicated = sorted(set(part) & set(state))
    if duplicated:
      raise ConversionError(f"{f} repeats tensors already read from another shard: {duplicated[:5]}")
    state.update(part)
  return state


def select_state_dict(state: Any, key: str | None, path: str) -> StateDict:
  """Pick `state[key]` when the checkpoint nests state dicts; convert leaves to NumPy."""
  if key is not None and key in state and isinstance(state[key], dict):
    state = state[key]
  elif any(isinstance(v, dict) for v in state.values()):
    options = sorted(k for k, v in state.items() if isinstance(v, dict))
    raise ConversionError(
        f"{path} holds several state dicts {options}; choose one with --checkpoint_key "
        f"(got {key!r})")
  if all(isinstance(v, np.ndarray) for v in state.values()):
    return dict(state)
  return torch_state_dict_to_numpy(state, path)
