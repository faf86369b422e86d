"""Training stages: one experiment config, several runs in sequence (image -> video8 -> video32).

A config's top level is a complete single-stage config. `config.stages` maps a stage name to the
keys that stage changes (nested dicts merge into the top level), and `config.stage_order` says
which stages run and in what order (ml_collections sorts dict keys, so order is explicit):

    config.total_steps = 100
    config.stages = dict(image=dict(total_steps=300, data=dict(num_frames=1)),
                         video=dict(data=dict(num_frames=4)))
    config.stage_order = ("image", "video")

Each stage starts from the parameters the previous one ended with (fresh optimizer, step 0), and
writes to `<workdir>/<stage name>/`. What `resolve` refuses, before anything is compiled, because
it would otherwise be silently ignored:

  * a stage key the top level does not have (a misspelt key);
  * a run-level key (`RUN_LEVEL_KEYS`: one model, mesh and pair of tokenizers serve every stage);
  * `init.checkpoint` in any stage but the first (later ones start from the previous stage);
  * `evals` / `eval_batch_size` in any stage but the last (the evaluators are built from it).

`check_overrides` holds command-line overrides (`--config.KEY=VALUE`) to the same rule: a top-level
override of a key that a stage in `stage_order` sets for itself would not reach that stage, so it
fails and names the per-stage key (`--config.stages.<stage>.KEY=VALUE`) that would.
"""
from __future__ import annotations

import copy
import difflib
import shlex
from typing import Any, Mapping

import ml_collections

STAGE_KEYS = ("stages", "stage_order")
# Read once per run from the top level (trainer.run, model_setup.build, evaluation.sweep): one model
# (architecture, dtypes, remat, the pretrained towers of `init`), one mesh and one pair of tokenizers
# serve every stage. `PER_STAGE_EXCEPTIONS` lie inside them but are read per stage.
RUN_LEVEL_KEYS = ("model", "dtype", "param_dtype", "remat", "mesh", "cpu_devices", "tokenizers", "init")
PER_STAGE_EXCEPTIONS = ("init.checkpoint",)
# Read from the first stage only: every later stage starts from the parameters of the one before.
FIRST_STAGE_KEYS = ("init.checkpoint",)
# Read from the last stage only: the evaluators are built once per run from its config.
LAST_STAGE_KEYS = ("evals", "eval_batch_size")


def _parts(path: str) -> tuple[str, ...]:
  return tuple(path.split("."))


def _covers(outer: str, inner: str) -> bool:
  """Whether setting `outer` sets `inner` too (the same key, or a dict holding it)."""
  return _parts(inner)[:len(_parts(outer))] == _parts(outer)


def _overlap(a: str, b: str) -> bool:
  return _covers(a, b) or _covers(b, a)


def _first_overlap(path: str, keys: tuple[str, ...]) -> str | None:
  return next((key for key in keys if _overlap(path, key)), None)


def run_level_key(path: str) -> str | None:
  """The run-level key a (dotted) config path sets or lies in (the path itself if it lies in one), or None."""
  key = _first_overlap(path, RUN_LEVEL_KEYS)
  if key is None or any(_covers(exception, path) for exception in PER_STAGE_EXCEPTIONS):
    return None
  return path if _covers(key, path) else key


def override_flag(path: str, value: Any) -> str:
  """The command-line flag that sets `config.<path>` to `value`, quoted for a shell."""
  return f"--config.{path}={shlex.quote(value if isinstance(value, str) else repr(value))}"


def _as_dict(value: Any) -> Any:
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def leaf_paths(base: Mapping[str, Any], override: Mapping[str, Any], prefix: str = "") -> list[str]:
  """The dotted paths `override` sets when merged into `base` (it recurses where both hold a dict)."""
  paths = []
  for key, value in override.items():
    path = prefix + key
    if key in base and isinstance(base[key], Mapping) and isinstance(value, Mapping):
      paths.extend(leaf_paths(base[key], value, path + "."))
    else:
      paths.append(path)
  return paths


