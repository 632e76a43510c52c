"""The experiment grid: cells (base kind x size x N experts x subset seed) and method candidates.

A cell merges the experts of N held-in categories drawn without replacement by its seed; with N equal
to the number of categories the subset is all of them, so only methods with randomness of their own
(DARE) run more than one seed there (the seed then varies DARE's masks).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from mergejax import methods as methods_lib

RANDOM_METHODS = ("dare_linear", "dare_ties")


def csv_list(value: Any) -> list[str]:
  """'a,b' or ('a', 'b') -> ['a', 'b'] (configs use comma-separated strings, as configs/world.py)."""
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


def int_list(value: Any) -> list[int]:
  return [int(v) for v in csv_list(value)]


@dataclasses.dataclass(frozen=True)
class Cell:
  kind: str
  size: str
  n: int
  seed: int
  categories: tuple[str, ...]

  @property
  def key(self) -> str:
    return f"{self.kind}/{self.size}/n{self.n}/s{self.seed}"


def expert_subset(categories: Sequence[str], n: int, seed: int) -> tuple[str, ...]:
  """N categories drawn by ``seed`` (all of them when N = len(categories)), in canonical order."""
  if n == len(categories):
    return tuple(categories)
  rng = np.random.default_rng(1000 + seed)
  pick = rng.choice(len(categories), size=n, replace=False)
  return tuple(categories[i] for i in sorted(pick))


def cells(kinds: Sequence[str], sizes: Sequence[str], ns: Sequence[int], seeds: int,
          categories: Sequence[str]) -> list[Cell]:
  out = []
  for kind, size, n in itertools.product(kinds, sizes, ns):
    for seed in range(seeds):
      out.append(Cell(kind, size, n, seed, expert_subset(categories, n, seed)))
  return out


def runs_in_cell(cell: Cell, method_names: Sequence[str], n_categories: int) -> list[str]:
  """Methods to run in a cell: all of them, except repeated deterministic merges of the full set."""
  if cell.n == n_categories and cell.seed > 0:
    return [m for m in method_names if m in RANDOM_METHODS]
  return list(method_names)


def candidates(method_name: str, grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the method's hyperparameter grid (validated), in grid order."""
  keys = sorted(grid)
  combos = [dict(zip(keys, vals)) for vals in itertools.product(*(list(grid[k]) for k in keys))] or [{}]
  for hp in combos:
    methods_lib.get(method_name, **hp)  # raises ValueError naming the bad hyperparameter
  return combos


def parse_grid(text: str) -> dict[str, list[Any]]:
  """'lam=0.3|0.5;density=0.2' -> {'lam': [0.3, 0.5], 'density': [0.2]} ('' -> {})."""
  out: dict[str, list[Any]] = {}
  for part in filter(None, (p.strip() for p in text.split(";"))):
    if "=" not in part:
      raise ValueError(f"bad grid entry {part!r}: expected name=v1|v2")
    name, vals = part.split("=", 1)
    out[name.strip()] = [_parse_value(v.strip()) for v in vals.split("|") if v.strip()]
  return out


def _parse_value(v: str) -> Any:
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  if v in ("True", "False"):
    return v == "True"
  return v
