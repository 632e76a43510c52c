"""Exact counting (the engine's packed fold counters, mergejax/engine/counting.py), the TIES threshold
search over them, and the speculative TIES sign balance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import mergejax
from mergejax import engine, methods, sharding
from mergejax.checkpoints import PytreeSink, PytreeSource
from mergejax.engine import counting
from mergejax.methods import threshold
from tests import numpy_reference as ref
from tests.test_methods import assert_close, flat, make_models


@pytest.mark.parametrize("shape", [(), (13, 7), (37, 16), (8, 3, 40), (512, 64)])
@pytest.mark.parametrize("bits,n_groups,n_buckets", [(2, 4, 4), (2, 1, 3), (3, 6, 8)])
def test_histograms_match_numpy(shape, bits, n_groups, n_buckets):
  rng = np.random.default_rng(len(shape) + bits + n_groups)
  values = [rng.integers(0, n_buckets, size=shape).astype(np.uint8) for _ in range(n_groups)]
  if shape:  # a few runs of one value, so that byte counters reach their maximum
    values[0].reshape(-1)[: min(values[0].size, 4096)] = n_buckets - 1
  codes = counting.pack_codes([jnp.asarray(v) for v in values], bits)
  got = np.asarray(counting.histograms(codes, n_groups, bits, n_buckets)).astype(np.int64).sum(-1)
  want = np.asarray([[np.sum(v == b) for b in range(n_buckets)] for v in values])
  np.testing.assert_array_equal(got, want)


def test_histograms_on_sharded_codes_equal_unsharded():
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  rng = np.random.default_rng(1)
  for shape, spec in [((64, 24), P("x", None)), ((8, 64), P("x", None)), ((24, 64), P(None, "x"))]:
    values = [rng.integers(0, 4, size=shape).astype(np.uint8) for _ in range(4)]
    codes = counting.pack_codes([jnp.asarray(v) for v in values], 2)
    sharded = tuple(jax.device_put(c, NamedSharding(mesh, spec)) for c in codes)
    want = np.asarray(counting.histograms(codes, 4, 2, 4)).sum(-1)
    np.testing.assert_array_equal(np.asarray(counting.histograms(sharded, 4, 2, 4)).sum(-1), want)


def _above(base, experts, ctx, thr):
  """|tau_t| >= thr_t and tau_0 + tau_1 < 0, as indicators."""
  del ctx
  taus = [e - base for e in experts]
  return [jnp.abs(t) >= thr[i] for i, t in enumerate(taus)] + [taus[0] + taus[1] < 0]


def _level(base, experts, ctx, thr):
  """Per expert: #{j : |tau_t| >= thr_j} (thresholds sorted)."""
  del ctx
  return [sum((jnp.abs(e - base) >= thr[j]).astype(jnp.uint8) for j in range(thr.shape[0])) for e in experts]


@pytest.mark.parametrize("shape", [(), (13,), (7, 5), (48, 40), (8, 3, 40)])
@pytest.mark.parametrize("fold", [True, False])
def test_count_primitives_are_exact(shape, fold):
  rng = np.random.default_rng(2)
  base = rng.normal(size=shape).astype(np.float32)
  experts = tuple((base + np.round(rng.normal(size=shape) * 8) / 256).astype(np.float32) for _ in range(3))
  taus = [e - base for e in experts]
  thr = np.asarray([0.0, 0.01, np.median(np.abs(taus[2]))], np.float32)
  ctx = methods.ties().context(3, 0, "w")
  got = np.asarray(counting.count_indicators(base, experts, ctx, thr, indicators=_above, n=4, fold=fold)).sum(-1)
  want = [np.sum(np.abs(t) >= thr[i]) for i, t in enumerate(taus)] + [np.sum(taus[0] + taus[1] < 0)]
  np.testing.assert_array_equal(got, want)
  hist = np.asarray(counting.histogram_levels(base, experts, ctx, thr, levels=_level, n_groups=3, n_levels=4)).sum(-1)
  lv = [sum((np.abs(t) >= x).astype(int) for x in thr) for t in taus]
  np.testing.assert_array_equal(hist, [[np.sum(v == b) for b in range(4)] for v in lv])


