"""The method contract: traits, the hyperparameter schema, and registration of a user's method."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mergejax
from mergejax import methods
from tests.test_methods import flat, make_models


def test_every_builtin_declares_traits_and_a_schema_that_builds_it():
  for name in methods.names():
    schema = methods.schema(name)
    m = methods.get(name, **{hp.name: hp.default for hp in schema})
    assert isinstance(m.traits, methods.Traits) and m.name == name
    assert list(m.hparams) == [hp.name for hp in schema] == methods.hparam_names(name)
    assert methods.formula(name)
    for hp in schema:
      assert hp.doc and hp.check(hp.default) == hp.default, (name, hp)


def test_declared_statistics_structure_is_what_compute_stats_returns():
  """A method's ``stats_like`` (which lets an engine compile the merge kernel before the statistics are
  measured) has the structure, shapes and dtypes of every leaf's statistics."""
  from tests.test_methods_counting import ArrayPass  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  shapes = {"a": (16, 8), "b": (24,)}
  base = {p: rng.normal(size=s).astype(np.float32) for p, s in shapes.items()}
  declared = 0
  for name in methods.names():
    schema = methods.schema(name)
    m = methods.get(name, **{hp.name: hp.default for hp in schema})
    if m.stats_like is None:
      continue
    n = m.traits.max_experts or 3
    experts = [{p: v + rng.normal(size=v.shape).astype(np.float32) for p, v in base.items()} for _ in range(n)]
    got = m.compute_stats(ArrayPass(base, experts, m.context(n, 0, "x")), n, shapes)
    want = jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), m.stats_like(n, True))
    for p in shapes:
      assert jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), got[p]) == want, (name, p)
    declared += 1
  assert declared >= 5  # slerp, nuslerp, multislerp, karcher, model_stock


@pytest.mark.parametrize("name,hp,stochastic,position_keyed", [
    ("average", {}, False, False), ("task_arithmetic", {}, False, False), ("ties", {}, False, False),
    ("dare_linear", {"drop_rate": 0.5}, True, True), ("dare_linear", {"drop_rate": 0.0}, False, False),
    ("dare_ties", {"drop_rate": 0.5}, True, True), ("dare_ties", {"drop_rate": 0.0}, False, False)])
def test_stochastic_trait_says_whether_the_seed_matters(name, hp, stochastic, position_keyed):
  base, experts = make_models(seed=4, n_experts=2, dtype=np.float32)
  m = methods.get(name, **hp)
  assert (m.traits.stochastic, m.traits.position_keyed) == (stochastic, position_keyed)
  a, b = (flat(mergejax.merge(base if m.traits.uses_base else None, experts, m, seed=s)) for s in (0, 1))
  assert any(not np.array_equal(a[k], b[k]) for k in a) == stochastic


@pytest.mark.parametrize("name,hp", [("task_arithmetic", {}), ("ties", {"density": 0.4}),
                                     ("dare_ties", {"drop_rate": 0.3}), ("dare_linear", {"drop_rate": 0.3})])
def test_lam_scales_task_vector_trait_holds(name, hp):
  """theta(lam) - theta_0 = lam * (theta(1) - theta_0) for methods that declare it (float32 rounding)."""
  base, experts = make_models(seed=5, n_experts=3, dtype=np.float32)
  assert methods.get(name, **hp).traits.lam_scales_task_vector
  one = flat(mergejax.merge(base, experts, methods.get(name, **hp, lam=1.0), seed=2))
  half = flat(mergejax.merge(base, experts, methods.get(name, **hp, lam=0.5), seed=2))
  b = flat(base)
  for k in b:
    np.testing.assert_allclose(half[k] - b[k], 0.5 * (one[k] - b[k]), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name,hp", [("average", {}), ("task_arithmetic", {"lam": 0.3}),
                                     ("dare_linear", {"drop_rate": 0.0})])
def test_propagates_nonfinite_trait_holds(name, hp):
  base, experts = make_models(seed=6, n_experts=2, dtype=np.float32)
  m = methods.get(name, **hp)
  assert m.traits.propagates_nonfinite
  for bad in (np.nan, np.inf):
    experts[1]["embed"] = experts[1]["embed"].copy()
    experts[1]["embed"][3, 2] = bad
    out = mergejax.merge(base if m.traits.uses_base else None, experts, m, allow_nonfinite=True)
    assert not np.isfinite(np.asarray(out["embed"])[3, 2])


