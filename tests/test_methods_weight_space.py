"""mergekit's weight-space methods (slerp, nuslerp, multislerp, karcher, breadcrumbs(_ties), della(_linear),
model_stock, sce, nearswap): float64 references, properties, 1 vs 8 devices, bad input."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest

import mergejax
from mergejax import methods
from mergejax.tree import stable_path_hash
from tests.reference import sparse as rsp, spherical as rsph, stock as rst
from tests.test_methods import flat, make_models
from tests.test_methods_properties import equal_trees


def assert_close(out, expect, dtype, rtol):
  """float32 outputs within ``rtol`` of the leaf's largest value; bf16 within one ulp (plus that)."""
  for p, e in expect.items():
    o = np.asarray(out[p], np.float64)
    assert out[p].dtype == np.dtype(dtype), p
    scale = max(float(np.max(np.abs(e), initial=0.0)), 1e-30)
    if dtype == np.float32:
      err = float(np.max(np.abs(o - e), initial=0.0)) / scale
      assert err <= rtol, f"{p}: relative error {err:.3g}"
    else:
      exp = np.floor(np.log2(np.maximum(np.abs(e), ml_dtypes.finfo(dtype).tiny)))
      ulp = 2.0 ** (exp - ml_dtypes.finfo(dtype).nmant)
      bad = np.abs(o - e) > ulp * (1 + 1e-9) + rtol * scale
      assert not bad.any(), f"{p}: {bad.sum()} entries more than one ulp off, e.g. {o[bad][:3]} vs {e[bad][:3]}"


def sharded_on_8(base, experts):
  """The models as global arrays on an 8-device mesh, each leaf split along its first axis divisible by 8."""
  assert len(jax.devices()) == 8, "tests/conftest.py forces 8 CPU devices"
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))

  def put(x):
    x = np.asarray(x)
    axis = next((i for i, d in enumerate(x.shape) if d % 8 == 0), None)
    spec = jax.sharding.PartitionSpec(*[("x" if i == axis else None) for i in range(x.ndim)])
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))

  return jax.tree.map(put, base), [jax.tree.map(put, e) for e in experts]


def draws_for(seed: int, path: str, shape: tuple[int, ...], n: int) -> list[np.ndarray]:
  """Each expert's uniform draws for a leaf, from the documented key derivation (jax.random) and hash."""
  leaf = jax.random.fold_in(jax.random.key(seed), stable_path_hash(path))
  words = np.asarray(jax.random.key_data(leaf)).reshape(-1)
  ks = [np.asarray(jax.random.key_data(jax.random.fold_in(leaf, t))).reshape(-1)[0] for t in range(n)]
  return [rsp.uniform_draws((words[0], words[-1]), k, shape) for k in ks]


def expected(name, hp, base, experts, seed):
  b, ex = flat(base), [flat(e) for e in experts]
  out = {}
  for p in b:
    xs = [e[p] for e in ex]
    kw = dict(hp)
    if name == "slerp":
      out[p] = rsph.slerp(b[p], xs[0], kw["t"])
    elif name == "nuslerp":
      out[p] = rsph.nuslerp(b[p], xs, kw.get("weights", (1.0, 1.0)), kw.get("nuslerp_flatten", True),
                            kw.get("nuslerp_row_wise", False))
    elif name == "multislerp":
      out[p] = rsph.multislerp(b[p], xs, kw.get("weights"), kw.get("normalize_weights", True))
    elif name == "karcher":
      out[p] = rsph.karcher([b[p]] + xs, [1.0] + list(kw.get("weights", [1.0] * len(xs))))
    elif name in ("breadcrumbs", "breadcrumbs_ties"):
      out[p] = rsp.breadcrumbs(b[p], xs, density=kw.get("density", 0.9), gamma=kw.get("gamma", 0.01),
                               lam=kw.get("lam", 1.0), weights=kw.get("weights"), rescale=kw.get("rescale", False),
                               consensus=kw.get("sign", "sum") if name == "breadcrumbs_ties" else None,
                               aggregate=kw.get("aggregate", "sum"))
    elif name in ("della", "della_linear"):
      out[p] = rsp.della(b[p], xs, draws_for(seed, p, b[p].shape, len(xs)), density=kw.get("density", 0.5),
                         epsilon=kw.get("epsilon", 0.15), lam=kw.get("lam", 1.0), weights=kw.get("weights"),
                         rescale={True: "l1", False: "none"}.get(kw.get("rescale", "l1"), kw.get("rescale", "l1")),
                         consensus=kw.get("sign", "sum") if name == "della" else None,
                         aggregate=kw.get("aggregate", "mean" if name == "della" else "sum"))
    elif name == "model_stock":
      out[p] = rst.model_stock(b[p], xs, kw.get("filter_wise", False))
    elif name == "sce":
      out[p] = b[p] + kw.get("lam", 1.0) * (rst.sce(b[p], xs, kw.get("select_topk", 1.0)) - b[p])
    elif name == "nearswap":
      out[p] = rst.nearswap(b[p], xs[0], kw["t"])
    else:
      raise AssertionError(name)
  return out


