"""RAM, RAM+ (tensor-local) and Arcee Fusion (mergekit ram, ramplus_tl, arcee_fusion): float64
references, properties, 1 vs 8 devices, bad input."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest

import mergejax
from mergejax import engine, methods, sharding
from mergejax.checkpoints import SafetensorsSink, SafetensorsSource
from tests.reference import ram as rr
from tests.test_methods import flat
from tests.test_methods_properties import equal_trees
from tests.test_methods_weight_space import sharded_on_8
from test_checkpoints_fixtures import write_hf

SHAPES = {"w": (48, 40), "v": (40,), "e": (16, 8, 5)}


def _models(n, dtype=np.float32, seed=0, keep=0.35):
  """A base and experts that each change a random ~``keep`` of the entries (the rest exactly equal)."""
  rng = np.random.default_rng(seed)
  base = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
  experts = []
  for _ in range(n):
    experts.append({k: np.where(rng.random(s) < keep, (base[k].astype(np.float64) + rng.normal(size=s) * 0.05),
                                base[k].astype(np.float64)).astype(dtype) for k, s in SHAPES.items()})
  return base, experts


def _check(got, want, dtype):
  for k, w in want.items():
    g = np.asarray(got[k], np.float64)
    assert got[k].dtype == np.dtype(dtype)
    if dtype == np.float32:
      np.testing.assert_allclose(g, w, rtol=0, atol=2e-6 * max(np.abs(w).max(), 1e-30), err_msg=k)
    else:  # within one bf16 ulp of the float64 result
      ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(w), 1e-30))) - ml_dtypes.finfo(dtype).nmant)
      assert (np.abs(g - w) <= ulp * (1 + 1e-9)).all(), k


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name,hp,ref", [
    ("ram", {}, rr.ram),
    ("ram", {"epsilon": 0.03}, rr.ram),
    ("ramplus_tl", {}, rr.ramplus_tl),
    ("ramplus_tl", {"r": 0.7, "alpha": 3.0, "epsilon": 0.01}, rr.ramplus_tl),
])
def test_ram_matches_float64_reference(name, hp, ref, dtype):
  base, experts = _models(3, dtype, seed=len(hp))
  got = flat(mergejax.merge(base, experts, methods.get(name, **hp)))
  _check(got, {k: ref(base[k], [e[k] for e in experts], **hp) for k in base}, dtype)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_arcee_fusion_matches_float64_reference_away_from_the_fence(dtype):
  """Entries whose importance is not within 1% of the fence take the same side as in float64; those
  that are may fall either way (the KL divergence of two close rows loses digits in float32, in mergekit
  too)."""
  base, (expert,) = _models(1, dtype, seed=4, keep=0.6)
  got = flat(mergejax.merge(base, [expert], methods.arcee_fusion()))
  kept = 0
  for k in base:
    want, s, fence = rr.arcee_fusion(base[k], expert[k])
    sure = np.abs(s - fence) > 1e-2 * max(abs(fence), 1e-30)
    assert (~sure).sum() <= max(2, 0.03 * sure.size)
    _check({k: np.where(sure, got[k], want.astype(dtype))}, {k: want}, dtype)
    kept += int(((want != np.asarray(base[k], np.float64)) & sure).sum())
  assert kept > 0


def test_ram_properties():
  base, (a, b) = _models(2, seed=1)
  one = flat(mergejax.merge(base, [a], methods.ram(epsilon=0.0)))
  for k in a:  # one expert: its changes, all of them (epsilon 0), to rounding of theta_0 + (theta_1 - theta_0)
    assert np.all(np.abs(one[k] - a[k]) <= 1.2e-7 * (np.abs(a[k]) + np.abs(base[k]))), k
  equal_trees(mergejax.merge(base, [a, a], methods.ram()), mergejax.merge(base, [a], methods.ram()))  # a shared change: its mean
  equal_trees(mergejax.merge(base, [a, b], methods.ram()), mergejax.merge(base, [b, a], methods.ram()))  # symmetric
  # disjoint changes add up as in task arithmetic; ramplus_tl with r = 0 is ram
  disjoint = {k: np.where(a[k] != base[k], base[k], b[k]) for k in base}
  np.testing.assert_array_equal(
      flat(mergejax.merge(base, [a, disjoint], methods.ram(epsilon=0.0)))["w"],
      flat(mergejax.merge(base, [a, disjoint], methods.task_arithmetic()))["w"])
  equal_trees(mergejax.merge(base, [a, b], methods.ramplus_tl(r=0.0)), mergejax.merge(base, [a, b], methods.ram()))


def test_ramplus_amplifies_only_unique_changes_by_its_ratio():
  base, (a, b) = _models(2, seed=2)
  ram = flat(mergejax.merge(base, [a, b], methods.ram(epsilon=0.0)))
  plus = flat(mergejax.merge(base, [a, b], methods.ramplus_tl(r=0.5, alpha=10.0, epsilon=0.0)))
  ta, tb = a["w"] - base["w"], b["w"] - base["w"]
  only_a, both = (ta != 0) & (tb == 0), (ta != 0) & (tb != 0)
  rho = both.sum() / only_a.sum()
  np.testing.assert_allclose((plus["w"] - base["w"])[only_a], (1 + 0.5 * rho) * ta[only_a], rtol=1e-6,
                             atol=3e-7 * np.abs(base["w"]).max())
  np.testing.assert_array_equal(plus["w"][both], ram["w"][both])


def test_arcee_fusion_keeps_only_outlier_changes():
  base, (expert,) = _models(1, seed=5, keep=1.0)
  x = {k: v.copy() for k, v in expert.items()}
  x["w"][3, :] = base["w"][3, :] + np.linspace(-3, 3, 40, dtype=np.float32)  # one row changed far more
  got = flat(mergejax.merge(base, [x], methods.arcee_fusion()))
  for k in base:  # each entry the base's, or the expert's (to rounding of theta_0 + (theta_1 - theta_0))
    assert np.all((got[k] == base[k]) | (np.abs(got[k] - x[k]) <= 1.2e-7 * (np.abs(x[k]) + np.abs(base[k])))), k
  np.testing.assert_allclose(got["w"][3], x["w"][3], rtol=1e-6)
  assert (got["w"] == base["w"]).mean() > 0.5
  equal_trees(mergejax.merge(base, [base], methods.arcee_fusion()), base)  # no change: the base


@pytest.mark.parametrize("name,n", [("ram", 3), ("ramplus_tl", 3), ("arcee_fusion", 1)])
def test_identical_on_1_and_8_devices(name, n):
  base, experts = _models(n, seed=7)
  m = methods.get(name)
  equal_trees(mergejax.merge(base, experts, m), mergejax.merge(*sharded_on_8(base, experts), m))


def test_arcee_fusion_of_a_leaf_past_the_sampled_selection_size():
  """A leaf of 147,456 entries (its quartiles found through a strided sample's windows): the float64
  reference's sides away from the fence, and the same bits on 1 and 8 devices."""
  rng = np.random.default_rng(11)
  base = {"big": rng.normal(size=(512, 288)).astype(np.float32)}
  expert = {"big": np.where(rng.random((512, 288)) < 0.5, base["big"] + rng.normal(size=(512, 288)) * 0.05,
                            base["big"]).astype(np.float32)}
  got = mergejax.merge(base, [expert], methods.arcee_fusion())
  want, s, fence = rr.arcee_fusion(base["big"], expert["big"])
  sure = np.abs(s - fence) > 1e-2 * abs(fence)
  assert (~sure).sum() <= 0.03 * sure.size and (want != base["big"])[sure].any()
  _check({"big": np.where(sure, got["big"], want.astype(np.float32))}, {"big": want}, np.float32)
  equal_trees(got, mergejax.merge(*sharded_on_8(base, [expert]), methods.arcee_fusion()))


def test_arcee_fusion_from_files_identical_on_1_and_8_devices_and_to_the_in_memory_merge(tmp_path):
  """The streaming engine (bf16 safetensors, whole leaves staged on one device, or groups under a small
  budget on 8) writes the in-memory merge's bits, a leaf past the sampled-selection size included."""
  rng = np.random.default_rng(12)
  shapes = {"model.embed_tokens.weight": (640, 256), "model.norm.weight": (256,), "model.layers.0.mlp.w": (96, 256)}
  base = {k: rng.normal(size=s).astype(ml_dtypes.bfloat16) for k, s in shapes.items()}
  expert = {k: (v.astype(np.float32) + rng.normal(size=v.shape) * 0.05 * (rng.random(v.shape) < 0.5))
            .astype(ml_dtypes.bfloat16) for k, v in base.items()}
  paths = [write_hf(tmp_path / name, tree) for name, tree in (("base", base), ("expert", expert))]
  want = mergejax.merge(base, [expert], methods.arcee_fusion())
  for i, (mesh, budget) in enumerate([(sharding.make_mesh(jax.devices()[:1]), None), (sharding.make_mesh(), 200_000)]):
    out = engine.merge_sources(SafetensorsSource(paths[0]), [SafetensorsSource(paths[1])],
                               SafetensorsSink(tmp_path / f"out{i}"), methods.arcee_fusion(), mesh=mesh,
                               memory_budget_bytes=budget)
    got = SafetensorsSource(out).read(list(shapes))
    for k in shapes:
      np.testing.assert_array_equal(np.asarray(got[k]).view(np.uint16), np.asarray(want[k]).view(np.uint16), err_msg=k)


def test_ramplus_from_files_in_pieces_equals_the_whole_leaf_formula(tmp_path):
  """ramplus_tl's counts come from a statistics pass, so its merge runs in flat pieces; the streaming
  engine (a leaf of 2^20 + entries, 1 device and 8) writes the bits of the formula evaluated on whole
  leaves, counts included (``ramplus_tl_leaf`` without ``counts``)."""
  from mergejax.methods.ram import ramplus_tl_leaf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(13)
  shapes = {"model.embed_tokens.weight": (1100, 1024), "model.norm.weight": (1024,), "model.layers.0.mlp.w": (96, 256)}
  base = {k: rng.normal(size=s).astype(ml_dtypes.bfloat16) for k, s in shapes.items()}
  experts = [{k: (v.astype(np.float32) + rng.normal(size=v.shape) * 0.05 * (rng.random(v.shape) < keep))
              .astype(ml_dtypes.bfloat16) for k, v in base.items()} for keep in (0.3, 0.5, 0.7)]
  paths = [write_hf(tmp_path / f"m{i}", tree) for i, tree in enumerate([base, *experts])]
  hp = {"r": 0.7, "alpha": 3.0, "epsilon": 1e-3}
  whole = jax.jit(lambda b, es: ramplus_tl_leaf(b, es, **hp).astype(ml_dtypes.bfloat16))
  want = {k: np.asarray(whole(base[k], tuple(e[k] for e in experts))) for k in shapes}
  equal_trees(mergejax.merge(base, experts, methods.ramplus_tl(**hp)), want)
  for i, (mesh, budget) in enumerate([(sharding.make_mesh(jax.devices()[:1]), None), (sharding.make_mesh(), 3_000_000)]):
    out = engine.merge_sources(SafetensorsSource(paths[0]), [SafetensorsSource(p) for p in paths[1:]],
                               SafetensorsSink(tmp_path / f"out{i}"), methods.ramplus_tl(**hp), mesh=mesh,
                               memory_budget_bytes=budget)
    got = SafetensorsSource(out).read(list(shapes))
    for k in shapes:
      np.testing.assert_array_equal(np.asarray(got[k]).view(np.uint16), want[k].view(np.uint16), err_msg=k)


@pytest.mark.parametrize("call,message", [
    (lambda: methods.ram(epsilon=-1.0), r"epsilon=-1.0 is out of range"),
    (lambda: methods.ramplus_tl(r=-0.1), r"r=-0.1 is out of range"),
    (lambda: methods.ramplus_tl(alpha=float("nan")), r"alpha=nan"),
])
def test_bad_hyperparameters(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_arcee_fusion_takes_one_expert():
  base, experts = _models(2)
  with pytest.raises(ValueError, match="arcee_fusion: merges at most 1 expert"):
    mergejax.merge(base, experts, methods.arcee_fusion())
