"""Subspace and depth-scaled methods (tsv_m, iso_c, iso_cts, cart, lines): float64 references,
properties, 1 vs 8 devices, bad input."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import mergejax
from mergejax import methods
from mergejax.methods import depth
from tests.reference import lines as rl, subspace as rsub
from tests.test_methods import flat, make_models
from tests.test_methods_properties import equal_trees
from tests.test_methods_weight_space import assert_close, sharded_on_8


def expected(name, hp, base, experts):
  b, ex = flat(base), [flat(e) for e in experts]
  n_layers = depth.count_layers({p: v.shape for p, v in b.items()})
  out = {}
  for p in b:
    xs = [e[p] for e in ex]
    if name == "tsv_m":
      out[p] = rsub.tsv_m(b[p], xs, **hp)
    elif name == "iso_c":
      out[p] = rsub.iso_c(b[p], xs, **hp)
    elif name == "iso_cts":
      out[p] = rsub.iso_cts(b[p], xs, **hp)
    elif name == "cart":
      out[p] = rsub.cart(xs, **hp)
    elif name == "lines":
      out[p] = rl.lines(b[p], xs, layer=depth.layer_of(p), n_layers=hp.get("n_layers", n_layers), beta=hp["beta"],
                        alpha=hp.get("alpha"), weights=hp.get("weights"))
  return out


CASES = [
    ("tsv_m", {}, 3),
    ("tsv_m", {"lam": 0.6}, 2),
    ("iso_c", {}, 3),
    ("iso_c", {"lam": 1.5}, 2),
    ("iso_cts", {}, 3),
    ("iso_cts", {"common_space_fraction": 0.5, "lam": 0.9}, 2),
    ("cart", {}, 3),
    ("cart", {"rank_ratio": 0.3, "lam": 1.0}, 4),
    ("lines", {"beta": 0.5}, 3),
    ("lines", {"beta": 1.0, "alpha": 0.2, "weights": (1.0, 0.5, 2.0), "n_layers": 4}, 3),
]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name,hp,n", CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_matches_float64_reference(name, hp, n, dtype):
  base, experts = make_models(seed=11 + len(name) + len(hp), n_experts=n, dtype=dtype)
  out = mergejax.merge(base, experts, methods.get(name, **hp))
  assert_close(flat(out), expected(name, hp, base, experts), dtype, rtol=5e-6)


def _models(n, seed=0):
  return make_models(seed=seed, n_experts=n, dtype=np.float32)


def _close(a, b, tol=5e-6):
  fa, fb = flat(a), flat(b)
  for k in fa:
    scale = max(float(np.max(np.abs(fb[k]), initial=0.0)), 1e-30)
    assert np.max(np.abs(np.asarray(fa[k], np.float64) - fb[k]), initial=0.0) <= tol * scale, k


@pytest.mark.parametrize("name", ["tsv_m", "cart"])
def test_one_expert_gives_it_back(name):
  base, (expert,) = _models(1, seed=1)
  _close(mergejax.merge(base, [expert], methods.get(name)), expert)


@pytest.mark.parametrize("name,hp", [("tsv_m", {}), ("iso_c", {}), ("iso_cts", {}), ("cart", {})])
def test_symmetric_in_the_experts(name, hp):
  base, experts = _models(3, seed=2)
  _close(mergejax.merge(base, experts, methods.get(name, **hp)),
         mergejax.merge(base, experts[::-1], methods.get(name, **hp)), tol=2e-5)


def test_documented_reductions():
  base, experts = _models(3, seed=3)
  avg = mergejax.merge(None, experts, methods.average())
  _close(mergejax.merge(base, experts, methods.cart(lam=0.0)), avg, tol=1e-6)
  _close(mergejax.merge(base, experts, methods.cart(rank_ratio=1.0)), avg, tol=2e-5)
  _close(mergejax.merge(base, experts, methods.iso_cts(common_space_fraction=1.0)),
         mergejax.merge(base, experts, methods.iso_c()), tol=2e-5)
  for name in ("tsv_m", "iso_c", "iso_cts"):
    equal_trees(mergejax.merge(base, experts, methods.get(name, lam=0.0)), base)
  # vectors (biases, norms, scalars) take the mean task vector, scaled by lam
  ta = flat(mergejax.merge(base, experts, methods.task_arithmetic(lam=0.7 / 3)))
  for name in ("tsv_m", "iso_c", "iso_cts"):
    out = flat(mergejax.merge(base, experts, methods.get(name, lam=0.7)))
    for p in ("layer_1/norm", "scalar"):
      np.testing.assert_allclose(out[p], ta[p], rtol=1e-6, atol=1e-7)


def test_iso_c_has_a_flat_spectrum_in_the_task_arithmetic_subspace():
  base, experts = _models(3, seed=4)
  delta = flat(mergejax.merge(base, experts, methods.iso_c()))["embed"] - flat(base)["embed"]
  s = np.linalg.svd(delta.astype(np.float64), compute_uv=False)
  np.testing.assert_allclose(s, s.mean(), rtol=1e-4)
  ta = sum(flat(e)["embed"] - flat(base)["embed"] for e in experts).astype(np.float64)
  u = np.linalg.svd(ta, full_matrices=False)[0]
  np.testing.assert_allclose(u @ (u.T @ delta), delta, atol=1e-5)  # same column space


def test_tsv_m_keeps_each_tasks_top_directions():
  """With orthogonal task matrices (disjoint row blocks) TSV-M keeps each one's top r/T triplets as is."""
  rng = np.random.default_rng(5)
  base = {"w": np.zeros((12, 8), np.float32)}
  taus = []
  for t in range(2):
    tau = np.zeros((12, 8), np.float32)
    tau[6 * t:6 * t + 6, 4 * t:4 * t + 4] = rng.normal(size=(6, 4))
    taus.append(tau)
  out = mergejax.merge(base, [{"w": x} for x in taus], methods.tsv_m())["w"]

  def top4(x):
    u, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    return u[:, :4] @ np.diag(s[:4]) @ vt[:4]

  want = sum(top4(x) for x in taus)
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_lines_scales_grow_with_depth_including_stacked_layers():
  """Per layer leaves and a flax.linen.scan stack ('layers/...', axis 0) get the same scales."""
  rng = np.random.default_rng(6)
  per_layer = {f"layer_{i}": {"w": rng.normal(size=(3, 2)).astype(np.float32)} for i in range(4)}
  per_layer["embed"] = rng.normal(size=(5, 2)).astype(np.float32)
  experts = [{k: (v + 1.0 if not isinstance(v, dict) else {"w": v["w"] + 1.0}) for k, v in per_layer.items()}
             for _ in range(2)]
  out = mergejax.merge(per_layer, experts, methods.lines(beta=0.6))
  for i in range(4):
    np.testing.assert_allclose(out[f"layer_{i}"]["w"] - per_layer[f"layer_{i}"]["w"], 2 * (0.5 + 0.2 * i), rtol=1e-6)
  np.testing.assert_allclose(out["embed"] - per_layer["embed"], 2 * 0.5, rtol=1e-6)
  stacked = {"layers": {"w": np.stack([per_layer[f"layer_{i}"]["w"] for i in range(4)])}, "embed": per_layer["embed"]}
  st_experts = [{"layers": {"w": stacked["layers"]["w"] + 1.0}, "embed": stacked["embed"] + 1.0} for _ in range(2)]
  st = mergejax.merge(stacked, st_experts, methods.lines(beta=0.6))
  for i in range(4):
    np.testing.assert_array_equal(st["layers"]["w"][i], out[f"layer_{i}"]["w"])