CASES = [
    ("slerp", {"t": 0.3}, 1),
    ("slerp", {"t": 1.0}, 1),
    ("nuslerp", {}, 2),
    ("nuslerp", {"weights": (0.7, 0.3), "nuslerp_flatten": False}, 2),
    ("nuslerp", {"weights": (1.0, 3.0), "nuslerp_flatten": False, "nuslerp_row_wise": True}, 2),
    ("multislerp", {}, 3),
    ("multislerp", {"weights": (1.0, 2.0, 0.5)}, 3),
    ("karcher", {}, 3),
    ("karcher", {"weights": (1.0, 2.0, 0.5)}, 3),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05, "lam": 0.7}, 3),
    ("breadcrumbs", {"density": 0.3, "gamma": 0.8, "rescale": True, "weights": (1.0, 0.5, 2.0)}, 3),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1}, 3),
    ("breadcrumbs_ties", {"density": 0.7, "gamma": 0.0, "sign": "count", "aggregate": "mean"}, 3),
    ("della", {}, 3),
    ("della", {"density": 0.4, "epsilon": 0.2, "rescale": "inverse_prob", "lam": 0.8, "weights": (1.0, 1.7, 0.6)}, 3),
    ("della_linear", {"density": 0.7, "epsilon": 0.1, "rescale": "none"}, 3),
    ("della_linear", {"aggregate": "mean", "rescale": True}, 3),
    ("model_stock", {}, 3),
    ("model_stock", {"filter_wise": True}, 2),
    ("sce", {}, 3),
    ("sce", {"select_topk": 0.4, "lam": 0.9}, 3),
    ("nearswap", {"t": 0.02}, 1),
]


def _tie_prone(hp):
  """On bf16-quantized values these settings meet exact ties (votes of exactly 0 in exact arithmetic,
  equal variances) that float32 and float64 rounding break differently: float32 inputs test them."""
  return hp.get("rescale") == "inverse_prob" or hp.get("select_topk", 1.0) < 1.0


PARAMS = [pytest.param(name, hp, n, dtype, id=f"{name}-{i}-{tag}") for i, (name, hp, n) in enumerate(CASES)
          for dtype, tag in ((np.float32, "f32"), (ml_dtypes.bfloat16, "bf16"))
          if dtype == np.float32 or not _tie_prone(hp)]


@pytest.mark.parametrize("name,hp,n,dtype", PARAMS)
def test_matches_float64_reference(name, hp, n, dtype):
  base, experts = make_models(seed=len(name) + 3 * len(hp), n_experts=n, dtype=dtype)
  # Experts off the 2^-12 grid of make_models: distinct magnitudes, so that float32 and float64 rank alike.
  rng = np.random.default_rng(n)
  experts = [jax.tree.map(lambda x: (np.asarray(x, np.float64) + rng.normal(size=np.shape(x)) * 1e-3).astype(dtype), e)
             for e in experts]
  out = mergejax.merge(base, experts, methods.get(name, **hp), seed=5)
  assert_close(flat(out), expected(name, hp, base, experts, seed=5), dtype, rtol=2e-6)


