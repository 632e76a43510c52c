"""The experiment grid: cells (base kind x size x N experts x subset seed) and method candidates.

A cell merges the experts of N held-in categories. With the ``balanced`` design (the default) each N
has a balanced set of subsets, every category in the same number of them (:mod:`mergejax.study.design`:
``subset_seeds`` rounded up to a balanced count, e.g. 4 disjoint pairs at N = 2 of 8); with
``random`` each seed draws N categories without replacement (the paper's 3 random subsets). With N
equal to the number of categories the subset is all of them, so only methods with randomness of their
own (DARE) run more than one seed there (the seed then varies DARE's masks).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from mergejax import methods as methods_lib
from mergejax.study import design as design_lib

DESIGNS = ("balanced", "random")

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


def subsets(categories: Sequence[str], n: int, seeds: int, design: str = "balanced") -> list[tuple[str, ...]]:
  """The expert subsets of one N, one per cell seed (module docstring)."""
  if design not in DESIGNS:
    raise ValueError(f"unknown design {design!r}: choose from {DESIGNS}")
  if design == "random":
    return [expert_subset(categories, n, seed) for seed in range(seeds)]
  count = seeds if n == len(categories) else design_lib.subset_count(len(categories), n, seeds)
  return design_lib.balanced_subsets(categories, n, count)


def cells(kinds: Sequence[str], sizes: Sequence[str], ns: Sequence[int], seeds: int,
          categories: Sequence[str], design: str = "balanced") -> list[Cell]:
  out = []
  for kind, size, n in itertools.product(kinds, sizes, ns):
    for seed, subset in enumerate(subsets(categories, n, seeds, design)):
      out.append(Cell(kind, size, n, seed, subset))
  return out


def runs_in_cell(cell: Cell, method_names: Sequence[str], n_categories: int,
                 grids: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> list[str]:
  """Methods to run in a cell: all of them, except repeated deterministic merges of the full set (a
  method runs there again only if one of its candidates, ``grids[name]``, is stochastic)."""
  if cell.n == n_categories and cell.seed > 0:
    return [m for m in method_names
            if any(methods_lib.get(m, **hp).traits.stochastic for hp in (grids or {}).get(m, [{}]))]
  return list(method_names)


def candidates(method_name: str, grid: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Every combination of the method's hyperparameter grid ``{name: (v1, v2, ...)}`` (validated): names in
  sorted order, each name's values in the given order; a single value stands for itself."""
  keys = sorted(grid)
  values = [list(grid[k]) if isinstance(grid[k], (tuple, list)) else [grid[k]] for k in keys]
  for k, vals in zip(keys, values):
    if not vals:
      raise ValueError(f"hyperparameter {k!r} has no values")
  combos = [dict(zip(keys, vals)) for vals in itertools.product(*values)] or [{}]
  for hp in combos:
    methods_lib.get(method_name, **hp)  # raises ValueError naming the bad hyperparameter
  return combos
