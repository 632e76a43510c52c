"""Behavioural properties of the merge methods, determinism on 1 vs 8 devices, and bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import mergejax
from mergejax import methods
from tests import numpy_reference as ref
from tests.test_methods import flat, make_models

ALL_METHODS = [("average", {}), ("task_arithmetic", {"lam": 0.7}), ("ties", {"density": 0.3}),
               ("ties", {"density": 0.3, "scope": "tensor"}), ("dare_linear", {"drop_rate": 0.5}),
               ("dare_ties", {"drop_rate": 0.5, "density": 0.5})]


def equal_trees(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.mark.parametrize("name,hp", [("task_arithmetic", {}), ("ties", {"density": 1.0}),
                                     ("dare_linear", {"drop_rate": 0.0}), ("average", {}),
                                     ("dare_ties", {"drop_rate": 0.0})])
def test_single_expert_lam_one_gives_the_expert(name, hp):
  base, (expert,) = make_models(seed=0, n_experts=1, dtype=np.float32)
  equal_trees(mergejax.merge(base, [expert], methods.get(name, **hp)), expert)


@pytest.mark.parametrize("name,hp", [m for m in ALL_METHODS if not m[0].startswith("dare")])
def test_expert_order_does_not_matter(name, hp):
  """Unweighted methods are symmetric in the experts. (DARE keys its masks by expert position.)"""
  base, experts = make_models(seed=1, n_experts=3, dtype=np.float32)
  a = flat(mergejax.merge(base, experts, methods.get(name, **hp)))
  b = flat(mergejax.merge(base, experts[::-1], methods.get(name, **hp)))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_ties_density_one_sum_equals_task_arithmetic_without_sign_conflicts():
  """With no trim and agreeing signs, TIES' disjoint sum is task arithmetic (with conflicts it is not)."""
  rng = np.random.default_rng(2)
  base = {"w": rng.normal(size=(32, 16)).astype(np.float32), "b": rng.normal(size=(16,)).astype(np.float32)}
  signs = {k: np.sign(rng.normal(size=v.shape)) for k, v in base.items()}
  experts = [{k: (v + signs[k] * np.abs(rng.normal(size=v.shape)) * 0.1).astype(np.float32) for k, v in base.items()}
             for _ in range(3)]
  ties = mergejax.merge(base, experts, methods.ties(density=1.0, aggregate="sum", lam=0.6))
  ta = mergejax.merge(base, experts, methods.task_arithmetic(lam=0.6))
  for k in base:
    np.testing.assert_allclose(ties[k], ta[k], rtol=1e-6)
  conflicting = [{k: v + 0.1 * (-1) ** i for k, v in base.items()} for i in range(2)]
  assert not np.allclose(mergejax.merge(base, conflicting, methods.ties(density=1.0, aggregate="sum"))["w"],
                         mergejax.merge(base, conflicting, methods.task_arithmetic())["w"])


def test_dare_linear_drop_zero_equals_task_arithmetic():
  base, experts = make_models(seed=3, n_experts=3, dtype=np.float32)
  equal_trees(mergejax.merge(base, experts, methods.dare_linear(drop_rate=0.0, lam=0.4)),
              mergejax.merge(base, experts, methods.task_arithmetic(lam=0.4)))


def test_dare_linear_is_unbiased_over_seeds():
  rng = np.random.default_rng(4)
  base = {"w": rng.normal(size=(64, 64)).astype(np.float32)}
  experts = [{"w": base["w"] + rng.normal(size=(64, 64)).astype(np.float32) * 0.1} for _ in range(2)]
  method = methods.dare_linear(drop_rate=0.5)
  runs = 200
  mean = sum(np.asarray(mergejax.merge(base, experts, method, seed=s)["w"], np.float64) for s in range(runs)) / runs
  ta = np.asarray(mergejax.merge(base, experts, methods.task_arithmetic())["w"], np.float64)
  # Each entry's dropped sum has std sigma = sqrt(sum_t tau_t^2 (p/(1-p))) per draw; the mean of 200 draws
  # lies within 5 sigma/sqrt(200) of the expectation.
  sigma = np.sqrt(sum((np.asarray(e["w"], np.float64) - base["w"]) ** 2 for e in experts))
  assert np.all(np.abs(mean - ta) <= 5 * sigma / np.sqrt(runs) + 1e-6)
  assert not np.allclose(mergejax.merge(base, experts, method, seed=0)["w"], ta)  # a single draw is not TA


