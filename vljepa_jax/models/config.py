"""Architecture configs: frozen dataclasses that a converted checkpoint stores as JSON.

Experiment configs (ml_collections, `configs/*.py`) name an architecture preset and may
override fields; this module is what those names resolve to. A config is hashable, so a
Linen module can hold it as an attribute and `jax.jit` can treat the module as static.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping, TypeVar

import jax.numpy as jnp

C = TypeVar("C", bound="ArchConfig")


@dataclasses.dataclass(frozen=True)
class ArchConfig:
  """Base class: JSON round-trip and checked overrides for architecture configs."""

  # Compute dtype of activations and matmuls, and the dtype parameters are stored in.
  # Training uses bf16 compute over fp32 master params; parity tests use fp32 for both.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def to_dict(self) -> dict[str, Any]:
    return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
      raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected a subset of {sorted(names)}")
    return cls(**{k: _from_json(v) for k, v in d.items()})

  def with_dtypes(self: C, dtype: str, param_dtype: str) -> C:
    """Sets compute and parameter dtypes here and in every nested config."""
    return self.with_field_everywhere("dtype", dtype).with_field_everywhere("param_dtype", param_dtype)

  def with_field_everywhere(self: C, name: str, value: Any) -> C:
    """Sets field `name` to `value` in every nested config that has it (and here, if this has it)."""
    changes = {f.name: getattr(self, f.name).with_field_everywhere(name, value)
               for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), ArchConfig)}
    if name in {f.name for f in dataclasses.fields(self)}:
      changes[name] = value
    return dataclasses.replace(self, **changes)

  def replace(self: C, **overrides: Any) -> C:
    """`dataclasses.replace` that names the offending key when a field does not exist."""
    names = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(overrides) - names)
    if unknown:
      raise ValueError(f"{type(self).__name__}: unknown field(s) {unknown}; expected a subset of {sorted(names)}")
    return dataclasses.replace(self, **{k: _from_json(v) for k, v in overrides.items()})


# Nested configs are stored with the import path of their class under this key.
_CLASS_KEY = "__config__"


def _to_json(v: Any) -> Any:
  if isinstance(v, ArchConfig):
    return {_CLASS_KEY: f"{type(v).__module__}:{type(v).__qualname__}", **v.to_dict()}
  if isinstance(v, tuple):
    return [_to_json(x) for x in v]
  return v


def _from_json(v: Any) -> Any:
  # Lists from JSON become tuples so that configs stay hashable.
  if isinstance(v, list):
    return tuple(_from_json(x) for x in v)
  if isinstance(v, Mapping) and _CLASS_KEY in v:
    module, name = v[_CLASS_KEY].split(":")
    if not module.startswith("vljepa_jax."):
      raise ValueError(f"refusing to build config class {v[_CLASS_KEY]!r} from outside vljepa_jax")
    cls = getattr(importlib.import_module(module), name)
    return cls.from_dict({k: x for k, x in v.items() if k != _CLASS_KEY})
  return v
