"""CandidateMerger: one merged task vector per non-lam candidate group, the same params as direct merges."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mergejax
from mergejax import methods as methods_lib
from mergejax.study import candidates as candidates_lib


def _models(n=3, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"emb": (37, 16), "layer": {"w": (16, 48), "scale": (16,)}}
  mk = lambda: jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes,
                            is_leaf=lambda x: isinstance(x, tuple))
  base = mk()
  experts = [jax.tree.map(lambda b, d: b + 0.1 * d, base, mk()) for _ in range(n)]
  return base, experts


@pytest.mark.parametrize("name,grid,exact", [
    ("task_arithmetic", [{"lam": 0.3}, {"lam": 1.0}], True),
    ("ties", [{"density": 0.2, "lam": 0.7}, {"density": 0.2, "lam": 1.5}, {"density": 0.5, "lam": 1.0}], True),
    ("ties", [{"density": 0.3, "lam": 0.7, "scope": "tensor"}], True),  # per-leaf statistics: not flattened
    ("dare_ties", [{"drop_rate": 0.5, "lam": 0.7}, {"drop_rate": 0.8, "lam": 1.0}], False),
    ("dare_linear", [{"drop_rate": 0.5, "lam": 0.5}], False),
    ("average", [{}], True),
])
def test_candidates_equal_direct_merges(name, grid, exact):
  base, experts = _models()
  taus = candidates_lib.task_vectors(base, dict(enumerate(experts)))
  merger = candidates_lib.CandidateMerger(name, base, experts, list(taus.values()), seed=3)
  for hp in grid:
    got = jax.tree.map(np.asarray, merger(hp))
    want = jax.tree.map(np.asarray, mergejax.merge(base, experts, methods_lib.get(name, **hp), seed=3))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == w.dtype == np.float32
      if exact:
        np.testing.assert_array_equal(g, w)
      else:  # (lam * r) * g vs lam * (r * g): one float32 rounding of the product apart
        np.testing.assert_allclose(g, w, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(w).max())


@pytest.fixture
def merges(monkeypatch):
  """The methods mergejax.merge is called with (the study's one entry into the merge engine)."""
  calls = []
  real = mergejax.merge

  def spy(base, experts, method, **kwargs):
    calls.append(method)
    return real(base, experts, method, **kwargs)

  monkeypatch.setattr(mergejax, "merge", spy)
  return calls


def test_one_merge_per_group_of_lams(merges):
  base, experts = _models()
  taus = candidates_lib.task_vectors(base, dict(enumerate(experts)))
  merger = candidates_lib.CandidateMerger("ties", base, experts, list(taus.values()), seed=0)
  for hp in [{"density": 0.2, "lam": lam} for lam in (0.7, 1.0, 1.5)] + [{"density": 0.5, "lam": 1.0}]:
    merger(hp)
  assert [m.hparams["density"] for m in merges] == [0.2, 0.5]
  assert all(m.hparams["lam"] == 1.0 for m in merges)


def test_trees_with_integer_leaves_merge_directly():
  base, experts = _models()
  with_int = {**base, "step": np.int32(3)}
  assert candidates_lib.task_vectors(with_int, {0: with_int}) is None
  merger = candidates_lib.CandidateMerger("ties", base, experts, None, seed=0)
  assert not merger.factored(methods_lib.ties(density=0.2, lam=0.7))
  want = mergejax.merge(base, experts, methods_lib.ties(density=0.2, lam=0.7))
  for g, w in zip(jax.tree.leaves(merger({"density": 0.2, "lam": 0.7})), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_bfloat16_params_with_float32_task_vectors_equal_direct_merges():
  """bfloat16 models: float32 task vectors hold each difference exactly, so the candidates are the direct
  merges' bits (cast to bfloat16 as the kernels do); bfloat16 task vectors round each tau once (Task
  Arithmetic then differs from the direct merge by about that rounding)."""
  base, experts = _models()
  bf16 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), t)
  base, experts = bf16(base), [bf16(e) for e in experts]
  for dtype, name, hp in [("float32", "ties", {"density": 0.2, "lam": 0.7}),
                          ("float32", "task_arithmetic", {"lam": 0.7}),
                          ("bfloat16", "task_arithmetic", {"lam": 0.7})]:
    want = mergejax.merge(base, experts, methods_lib.get(name, **hp))
    taus = candidates_lib.task_vectors(base, dict(enumerate(experts)), dtype)
    assert {x.dtype for x in jax.tree.leaves(taus)} == {jnp.dtype(dtype)}
    got = candidates_lib.CandidateMerger(name, base, experts, list(taus.values()), seed=0)(hp)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == w.dtype == jnp.bfloat16
      g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
      if dtype == "float32":
        np.testing.assert_array_equal(g, w)
      else:  # |tau| <~ 0.5 here: one bfloat16 rounding of each of 3 taus, then one of the output
        np.testing.assert_allclose(g, w, rtol=2 ** -7, atol=3 * 0.7 * 2 ** -9)


_direct = mergejax.merge  # mergejax.merge itself, not the fixture's spy


def _scaled_sum(lam: float = 1.0):
  """A user's method: Task Arithmetic under its own name, declaring the same traits."""
  return dataclasses.replace(methods_lib.task_arithmetic(lam=lam), name="scaled_sum_test")


def test_a_registered_method_gets_the_shortcuts_its_traits_allow(merges):
  """A method registered under a new name that declares lam_scales_task_vector shares g across lams
  like the built-ins (the study never looks at a method's name)."""
  methods_lib.register("scaled_sum_test", _scaled_sum)
  base, experts = _models()
  taus = candidates_lib.task_vectors(base, dict(enumerate(experts)))
  merger = candidates_lib.CandidateMerger("scaled_sum_test", base, experts, list(taus.values()), seed=0)
  assert merger.factored(methods_lib.get("scaled_sum_test", lam=0.5))
  for lam in (0.3, 1.0):
    got = merger({"lam": lam})
    want = _direct(base, experts, methods_lib.task_arithmetic(lam=lam))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  assert len(merges) == 1  # one merge of g for both lams