def test_dare_masks_match_documented_derivation_and_keep_about_1_minus_p():
  masks = methods.dare_keep_masks(seed=9, path="layer/w", shape=(256, 256), n_experts=2, drop_rate=0.8)
  assert abs(masks[0].mean() - 0.2) < 0.01 and not np.array_equal(masks[0], masks[1])
  again = methods.dare_keep_masks(seed=9, path="layer/w", shape=(256, 256), n_experts=2, drop_rate=0.8)
  np.testing.assert_array_equal(masks[1], again[1])
  other = methods.dare_keep_masks(seed=9, path="layer/v", shape=(256, 256), n_experts=2, drop_rate=0.8)
  assert not np.array_equal(masks[0], other[0])


def _fmix32_np(h):
  h = h.astype(np.uint64)
  h ^= h >> 16
  h = (h * 0x85EBCA6B) & 0xFFFFFFFF
  h ^= h >> 13
  h = (h * 0xC2B2AE35) & 0xFFFFFFFF
  return h ^ (h >> 16)


def test_dare_masks_follow_the_documented_hash_and_experts_are_independent():
  """docs/MERGING.md: keep_t = fmix32(P(r, c) + k_t) >= ceil(p 2^24) 2^8, P(r, c) = fmix32(fmix32(r + a0)
  ^ (c 0x9E3779B9 + a1)), (a0, a1) = words of fold_in(key(seed), path hash), k_t = word 0 of fold_in(., t)."""
  from mergejax.tree import stable_path_hash  # pylint: disable=g-import-not-at-top
  seed, path, shape, p = 7, "blocks/0/mlp/kernel", (6, 5, 4), 0.7
  leaf = jax.random.fold_in(jax.random.key(seed), stable_path_hash(path))
  a = np.asarray(jax.random.key_data(leaf)).astype(np.uint64).reshape(-1)
  r = np.arange(shape[0], dtype=np.uint64)[:, None]
  c = np.arange(shape[1] * shape[2], dtype=np.uint64)[None, :]
  pos = _fmix32_np(_fmix32_np((r + a[0]) & 0xFFFFFFFF) ^ ((c * 0x9E3779B9 + a[-1]) & 0xFFFFFFFF))
  cut = int(np.ceil(np.float32(p) * np.float32(2.0**24))) << 8
  masks = methods.dare_keep_masks(seed=seed, path=path, shape=shape, n_experts=3, drop_rate=p)
  for t in range(3):
    k = np.uint64(np.asarray(jax.random.key_data(jax.random.fold_in(leaf, t))).reshape(-1)[0])
    want = _fmix32_np((pos + k) & 0xFFFFFFFF) >= cut
    np.testing.assert_array_equal(masks[t], want.reshape(shape))
  big = methods.dare_keep_masks(seed=1, path="w", shape=(512, 512), n_experts=4, drop_rate=0.5)
  for i in range(4):
    for j in range(i + 1, 4):  # P(both kept) = 1/4 for independent masks; sd ~ 0.0008 here
      assert abs(float(np.mean(big[i] & big[j])) - 0.25) < 0.005


def test_randomness_independent_of_other_leaves_and_leaf_order():
  rng = np.random.default_rng(5)
  shared = rng.normal(size=(16, 8)).astype(np.float32)
  tree_a = {"a": rng.normal(size=(4,)).astype(np.float32), "shared": shared}
  tree_b = {"shared": shared, "zz": rng.normal(size=(3, 3)).astype(np.float32), "b": np.float32(1.0)}
  exp_a = [{k: v + 0.1 for k, v in tree_a.items()} for _ in range(2)]
  exp_b = [{k: v + 0.1 for k, v in tree_b.items()} for _ in range(2)]
  m = methods.dare_linear(drop_rate=0.5)
  np.testing.assert_array_equal(mergejax.merge(tree_a, exp_a, m, seed=3)["shared"],
                                mergejax.merge(tree_b, exp_b, m, seed=3)["shared"])
  assert not np.array_equal(mergejax.merge(tree_a, exp_a, m, seed=3)["shared"],
                            mergejax.merge(tree_a, exp_a, m, seed=4)["shared"])


