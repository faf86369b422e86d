"""Training stages: one experiment config, several runs in sequence (image -> video8 -> video32).

A config's top level is a complete single-stage config. `config.stages` maps a stage name to the
keys that stage changes (nested dicts merge into the top level), and `config.stage_order` says
which stages run and in what order (ml_collections sorts dict keys, so order is explicit):

    config.total_steps = 100
    config.stages = dict(image=dict(total_steps=300, data=dict(num_frames=1)),
                         video=dict(data=dict(num_frames=4)))
    config.stage_order = ("image", "video")

A stage override may only name keys the top level has, so a misspelt key fails before anything
is compiled. Each stage starts from the parameters the previous one ended with (fresh optimizer,
step 0), and writes to `<workdir>/<stage name>/`.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

STAGE_KEYS = ("stages", "stage_order")


def _merge(base: ml_collections.ConfigDict, override: Mapping[str, Any], where: str) -> None:
  for key, value in override.items():
    if key not in base:
      raise ValueError(f"{where}.{key}: stage overrides may only change existing keys; the config has no "
                       f"{key!r} (known: {sorted(base.keys())})")
    if isinstance(base[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      _merge(base[key], value, f"{where}.{key}")
    else:
      base[key] = value


def resolve(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """`[(stage name, full config of that stage)]` in run order."""
  order = tuple(config.get("stage_order", ()) or ())
  stages = config.get("stages", None) or {}
  if not order:
    raise ValueError("config.stage_order is empty; name at least one stage")
  missing = [name for name in order if name not in stages]
  if missing:
    raise ValueError(f"config.stage_order names {missing}, which config.stages does not define "
                     f"(defined: {sorted(stages.keys())})")
  if len(set(order)) != len(order):
    raise ValueError(f"config.stage_order repeats a stage: {order}")
  resolved = []
  for name in order:
    stage = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
    for key in STAGE_KEYS:
      del stage[key]
    override = stages[name]
    _merge(stage, override.to_dict() if isinstance(override, ml_collections.ConfigDict) else dict(override),
           f"config.stages.{name}")
    resolved.append((name, stage))
  return resolved
