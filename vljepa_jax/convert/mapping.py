"""Name-mapping engine: PyTorch tensor names -> Flax parameter paths, with shape checks.

A family describes its checkpoint as a list of `Rule`s (regex on the torch name, a
`/`-separated target path template filled from the regex groups, and a transform). The
engine applies them against the parameter shapes of the Flax model (from `jax.eval_shape`)
and collects *every* problem (unexpected tensors, missing parameters, wrong shapes) before
raising one `ConversionError` that names them all.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np

# (source array, expected Flax shape) -> array of the expected shape, or raise ShapeError.
Transform = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


_MAX_LISTED = 25  # per kind of problem; a wrong-family checkpoint can have hundreds


class ConversionError(ValueError):
  """A checkpoint that cannot be converted: wrong family, missing/unexpected/mis-shaped tensors."""


class ShapeError(ValueError):
  pass


def _check(ok: bool, got: tuple[int, ...], expected: tuple[int, ...], what: str) -> None:
  if not ok:
    raise ShapeError(f"{what}: source shape {tuple(got)} does not fit expected {tuple(expected)}")


def identity(x: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
  _check(tuple(x.shape) == tuple(expected), x.shape, expected, "tensor")
  return x


def reshape(x: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
  """A vector stored flat in torch and head-shaped here (biases of head-shaped projections)."""
  _check(x.ndim == 1 and x.size == int(np.prod(expected)), x.shape, expected, "vector")
  return x.reshape(expected)


def squeeze(x: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
  """A tensor stored with extra size-1 dims (V-JEPA 2.1's `(1, 1, D)` modality embeddings), kept without them."""
  _check([d for d in x.shape if d != 1] == [d for d in expected if d != 1], x.shape, expected, "tensor")
  return x.reshape(expected)


def linear(in_dims: int = 1) -> Transform:
  """`torch.nn.Linear.weight` `[out, in]` -> kernel `(in..., out...)`; the first `in_dims`
  expected dims are the contracted ones (e.g. 2 for an attention output `(heads, head_dim, embed)`)."""

  def transform(x: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    n_in = int(np.prod(expected[:in_dims]))
    n_out = int(np.prod(expected[in_dims:]))
    _check(x.ndim == 2 and x.shape == (n_out, n_in), x.shape, expected, "linear weight [out, in]")
    return x.T.reshape(expected)

  return transform


def conv3d(x: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
  """`torch.nn.Conv3d.weight` `[out, in, kt, kh, kw]` -> Flax `(kt, kh, kw, in, out)`."""
  _check(x.ndim == 5, x.shape, expected, "conv3d weight [out, in, kt, kh, kw]")
  y = x.transpose(2, 3, 4, 1, 0)
  _check(y.shape == tuple(expected), x.shape, expected, "conv3d weight [out, in, kt, kh, kw]")
  return y


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str  # full-match regex on the torch name
  target: str  # Flax path template, e.g. "layers_{i}/attention/query/kernel"
  transform: Transform = identity


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def apply_rules(
    state: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    expected: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    dtype: Any = np.float32,
    source: str = "checkpoint",
) -> dict[str, Any]:
  """Map `state` onto the parameter tree `expected` (nested dict of objects with `.shape`).

  Returns the nested parameter dict with NumPy leaves cast to `dtype`. Raises one
  `ConversionError` listing every unexpected tensor, missing parameter and bad shape.
  """
  compiled = [(re.compile(r.pattern), r) for r in rules]
  ignored = [re.compile(p) for p in ignore]
  want = {path: tuple(leaf.shape) for path, leaf in flatten(expected).items()}
  out: dict[str, np.ndarray] = {}
  unexpected, bad_shapes, collisions = [], [], []
  for name in sorted(state):
    if any(p.fullmatch(name) for p in ignored):
      continue
    for regex, rule in compiled:
      m = regex.fullmatch(name)
      if m:
        break
    else:
      unexpected.append(f"{name} {tuple(state[name].shape)}")
      continue
    target = rule.target.format(**m.groupdict())
    if target not in want:
      unexpected.append(f"{name} {tuple(state[name].shape)} (maps to {target}, which the model does not have)")
      continue
    if target in out:
      collisions.append(f"{name} -> {target}")
      continue
    try:
      out[target] = np.asarray(rule.transform(np.asarray(state[name]), want[target])).astype(dtype)
    except ShapeError as e:
      bad_shapes.append(f"{name} -> {target}: {e}")
  missing = [f"{p} {want[p]}" for p in sorted(set(want) - set(out))]
  problems = []
  for title, items in (("wrong shapes", bad_shapes), ("unexpected tensors", unexpected),
                       ("missing parameters", missing), ("several tensors map to one parameter", collisions)):
    if items:
      shown = items[:_MAX_LISTED] + ([f"... and {len(items) - _MAX_LISTED} more"] if len(items) > _MAX_LISTED else [])
      problems.append(f"{len(items)} {title}:\n    " + "\n    ".join(shown))
  if problems:
    raise ConversionError(f"{source} does not match the model:\n  " + "\n  ".join(problems))
  return unflatten(out)


def layer_norm_rules(src: str, dst: str) -> list[Rule]:
  """`torch.nn.LayerNorm` `{src}weight` / `{src}bias` -> Flax `{dst}/scale` / `{dst}/bias`."""
  return [Rule(src + "weight", dst + "/scale"), Rule(src + "bias", dst + "/bias")]


def linear_rules(src: str, dst: str, *, in_dims: int = 1, head_shaped_bias: bool = False) -> list[Rule]:
  """`torch.nn.Linear` `{src}weight` / `{src}bias` -> `{dst}/kernel` / `{dst}/bias`.

  `in_dims`: see `linear`; `head_shaped_bias`: the bias is `(heads, head_dim)` here.
  """
  return [Rule(src + "weight", dst + "/kernel", linear(in_dims)),
          Rule(src + "bias", dst + "/bias", reshape if head_shaped_bias else identity)]


def hf_decoder_layer_rules(layer: str, dst: str) -> list[Rule]:
  """Attention and gated-MLP projections of a Hugging Face Llama-family decoder layer.

  Llama and Gemma 3 share these names (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`,
  no biases). HF's flat `[heads * head_dim, hidden]` rows are head-major, so one reshape
  gives our head-shaped kernels with no permutation: our RoPE pairs dims like HF's
  `rotate_half`. `layer` is the regex prefix of a layer (with a `(?P<i>...)` group), `dst`
  the Flax path prefix.
  """
  rules = [Rule(layer + rf"self_attn\.{src}_proj\.weight", dst + f"attention/{name}/kernel", linear(1))
           for src, name in (("q", "query"), ("k", "key"), ("v", "value"))]
  rules.append(Rule(layer + r"self_attn\.o_proj\.weight", dst + "attention/out/kernel", linear(2)))
  rules += [Rule(layer + rf"mlp\.{src}_proj\.weight", dst + f"mlp/{name}/kernel", linear())
            for src, name in (("gate", "wi_gate"), ("up", "wi_up"), ("down", "wo"))]
  return rules