@pytest.mark.parametrize("fold", [True, False])
def test_counts_of_a_padded_chunk_cover_only_its_valid_entries(fold):
  """count_indicators(valid=v) on a chunk whose entries from v on are padding (here: values that every
  indicator would count) equals the count over the first v entries, for every v."""
  rng = np.random.default_rng(3)
  base = rng.normal(size=(64,)).astype(np.float32)
  experts = tuple((base + np.round(rng.normal(size=(64,)) * 8) / 256).astype(np.float32) for _ in range(3))
  thr = np.asarray([0.0, 0.01, 0.02], np.float32)
  ctx = methods.ties().context(3, 0, "w")
  for v in (0, 1, 37, 63, 64):
    pad = lambda x, v=v: np.concatenate([x[:v], np.full((64 - v,), -1e3, np.float32)])  # noqa: E731
    got = counting.count_indicators(pad(base), tuple(pad(e) for e in experts), ctx, thr, indicators=_above, n=4,
                                    fold=fold, valid=np.int32(v))
    want = counting.count_indicators(base[:v], tuple(e[:v] for e in experts), ctx, thr, indicators=_above, n=4,
                                     fold=fold) if v else np.zeros((4, 1), np.int32)
    np.testing.assert_array_equal(np.asarray(got).sum(-1), np.asarray(want).sum(-1), err_msg=str(v))


class ArrayPass:
  """A LeafPass over in-memory leaves (whole leaves), counting with the engine's counters."""

  def __init__(self, base, experts, ctx):
    self.base, self.experts, self.ctx = base, experts, ctx

  def __call__(self, fn, args_for=None, *, host=None):
    del host
    out = {}
    for p in self.base:
      args = args_for(p) if args_for else ()
      if args is not None:
        out[p] = jax.tree.map(np.asarray, fn(self.base[p], tuple(e[p] for e in self.experts), self.ctx, *args))
    return out

  def count(self, indicators, n, args_for=None):
    return {p: np.asarray(c).astype(np.int64).sum(-1) for p, c in self(
        lambda *a: counting.count_indicators(*a, indicators=indicators, n=n, fold=True), args_for).items()}

  def histogram(self, levels, n_groups, n_levels, args_for=None):
    return {p: np.asarray(c).astype(np.int64).sum(-1) for p, c in self(
        lambda *a: counting.histogram_levels(*a, levels=levels, n_groups=n_groups, n_levels=n_levels),
        args_for).items()}


@pytest.mark.parametrize("weights", [None, (0.5, 2.0, 0.0, 1.0)])
def test_speculative_balance_is_exact_or_withheld(weights):
  """find_thresholds returns exact k-th largest thresholds, and sign counts only when they are the
  counts at the final thresholds (some guesses right, some wrong over these sample sizes)."""
  rng = np.random.default_rng(4)
  shapes = {"a": (64, 40), "b": (24,), "c": (16, 8)}
  base = {p: (np.round(rng.normal(size=s) * 256) / 256).astype(np.float32) for p, s in shapes.items()}
  experts = [{p: v + np.round(rng.normal(size=v.shape) * 4) / 256 for p, v in base.items()} for _ in range(4)]
  experts = [{p: v.astype(np.float32) for p, v in e.items()} for e in experts]
  leaf_pass = ArrayPass(base, experts, methods.ties(weights=weights).context(4, 0, "x"))
  w = np.ones(4, np.float32) if weights is None else np.asarray(weights, np.float32)
  seen = set()
  for sample, density in [(32, 0.25), (512, 0.25), (2048, 0.15), (2048, 0.3), (2048, 0.45)]:
    threshold.SAMPLE_GLOBAL, old = sample, threshold.SAMPLE_GLOBAL
    try:
      thr, bal = threshold.find_thresholds(leaf_pass, shapes, 4, density, "global", False, sign="sum",
                                           weighted=weights is not None)
    finally:
      threshold.SAMPLE_GLOBAL = old
    for t in range(4):
      a = np.concatenate([np.abs(e[p] - base[p]).ravel() for p, e in ((p, experts[t]) for p in shapes)])
      assert thr["a"][t] == ref.kth_largest(a, max(1, int(density * a.size)))
    seen.add(bal is None)
    if bal is not None:
      vote = {p: sum(w[t] * np.where(np.abs(e[p] - base[p]) >= thr[p][t], e[p] - base[p], 0)
                     for t, e in enumerate(experts)) for p in shapes}
      assert bal == (sum(int(np.sum(v < 0)) for v in vote.values()), sum(int(np.sum(v > 0)) for v in vote.values()))
  assert seen == {False, True}