@pytest.mark.parametrize("name,hp", ALL_METHODS)
def test_identical_on_1_and_8_devices_with_sharded_leaves(name, hp):
  assert len(jax.devices()) == 8, "tests/conftest.py forces 8 CPU devices"
  base, experts = make_models(seed=6, n_experts=3, dtype=np.float32)
  base["big"] = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
  for i, e in enumerate(experts):
    e["big"] = base["big"] + np.float32(0.01 * (i + 1)) * np.sign(base["big"])
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))

  def shard(tree):
    def put(x):
      x = np.asarray(x)
      axis = next((i for i, d in enumerate(x.shape) if d % 8 == 0), None)
      spec = P(*[("x" if i == axis else None) for i in range(x.ndim)])
      return jax.device_put(x, NamedSharding(mesh, spec))
    return jax.tree.map(put, tree)

  method = methods.get(name, **hp)
  one = mergejax.merge(base, experts, method, seed=7)
  eight = mergejax.merge(shard(base), [shard(e) for e in experts], method, seed=7)
  assert eight["big"].sharding.num_devices == 8
  equal_trees(one, eight)
  equal_trees(one, mergejax.merge(base, experts, method, seed=7))  # and across runs


# ------------------------------------------------------------------------------------------ bad input


def test_structure_shape_and_dtype_mismatches_name_the_leaf():
  base = {"a": np.zeros((2, 3), np.float32), "b": {"c": np.zeros((4,), np.float32)}}
  cases = [
      ({"a": np.zeros((2, 3), np.float32)}, "leaf 'b/c' is in base but missing from expert 1"),
      ({**base, "extra": np.zeros(1, np.float32)}, "leaf 'extra' is in expert 1 but not in base"),
      ({"a": np.zeros((3, 2), np.float32), "b": base["b"]}, "leaf 'a' has shape (3, 2), base has (2, 3)"),
      ({"a": np.zeros((2, 3), np.float16), "b": base["b"]}, "leaf 'a' has dtype float16, base has float32"),
  ]
  for expert, message in cases:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
      mergejax.merge(base, [base, expert], "task_arithmetic")
  with pytest.raises(ValueError, match="expert 1: leaf 'b/c'"):
    mergejax.merge(base, [base, {"a": base["a"]}], "task_arithmetic")


