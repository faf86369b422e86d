"""Command-line overrides of an experiment config that ml_collections cannot apply alone.

`--config.model.predictor.backbone=NAME` switches the predictor's backbone: unless the config
already holds a config of NAME, its `backbone_config` becomes NAME's config matched to the one the
config file gave (same width, depth, vocabulary and MLP size; `Backbone.matched_config`), and
`--config.model.predictor.backbone_config.FIELD=VALUE` flags then apply to that new config, so

    --config.model.predictor.backbone=mamba3 --config.model.predictor.backbone_config.state_size=64

runs every experiment config with a Mamba-3 predictor.

`--config.stages.STAGE.KEY=VALUE` sets KEY for one stage, even one the stage's dict does not set
yet: each stage's flags are parsed by ml_collections against that stage's full config (so the value
gets the top level's type) and written into `config.stages.STAGE`. ml_collections' own errors on
`--config.KEY` flags (an unknown key, a wrong type) become one line naming the key and the closest
existing one. `main.parse_flags` uses these before anything is built; `stages.check_overrides`
then rejects top-level overrides that a stage would override again.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_flags

from vljepa_jax.models import predictor_backbones
from vljepa_jax.train import stages as stages_lib

CONFIG_FILE_ARG = re.compile(r"^--?config(=|$)")
CONFIG_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")
STAGE_OVERRIDE = re.compile(r"^(--?(?:no)?)config\.stages\.([^.=]+)\.([^=]+)(=.*)?$", re.DOTALL)
BACKBONE_OVERRIDE = re.compile(r"^--?config\.model\.predictor\.backbone(=|$)")
BACKBONE_CONFIG = "model.predictor.backbone_config"
BACKBONE_CONFIG_OVERRIDE = re.compile(r"^(--?(?:no)?)config\.model\.predictor\.backbone_config\.([^=]+)(=.*)?$",
                                      re.DOTALL)


def missing_key(config: ml_collections.ConfigDict, path: str) -> str | None:
  """Why `config` has no key at dotted `path` (with the closest existing name), or None if it has."""
  node, where = config, "config"
  for key in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return f"{where} is a {type(node).__name__}, not a dict of keys"
    if key not in node:
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      return f"{where} has no key {key!r} ({hint}known: {sorted(node.keys())})"
    node, where = node[key], f"{where}.{key}"
  return None


def config_error(argv: list[str], error: Exception) -> str:
  """One line for an error ml_collections raised while applying `--config.*` overrides."""
  config = None
  for i, arg in enumerate(argv):
    if match := CONFIG_FILE_ARG.match(arg):
      # The config again, without overrides, to find the override that does not fit.
      alone = [argv[0], *argv[i:i + (1 if match.group(1) else 2)]]
      values = flags.FlagValues()
      config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=alone)
      try:
        values(alone)
        config = values.config
      except Exception:  # pylint: disable=broad-except
        config = None  # the config file itself failed: `error` says how
  if isinstance(config, ml_collections.ConfigDict):
    for arg in argv[1:]:
      if (match := CONFIG_OVERRIDE.match(arg)) and (problem := missing_key(config, match.group(1))):
        return f"--config.{match.group(1)}: {problem}"
  return str(error)


def set_path(node: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """Sets dotted `path` in `node`, adding the keys (and dicts) it did not have."""
  *parents, leaf = path.split(".")
  with node.unlocked():
    for key in parents:
      if key not in node:
        node[key] = ml_collections.ConfigDict()
      node = node[key]
    node[leaf] = value


def parse_against(schema: ml_collections.ConfigDict, args: list[str], name: str, shown: str) -> dict[str, Any]:
  """`{path: value}` of `--NAME.PATH=VALUE` flags, parsed by ml_collections against `schema` (so each value
  gets the schema's type); errors name the flags as the user wrote them, `--SHOWN.PATH`."""
  values = flags.FlagValues()
  argv = [f"{name} overrides", *args]
  config_flags.DEFINE_config_dict(name, schema, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    hint = "" if all("=" in arg for arg in args) else " (write these overrides as KEY=VALUE)"
    raise ValueError(str(e).replace(f"--{name}.", f"--{shown}.") + hint) from None
  return dict(config_flags.get_override_values(values[name]))


def apply_stage_overrides(config: ml_collections.ConfigDict, args: list[str]) -> dict[str, Any]:
  """Applies `--config.stages.STAGE.KEY=VALUE` flags to `config.stages`; `{"stages.STAGE.KEY": value}`.

  Each stage's flags are parsed by ml_collections against that stage's full config (so a key the
  stage's dict does not set yet has the top level's type), then written into the stage's dict.
  """
  per_stage: dict[str, list[tuple[str, str]]] = {}
  for arg in args:
    prefix, name, path, value = STAGE_OVERRIDE.match(arg).groups()
    flag = f"--config.stages.{name}.{path}"
    if name not in config.stages:
      raise ValueError(f"{flag}: config.stages has no stage {name!r} (stages: {sorted(config.stages.keys())})")
    if name not in config.stage_order:
      raise ValueError(f"{flag}: stage {name!r} is not in config.stage_order {tuple(config.stage_order)}, so it "
                       "does not run")
    if key := stages_lib.run_level_key(path):
      raise ValueError(f"{flag}: {key} is read once per run from the top level (one model, mesh and tokenizers "
                       f"serve every stage), so a stage cannot change it; pass --config.{path}{value or ''} instead")
    per_stage.setdefault(name, []).append((path, f"{prefix}stage.{path}{value or ''}"))
  applied = {}
  for name, stage_args in per_stage.items():
    schema = stages_lib.stage_config(config, name)
    for path, _ in stage_args:
      if problem := missing_key(schema, path):
        raise ValueError(f"--config.stages.{name}.{path}: {problem}")
    parsed = parse_against(schema, [arg for _, arg in stage_args], "stage", f"config.stages.{name}")
    for path, value in parsed.items():
      try:
        set_path(config.stages[name], path, value)
      except (TypeError, AttributeError, KeyError) as e:
        raise ValueError(f"--config.stages.{name}.{path}={value!r}: {e}") from None
      applied[f"stages.{name}.{path}"] = value
  return applied


def switch_predictor_backbone(config: ml_collections.ConfigDict) -> str | None:
  """Makes `model.predictor.backbone_config` a config of `model.predictor.backbone`; what it did, or None.

  A backbone_config whose fields are exactly another registered backbone's is replaced by the named
  backbone's matched config (`predictor_backbones.matched_config`). One that is already the named
  backbone's is left alone; anything else fails, naming both.
  """
  predictor = config.model.predictor
  name, current = predictor.backbone, predictor.backbone_config.to_dict()
  target = predictor_backbones.get(name).config
  fields = lambda cls: {f.name for f in dataclasses.fields(cls)}
  if set(current) == fields(target):
    return None
  owners = [other for other in predictor_backbones.BACKBONES
            if other != name and set(current) == fields(predictor_backbones.get(other).config)]
  if not owners:
    raise ValueError(f"--config.model.predictor.backbone={name}: {BACKBONE_CONFIG} has fields {sorted(current)}, "
                     f"neither a {target.__name__} nor another registered backbone's config")
  matched = predictor_backbones.matched_config(name, predictor_backbones.get(owners[0]).config.from_dict(current))
  with predictor.unlocked():
    predictor.backbone_config = ml_collections.ConfigDict(matched.to_dict())
  return (f"model.predictor.backbone={name}: {BACKBONE_CONFIG} is the {type(matched).__name__} matched to the "
          f"config's {owners[0]} (hidden_size={matched.hidden_size}, num_layers={matched.num_layers}); set its "
          f"fields with --config.{BACKBONE_CONFIG}.FIELD=VALUE")


def apply_backbone_config_overrides(config: ml_collections.ConfigDict, args: list[str]) -> dict[str, Any]:
  """Applies `--config.model.predictor.backbone_config.FIELD=VALUE` flags (after a backbone switch)."""
  if not args:
    return {}
  schema = config.model.predictor.backbone_config
  for arg in args:
    path = BACKBONE_CONFIG_OVERRIDE.match(arg).group(2)
    if problem := missing_key(schema, path):
      raise ValueError(f"--config.{BACKBONE_CONFIG}.{path}: {problem.replace('config', BACKBONE_CONFIG, 1)}")
  renamed = [f"{prefix}backbone.{path}{value or ''}" for prefix, path, value in
             (BACKBONE_CONFIG_OVERRIDE.match(arg).groups() for arg in args)]
  applied = {}
  for path, value in parse_against(schema, renamed, "backbone", f"config.{BACKBONE_CONFIG}").items():
    set_path(schema, path, value)
    applied[f"{BACKBONE_CONFIG}.{path}"] = value
  return applied