@pytest.mark.parametrize("name,hp", [("tsv_m", {}), ("iso_c", {}), ("iso_cts", {}), ("cart", {}),
                                     ("lines", {"beta": 0.3})])
def test_identical_on_1_and_8_devices(name, hp):
  base, experts = _models(3, seed=7)
  method = methods.get(name, **hp)
  one = mergejax.merge(base, experts, method)
  equal_trees(one, mergejax.merge(*sharded_on_8(base, experts), method))


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts", "cart"])
def test_matrix_method_on_a_model_without_matrices_fails_before_work(name):
  base = {"bias": np.zeros((4,), np.float32), "scale": np.ones((3, 2, 2), np.float32)}
  with pytest.raises(ValueError, match=f"^{name}: a matrix method needs 2-D leaves, and this model has none"):
    mergejax.merge(base, [base, base], methods.get(name))


def test_lines_without_layers_and_bad_hyperparameters():
  base = {"w": np.zeros((4, 4), np.float32)}
  with pytest.raises(ValueError, match="^lines: no leaf path names a layer"):
    mergejax.merge(base, [base], methods.lines())
  with pytest.raises(ValueError, match="lines: leaf 'layer_5/w' is in layer 5 but n_layers=2"):
    mergejax.merge({"layer_5": base}, [{"layer_5": base}], methods.lines(n_layers=2))
  for call, message in [(lambda: methods.iso_cts(common_space_fraction=1.5), "common_space_fraction=1.5 is out of"),
                        (lambda: methods.cart(rank_ratio=-0.1), "rank_ratio=-0.1 is out of range"),
                        (lambda: methods.tsv_m(lam=float("inf")), "lam=inf is out of range"),
                        (lambda: methods.lines(n_layers=0), "n_layers=0 is out of range")]:
    with pytest.raises(ValueError, match=message):
      call()


@pytest.mark.parametrize("path,layer", [("model.layers.3.mlp.up_proj.weight", 3), ("blocks/12/attn/q", 12),
                                        ("params/layer_7/mlp/kernel", 7), ("layers/attn/q/kernel", depth.STACKED),
                                        ("embed/embedding", None), ("transformer.h.0.attn.c_attn.weight", 0)])
def test_layer_of_paths(path, layer):
  assert depth.layer_of(path) == layer
