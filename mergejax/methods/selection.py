"""Rank-based selection within one leaf: the steps Breadcrumbs, DELLA and SCE are built from.

Every rank is *stable*: entries of equal value are ordered by their flat (row-major) position, the
lower position first. Selections therefore keep exactly the requested number of entries, and depend
only on the leaf's values and shape (not on sharding, device count or sort implementation).
"""

from __future__ import annotations

import jax.numpy as jnp

from mergejax.methods.base import Array


def _stable_rank_at(a_n: Array, sorted_n: Array, v: Array) -> Array:
  """For every entry equal to ``v``: its stable ascending rank (entries of a different value: junk).

  rank = #(a < v) + #(earlier entries equal to v).
  """
  less = jnp.searchsorted(sorted_n, v, side="left")
  eq = (a_n == v).astype(jnp.int32)
  return less.astype(jnp.int32) + jnp.cumsum(eq) - eq


def rank_band(a: Array, lo: Array, hi: Array) -> Array:
  """Boolean mask of the entries whose stable ascending rank r satisfies ``lo <= r < hi``.

  One sort of the leaf plus two prefix sums (only the entries equal to the values at ranks ``lo``
  and ``hi - 1`` need their position among equals). ``lo``/``hi`` may be traced; ``a`` must be free
  of NaN.
  """
  shape = a.shape
  a_n = a.reshape(-1)
  n = a_n.shape[0]
  if n == 0:
    return jnp.zeros(shape, bool)
  s_n = jnp.sort(a_n)
  lo = jnp.asarray(lo, jnp.int32)
  hi = jnp.asarray(hi, jnp.int32)
  v_lo = s_n[jnp.clip(lo, 0, n - 1)]
  v_hi = s_n[jnp.clip(hi - 1, 0, n - 1)]
  above = (a_n > v_lo) | ((a_n == v_lo) & (_stable_rank_at(a_n, s_n, v_lo) >= lo))
  below = (a_n < v_hi) | ((a_n == v_hi) & (_stable_rank_at(a_n, s_n, v_hi) < hi))
  keep = above & below & (lo < n) & (hi > 0)
  return keep.reshape(shape)


def top_k(a: Array, k: Array) -> Array:
  """Mask of the ``k`` largest entries (among equal values the lower flat positions first)."""
  return rank_band(-a, 0, k)


def row_ranks(a: Array) -> Array:
  """int32 stable ascending rank of each entry within its row along axis 1 (0 .. n - 1).

  Leaves of fewer than 2 dimensions are one row. This is mergekit's ``della_magprune`` ranking
  (``argsort(dim=1).argsort(dim=1)``), with ties ordered by position.
  """
  x = a.reshape(1, -1) if a.ndim < 2 else a
  perm = jnp.argsort(x, axis=1, stable=True)
  ranks = jnp.argsort(perm, axis=1, stable=True).astype(jnp.int32)
  return ranks.reshape(a.shape)


def l1_rescale(masked: Array, original: Array, eps: float = 1e-7) -> Array:
  r"""mergekit's norm-matching rescale: ``masked`` times :math:`\|x\|_1 / \|m \odot x\|_1` of the
  whole leaf, left as is where either norm is below ``eps`` (``sparsify.rescaled_masked_tensor``)."""
  before = jnp.sum(jnp.abs(original))
  after = jnp.sum(jnp.abs(masked))
  ok = (before >= eps) & (after >= eps)
  return jnp.where(ok, masked * (before / jnp.where(ok, after, 1.0)), masked)