# ------------------------------------------------------------------------------------------- properties


def _models(n, seed=0):
  return make_models(seed=seed, n_experts=n, dtype=np.float32)


def _close(a, b, tol=2e-6):
  fa, fb = flat(a), flat(b)
  for k in fa:
    scale = max(float(np.max(np.abs(fb[k]), initial=0.0)), 1e-30)
    assert np.max(np.abs(np.asarray(fa[k], np.float64) - fb[k]), initial=0.0) <= tol * scale, k


@pytest.mark.parametrize("name,hp", [("multislerp", {}), ("sce", {}), ("karcher", {}),
                                     ("breadcrumbs", {"density": 1.0}), ("della", {"density": 1.0}),
                                     ("nearswap", {"t": 1e9})])
def test_one_expert_gives_it_back(name, hp):
  base, (expert,) = _models(1)
  out = mergejax.merge(None if name == "karcher" else base, [expert], methods.get(name, **hp))
  _close(out, expert)


def test_passthrough_copies_its_one_model_and_scales_it_in_float32():
  base, (expert,) = make_models(seed=9, n_experts=1, dtype=ml_dtypes.bfloat16)
  equal_trees(mergejax.merge(base, [expert], methods.passthrough()), expert)  # scale 1: an exact copy
  out = mergejax.merge(None, [expert], methods.passthrough(scale=0.3))
  want = jax.tree.map(lambda x: (np.asarray(x, np.float64) * np.float32(0.3)).astype(np.float32).astype(
      ml_dtypes.bfloat16), expert)
  equal_trees(out, want)
  equal_trees(out, mergejax.merge(*sharded_on_8(base, [expert]), methods.passthrough(scale=0.3)))
  with pytest.raises(ValueError, match="^passthrough: merges at most 1 expert, got 2"):
    mergejax.merge(base, [expert, expert], methods.passthrough())


def test_slerp_endpoints_and_nearswap_limits():
  base, (expert,) = _models(1, seed=1)
  _close(mergejax.merge(base, [expert], methods.slerp(t=0.0)), base)
  _close(mergejax.merge(base, [expert], methods.slerp(t=1.0)), expert)
  _close(mergejax.merge(base, [expert], methods.nearswap(t=1e-12)), base, tol=1e-9)


@pytest.mark.parametrize("name,hp", [("nuslerp", {}), ("multislerp", {}), ("karcher", {}), ("model_stock", {}),
                                     ("model_stock", {"filter_wise": True}), ("sce", {"select_topk": 0.5}),
                                     ("breadcrumbs", {"density": 0.5}), ("breadcrumbs_ties", {"density": 0.5})])
def test_unweighted_methods_are_symmetric_in_the_experts(name, hp):
  base, experts = _models(3 if name != "nuslerp" else 2, seed=2)
  a = mergejax.merge(base, experts, methods.get(name, **hp))
  b = mergejax.merge(base, experts[::-1], methods.get(name, **hp))
  _close(a, flat(b), tol=1e-6)


@pytest.mark.parametrize("name,hp,ta", [
    ("breadcrumbs", {"density": 1.0, "lam": 0.4, "weights": (1.0, 2.0, 0.5)}, {"lam": 0.4, "weights": (1.0, 2.0, 0.5)}),
    ("della_linear", {"density": 1.0, "lam": 0.6}, {"lam": 0.6}),
    ("lines", {"alpha": 0.35, "beta": 0.0}, {"lam": 0.35}),
])
def test_reduces_to_task_arithmetic(name, hp, ta):
  base, experts = _models(3, seed=3)
  equal_trees(mergejax.merge(base, experts, methods.get(name, **hp)),
              mergejax.merge(base, experts, methods.task_arithmetic(**ta)))