def _merge(base: ml_collections.ConfigDict, override: Mapping[str, Any], where: str) -> None:
  for key, value in override.items():
    if key not in base:
      close = difflib.get_close_matches(key, list(base.keys()), n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise ValueError(f"{where}.{key}: stage overrides may only change existing keys; the config has no "
                       f"{key!r} ({hint}known: {sorted(base.keys())})")
    if isinstance(base[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      _merge(base[key], value, f"{where}.{key}")
    else:
      try:
        base[key] = value
      except TypeError as e:
        raise ValueError(f"{where}.{key}={value!r}: {e}") from None


def _check_keys(name: str, paths: list[str], position: int, count: int) -> None:
  """Refuses the keys stage `name` (`position` of `count` in stage_order) sets that would be ignored."""
  for path in paths:
    where = f"config.stages.{name}.{path}"
    if key := run_level_key(path):
      raise ValueError(f"{where}: {key} is read once per run from the top level (one model, mesh and tokenizers "
                       f"serve every stage), so a stage cannot change it; set config.{key} instead")
    if position > 0 and (key := _first_overlap(path, FIRST_STAGE_KEYS)):
      raise ValueError(f"{where}: only the first stage in stage_order reads {key}; stage {name!r} starts from the "
                       f"parameters the stage before it ended with")
    if position < count - 1 and (key := _first_overlap(path, LAST_STAGE_KEYS)):
      raise ValueError(f"{where}: only the last stage in stage_order sets {key} (the evaluators are built once, "
                       f"from its config); set it in that stage or at the top level")


def _order(config: ml_collections.ConfigDict) -> tuple[str, ...]:
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
  return order


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The full config of stage `name` (the top level with the stage's keys merged in), unchecked."""
  stage = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  for key in STAGE_KEYS:
    del stage[key]
  _merge(stage, _as_dict(config.stages[name]), f"config.stages.{name}")
  return stage


def resolve(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """`[(stage name, full config of that stage)]` in run order; refuses stage keys that would be ignored."""
  order = _order(config)
  top = config.to_dict()
  for position, name in enumerate(order):
    _check_keys(name, leaf_paths(top, _as_dict(config.stages[name])), position, len(order))
  return [(name, stage_config(config, name)) for name in order]


def check_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Refuses a top-level override that a stage would silently override again.

  `overrides` maps the dotted paths set on the command line (`total_steps`,
  `stages.image.total_steps`, ...) to their values, already applied to `config`. A top-level
  override of a key that a stage in `stage_order` sets itself must come with a per-stage override
  of that key for each such stage, and must still reach at least one stage.
  """
  order = _order(config)
  top = config.to_dict()
  on_command_line = {name: [path[len(f"stages.{name}."):] for path in overrides
                            if path.startswith(f"stages.{name}.")] for name in order}
  stage_paths = {name: leaf_paths(top, _as_dict(config.stages[name])) + on_command_line[name] for name in order}
  for path, value in overrides.items():
    if _parts(path)[0] in STAGE_KEYS:
      continue
    shadowed = [name for name in order if any(_overlap(path, own) for own in stage_paths[name])]
    unmatched = [name for name in shadowed
                 if not any(_covers(given, own) for own in stage_paths[name] if _overlap(path, own)
                            for given in on_command_line[name])]
    reached = [name for name in order if name not in shadowed]
    if unmatched:
      fix = " ".join(override_flag(f"stages.{name}.{path}", value) for name in unmatched)
      which = f"stage {unmatched[0]!r}" if len(unmatched) == 1 else f"stages {unmatched}"
      also = f"as well (the top-level value reaches {reached})" if reached else "instead"
      raise ValueError(f"{override_flag(path, value)} would not reach {which}, which set(s) its own {path}: "
                       f"pass {fix} {also}")
    if not reached:
      raise ValueError(f"{override_flag(path, value)} reaches no stage: every stage in stage_order {list(order)} "
                       f"sets its own {path} (on the command line too); drop it")


def stage_offsets(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Global step at which each stage starts (the sum of the earlier stages' `total_steps`)."""
  offsets, offset = {}, 0
  for name, stage_config in resolve(config):
    offsets[name] = offset
    offset += int(stage_config.total_steps)
  return offsets