@pytest.mark.parametrize("name", [n for n in methods.names() if methods.get(n).traits.base_is_origin])
def test_base_is_origin_trait_holds(name):
  """A base given to a method that does not need one is the origin of the task vectors: merging with it is
  the base plus the merge of the experts' task vectors without it (float32 rounding)."""
  base, experts = make_models(seed=7, n_experts=2, dtype=np.float32)
  m = methods.get(name)
  assert not m.traits.uses_base
  with_base = flat(mergejax.merge(base, experts, m))
  b = flat(base)
  taus = [{k: v - b[k] for k, v in flat(e).items()} for e in experts]
  without = flat(mergejax.merge(None, taus, m))
  for k in b:
    np.testing.assert_allclose(with_base[k], b[k] + without[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_schema_ranges_and_choices():
  ties = {hp.name: hp for hp in methods.schema("ties")}
  assert ties["density"].type is float and ties["density"].default == 0.2
  assert ties["density"].allowed() == "(0.0, 1.0]" and ties["scope"].choices == ("global", "tensor")
  assert ties["sign"].choices == ("sum", "count")
  assert ties["weights"].type is tuple and ties["weights"].check([1, 2]) == (1.0, 2.0)
  rescale = {hp.name: hp for hp in methods.schema("dare_linear")}["rescale"]
  assert rescale.type is bool and rescale.default is True
  with pytest.raises(ValueError, match=r"density=0 is out of range: allowed \(0.0, 1.0\]"):
    ties["density"].check(0)


def test_a_registered_user_method_gets_schema_validation_and_merges():
  @methods.method_factory(formula="theta_0 + alpha * max_t tau_t", alpha=methods.number("scale", 0.0, 2.0))
  def max_delta(alpha: float = 1.0) -> methods.MergeMethod:
    def kernel(base, experts, ctx, stats, *, out_dtype):
      del ctx, stats
      b = base.astype(jnp.float32)
      return (b + alpha * functools.reduce(jnp.maximum, [e.astype(jnp.float32) - b for e in experts])).astype(out_dtype)

    return methods.MergeMethod(name="max_delta_test", hparams={"alpha": alpha}, traits=methods.Traits(),
                               kernel=jax.jit(kernel, static_argnames="out_dtype"))

  methods.register("max_delta_test", max_delta)
  methods.register("max_delta_test", max_delta)  # the same factory again: no error
  with pytest.raises(ValueError, match="already registered"):
    methods.register("max_delta_test", lambda: None)
  assert [hp.name for hp in methods.schema("max_delta_test")] == ["alpha"]
  assert methods.formula("max_delta_test") == "theta_0 + alpha * max_t tau_t"
  with pytest.raises(ValueError, match=r"alpha=3.0 is out of range: allowed \[0.0, 2.0\]"):
    methods.get("max_delta_test", alpha=3.0)
  base, experts = make_models(seed=7, n_experts=2, dtype=np.float32)
  out = flat(mergejax.merge(base, experts, "max_delta_test"))
  b, es = flat(base), [flat(e) for e in experts]
  for k in b:
    np.testing.assert_allclose(out[k], b[k] + np.maximum(es[0][k] - b[k], es[1][k] - b[k]), rtol=1e-6)


def test_undeclared_factory_schema_comes_from_its_signature():
  def plain(scale: float = 0.5, mode: str = "a"):
    """Plain factory without a declaration."""
    return methods.average()

  methods.register("plain_factory_test", plain)
  s = methods.schema("plain_factory_test")
  assert [(hp.name, hp.type, hp.default) for hp in s] == [("scale", float, 0.5), ("mode", str, "a")]
  assert methods.formula("plain_factory_test") == "Plain factory without a declaration."


def test_method_factory_requires_a_spec_and_default_for_every_argument():
  with pytest.raises(TypeError, match="no spec: \\['b'\\]"):
    @methods.method_factory(formula="x", a=methods.number("a"))
    def f(a: float = 1.0, b: float = 2.0):  # pylint: disable=unused-variable
      del a, b


@pytest.mark.parametrize("name,hp", [("average", {}), ("task_arithmetic", {}), ("ties", {"density": 0.3}),
                                     ("ties", {"scope": "tensor"}), ("dare_linear", {"drop_rate": 0.5}),
                                     ("dare_ties", {"drop_rate": 0.5})])
def test_library_refuses_nonfinite_inputs_by_default_naming_input_and_leaf(name, hp):
  """mergejax.merge shares mergejax-merge's default: a NaN/Inf input is refused (TIES and DARE-TIES
  would otherwise drop it silently), and the message names no command-line flag."""
  base, experts = make_models(seed=8, n_experts=2, dtype=np.float32)
  experts[1]["layer_1"]["mlp"]["w"] = experts[1]["layer_1"]["mlp"]["w"].copy()
  experts[1]["layer_1"]["mlp"]["w"][2, 3] = np.nan
  m = methods.get(name, **hp)
  with pytest.raises(mergejax.NonFiniteError) as e:
    mergejax.merge(base if m.traits.uses_base else None, experts, m)
  assert str(e.value) == "expert 1: leaf 'layer_1/mlp/w' contains NaN or Inf"