def test_breadcrumbs_ties_and_della_without_sparsification_are_per_tensor_ties():
  base, experts = _models(3, seed=4)
  ties = mergejax.merge(base, experts, methods.ties(density=1.0, scope="tensor", aggregate="sum"))
  equal_trees(mergejax.merge(base, experts, methods.breadcrumbs_ties(density=1.0)), ties)
  equal_trees(mergejax.merge(base, experts, methods.della(density=1.0, aggregate="sum")), ties)


def test_breadcrumbs_keeps_exactly_the_middle_band():
  rng = np.random.default_rng(5)
  base = {"w": np.zeros((40, 25), np.float32)}
  tau = np.round(rng.normal(size=(40, 25)) * 8) / 8  # many ties in |tau|
  out = mergejax.merge(base, [{"w": tau.astype(np.float32)}], methods.breadcrumbs(density=0.5, gamma=0.1))["w"]
  kept = np.asarray(out) != 0
  n = tau.size
  assert kept.sum() == int(0.5 * n) - np.sum(tau[kept] == 0)  # exactly int(density n), zeros included
  dropped = np.abs(tau[~kept & (tau != 0)])
  assert np.sum(np.abs(tau) > np.abs(tau[kept]).max()) <= int(0.1 * n)  # the top gamma n are outliers
  assert (dropped <= np.abs(tau[kept]).min()).sum() + (dropped >= np.abs(tau[kept]).max()).sum() == dropped.size


def test_della_keeps_density_on_average_prefers_large_entries_and_is_unbiased():
  rng = np.random.default_rng(6)
  base = {"w": rng.normal(size=(64, 64)).astype(np.float32)}
  experts = [{"w": base["w"] + rng.normal(size=(64, 64)).astype(np.float32) * 0.1} for _ in range(2)]
  tau = experts[0]["w"] - base["w"]
  m = methods.della_linear(density=0.4, epsilon=0.2, rescale="inverse_prob")
  keep = np.asarray(mergejax.merge(base, experts[:1], m, seed=0)["w"]) != base["w"]
  assert abs(keep.mean() - 0.4) < 0.02
  big = np.abs(tau) >= np.median(np.abs(tau), axis=1, keepdims=True)
  assert keep[big].mean() > keep[~big].mean() + 0.1  # p grows with the magnitude rank (0.5 vs 0.3 on average)
  runs = 60
  mean = sum(np.asarray(mergejax.merge(base, experts, m, seed=s)["w"], np.float64) for s in range(runs)) / runs
  ta = np.asarray(mergejax.merge(base, experts, methods.task_arithmetic())["w"], np.float64)
  p = rsp.magprune_prob(tau.astype(np.float64), 0.4, 0.2)
  sigma = np.sqrt(sum((e["w"].astype(np.float64) - base["w"]) ** 2 for e in experts) * (1 - p.min()) / p.min())
  assert np.all(np.abs(mean - ta) <= 5 * sigma / np.sqrt(runs) + 1e-6)
  other = mergejax.merge(base, experts, m, seed=1)["w"]
  assert not np.array_equal(other, mergejax.merge(base, experts, m, seed=0)["w"])


def test_model_stock_ratio_limits():
  """Identical task vectors (cos 1) give the experts; orthogonal ones (cos 0) give the base."""
  base = {"w": np.zeros((4, 4), np.float32), "b": np.ones((4,), np.float32)}
  same = {"w": np.eye(4, dtype=np.float32), "b": np.full((4,), 2.0, np.float32)}
  _close(mergejax.merge(base, [same, same, same], methods.model_stock()), same)
  e1 = {"w": np.diag([1.0, 0, 0, 0]).astype(np.float32), "b": np.array([1, 1, 0, 0], np.float32)}
  e2 = {"w": np.diag([0, 1.0, 0, 0]).astype(np.float32), "b": np.array([1, 1, 3, 3], np.float32)}
  _close(mergejax.merge(base, [e1, e2], methods.model_stock()), base)


