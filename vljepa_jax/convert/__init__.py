"""PyTorch -> Flax -> Orbax conversion of the towers VL-JEPA is built from.

    python -m vljepa_jax.convert --model bert --input HF_FOLDER --output DIR
    from vljepa_jax.convert import load;  model, params = load(DIR)

Each family lives in `vljepa_jax/convert/<family>.py` and is imported by name. A family
module provides:

    CONFIG                                 the `ArchConfig` subclass it builds
    config_from_source(hf_config, state, options, path) -> CONFIG instance
    prepare(state, options, path) -> state select / rename / split torch tensors
    rules(config) -> [mapping.Rule]        torch name -> Flax path + transform
    IGNORE                                 regexes of tensors deliberately dropped
    make_model(config) -> nn.Module        whose apply returns `last_hidden_state`
    example_inputs(config) -> tuple        inputs for shape-only init
    TOKENIZER_FILES                        names copied from the source folder if present

and optionally:

    HUB_FILENAME                           the one file a Hub repo id input fetches (else the folder)
    omitted(config, options) -> names      top-level parameter subtrees the output deliberately lacks
                                           (recorded in model.json; `load` returns params without them)
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from types import ModuleType
from typing import Any

import flax.linen as nn

from vljepa_jax.convert import checkpoint
from vljepa_jax.convert import hub
from vljepa_jax.convert import mapping
from vljepa_jax.convert import source as source_lib
from vljepa_jax.convert.mapping import ConversionError
from vljepa_jax.models import params as params_lib

FAMILIES = ("vjepa2", "vjepa2_1", "llama", "embeddinggemma", "bert", "open_vljepa")

__all__ = ["ConversionError", "ConvertOptions", "FAMILIES", "convert", "load", "family_module"]


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """Family-specific choices; each family reads the ones it understands."""

  layers: tuple[int, int] | None = None  # llama: keep source layers [start, stop)
  # Native V-JEPA .pt: the state dict to read ("encoder", "target_encoder", "ema_encoder"); None: the
  # family's default (vjepa2: "encoder"; vjepa2_1: torch hub's, "ema_encoder" if present, else "target_encoder").
  checkpoint_key: str | None = None
  variant: str | None = None  # preset name when the source carries no config.json
  dtype: str = "float32"  # compute dtype recorded in the converted config
  param_dtype: str = "float32"
  x_encoder: str | None = None  # open_vljepa: a converted vjepa2 folder to complete the model with


def family_module(family: str) -> ModuleType:
  if family not in FAMILIES:
    raise ConversionError(f"unknown model family {family!r}; expected one of {FAMILIES}")
  return importlib.import_module(f"vljepa_jax.convert.{family}")


def convert_state(family: str, input_path: str, options: ConvertOptions = ConvertOptions()):
  """Reads and maps a checkpoint (a local path, or a Hub repo id: `hub.py`); returns `(config, params)`
  without writing anything."""
  fam = family_module(family)
  input_path = hub.resolve(input_path, filename=getattr(fam, "HUB_FILENAME", None))
  hf_config = source_lib.read_hf_config(input_path)
  state = fam.prepare(source_lib.read_checkpoint(input_path), options, input_path)
  config = fam.config_from_source(hf_config, state, options, input_path)
  config = config.with_dtypes(options.dtype, options.param_dtype)
  expected = params_lib.abstract_params(fam.make_model(config), *fam.example_inputs(config))
  expected = {k: v for k, v in expected.items() if k not in omitted_parts(fam, config, options)}
  params = mapping.apply_rules(state, fam.rules(config), expected, ignore=fam.IGNORE,
                               dtype=config.weight_dtype, source=f"{family} checkpoint {input_path}")
  return config, params


def omitted_parts(fam: ModuleType, config: Any, options: ConvertOptions) -> tuple[str, ...]:
  """The top-level parameter subtrees a family leaves out of its output on purpose."""
  return tuple(fam.omitted(config, options)) if hasattr(fam, "omitted") else ()


def convert(family: str, input_path: str, output: str, options: ConvertOptions = ConvertOptions(),
            *, overwrite: bool = False) -> str:
  """Converts `input_path` (HF folder, safetensors or .pt, or a Hub repo id `owner/name[@revision]`)
  into a vljepa-jax model directory."""
  fam = family_module(family)
  # Fetched once here; convert_state then finds it local.
  local = hub.resolve(input_path, filename=getattr(fam, "HUB_FILENAME", None))
  config, params = convert_state(family, local, options)
  folder = local if os.path.isdir(local) else os.path.dirname(local)
  tokenizer_files = [os.path.join(folder, n) for n in fam.TOKENIZER_FILES
                     if os.path.isfile(os.path.join(folder, n))]
  with checkpoint.atomic_directory(output, overwrite=overwrite) as tmp:
    checkpoint.save(tmp, family=family, config=config.to_dict(), params=params,
                    source=hub.describe(input_path, local), tokenizer_files=tokenizer_files,
                    omitted=omitted_parts(fam, config, options))
  return os.path.abspath(output)


def load_config(directory: str) -> tuple[str, Any]:
  meta = checkpoint.read_metadata(directory)
  fam = family_module(meta["family"])
  return meta["family"], fam.CONFIG.from_dict(meta["config"])


def load(directory: str, **config_overrides: Any) -> tuple[nn.Module, Any]:
  """`(model, params)` of a converted model; `model.apply({'params': params}, ...)` runs it.

  `config_overrides` adjust non-structural fields at load time (e.g. `dtype="bfloat16"`).
  A model converted without some top-level part (`omitted` in model.json: open_vljepa's
  X-encoder unless `--x_encoder`) comes back without those parameters.
  """
  family, config = load_config(directory)
  omitted = tuple(checkpoint.read_metadata(directory).get("omitted", ()))
  fam = family_module(family)
  if config_overrides:
    dtypes = {k: config_overrides.pop(k) for k in ("dtype", "param_dtype") if k in config_overrides}
    if dtypes:
      config = config.with_dtypes(dtypes.get("dtype", config.dtype), dtypes.get("param_dtype", config.param_dtype))
    config = config.replace(**config_overrides)
  model = fam.make_model(config)
  abstract = params_lib.abstract_params(model, *fam.example_inputs(config))
  if omitted:
    logging.warning("%s has no %s parameters (left out at conversion): supply them before running those parts "
                    "(open_vljepa: merge a converted vjepa2 model as params['x_encoder'], or feed cached X-encoder "
                    "tokens)", directory, list(omitted))
    abstract = {k: v for k, v in abstract.items() if k not in omitted}
  return model, checkpoint.restore_params(directory, abstract)
