"""The modules of `vljepa_jax.train` import, and import one another without a cycle; `eval/` keeps off the generator.

The graph is read off the sources with `ast` (imports inside functions count too: a lazy import is
how a cycle hides), independently of what Python happens to have imported already.
"""
import ast
import importlib
import os
import pkgutil

import vljepa_jax.train

PACKAGE = "vljepa_jax.train"


def _modules() -> dict[str, str]:
  """Module name -> source path, for every module of the package."""
  root = os.path.dirname(vljepa_jax.train.__file__)
  return {f"{PACKAGE}.{info.name}": os.path.join(root, info.name + ".py")
          for info in pkgutil.iter_modules([root]) if not info.ispkg}


def _imported(path: str, names: set[str]) -> set[str]:
  """The modules among `names` that the source at `path` imports, anywhere in the file."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
  return found & names


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as a path that ends where it starts, or None."""
  state = {}  # module -> "open" while on the current path, "done" once fully explored

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt, path + [nxt])
        if found:
          return found
    state[node] = "done"
    return None

  for start in sorted(graph):
    if start not in state:
      found = visit(start, [start])
      if found:
        return found
  return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_dag():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_train_modules_import_and_have_no_import_cycle():
  modules = _modules()
  assert {f"{PACKAGE}.trainer", f"{PACKAGE}.evaluation", f"{PACKAGE}.param_layout"} <= set(modules)
  for name in modules:
    importlib.import_module(name)
  graph = {name: _imported(path, set(modules)) - {name} for name, path in modules.items()}
  assert f"{PACKAGE}.param_layout" in graph[f"{PACKAGE}.trainer"] & graph[f"{PACKAGE}.evaluation"]
  assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_evaluators_read_their_items_through_data_not_the_shapes_generator():
  """`eval/` reaches the embedded dataset only through `data/` readers and sources (issue 14's layering)."""
  import vljepa_jax.eval  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(vljepa_jax.eval.__file__)
  shapes_modules = {"vljepa_jax.data.shapes"} | {
      f"vljepa_jax.data.shapes.{info.name}" for info in pkgutil.iter_modules(
          [os.path.join(os.path.dirname(root), "data", "shapes")])}
  offenders = {info.name: sorted(_imported(os.path.join(root, info.name + ".py"), shapes_modules))
               for info in pkgutil.iter_modules([root]) if not info.ispkg}
  offenders = {name: found for name, found in offenders.items() if found}
  assert not offenders, f"eval modules importing the shapes generator: {offenders}"
  # The check sees such an import: the readers that moved out of eval/ do import it.
  assert _imported(os.path.join(os.path.dirname(root), "data", "streams.py"), shapes_modules)