@pytest.mark.parametrize("name,hp,n", [("slerp", {"t": 0.4}, 1), ("nuslerp", {"nuslerp_flatten": False}, 2),
                                       ("nuslerp", {}, 2), ("multislerp", {}, 3), ("karcher", {}, 3),
                                       ("breadcrumbs", {}, 3), ("breadcrumbs_ties", {}, 3), ("della", {}, 3),
                                       ("della_linear", {}, 3), ("model_stock", {}, 3),
                                       ("model_stock", {"filter_wise": True}, 3), ("sce", {}, 3),
                                       ("nearswap", {"t": 0.01}, 1)])
def test_identical_on_1_and_8_devices(name, hp, n):
  base, experts = _models(n, seed=7)
  method = methods.get(name, **hp)
  one = mergejax.merge(base, experts, method, seed=3)
  equal_trees(one, mergejax.merge(*sharded_on_8(base, experts), method, seed=3))
  equal_trees(one, mergejax.merge(base, experts, method, seed=3))


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name,hp,n,message", [
    ("slerp", {}, 2, "slerp: merges at most 1 expert"),
    ("nearswap", {}, 2, "nearswap: merges at most 1 expert"),
    ("nuslerp", {}, 3, "nuslerp: merges at most 2 experts"),
    ("nuslerp", {}, 1, "nuslerp: need at least 2 experts"),
    ("model_stock", {}, 1, "model_stock: need at least 2 experts"),
])
def test_wrong_number_of_models_names_the_method(name, hp, n, message):
  base, experts = _models(n)
  with pytest.raises(ValueError, match=message):
    mergejax.merge(base, experts, methods.get(name, **hp))


@pytest.mark.parametrize("call,message", [
    (lambda: methods.slerp(t=1.5), r"^slerp: hyperparameter t=1.5 is out of range: allowed \[0.0, 1.0\]"),
    (lambda: methods.breadcrumbs(density=0.0), r"density=0.0 is out of range"),
    (lambda: methods.breadcrumbs(gamma=1.0), r"gamma=1.0 is out of range"),
    (lambda: methods.della(density=0.9, epsilon=0.15), r"della: density=0.9 and epsilon=0.15 give keep probabilities"),
    (lambda: methods.della_linear(rescale="l2"), r"rescale='l2' is not allowed"),
    (lambda: methods.sce(select_topk=1.2), r"select_topk=1.2 is out of range"),
    (lambda: methods.nearswap(t=0.0), r"t=0.0 is out of range"),
    (lambda: methods.karcher(max_iter=0), r"max_iter=0 is out of range"),
    (lambda: methods.model_stock(filter_wise="yes"), r"filter_wise='yes' must be True or False"),
])
def test_bad_hyperparameters(call, message):
  with pytest.raises(ValueError, match=message):
    call()


# ------------------------------------------------------------------------------------------------ traits

NEW = [("slerp", {}, 1), ("nuslerp", {}, 2), ("multislerp", {}, 3), ("karcher", {}, 3), ("breadcrumbs", {}, 3),
       ("breadcrumbs_ties", {}, 3), ("della", {}, 3), ("della_linear", {}, 3), ("model_stock", {}, 3), ("sce", {}, 3),
       ("nearswap", {"t": 0.05}, 1), ("tsv_m", {}, 3), ("iso_c", {}, 3), ("iso_cts", {}, 3), ("cart", {}, 3),
       ("lines", {}, 3), ("ram", {}, 3), ("ramplus_tl", {}, 3), ("arcee_fusion", {}, 1)]


