"""Every merge method against an independent float64 NumPy reference, on random pytrees of mixed
shapes (scalars, odd sizes) and dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import mergejax
from mergejax import methods
from mergejax.methods import threshold
from tests import numpy_reference as ref

SHAPES = {"embed": (37, 16), "layer_0/mlp/w": (16, 24), "layer_1/mlp/w": (16, 24), "layer_1/norm": (7,),
          "scalar": ()}


def _grid_values(rng, shape, scale):
  """Values on a 2^-12 grid, so that differences and sums of a few are exact in float32 and bf16."""
  return (np.round(rng.normal(size=shape) * scale * 4096) / 4096).astype(np.float64)


def make_models(seed: int, n_experts: int, dtype, delta_scale: float = 0.05):
  """Nested-dict base and experts; bf16/f16 values are coarse enough that tau is exact in float32."""
  rng = np.random.default_rng(seed)
  base, experts = {}, [{} for _ in range(n_experts)]
  for path, shape in SHAPES.items():
    b = _grid_values(rng, shape, 1.0)
    if dtype != np.float32:  # representable in 8 significant bits
      b = np.asarray(b.astype(dtype), np.float64)
    base[path] = b
    for e in experts:
      d = _grid_values(rng, shape, delta_scale)
      v = b + d
      e[path] = np.asarray(np.asarray(v).astype(dtype), np.float64)
  nest = lambda flat: _nest({p: np.asarray(v).astype(dtype) for p, v in flat.items()})
  return nest(base), [nest(e) for e in experts]


def _nest(flat):
  out = {}
  for path, v in flat.items():
    d = out
    *parents, leaf = path.split("/")
    for k in parents:
      d = d.setdefault(k, {})
    d[leaf] = v
  return out


def flat(tree):
  paths, leaves, _ = mergejax.tree.flatten(tree)
  return {p: np.asarray(x) for p, x in zip(paths, leaves)}


def masks_for(method_hp, base_flat, n, seed):
  return [dict(zip(base_flat, ms)) for ms in zip(*[
      methods.dare_keep_masks(seed, p, v.shape, n, method_hp["drop_rate"]) for p, v in base_flat.items()])]


def assert_close(out, expect, dtype):
  for p, e in expect.items():
    o = np.asarray(out[p], np.float64)
    assert out[p].dtype == np.dtype(dtype), p
    if dtype == np.float32:
      scale = max(np.max(np.abs(e)), 1e-30)
      err = np.max(np.abs(o - e)) / scale if e.size else 0.0
      assert err <= 1e-6, f"{p}: relative error {err:.3g}"
    else:  # within one ulp of the output dtype (plus float32 math error where the result cancels to ~0)
      scale = max(np.max(np.abs(e)), 1e-30) if e.size else 1.0
      exp = np.floor(np.log2(np.maximum(np.abs(e), ml_dtypes.finfo(dtype).tiny)))
      ulp = 2.0 ** (exp - (ml_dtypes.finfo(dtype).nmant))
      bad = np.abs(o - e) > ulp * (1 + 1e-9) + 1e-6 * scale
      assert not bad.any(), f"{p}: {bad.sum()} entries more than one ulp off, e.g. {o[bad][:3]} vs {e[bad][:3]}"


CASES = [
    ("average", {}),
    ("average", {"weights": (1.0, 2.0, 0.5)}),
    ("task_arithmetic", {"lam": 0.4}),
    ("task_arithmetic", {"lam": 1.3, "weights": (0.2, 1.0, 3.0)}),
    ("ties", {"density": 0.2}),
    ("ties", {"density": 0.35, "lam": 0.8, "scope": "tensor"}),
    ("ties", {"density": 0.5, "sign": "count", "aggregate": "sum"}),
    ("ties", {"density": 0.3, "weights": (1.0, 0.5, 2.0), "scope": "tensor", "sign": "count"}),
    ("ties", {"density": 1.0, "lam": 1.0}),
    ("dare_linear", {"drop_rate": 0.7, "lam": 0.5}),
    ("dare_linear", {"drop_rate": 0.3, "rescale": False, "weights": (1.0, 0.0, 2.0)}),
    ("dare_ties", {"drop_rate": 0.6}),
    ("dare_ties", {"drop_rate": 0.5, "density": 0.4, "scope": "tensor", "aggregate": "sum"}),
]


def expected(name, hp, base, experts, seed):
  b, ex = flat(base), [flat(e) for e in experts]
  if name == "average":
    return ref.average(ex, hp.get("weights"))
  if name == "task_arithmetic":
    return ref.task_arithmetic(b, ex, **hp)
  if name == "ties":
    return ref.ties(b, ex, **hp)
  masks = masks_for(hp, b, len(ex), seed)
  if name == "dare_linear":
    return ref.dare_linear(b, ex, masks, **hp)
  return ref.dare_ties(b, ex, masks, **hp)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_float64_reference(name, hp, dtype):
  base, experts = make_models(seed=len(hp) * 7 + len(name), n_experts=3, dtype=dtype)
  out = mergejax.merge(base, experts, methods.get(name, **hp), seed=11)
  assert_close(flat(out), expected(name, hp, base, experts, seed=11), dtype)


@pytest.mark.parametrize("name,hp", [("ties", {"density": 0.1}), ("ties", {"density": 0.25, "scope": "tensor"}),
                                     ("dare_ties", {"drop_rate": 0.5, "density": 0.3})])
def test_count_passes_match_reference(monkeypatch, name, hp):
  """Force the sampled (count-pass) threshold search on small data and compare with the reference."""
  monkeypatch.setattr(threshold, "SAMPLE_GLOBAL", 64)
  monkeypatch.setattr(threshold, "SAMPLE_TENSOR", 16)
  base, experts = make_models(seed=5, n_experts=4, dtype=np.float32)
  out = mergejax.merge(base, experts, methods.get(name, **hp), seed=3)
  assert_close(flat(out), expected(name, hp, base, experts, seed=3), np.float32)


def test_output_dtype_override_and_non_float_leaves():
  base, experts = make_models(seed=1, n_experts=2, dtype=np.float32)
  base["step"] = np.int32(7)
  base["buffers"] = {"count": np.arange(5, dtype=np.int64)}
  for e in experts:
    e["step"] = np.int32(99)
    e["buffers"] = {"count": np.arange(5, dtype=np.int64) * 3}
  out = mergejax.merge(base, experts, methods.task_arithmetic(lam=0.5), dtype=jnp.bfloat16)
  assert out["step"] is base["step"]
  assert out["buffers"]["count"] is base["buffers"]["count"]
  assert out["embed"].dtype == jnp.bfloat16
  exp = ref.task_arithmetic(flat(base), [flat(e) for e in experts], lam=0.5)["embed"]
  np.testing.assert_array_equal(np.asarray(out["embed"]), exp.astype(jnp.bfloat16))


def test_average_without_base():
  _, experts = make_models(seed=2, n_experts=3, dtype=np.float32)
  out = mergejax.merge(None, experts, "average")
  assert_close(flat(out), ref.average([flat(e) for e in experts]), np.float32)


def test_flax_linen_params_and_nnx_state():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(nn.Dense(5)(x)))

  x = jnp.ones((1, 4))
  params = [Mlp().init(jax.random.key(i), x)["params"] for i in range(3)]
  out = mergejax.merge(params[0], params[1:], methods.task_arithmetic(lam=0.5))
  assert jax.tree.structure(out) == jax.tree.structure(params[0])
  np.testing.assert_allclose(
      out["Dense_0"]["kernel"],
      params[0]["Dense_0"]["kernel"] + 0.5 * sum(p["Dense_0"]["kernel"] - params[0]["Dense_0"]["kernel"]
                                                 for p in params[1:]), rtol=1e-6)

  states = [nnx.state(nnx.Linear(4, 3, rngs=nnx.Rngs(i))) for i in range(3)]
  out = mergejax.merge(states[0], states[1:], methods.ties(density=1.0))
  assert isinstance(out, type(states[0]))
  expect = ref.ties(flat(states[0]), [flat(s) for s in states[1:]], density=1.0)
  assert_close(flat(out), expect, np.float32)


def test_one_compile_per_leaf_shape_and_none_for_new_hyperparameter_values():
  rng = np.random.default_rng(0)
  base = {f"layer_{i}": rng.normal(size=(24, 40)).astype(np.float32) for i in range(10)}
  experts = [{k: v + 0.01 for k, v in base.items()} for _ in range(2)]
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compiles.append(name) if name == "/jax/core/compile/backend_compile_duration" else None)
  mergejax.merge(base, experts, methods.task_arithmetic(lam=0.3))
  assert 1 <= len(compiles) <= 2  # the kernel (with its fused NaN/Inf flag), once for all 10 leaves
  compiles.clear()
  mergejax.merge(base, experts, methods.task_arithmetic(lam=0.7))  # new lam: no new compile
  assert compiles == []


def test_bf16_output_rounding_is_bit_identical_to_convert():
  """The engine's bf16 output cast (integer round-to-nearest-even) == XLA's f32 -> bf16 convert, for
  every class of float32: normals, halfway cases, subnormals, overflow to inf, infinities, NaN payloads."""
  from mergejax.engine.output import cast_output  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  special = np.asarray([0, 0x80000000, 1, 0x7FFF, 0x8000, 0x8001, 0x18000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,
                        0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0xFFC00001, 0x7FFFFFFF, 0x00800000,
                        0x007FFFFF, 0x3F808000, 0x3F818000, 0x3F80FFFF], np.uint32)
  bits = np.concatenate([rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32), special,
                         np.arange(1 << 16, dtype=np.uint32), np.arange(1 << 16, dtype=np.uint32) + 0x7F7F0000])
  x = jnp.asarray(bits.view(np.float32))
  got = np.asarray(jax.jit(lambda v: cast_output(v, jnp.bfloat16))(x)).view(np.uint16)
  want = np.asarray(jax.jit(lambda v: v.astype(jnp.bfloat16))(x)).view(np.uint16)
  np.testing.assert_array_equal(got, want)