@pytest.mark.parametrize("sample", [16, 64, 600])
def test_ties_with_few_samples_matches_reference(monkeypatch, sample):
  """Small samples make the guessed thresholds wrong (more count passes, a separate sign-balance pass):
  the merge is still the exact TIES merge."""
  monkeypatch.setattr(threshold, "SAMPLE_GLOBAL", sample)
  base, experts = make_models(seed=9, n_experts=4, dtype=np.float32)
  hp = {"density": 0.3, "scope": "global"}
  out = mergejax.merge(base, experts, methods.get("ties", **hp), seed=0)
  assert_close(flat(out), ref.ties(flat(base), [flat(e) for e in experts], **hp), np.float32)


@pytest.mark.parametrize("scale", [0.02, 1e-38])
def test_flat_statistics_with_host_samples_equal_whole_leaf_statistics(scale):
  """On one CPU device the flat-chunk executor samples host arrays with NumPy (the threshold search's
  host twin: no compile per stride) with XLA:CPU's float32 semantics, subnormals included: the TIES
  merge equals the whole-leaf one bit for bit."""
  rng = np.random.default_rng(3)
  base = {"w": (rng.standard_normal((64, 40)) * scale).astype(np.float32),
          "v": (rng.standard_normal((300,)) * scale).astype(np.float32)}
  experts = [{k: (v + rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in base.items()}
             for _ in range(3)]
  method = methods.ties(density=0.3, scope="global")
  whole = flat(mergejax.merge(base, experts, method))
  src = PytreeSource(base, name="base")
  sink = PytreeSink(src.paths, src.treedef)
  chunked = flat(engine.merge_sources(src, [PytreeSource(e, name=f"e{i}") for i, e in enumerate(experts)], sink,
                                      method, mesh=sharding.make_mesh(jax.devices()[:1]),
                                      executor=engine.FlatChunk(chunk=512)))
  for k in whole:
    np.testing.assert_array_equal(whole[k].view(np.int32), chunked[k].view(np.int32), err_msg=k)


def _abs_difference(base, experts):
  """One row: |expert 0 - base| (a non-negative quantity for leaf_order_statistics)."""
  return [jnp.abs(experts[0] - base)]


@pytest.mark.parametrize("sample", [64, 4096])
def test_order_statistics_of_a_quantity_at_ranks_from_its_nonzero_count(monkeypatch, sample):
  """leaf_order_statistics with ``count_nonzero``: the ranks come from the exact number of values above
  zero (counted in the first histogram pass; the sample's estimate is off), and the order statistics at
  them equal a sort's, on continuous data, on data of few distinct values, on data with one heavy value
  beside the target, and on leaves small enough to be their own sample."""
  monkeypatch.setattr(threshold, "SAMPLE_EDGES", sample)
  rng = np.random.default_rng(11)
  n = 6000
  diff = {"continuous": rng.standard_normal(n) * (rng.random(n) < 0.7),
          "discrete": rng.integers(-3, 4, n) / 8.0,
          "heavy": np.where(rng.random(n) < 0.3, 0.5, rng.random(n)) * (rng.random(n) < 0.9),
          "small": rng.integers(-2, 3, 40) / 4.0}
  base = {p: rng.standard_normal(d.shape).astype(np.float32) for p, d in diff.items()}
  experts = [{p: (base[p] + d).astype(np.float32) for p, d in diff.items()}]
  values = {p: np.abs(experts[0][p] - base[p]) for p in diff}  # float32, as the device computes them
  seen = {}

  def ranks_of(p, size, nonzero):
    seen[p] = nonzero
    return sorted({size - max(1, nonzero[0] // 2), size - max(1, nonzero[0] // 7)})

  order = threshold.leaf_order_statistics(ArrayPass(base, experts, None), {p: d.shape for p, d in diff.items()}, 1,
                                          ranks_of, values=_abs_difference, count_nonzero=True)
  for p, v in values.items():
    assert seen[p] == (int(np.count_nonzero(v)),), p
    ranks = ranks_of(p, v.size, seen[p])
    assert order[p].shape == (1, len(ranks), 3)
    for e, r in enumerate(ranks):
      want = np.sort(v)[r]
      assert order[p][0, e].tolist() == [int(want.view(np.int32)), int(np.sum(v < want)), int(np.sum(v == want))], (p, r)
