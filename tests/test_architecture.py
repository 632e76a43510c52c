"""The package's layers import one way (docs/ARCHITECTURE.md): no two subpackages import each other,
directly or through others, counting imports inside functions too."""

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "mergejax"

# layer -> layers it must never import (docs/ARCHITECTURE.md, "never imports").
ABOVE = ("mergejax.cli", "mergejax.study", "mergejax.world", "mergejax.evaluation", "mergejax.training")
FORBIDDEN = {
    "mergejax.methods": ("mergejax.checkpoints", "mergejax.engine", "mergejax.api", "mergejax.models",
                         "mergejax.tasks") + ABOVE,
    "mergejax.checkpoints": ("mergejax.methods", "mergejax.engine", "mergejax.api", "mergejax.tasks") + ABOVE,
    "mergejax.engine": ("mergejax.models", "mergejax.tasks") + ABOVE,
    "mergejax.models": ("mergejax.tasks",) + ABOVE,
    "mergejax.tasks": ("mergejax.models",) + ABOVE,
    "mergejax.training": ("mergejax.cli", "mergejax.study", "mergejax.world", "mergejax.evaluation"),
    "mergejax.evaluation": ("mergejax.cli", "mergejax.study", "mergejax.world", "mergejax.training"),
    "mergejax.world": ("mergejax.cli", "mergejax.study", "mergejax.evaluation"),
    "mergejax.study": ("mergejax.cli",),
    "mergejax.data_merge": ("mergejax.tasks", "mergejax.expert_data") + ABOVE,
    "mergejax.expert_data": ("mergejax.cli", "mergejax.study", "mergejax.world"),
}


def _layer(module: str) -> str:
  """mergejax.tasks.facts -> mergejax.tasks; mergejax.world -> mergejax.world."""
  return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
  """layer -> the other layers its modules import (module level or inside functions)."""
  known = {_layer("mergejax." + ".".join(p.relative_to(ROOT).with_suffix("").parts))
           for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT}
  graph = collections.defaultdict(set)
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    src = _layer(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      for name in names:
        dst = _layer(name)
        if dst in known and dst != src and src != "mergejax":
          graph[src].add(dst)
  return graph


def test_no_layer_imports_a_layer_above_it():
  graph = import_graph()
  assert "mergejax.tasks" in graph and "mergejax.study" in graph  # the walk found the imports
  bad = sorted((src, dst) for src, dsts in graph.items() for dst in dsts if dst in FORBIDDEN.get(src, ()))
  assert not bad


def test_no_import_cycles_between_layers():
  graph = import_graph()
  state, cycles = {}, []

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(path[path.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles
