"""The merge-method value type and hyperparameter validation.

A method is a small immutable value in the spirit of optax: a factory closes over validated
hyperparameters and returns a :class:`MergeMethod` holding pure, jittable per-leaf functions.

* ``kernel(base, experts, ctx, leaf_stats) -> float32 merged leaf`` where ``experts`` is a *tuple* of
  arrays (not a stacked array: a reduction over a stacked expert axis is ~50x slower on XLA:CPU) and
  ``ctx`` is a :class:`LeafContext` of traced scalars (seed, leaf-path hash, hyperparameters), so one
  compiled kernel serves every leaf of the same shape and every hyperparameter value.
* ``compute_stats(leaf_pass, n_experts, shapes) -> {path: leaf_stats}`` (optional) for methods that need
  statistics over many leaves, e.g. TIES' model-wide top-k threshold. It only sees data through
  ``leaf_pass`` (see :class:`LeafPass`), which the engine implements by streaming leaf groups.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LeafContext:
  """Traced per-leaf inputs of a kernel.

  Attributes:
    seed: uint32 scalar, the merge seed.
    path_hash: uint32 scalar, :func:`mergejax.tree.stable_path_hash` of the leaf path.
    lam: float32 scalar, the task-vector scale (1 where unused).
    weights: float32[N], per-expert weights.
    drop_rate: float32 scalar, DARE drop probability (0 where unused).
    row_offset: uint32 scalar, the leaf row at which the arrays a kernel sees start (0 for whole
      leaves; an engine merging row blocks sets it so that DARE masks stay keyed by global rows).
    row_len: None for arrays shaped like the leaf (or row blocks of it); for 1-D flat chunks of the
      leaf seen as a (rows, D) matrix, uint32 D. The chunk's first entry is then at (row_offset,
      col_offset) (see :func:`mergejax.methods.steps.dare_hashes`).
    col_offset: uint32 scalar (with ``row_len``), the column of a flat chunk's first entry.
    dare_words: None, or uint32[2 + N]: the words (a0, a1) of fold_in(key(seed), path_hash) and the
      first word of fold_in(that key, t) for each expert t, computed on the host
      (:func:`dare_key_words`) so that kernels need no threefry.
  """

  seed: Array
  path_hash: Array
  lam: Array
  weights: Array
  drop_rate: Array
  row_offset: Array = np.uint32(0)
  row_len: Array | None = None
  col_offset: Array | None = None
  dare_words: Array | None = None


_M32 = 0xFFFFFFFF


def threefry2x32(k0: int, k1: int, x0: int, x1: int) -> tuple[int, int]:
  """Threefry-2x32 (20 rounds; Salmon et al., SC 2011) of one counter pair, in Python integers.

  Bit-identical to JAX's ``threefry2x32_p`` (tests/test_methods_properties.py checks it against
  ``jax.random.fold_in``); used to derive per-leaf DARE keys on the host without a compile.
  """
  rot = ((13, 15, 26, 6), (17, 29, 16, 24))
  ks = (k0 & _M32, k1 & _M32, (k0 ^ k1 ^ 0x1BD11BDA) & _M32)
  x0, x1 = (x0 + ks[0]) & _M32, (x1 + ks[1]) & _M32
  for i in range(5):
    for r in rot[i % 2]:
      x0 = (x0 + x1) & _M32
      x1 = x0 ^ (((x1 << r) | (x1 >> (32 - r))) & _M32)
    x0, x1 = (x0 + ks[(i + 1) % 3]) & _M32, (x1 + ks[(i + 2) % 3] + i + 1) & _M32
  return x0, x1


def dare_key_words(seed: int, path_hash: int, n_experts: int) -> np.ndarray:
  """uint32[2 + N]: the key words of :func:`leaf_key`'s derivation, computed on the host.

  (a0, a1) = key_data(fold_in(key(seed), path_hash)) and k_t = key_data(fold_in(that key, t))[0]
  (``jax.random.key(seed)`` of a 32-bit seed has words (0, seed); ``fold_in(k, d)`` is
  threefry2x32(k, (0, d))).
  """
  a = threefry2x32(0, int(seed) & _M32, 0, int(path_hash) & _M32)
  return np.asarray([*a, *(threefry2x32(a[0], a[1], 0, t)[0] for t in range(n_experts))], np.uint32)


def leaf_key(ctx: LeafContext, expert_index: int) -> Array:
  """PRNG key for (seed, leaf path, expert): fold_in(fold_in(key(seed), path_hash), t).

  A pure function of those three values: independent of leaf order, device count and sharding
  (``jax_threefry_partitionable`` is on by default in jax >= 0.5).
  """
  key = jax.random.key(ctx.seed)
  return jax.random.fold_in(jax.random.fold_in(key, ctx.path_hash), expert_index)


class LeafPass(Protocol):
  """Runs a jittable per-leaf function over every float leaf and returns host results by path.

  ``fn(base, experts, ctx, *args)`` must return a pytree of small arrays. ``args_for(path)`` gives
  the extra (array) arguments of each leaf, e.g. its current threshold bracket. Implemented by the
  engine (streaming, sharded) and by the in-memory path; methods never see files or meshes.
  """

  def __call__(self, fn: Callable[..., Any], args_for: Callable[[str], tuple] | None = None) -> dict[str, Any]:
    ...


@dataclasses.dataclass(frozen=True)
class MergeMethod:
  """A merge method with its hyperparameters closed over."""

  name: str
  hparams: Mapping[str, Any]
  uses_base: bool
  kernel: Callable[..., Array]
  compute_stats: Callable[[LeafPass, int, dict[str, tuple[int, ...]]], dict[str, Any]] | None = None
  # True when each leaf's statistics depend on that leaf alone (e.g. ties with scope="tensor"): an
  # engine may then compute them group by group while the group is resident, in one read.
  local_stats: bool = False
  lam: float = 1.0
  drop_rate: float = 0.0
  weights: tuple[float, ...] | None = None
  reference: str = ""

  def context(self, n_experts: int, seed: int, path_hash: int) -> LeafContext:
    weights = self.weights if self.weights is not None else (1.0,) * n_experts
    return LeafContext(
        seed=np.uint32(seed),
        path_hash=np.uint32(path_hash),
        lam=np.float32(self.lam),
        weights=np.asarray(weights, np.float32),
        drop_rate=np.float32(self.drop_rate),
        dare_words=dare_key_words(seed, path_hash, n_experts) if self.drop_rate else None,
    )

  def check_experts(self, n_experts: int) -> None:
    """Raises ValueError if the method cannot merge ``n_experts`` models."""
    if n_experts < 1:
      raise ValueError(f"{self.name}: need at least one expert, got {n_experts}")
    if self.weights is not None and len(self.weights) != n_experts:
      raise ValueError(f"{self.name}: weights has {len(self.weights)} entries but there are {n_experts} experts")

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
    return f"{self.name}({args})"


# --------------------------------------------------------------------------- hyperparameter checks


def check_fraction(name: str, value: Any, *, low: float, high: float, low_open: bool, high_open: bool) -> float:
  """Validates ``value`` in the interval and returns it as float; ValueError names the range."""
  lo_b, hi_b = ("(" if low_open else "["), (")" if high_open else "]")
  rng = f"{lo_b}{low}, {high}{hi_b}"
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"hyperparameter {name}={value!r} must be a number in {rng}") from None
  ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok or math.isnan(v):
    raise ValueError(f"hyperparameter {name}={value!r} is out of range: allowed {rng}")
  return v


def check_finite(name: str, value: Any) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"hyperparameter {name}={value!r} must be a finite number") from None
  if not math.isfinite(v):
    raise ValueError(f"hyperparameter {name}={value!r} is out of range: allowed any finite number")
  return v


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
  if value not in choices:
    raise ValueError(f"hyperparameter {name}={value!r} is not allowed: choose one of {list(choices)}")
  return value


def check_weights(value: Any) -> tuple[float, ...] | None:
  """None (all ones) or a non-empty sequence of finite, non-negative numbers, not all zero."""
  if value is None:
    return None
  try:
    w = tuple(float(x) for x in value)
  except (TypeError, ValueError):
    raise ValueError(f"hyperparameter weights={value!r} must be a sequence of numbers >= 0") from None
  if not w or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
    raise ValueError(f"hyperparameter weights={value!r} is out of range: allowed finite numbers >= 0, not all zero")
  return w


def check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"hyperparameter {name}={value!r} must be True or False")
  return bool(value)


def f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)