@pytest.mark.parametrize("name,hp,n", NEW, ids=[c[0] for c in NEW])
def test_declared_traits_hold(name, hp, n):
  """stochastic <=> the seed matters; lam_scales_task_vector => theta(lam) - theta_0 is linear in lam;
  propagates_nonfinite => a NaN or Inf input entry gives a non-finite output entry; not elementwise
  => merging a leaf in two halves differs from merging it whole (for these data)."""
  base, experts = _models(n, seed=8)
  m = methods.get(name, **hp)
  a, b = (flat(mergejax.merge(base, experts, m, seed=s)) for s in (0, 1))
  assert any(not np.array_equal(a[k], b[k]) for k in a) == m.traits.stochastic
  if m.traits.lam_scales_task_vector:
    one = flat(mergejax.merge(base, experts, methods.get(name, **hp, lam=1.0)))
    half = flat(mergejax.merge(base, experts, methods.get(name, **hp, lam=0.5)))
    for k, v in flat(base).items():
      np.testing.assert_allclose(half[k] - v, 0.5 * (one[k] - v), rtol=1e-5, atol=1e-6, err_msg=k)
  if m.traits.propagates_nonfinite:
    for bad in (np.nan, np.inf):
      broken = [jax.tree.map(np.copy, e) for e in experts]
      broken[-1]["embed"][3, 4] = bad
      assert not np.isfinite(flat(mergejax.merge(base, broken, m, allow_nonfinite=True))["embed"][3, 4])
  # LiNeS: one scale per slice of a stacked leaf's axis 0; RAM+: its per-leaf ratio acts only on entries
  # one expert alone changed, which these dense task vectors lack (tests/test_methods_ram.py has them)
  if not m.traits.elementwise and name not in ("lines", "ramplus_tl"):
    w = flat(base)["embed"]
    halves = [mergejax.merge({"w": w[:, s]}, [{"w": flat(e)["embed"][:, s]} for e in experts], m, seed=0)["w"]
              for s in (slice(0, 8), slice(8, 16))]
    assert not np.array_equal(np.concatenate(halves, 1), a["embed"])


@pytest.mark.parametrize("select_topk", [0.5, 1.0])
def test_sce_from_files_in_pieces_equals_the_in_memory_merge(select_topk, tmp_path):
  """sce's selection and mean squares come from statistics passes, so its merge runs in flat pieces: the
  streaming engine (bf16 safetensors with heavy ties of the variance at the cut, a leaf of 2^20 + entries;
  1 device, and 8 under a small budget) writes the bits of the in-memory merge of whole leaves."""
  from mergejax import engine, sharding  # pylint: disable=g-import-not-at-top
  from mergejax.checkpoints import SafetensorsSink, SafetensorsSource  # pylint: disable=g-import-not-at-top
  from test_checkpoints_fixtures import write_hf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(21)
  shapes = {"model.embed_tokens.weight": (1100, 1024), "model.layers.0.mlp.w": (96, 256),
            **{f"model.layers.{i}.norm.weight": (1024,) for i in range(8)}}
  # Norm-like leaves near 1.0: bf16 steps of 2^-7, so few distinct variances and many ties at the cut.
  base = {k: ((1.0 if len(s) == 1 else 0.0) + rng.normal(size=s) * 0.02).astype(ml_dtypes.bfloat16)
          for k, s in shapes.items()}
  experts = [{k: (v.astype(np.float32) + rng.normal(size=v.shape).astype(np.float32) * (0.01 if v.ndim == 1 else 0.002))
              .astype(ml_dtypes.bfloat16) for k, v in base.items()} for _ in range(3)]
  paths = [write_hf(tmp_path / f"m{i}", tree) for i, tree in enumerate([base, *experts])]
  method = methods.sce(select_topk=select_topk)
  want = flat(mergejax.merge(base, experts, method))
  if select_topk < 1:  # the selection kept some entries of each leaf and dropped others
    assert all((want[k] != base[k]).any() and (want[k] == base[k]).any() for k in shapes)
  for i, (mesh, budget) in enumerate([(sharding.make_mesh(jax.devices()[:1]), None), (sharding.make_mesh(), 3_000_000)]):
    out = engine.merge_sources(SafetensorsSource(paths[0]), [SafetensorsSource(p) for p in paths[1:]],
                               SafetensorsSink(tmp_path / f"out{i}"), method, mesh=mesh, memory_budget_bytes=budget)
    got = SafetensorsSource(out).read(list(shapes))
    for k in shapes:
      np.testing.assert_array_equal(np.asarray(got[k]).view(np.uint16), np.asarray(want[k]).view(np.uint16), err_msg=k)


