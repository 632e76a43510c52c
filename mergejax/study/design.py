"""The study's design: balanced expert subsets, and how often a chosen hyperparameter sat on its grid's edge.

**Balanced subsets.** Random draws of 3 subsets of N categories can put one category in every subset
and another in none (the default run once merged `topic` in all three N = 2 subsets), so held-in vs
N mixes N with which categories are merged. :func:`balanced_subsets` gives every category the same
number of subsets for each N: a *block* orders the categories at random and cuts the order, wrapping
around, into consecutive windows of N,

    subset i of a block = order[i*N mod C], ..., order[(i*N + N - 1) mod C],   i = 0 .. C / gcd(C, N) - 1

so that each category appears N / gcd(C, N) times per block. With C = 8: N = 2 gives 4 disjoint pairs,
N = 4 two complementary halves, N = 6 the 4 complements of the pairs, N = 8 the full set. A block's
order depends on (seed, block) only, not on N, so the subsets of different N are nested (each N = 4
half is two of the N = 2 pairs). More blocks (new orders) replicate the design; N = C has one subset.

**Grid edges.** A chosen hyperparameter on the edge of its grid says the optimum may lie outside it.
:func:`grid_edges` counts, from the stored rows (each keeps its candidates and its choice), how often
each method's choice of each hyperparameter was the smallest or largest value tried, per model size
(sizes pick differently, and a pooled count can hide one size's edge), and
:func:`edge_warnings` words the ones a report should flag. An edge that is the hyperparameter's own
bound (DARE's drop rate 0: nothing dropped) cannot be widened: choices there are a finding, not a
warning.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

EDGE_WARNING_SHARE = 0.25  # warn when at least this share of a method's choices sit on one edge


def block_size(n_categories: int, n: int) -> int:
  """Subsets per block: the fewest in which every one of ``n_categories`` appears equally often."""
  if not 1 <= n <= n_categories:
    raise ValueError(f"N={n} must be between 1 and the number of categories ({n_categories})")
  return n_categories // math.gcd(n_categories, n)


def subset_count(n_categories: int, n: int, at_least: int) -> int:
  """The smallest balanced number of subsets of size ``n`` that is at least ``at_least`` (a multiple of
  :func:`block_size`; 1 for the full set, whose repeats only change a stochastic method's seed)."""
  if n == n_categories:
    return 1
  m = block_size(n_categories, n)
  return max(1, -(-int(at_least) // m)) * m


def balanced_subsets(categories: Sequence[str], n: int, count: int, seed: int = 0) -> list[tuple[str, ...]]:
  """``count`` subsets of ``n`` categories, each category in the same number of them (module docstring).

  Deterministic in ``seed``; each subset lists its categories in the order of ``categories``. With
  ``n == len(categories)`` every subset is the full set. Blocks after the first avoid repeating an
  earlier subset when another order allows it.

  Raises:
    ValueError: ``count`` is not a multiple of :func:`block_size` (naming the valid counts).
  """
  cats = list(dict.fromkeys(categories))
  c = len(cats)
  m = block_size(c, n)
  if n == c:
    return [tuple(cats)] * count
  if count < 1 or count % m:
    raise ValueError(f"a balanced design of {c} categories in subsets of N={n} needs a multiple of {m} subsets "
                     f"(every category equally often), not {count}: e.g. {m} or {2 * m}")
  out: list[tuple[str, ...]] = []
  seen: set[frozenset] = set()
  for block in range(count // m):
    for attempt in range(100):
      order = np.random.default_rng([seed, block, attempt]).permutation(c)
      subsets = [frozenset(int(order[(i * n + j) % c]) for j in range(n)) for i in range(m)]
      if not seen.intersection(subsets):
        break
    seen.update(subsets)
    out += [tuple(cats[k] for k in sorted(s)) for s in subsets]
  return out


def appearances(subsets: Iterable[Sequence[str]]) -> dict[str, int]:
  """category -> number of subsets it appears in."""
  counts: dict[str, int] = {}
  for s in subsets:
    for cat in s:
      counts[cat] = counts.get(cat, 0) + 1
  return counts


@dataclasses.dataclass(frozen=True)
class EdgeCount:
  """How often a method's chosen value of one hyperparameter was the smallest or largest candidate, at
  one model size (sizes pick differently: pooled counts can hide one size's edge).

  Attributes:
    values: the distinct values tried (sorted; the union over the rows' grids).
    merges: merges whose grid had more than one value of this hyperparameter.
    low, high: choices equal to the smallest / largest value of their own row's grid.
  """

  method: str
  hparam: str
  values: tuple[Any, ...]
  merges: int
  low: int
  high: int
  floor: float | None = None  # the least value the hyperparameter can take, where it has one
  ceiling: float | None = None  # the greatest
  size: str = ""  # the model size of the merges counted ("": rows without one)

  @property
  def low_bounded(self) -> bool:
    """The smallest value tried is the least the hyperparameter can take: no grid reaches further."""
    return self.floor is not None and self.values[0] == self.floor

  @property
  def high_bounded(self) -> bool:
    return self.ceiling is not None and self.values[-1] == self.ceiling

  @property
  def warn(self) -> bool:
    return self.merges > 0 and ((not self.low_bounded and self.low >= EDGE_WARNING_SHARE * self.merges)
                                or (not self.high_bounded and self.high >= EDGE_WARNING_SHARE * self.merges))


def grid_edges(rows: Iterable[Mapping[str, Any]],
               bounds: Callable[[str, str], tuple[float | None, float | None]] | None = None) -> list[EdgeCount]:
  """Edge counts per (method, size, numeric hyperparameter) over merge rows (``type == "merge"``, with
  ``candidates`` [{"hparams": ...}, ...] and the chosen ``hparams``); ``bounds(method, hparam)`` gives
  the least and greatest values the hyperparameter can take (None where unbounded or open), so that a
  choice at such a bound is not read as a grid too narrow."""
  tally: dict[tuple[str, str], dict[str, Any]] = {}
  for row in rows:
    if row.get("type", "merge") != "merge" or not row.get("candidates"):
      continue
    grid: dict[str, set] = {}
    for cand in row["candidates"]:
      for k, v in cand["hparams"].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          grid.setdefault(k, set()).add(v)
    for k, vals in grid.items():
      if len(vals) < 2 or k not in row["hparams"]:
        continue
      t = tally.setdefault((row["method"], str(row.get("size", "")), k),
                           {"values": set(), "merges": 0, "low": 0, "high": 0})
      t["values"] |= vals
      t["merges"] += 1
      t["low"] += row["hparams"][k] == min(vals)
      t["high"] += row["hparams"][k] == max(vals)
  return [EdgeCount(m, k, tuple(sorted(t["values"])), t["merges"], t["low"], t["high"],
                    *(bounds(m, k) if bounds is not None else (None, None)), size=size)
          for (m, size, k), t in sorted(tally.items())]


def edge_warnings(counts: Iterable[EdgeCount]) -> list[str]:
  """One line per hyperparameter whose choices sit on an edge of the grid in at least
  ``EDGE_WARNING_SHARE`` of the merges."""
  lines = []
  for e in counts:
    if not e.warn:
      continue
    sides = []
    if e.low >= EDGE_WARNING_SHARE * e.merges and not e.low_bounded:
      sides.append(f"the smallest value ({_num(e.values[0])}) in {e.low} of {e.merges} merges")
    if e.high >= EDGE_WARNING_SHARE * e.merges and not e.high_bounded:
      sides.append(f"the largest value ({_num(e.values[-1])}) in {e.high} of {e.merges} merges")
    hint = " (a grid of two values has no inside)" if len(e.values) == 2 else ""
    lines.append(f"{e.method}{f' at {e.size}' if e.size else ''}: {e.hparam} chose " + " and ".join(sides) +
                 f"; the optimum may lie outside {{{', '.join(_num(v) for v in e.values)}}}: widen the grid{hint}.")
  return lines


def _num(v: Any) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)
