"""The study's design: balanced expert subsets and grid-edge counts."""

import itertools

import pytest

from mergejax.study import design

CATS = tuple(f"c{i}" for i in range(8))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_every_category_appears_equally_often_for_each_n(n):
  for blocks in (1, 2, 3):
    count = blocks * design.block_size(len(CATS), n)
    subsets = design.balanced_subsets(CATS, n, count, seed=5)
    assert len(subsets) == count and all(len(s) == n == len(set(s)) for s in subsets)
    counts = design.appearances(subsets)
    assert set(counts) == set(CATS) and len(set(counts.values())) == 1
    assert all(list(s) == sorted(s, key=CATS.index) for s in subsets)  # canonical order
    if blocks == 1 or n in (2, 6):  # enough distinct blocks exist: no subset repeats
      assert len(set(subsets)) == count


def test_the_papers_n_give_pairs_halves_and_complements_nested_across_n():
  pairs = design.balanced_subsets(CATS, 2, 4, seed=3)
  halves = design.balanced_subsets(CATS, 4, 2, seed=3)
  sixes = design.balanced_subsets(CATS, 6, 4, seed=3)
  assert sorted(itertools.chain(*pairs)) == sorted(CATS)  # 4 disjoint pairs cover every category
  assert set(halves[0]).isdisjoint(halves[1]) and set(halves[0]) | set(halves[1]) == set(CATS)
  assert {frozenset(CATS) - frozenset(s) for s in sixes} == {frozenset(p) for p in pairs}
  assert all(any(set(p) <= set(h) for h in halves) for p in pairs)
  assert design.balanced_subsets(CATS, 8, 3) == [CATS] * 3
  assert design.balanced_subsets(CATS, 2, 4, seed=3) == pairs  # deterministic
  assert design.balanced_subsets(CATS, 2, 4, seed=4) != pairs


def test_subset_counts_round_up_to_a_balanced_number():
  assert [design.subset_count(8, n, 3) for n in (2, 4, 6, 8)] == [4, 4, 4, 1]
  assert [design.subset_count(8, n, 2) for n in (2, 4, 6, 8)] == [4, 2, 4, 1]
  assert design.subset_count(6, 4, 1) == 3
  with pytest.raises(ValueError, match=r"needs a multiple of 4 subsets .* not 3: e.g. 4 or 8"):
    design.balanced_subsets(CATS, 2, 3)
  with pytest.raises(ValueError, match="N=9 must be between 1 and the number of categories"):
    design.block_size(8, 9)


def _row(method, chosen, grid):
  keys = sorted(grid)
  cands = [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]
  return {"type": "merge", "method": method, "hparams": chosen, "candidates": [{"hparams": c} for c in cands]}


def test_grid_edges_count_choices_on_the_smallest_and_largest_values():
  ties = {"density": [0.2], "lam": [0.7, 1.0, 1.5]}
  rows = ([_row("ties", {"density": 0.2, "lam": 1.5}, ties)] * 7 + [_row("ties", {"density": 0.2, "lam": 1.0}, ties)] * 2
          + [_row("ties", {"density": 0.2, "lam": 0.7}, ties)])
  ta = {"lam": [0.3, 0.5, 1.0]}
  rows += [_row("task_arithmetic", {"lam": 0.5}, ta)] * 9 + [_row("task_arithmetic", {"lam": 0.3}, ta)]
  rows += [_row("average", {}, {})] + [{"type": "reference", "role": "base"}]
  edges = {(e.method, e.hparam): e for e in design.grid_edges(rows)}
  assert set(edges) == {("ties", "lam"), ("task_arithmetic", "lam")}  # density had one value: no edge
  assert edges["ties", "lam"] == design.EdgeCount("ties", "lam", (0.7, 1.0, 1.5), 10, 1, 7)
  assert edges["task_arithmetic", "lam"].low == 1 and not edges["task_arithmetic", "lam"].warn
  (line,) = design.edge_warnings(edges.values())
  assert line.startswith("ties: lam chose the largest value (1.5) in 7 of 10 merges")
  assert "widen the grid" in line


def test_grid_edges_are_counted_per_size_so_one_sizes_edge_is_not_pooled_away():
  """xs picks the smallest lam in 4 of 10 merges (an edge), s never: pooled, 4 of 20 would pass."""
  ties = {"density": [0.2], "lam": [1.0, 2.0, 3.0, 6.0]}
  rows = [{**_row("ties", {"density": 0.2, "lam": lam}, ties), "size": size}
          for size, picks in (("xs", [1.0] * 4 + [2.0] * 6), ("s", [2.0] * 7 + [3.0] * 3)) for lam in picks]
  edges = {e.size: e for e in design.grid_edges(rows)}
  assert (edges["xs"].low, edges["xs"].merges, edges["s"].low, edges["s"].merges) == (4, 10, 0, 10)
  (line,) = design.edge_warnings(edges.values())
  assert line.startswith("ties at xs: lam chose the smallest value (1) in 4 of 10 merges")


def test_a_choice_at_the_hyperparameters_own_bound_is_not_a_narrow_grid():
  """DARE's drop rate 0 (nothing dropped) is as low as the grid can go: chosen often, it is reported as
  the bound, and only the other edge can warn."""
  grid = {"drop_rate": [0.0, 0.1, 0.3, 0.6]}
  rows = [_row("dare_ties", {"drop_rate": 0.0}, grid)] * 6 + [_row("dare_ties", {"drop_rate": 0.3}, grid)] * 4
  bounds = lambda method, hp: (0.0, None)  # noqa: E731  [0, 1): the upper end is open
  (e,) = design.grid_edges(rows, bounds)
  assert e.low == 6 and e.low_bounded and not e.high_bounded and not e.warn
  assert design.edge_warnings([e]) == []
  rows += [_row("dare_ties", {"drop_rate": 0.6}, grid)] * 5
  (line,) = design.edge_warnings(design.grid_edges(rows, bounds))
  assert "largest value (0.6) in 5 of 15" in line and "smallest" not in line
  (unbounded,) = design.grid_edges(rows)
  assert "smallest value (0) in 6 of 15" in design.edge_warnings([unbounded])[0]


def test_a_two_value_grid_always_warns():
  grid = {"drop_rate": [0.5, 0.8]}
  rows = [_row("dare_ties", {"drop_rate": 0.5}, grid)] * 3 + [_row("dare_ties", {"drop_rate": 0.8}, grid)]
  (line,) = design.edge_warnings(design.grid_edges(rows))
  assert "smallest value (0.5) in 3 of 4" in line and "largest value (0.8) in 1 of 4" in line
  assert "two values has no inside" in line
