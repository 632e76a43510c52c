r"""Per-leaf Gram statistics: for methods whose merged leaf is a linear combination of its input vectors
with coefficients set by their inner products (SLERP, NuSLERP, Multi-SLERP, the Karcher mean, Model
Stock), one statistics pass measures the Gram matrix :math:`G_{st} = \langle v_s, v_t\rangle` of each
leaf, and the merge itself is elementwise: the engine then runs it in flat chunks (one compiled kernel
for every leaf shape) instead of a whole-leaf program per leaf shape.

Each inner product is summed in float32 over blocks of :data:`BLOCK` entries, the block sums in float64
on the host, and rounded to float32 once: the same value whether the engine measures a leaf whole or in
pieces that start at multiples of :data:`BLOCK` (its flat chunks do), on any device count.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import kernels
from mergejax.methods.base import Array, LeafPass, f32

BLOCK = 256
MODES = ("inputs", "task_vectors")


def vectors(base: Array | None, experts: tuple[Array, ...], mode: str) -> list[Array]:
  """The vectors a method combines, in float32: ``"inputs"``, the base (when given) then the experts;
  ``"task_vectors"``, the experts minus the base (the experts themselves without one)."""
  if mode == "inputs":
    return [f32(x) for x in ((base,) if base is not None else ()) + tuple(experts)]
  b = None if base is None else f32(base)
  return [f32(e) if b is None else f32(e) - b for e in experts]


def blocked(x: Array) -> Array:
  """``x`` flattened, zero-padded to a multiple of :data:`BLOCK` and cut into rows of that many entries."""
  x = x.reshape(-1)
  return jnp.pad(x, (0, (-x.size) % BLOCK)).reshape(-1, BLOCK)


@functools.partial(jax.jit, static_argnames=("mode",))
def _gram_blocks(base, experts, ctx, *, mode):
  """float32[P, B]: the block sums of :math:`v_s v_t` for each pair s <= t, B blocks of the piece (one
  variadic reduction: every product is summed in the one pass over the inputs)."""
  del ctx
  vs = [blocked(v) for v in vectors(kernels.whole(base), tuple(kernels.whole(e) for e in experts), mode)]
  products = tuple(vs[s] * vs[t] for s in range(len(vs)) for t in range(s, len(vs)))
  zero = jnp.zeros((), jnp.float32)
  sums = jax.lax.reduce(products, (zero,) * len(products), lambda x, y: tuple(a + b for a, b in zip(x, y)), (1,))
  return jnp.stack(sums)


def gram_stats(mode: str) -> Callable[[LeafPass, int, dict[str, tuple[int, ...]]], dict[str, Any]]:
  """``compute_stats`` giving each float leaf ``{"gram": float32[N, N]}`` of its :func:`vectors`."""
  if mode not in MODES:
    raise ValueError(f"gram statistics of {mode!r}: one of {list(MODES)}")

  def compute_stats(leaf_pass: LeafPass, n_experts: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    del n_experts, shapes
    out = {}
    for p, blocks in leaf_pass(functools.partial(_gram_blocks, mode=mode)).items():
      sums = np.asarray(blocks, np.float64).sum(axis=-1)
      n = int(round((np.sqrt(8 * len(sums) + 1) - 1) / 2))
      g = np.zeros((n, n), np.float64)
      g[np.triu_indices(n)] = sums
      g = g + np.triu(g, 1).T
      out[p] = {"gram": g.astype(np.float32)}
    return out

  return compute_stats


def gram_like(mode: str) -> Callable[[int, bool], dict[str, jax.ShapeDtypeStruct]]:
  """``stats_like`` of :func:`gram_stats`: ``{"gram": float32[N, N]}`` for the N vectors of ``mode``."""
  if mode not in MODES:
    raise ValueError(f"gram statistics of {mode!r}: one of {list(MODES)}")

  def stats_like(n_experts: int, has_base: bool) -> dict[str, jax.ShapeDtypeStruct]:
    n = n_experts + int(has_base and mode == "inputs")
    return {"gram": jax.ShapeDtypeStruct((n, n), jnp.float32)}

  return stats_like


def norms(gram: Array) -> Array:
  """float32[N]: the vectors' norms, from their Gram matrix."""
  return jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))


def combine(xs: list[Array], coef: Array) -> Array:
  r""":math:`\sum_t c_t x_t` (per entry)."""
  return sum(coef[t] * x for t, x in enumerate(xs))