def test_rank_selections_are_exact_and_stable_under_heavy_ties():
  """selection.rank_band / top_k / row_ranks keep exactly the stated ranks, equal values ordered by position
  (a radix select over float32 bit patterns, no sort), including empty and full bands."""
  from mergejax.methods import selection  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(9)
  for n in (1, 2, 7, 300, 5000):
    for scale in (1, 8, 4096):
      a = (np.abs(np.round(rng.normal(size=n) * scale)) / 8).astype(np.float32)
      asc, desc = rsp.stable_ranks(a.astype(np.float64)), rsp.stable_ranks(-a.astype(np.float64))
      for lo, hi in ((0, n), (0, 0), (n, n), tuple(sorted(rng.integers(0, n + 1, 2)))):
        np.testing.assert_array_equal(selection.rank_band(jax.numpy.asarray(a), lo, hi), (asc >= lo) & (asc < hi))
      for k in (0, n, int(rng.integers(0, n + 1))):
        np.testing.assert_array_equal(selection.top_k(jax.numpy.asarray(a), k), desc < k)
  m = (np.abs(np.round(rng.normal(size=(4, 9, 3)) * 2))).astype(np.float32)
  want = np.stack([np.stack([rsp.stable_ranks(m[i, :, j].astype(np.float64)) for j in range(3)], 1) for i in range(4)])
  np.testing.assert_array_equal(selection.row_ranks(jax.numpy.asarray(m)), want)
  # Signed zeros rank as equal values (by position), negatives below them, whichever comes first.
  z = np.array([[0.0, -0.0, 2.0, -0.0, -2.0, 1.0, 0.0], [-0.0, 0.0, -1.5, -0.0, 0.0, 3.0, -3.0]], np.float32)
  want = np.stack([rsp.stable_ranks(row.astype(np.float64)) for row in z])
  np.testing.assert_array_equal(selection.row_ranks(jax.numpy.asarray(z)), want)


