"""Packed fold counting (mergejax/methods/counting.py) and the speculative TIES sign balance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import mergejax
from mergejax import methods
from mergejax.methods import counting, threshold
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


def test_count_fn_counts_every_threshold_exactly():
  rng = np.random.default_rng(2)
  base = rng.normal(size=(48, 40)).astype(np.float32)
  experts = tuple(base + rng.normal(size=base.shape).astype(np.float32) * 0.1 for _ in range(3))
  ctx = methods.ties().context(3, 0, 0)
  a = [np.abs(e - base) for e in experts]
  thr = np.sort(np.stack([np.quantile(x, [0.1, 0.5, 0.5, 0.9, 0.99, 1.0, 1.0]) for x in a]), axis=1)
  thr = thr.astype(np.float32)
  thr[:, 2] = np.asarray([x.reshape(-1)[7] for x in a])  # thresholds equal to an entry count it
  thr = np.sort(thr, axis=1)
  got = np.asarray(threshold._count_fn(base, experts, ctx, thr.view(np.int32), dare=False)).sum(-1)  # pylint: disable=protected-access
  want = np.asarray([[np.sum(x >= t) for t in row] for x, row in zip(a, thr)])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sample", [16, 64, 600])
def test_speculative_sign_balance_matches_reference(monkeypatch, sample):
  """The first count pass counts the vote's signs at the sample's guessed thresholds; when a final
  threshold differs from its guess, a separate balance pass must give the same (exact) result."""
  monkeypatch.setattr(threshold, "SAMPLE_GLOBAL", sample)
  passes = []
  orig_pin, orig_count = threshold._pinpoint_fn, threshold._count_fn  # pylint: disable=protected-access

  def spy_pin(*args, **kwargs):
    passes.append(("pin", kwargs.get("sign")))
    return orig_pin(*args, **kwargs)

  def spy_count(*args, **kwargs):
    passes.append(("count", None))
    return orig_count(*args, **kwargs)

  monkeypatch.setattr(threshold, "_pinpoint_fn", spy_pin)
  monkeypatch.setattr(threshold, "_count_fn", spy_count)
  base, experts = make_models(seed=9, n_experts=4, dtype=np.float32)
  hp = {"density": 0.3, "scope": "global"}
  out = mergejax.merge(base, experts, methods.get("ties", **hp), seed=0)
  expect = ref.ties(flat(base), [flat(e) for e in experts], **hp)
  assert_close(flat(out), expect, np.float32)
  n_leaves = len(flat(base))
  assert passes[:n_leaves] == [("pin", "sum")] * n_leaves  # the first count pass (one call per leaf) carried the vote
  assert all(p == ("count", None) for p in passes[n_leaves:])


def test_pinpoint_fn_counts_two_thresholds_and_the_vote_exactly():
  rng = np.random.default_rng(5)
  for shape in [(48, 40), (7, 5), (13,), ()]:
    base = rng.normal(size=shape).astype(np.float32)
    experts = tuple((base + np.round(rng.normal(size=shape) * 8) / 256).astype(np.float32) for _ in range(4))
    a = [np.abs(e - base) for e in experts]
    thr = np.stack([np.sort([x.reshape(-1)[0], x.reshape(-1)[-1]]) for x in a]).astype(np.float32)
    guess = np.asarray([np.median(x) for x in a], np.float32)
    for weights in (None, (0.5, 2.0, 0.0, 1.0)):
      m = methods.ties(weights=weights)
      ctx = m.context(4, 0, 0)
      counts, vote = threshold._pinpoint_fn(base, experts, ctx, thr.view(np.int32), guess, dare=False, sign="sum",  # pylint: disable=protected-access
                                            weighted=weights is not None)
      want = np.asarray([[np.sum(x >= t) for t in row] for x, row in zip(a, thr)])
      np.testing.assert_array_equal(np.asarray(counts).sum(-1), want)
      w = np.ones(4, np.float32) if weights is None else np.asarray(weights, np.float32)
      v = sum(w[t] * np.where(np.abs(e - base) >= guess[t], e - base, 0).astype(np.float32) for t, e in enumerate(experts))
      np.testing.assert_array_equal(np.asarray(vote).sum(-1), [np.sum(v < 0), np.sum(v > 0)])


def test_speculative_balance_is_exact_or_withheld():
  """find_thresholds returns sign counts only when they are the counts at the final thresholds."""
  rng = np.random.default_rng(4)
  shapes = {"a": (64, 40), "b": (24,), "c": (16, 8)}
  base = {p: (np.round(rng.normal(size=s) * 256) / 256).astype(np.float32) for p, s in shapes.items()}
  experts = [{p: v + np.round(rng.normal(size=v.shape) * 4) / 256 for p, v in base.items()} for _ in range(4)]
  experts = [{p: v.astype(np.float32) for p, v in e.items()} for e in experts]
  ctx = methods.ties().context(4, 0, 0)

  def leaf_pass(fn, args_for=None):
    return {p: jax.tree.map(np.asarray, fn(base[p], tuple(e[p] for e in experts), ctx,
                                            *(args_for(p) if args_for else ()))) for p in shapes}

  seen = set()
  for sample, density in [(32, 0.25), (512, 0.25), (2048, 0.15), (2048, 0.3), (2048, 0.45)]:
    threshold.SAMPLE_GLOBAL, old = sample, threshold.SAMPLE_GLOBAL
    try:
      thr, bal = threshold.find_thresholds(leaf_pass, shapes, 4, density, "global", False, sign="sum")
    finally:
      threshold.SAMPLE_GLOBAL = old
    seen.add(bal is None)
    if bal is not None:
      vote = {p: sum(np.where(np.abs(e[p] - base[p]) >= thr[p][t], e[p] - base[p], 0) for t, e in enumerate(experts))
              for p in shapes}
      assert bal == (sum(int(np.sum(v < 0)) for v in vote.values()), sum(int(np.sum(v > 0)) for v in vote.values()))
  assert seen == {False, True}  # some guesses were right, and some wrong


def test_host_sample_equals_the_jitted_sample_bitwise():
  """The engine samples host arrays with NumPy (threshold._sample_host, no compile per stride): the
  same float32 values as the jitted sample, subnormals included (XLA:CPU flushes them to zero)."""
  rng = np.random.default_rng(3)
  for scale in (0.02, 1e-38):
    base = (rng.standard_normal((64, 40)) * scale).astype(np.float32)
    experts = tuple((base + rng.standard_normal((64, 40)) * scale).astype(np.float32) for _ in range(3))
    ctx = methods.ties().context(3, 0, 0)
    for strides in ((1, 1), (3, 1), (7, 5)):
      want = np.asarray(threshold._sample_fn(base, experts, ctx, strides, dare=False))  # pylint: disable=protected-access
      got = threshold._sample_host(base, experts, ctx, strides)  # pylint: disable=protected-access
      np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