@pytest.mark.parametrize("call,message", [
    (lambda: methods.ties(density=0.0), r"density=0.0 is out of range: allowed \(0.0, 1.0\]"),
    (lambda: methods.ties(density=1.5), r"density=1.5 is out of range"),
    (lambda: methods.dare_linear(drop_rate=1.0), r"drop_rate=1.0 is out of range: allowed \[0.0, 1.0\)"),
    (lambda: methods.dare_ties(drop_rate=-0.1), r"drop_rate=-0.1 is out of range"),
    (lambda: methods.task_arithmetic(lam=float("nan")), r"lam=nan is out of range"),
    (lambda: methods.ties(scope="row"), r"scope='row' is not allowed: choose one of \['global', 'tensor'\]"),
    (lambda: methods.ties(sign="mass"), r"sign='mass' is not allowed"),
    (lambda: methods.ties(aggregate="max"), r"aggregate='max' is not allowed"),
    (lambda: methods.average(weights=[1, -1]), r"weights=\[1, -1\] is out of range"),
    (lambda: methods.dare_linear(rescale="yes"), r"rescale='yes' must be True or False"),
    (lambda: methods.get("frankenmerge"), r"unknown merge method 'frankenmerge'"),
    (lambda: methods.get("ties", k=20), r"unknown hyperparameter 'k' for merge method 'ties'"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_weights_length_and_missing_base_are_checked():
  base, experts = make_models(seed=8, n_experts=2, dtype=np.float32)
  with pytest.raises(ValueError, match="weights has 3 entries but there are 2 experts"):
    mergejax.merge(base, experts, methods.task_arithmetic(weights=[1, 1, 1]))
  with pytest.raises(ValueError, match="task_arithmetic needs a base model"):
    mergejax.merge(None, experts, "task_arithmetic")
  with pytest.raises(ValueError, match="at least one expert"):
    mergejax.merge(base, [], "average")


def test_registry_names_and_hparams():
  assert {"average", "task_arithmetic", "ties", "dare_linear", "dare_ties"} <= set(methods.names())
  for name in methods.names():
    assert methods.hparam_names(name) == [hp.name for hp in methods.schema(name)]
  m = methods.get("ties", density=0.2)
  assert m.hparams["density"] == 0.2 and m.hparams["scope"] == "global"  # unset: the factory's default
  assert "lam=0.5" in repr(methods.task_arithmetic(lam=0.5))


def test_host_key_words_equal_jax_threefry_fold_in():
  """MergeMethod.context derives DARE's key words on the host (no threefry in the kernels): bitwise
  jax.random.fold_in's, for extreme seeds and path hashes too."""
  from mergejax.methods import base as base_lib  # pylint: disable=g-import-not-at-top
  for seed, ph in [(0, 0), (7, 123456789), (2**32 - 1, 2**32 - 1), (1, 2**31)]:
    leaf = jax.random.fold_in(jax.random.key(np.uint32(seed)), np.uint32(ph))
    want = [int(x) for x in np.asarray(jax.random.key_data(leaf)).reshape(-1)]
    want += [int(np.asarray(jax.random.key_data(jax.random.fold_in(leaf, t))).reshape(-1)[0]) for t in range(3)]
    assert [int(x) for x in base_lib.dare_key_words(seed, ph, 3)] == want


@pytest.mark.parametrize("shape", [(7, 13), (1000,), (3, 4, 5), (40, 300)])
def test_flat_chunk_hashes_equal_the_leaf_hash(shape):
  """A flat chunk told its (row, column) and row length D hashes exactly as the leaf does at those
  entries (chunks that start mid-row, span several rows, run past the leaf's end); row blocks told
  their first row likewise."""
  from mergejax.methods import steps  # pylint: disable=g-import-not-at-top
  n_exp = 2
  ctx = methods.dare_linear(drop_rate=0.5).context(n_exp, 5, "layer/w")
  leaf = [np.asarray(h).reshape(-1) for h in steps.dare_hashes(ctx, shape, n_exp)]
  n = int(np.prod(shape))
  d = n if len(shape) == 1 else n // shape[0]
  hashes = jax.jit(steps.dare_hashes, static_argnums=(1, 2))
  for start, size in [(0, 64), (5, 64), (n - 10, 64), (n // 3, 4096)]:
    m = min(size, n - start)
    for t, h in enumerate(hashes(ctx.in_window(start // d, start % d, d), (size,), n_exp)):
      np.testing.assert_array_equal(np.asarray(h)[:m], leaf[t][start:start + m])
  if len(shape) > 1:
    r0 = shape[0] // 2
    for t, h in enumerate(hashes(ctx.in_window(r0), (shape[0] - r0, *shape[1:]), n_exp)):
      np.testing.assert_array_equal(np.asarray(h).reshape(-1), leaf[t][r0 * d:])


def test_per_leaf_lam_reaches_each_leaf():
  """Per-leaf hyperparameters (the hook for per-layer gradients, tensor-name filters, depth scaling):
  task arithmetic with lam by leaf path equals the per-leaf formula, on whole leaves and flat chunks."""
  base, experts = make_models(seed=12, n_experts=2, dtype=np.float32)
  lam_of = lambda path: {"lam": 0.25} if "mlp" in path else {"lam": 1.5} if path == "embed" else {}  # noqa: E731
  method = methods.task_arithmetic(lam=0.5).with_leaf_hparams(lam_of)
  b, es = flat(base), [flat(e) for e in experts]
  for mesh in (None, mergejax.sharding.make_mesh(jax.devices()[:1])):
    out = flat(mergejax.merge(base, experts, method, mesh=mesh))
    for k in b:
      lam = lam_of(k).get("lam", 0.5)
      want = ref.task_arithmetic({k: b[k]}, [{k: e[k]} for e in es], lam=lam)[k]
      np.testing.assert_allclose(out[k], want, rtol=1e-6, atol=1e-7, err_msg=k)
  with pytest.raises(ValueError, match="hyperparameter 'density' cannot vary by leaf"):
    mergejax.merge(base, experts, methods.task_arithmetic().with_leaf_hparams(lambda p: {"density": 0.1}))
