"""Breadcrumbs' rank band as per-leaf statistics (exact order statistics, tie positions) and an elementwise
masked kernel: the kept entries are exactly those of NumPy's stable argsort, on leaves with heavy ties whose
band edges fall inside runs of equal magnitudes, merged whole, in flat chunks, in row blocks and on 8
devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import mergejax
from mergejax import engine, methods, sharding
from mergejax.checkpoints import PytreeSink, PytreeSource
from mergejax.methods import selection
from tests.test_methods_weight_space import sharded_on_8

# 520 x 130 entries: more than a per-leaf sample holds (the order statistics then take histogram passes);
# the 50-entry leaf is sampled whole.
SHAPES = {"w": (520, 130), "b": (50,)}


def _models(n_experts: int, seed: int, grid: bool = True):
  """A zero base and experts on a coarse grid (few distinct magnitudes: every band edge lies inside a run
  of equal values), or continuous (no ties: order statistics that take several passes)."""
  rng = np.random.default_rng(seed)
  base = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
  value = (lambda s: np.round(rng.normal(size=s) * 3) / 8) if grid else (lambda s: rng.normal(size=s))
  experts = [{k: value(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n_experts)]
  return base, experts


def _expected(experts, density: float, gamma: float):
  """sum_t tau_t * [lo <= stable ascending rank of |tau_t| < lo + int(density n)], lo as mergekit's."""
  out = {}
  for k, s in SHAPES.items():
    n = int(np.prod(s))
    target, n_top = int(density * n), int(gamma * n)
    lo = max(0, n - target - n_top)
    total = np.zeros(n, np.float32)
    for e in experts:
      tau = e[k].reshape(-1)
      ranks = np.empty(n, np.int64)
      ranks[np.argsort(np.abs(tau), kind="stable")] = np.arange(n)
      total = total + np.where((ranks >= lo) & (ranks < lo + target), tau, np.float32(0))
    out[k] = total.reshape(s)
  return out


def _assert_equal(got, want):
  for k in SHAPES:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)


def _flat_chunks(base, experts, method, **executor):
  src = PytreeSource(base, name="base")
  return engine.merge_sources(src, [PytreeSource(e, name=f"e{i}") for i, e in enumerate(experts)],
                              PytreeSink(src.paths, src.treedef), method,
                              mesh=sharding.make_mesh(jax.devices()[:1]), executor=engine.FlatChunk(**executor))


@pytest.mark.parametrize("density,gamma,grid", [(0.5, 0.1, True), (0.9, 0.01, True), (0.3, 0.8, True),
                                                (0.9, 0.01, False)])
def test_breadcrumbs_keeps_the_stable_rank_band_whole_in_chunks_in_row_blocks_and_on_8_devices(density, gamma, grid):
  base, experts = _models(3, seed=11, grid=grid)
  method = methods.breadcrumbs(density=density, gamma=gamma)
  assert method.traits.elementwise and method.traits.position_keyed
  want = _expected(experts, density, gamma)
  _assert_equal(mergejax.merge(base, experts, method), want)
  _assert_equal(_flat_chunks(base, experts, method, chunk=4096), want)  # chunks across rows, a padded tail
  _assert_equal(_flat_chunks(base, experts, method, chunk=4096, max_flat_row=64), want)  # row blocks
  _assert_equal(mergejax.merge(*sharded_on_8(base, experts), method), want)


def test_rescaled_breadcrumbs_stays_on_whole_leaves_and_matches_the_reference_band():
  """The L1 rescale sums a whole leaf: that option keeps whole-leaf kernels (one summation order)."""
  base, experts = _models(1, seed=12)
  method = methods.breadcrumbs(density=0.5, gamma=0.1, rescale=True)
  assert not method.traits.elementwise
  out = mergejax.merge(base, experts, method)
  want = _expected(experts, 0.5, 0.1)
  for k in SHAPES:
    np.testing.assert_array_equal(np.asarray(out[k]) != 0, want[k] != 0, err_msg=k)


def test_band_edges_and_packed_flags_find_the_tie_positions_of_argsort():
  rng = np.random.default_rng(3)
  x = rng.integers(0, 4, size=1000).astype(np.float32)  # four values: long runs of ties
  n = x.size
  ranks = np.empty(n, np.int64)
  ranks[np.argsort(x, kind="stable")] = np.arange(n)
  flags = {v: np.asarray(selection.pack_flags(jax.numpy.asarray(x == v)[None]))[0] for v in range(4)}
  bits = x.view(np.uint32)
  for lo, hi in [(0, n), (123, 877), (250, 251), (0, 0), (999, 1000), (400, 400)]:
    s = np.sort(x)
    stats = np.asarray([[bits[np.flatnonzero(x == s[r])[0]], np.sum(x < s[r]), np.sum(x == s[r])]
                        for r in (min(max(lo, 0), n - 1), min(max(hi - 1, 0), n - 1))])
    value_of = lambda e, stats=stats: int(np.uint32(stats[e, 0]).view(np.float32))  # noqa: E731
    nth = lambda e, m, value_of=value_of: selection.nth_set(flags[value_of(e)], m)  # noqa: E731
    edges = selection.band_edges(n, lo, hi, stats, nth)
    got = np.asarray(selection.in_band(jax.numpy.asarray(bits), jax.numpy.arange(n, dtype=np.uint32), edges))
    np.testing.assert_array_equal(got, (ranks >= lo) & (ranks < hi), err_msg=f"[{lo}, {hi})")