@pytest.mark.parametrize("native", [True, False], ids=["c_passes", "numpy"])
def test_row_ranks_of_magnitudes_equal_a_stable_argsort(native, monkeypatch):
  """selection.row_ranks(x, magnitude=True) ranks |x| as row_ranks(|x|) and a stable argsort do: rows short
  enough for 32-bit keys (kept value bits and column) and longer ones; values that share their kept bits
  (caught after the sort and ranked again by full keys); bfloat16 models' task vectors (heavy ties);
  signed zeros, magnitudes of 2 and more, infinities and NaNs of any payload. Both the C passes around
  NumPy's sort (built by setup.py) and the NumPy ones."""
  from mergejax.methods import selection  # pylint: disable=g-import-not-at-top
  if native:
    assert selection._native_row_ranks is not None, "mergejax/methods/_row_ranks.c was not built (pip install -e .)"
  else:
    monkeypatch.setattr(selection, "_native_row_ranks", None)
  rng = np.random.default_rng(11)
  nans = np.array([0xFFC00123, 0x7FC00000, 0x7F800001], np.uint32).view(np.float32)  # payloads high to low
  for n in (1, 3, 1024, 2049, 4096, 4097):
    base = rng.normal(size=(5, n)).astype(ml_dtypes.bfloat16).astype(np.float32)
    expert = (base + rng.normal(size=(5, n)).astype(np.float32) * 0.01).astype(ml_dtypes.bfloat16).astype(np.float32)
    tau = expert - base
    close = -(1 + rng.integers(0, 4, size=(5, n)) * 2.0**-23).astype(np.float32)  # differ in the lowest bits only
    wide = (rng.normal(size=(5, n)) * 10.0 ** rng.integers(-30, 3, size=(5, n))).astype(np.float32)
    special = tau.copy()
    special[0, :3] = nans[:n]  # equal (all NaN), not in payload order
    at = rng.choice(special[1:].size, min(special[1:].size, 9), replace=False)
    special[1:].flat[at] = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 2.0, -3.5, 0.5, 1.0], np.float32)[:at.size]
    for x in (tau, close, wide, special):
      with np.errstate(invalid="ignore"):  # signalling NaNs cast to float64
        want = np.stack([rsp.stable_ranks(np.abs(row).astype(np.float64)) for row in x])
      np.testing.assert_array_equal(selection.row_ranks(jax.numpy.asarray(x), magnitude=True), want)
      np.testing.assert_array_equal(selection.row_ranks(jax.numpy.asarray(np.abs(x))), want)
  m = np.round(rng.normal(size=(4, 9, 3)) * 4).astype(ml_dtypes.bfloat16)  # rows along axis 1; bfloat16 in
  want = np.stack([np.stack([rsp.stable_ranks(np.abs(m[i, :, j].astype(np.float64))) for j in range(3)], 1)
                   for i in range(4)])
  np.testing.assert_array_equal(selection.row_ranks(jax.numpy.asarray(m), magnitude=True), want)
  # On the host directly: int32 and uint16 ranks, rows split between threads and over several blocks.
  x = rng.normal(size=(300, 37)).astype(ml_dtypes.bfloat16).astype(np.float32)
  x[::7, ::5] = 0.0
  want = np.stack([rsp.stable_ranks(np.abs(row).astype(np.float64)) for row in x])
  for dtype in (np.int32, np.uint16):
    got = selection._row_ranks_host(x.view(np.uint32), dtype, block=256, magnitude=True)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def test_row_ranks_c_passes_refuse_buffers_that_do_not_fit():
  """The C passes check their buffers' sizes against the row length before touching them."""
  from mergejax.methods import selection  # pylint: disable=g-import-not-at-top
  c = selection._native_row_ranks
  assert c is not None, "mergejax/methods/_row_ranks.c was not built (pip install -e .)"
  bits, keys, flags = np.zeros((4, 8), np.uint32), np.zeros((4, 8), np.uint32), np.zeros(4, np.uint8)
  with pytest.raises(ValueError, match="do not fit"):
    c.keys(bits, keys[:3], flags, 8, True)
  with pytest.raises(ValueError, match="do not fit"):
    c.ranks(bits, keys, flags, np.zeros((4, 7), np.int32), 8, True)
  with pytest.raises(ValueError, match="do not fit"):
    c.rank_rows(bits, np.zeros((4, 8), np.int64), 8, True)
  with pytest.raises(ValueError, match="do not fit"):
    c.keys(np.zeros((1, 8192), np.uint32), np.zeros((1, 8192), np.uint32), np.zeros(1, np.uint8), 8192, True)
  out = np.zeros((4, 8), np.int32)
  c.rank_rows(np.arange(32, dtype=np.uint32)[::-1].copy().reshape(4, 8), out, 8, False)
  np.testing.assert_array_equal(out, np.tile(np.arange(8)[::-1], (4, 1)))


def test_order_statistics_equal_the_sorted_leaf_at_those_ranks():
  """selection.order_statistics gives the values a full sort would at the requested ranks: signed values,
  heavy ties and signed zeros (-0.0 sorts equal to +0.0), leaves small and large enough for the sampled
  window path."""
  from mergejax.methods import selection  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  for n in (1, 2, 9, 1000, 300_000):
    for scale in (2, 4096):
      a = (np.round(rng.normal(size=n) * scale) / 8).astype(np.float32)
      a[rng.integers(0, n, max(1, n // 10))] = -0.0
      ranks = tuple(sorted({0, n - 1, *(int(r) for r in rng.integers(0, n, 3))}))
      got = np.asarray(selection.order_statistics(jax.numpy.asarray(a.reshape(-1, 1) if n % 2 else a), ranks))
      np.testing.assert_array_equal(got, np.sort(a)[list(ranks)])
  # A leaf whose strided sample sees one value only (every 4th entry 0, the sample's stride): the sampled
  # windows miss most ranks, which are then selected from the whole leaf.
  a = (np.arange(300_000) % 977).astype(np.float32) - 300
  a[::4] = 0
  ranks = (0, 74_999, 75_000, 149_999, 224_999, 299_999)
  np.testing.assert_array_equal(selection.order_statistics(jax.numpy.asarray(a), ranks), np.sort(a)[list(ranks)])
