"""Rank-based selection within one leaf: the steps Breadcrumbs, DELLA and SCE are built from.

Every rank is *stable*: entries of equal value are ordered by their flat (row-major) position, the
lower position first. Selections therefore keep exactly the requested number of entries, and depend
only on the leaf's values and shape (not on sharding, device count or sort implementation).

Order statistics of non-negative values are found without sorting, by a radix select over their
float32 bit patterns (whose unsigned order is the value order for values >= 0): two histograms of
16-bit digits; XLA:CPU sorts ~50x slower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods.base import Array


def _bits(a: Array) -> Array:
  """uint32 patterns of non-negative float32 values (ordered as the values; NaN above +inf)."""
  return jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.uint32)


def _kth_smallest(bits_n: Array, ks: tuple[Array, ...]) -> list[Array]:
  """The patterns of the k-th smallest entries (0-based), for each k of ``ks``: a two-level radix select,
  the top 16 bits from one histogram of all entries (shared by every k), the low 16 from a histogram of
  the entries that share them."""
  top = (bits_n >> 16).astype(jnp.int32)
  counts_hi = jnp.bincount(top, length=1 << 16)
  cum_hi = jnp.cumsum(counts_hi)
  out = []
  for k in ks:
    hi = jnp.sum(cum_hi <= k, dtype=jnp.int32)  # the bin holding rank k
    below = cum_hi[hi] - counts_hi[hi]  # entries in lower bins
    low = jnp.bincount((bits_n & jnp.uint32(0xFFFF)).astype(jnp.int32), weights=(top == hi).astype(jnp.int32),
                       length=1 << 16)
    lo = jnp.sum(below + jnp.cumsum(low) <= k, dtype=jnp.int32)
    out.append((hi.astype(jnp.uint32) << 16) | lo.astype(jnp.uint32))
  return out


def _position_of(eq_n: Array, m: Array) -> Array:
  """The flat position of the m-th (0-based) flagged entry, by the same radix select over positions
  (weighted histograms of their high and low 16 bits: no prefix sum over the leaf, which XLA:CPU runs
  ~4x slower); m >= the number flagged gives a position past the end."""
  n = eq_n.shape[0]
  pos = jax.lax.iota(jnp.int32, n)
  w = eq_n.astype(jnp.int32)
  counts_hi = jnp.bincount(pos >> 16, weights=w, length=(n >> 16) + 1)
  cum_hi = jnp.cumsum(counts_hi)
  hi = jnp.sum(cum_hi <= m, dtype=jnp.int32)
  below = jnp.where(hi < counts_hi.shape[0], cum_hi[jnp.minimum(hi, counts_hi.shape[0] - 1)]
                    - counts_hi[jnp.minimum(hi, counts_hi.shape[0] - 1)], 0)
  low = jnp.bincount(pos & 0xFFFF, weights=w * ((pos >> 16) == hi), length=1 << 16)
  lo = jnp.sum(below + jnp.cumsum(low) <= m, dtype=jnp.int32)
  return jnp.where(m < jnp.sum(w), (hi << 16) | lo, n)


def rank_band(a: Array, lo: Array, hi: Array) -> Array:
  """Boolean mask of the entries of ``a`` (>= 0) whose stable ascending rank r satisfies ``lo <= r < hi``.

  The values at ranks ``lo`` and ``hi - 1`` come from :func:`_kth_smallest`; only entries equal to them
  need their position among equals (:func:`_position_of`). ``lo``/``hi`` may be traced.
  """
  shape = a.shape
  bits = _bits(a).reshape(-1)
  n = bits.shape[0]
  if n == 0:
    return jnp.zeros(shape, bool)
  lo = jnp.asarray(lo, jnp.int32)
  hi = jnp.asarray(hi, jnp.int32)
  v_lo, v_hi = _kth_smallest(bits, (jnp.clip(lo, 0, n - 1), jnp.clip(hi - 1, 0, n - 1)))
  eq_lo, eq_hi = bits == v_lo, bits == v_hi
  # Entries equal to an edge value straddling the band: those at ranks below lo (the first lo - #(< v_lo)
  # of them by position) are out, as are those at ranks hi and above (past the first hi - #(< v_hi)).
  first_in = _position_of(eq_lo, lo - jnp.sum(bits < v_lo, dtype=jnp.int32))
  first_out = _position_of(eq_hi, hi - jnp.sum(bits < v_hi, dtype=jnp.int32))
  pos = jax.lax.iota(jnp.int32, n)
  above = (bits > v_lo) | (eq_lo & (pos >= first_in))
  below = (bits < v_hi) | (eq_hi & (pos < first_out))
  keep = above & below & (lo < n) & (hi > 0)
  return keep.reshape(shape)


def top_k(a: Array, k: Array) -> Array:
  """Mask of the ``k`` largest entries of ``a`` (>= 0); among equal values the lower flat positions first."""
  shape = a.shape
  bits = _bits(a).reshape(-1)
  n = bits.shape[0]
  if n == 0:
    return jnp.zeros(shape, bool)
  k = jnp.asarray(k, jnp.int32)
  v, = _kth_smallest(bits, (jnp.clip(n - k, 0, n - 1),))
  greater = jnp.sum(bits > v, dtype=jnp.int32)
  eq = bits == v
  keep = (bits > v) | (eq & (jax.lax.iota(jnp.int32, n) < _position_of(eq, k - greater)))
  return (keep & (k > 0)).reshape(shape)


def _row_ranks_host(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, axis=1, kind="stable")
  ranks = np.empty(x.shape, np.int32)
  np.put_along_axis(ranks, order, np.broadcast_to(
      np.arange(x.shape[1], dtype=np.int32).reshape((1, -1) + (1,) * (x.ndim - 2)), x.shape), axis=1)
  return ranks


def row_ranks(a: Array) -> Array:
  """int32 stable ascending rank of each entry within its row along axis 1 (0 .. n - 1).

  Leaves of fewer than 2 dimensions are one row. This is mergekit's ``della_magprune`` ranking
  (``argsort(dim=1).argsort(dim=1)``), with ties ordered by position. On CPU the sort runs in NumPy
  (a host callback: XLA:CPU sorts ~20x slower); elsewhere one XLA argsort and a scatter. Both give the
  same ranks.
  """
  x = a.reshape(1, -1) if a.ndim < 2 else a
  if jax.default_backend() == "cpu":
    ranks = jax.pure_callback(_row_ranks_host, jax.ShapeDtypeStruct(x.shape, jnp.int32), x,
                              vmap_method="sequential")
    return ranks.reshape(a.shape)
  perm = jnp.argsort(x, axis=1, stable=True)  # one sort; its inverse permutation by a scatter
  at = [jax.lax.broadcasted_iota(jnp.int32, x.shape, d) for d in range(x.ndim)]
  at[1] = perm
  ranks = jnp.zeros(x.shape, jnp.int32).at[tuple(at)].set(jax.lax.broadcasted_iota(jnp.int32, x.shape, 1),
                                                         unique_indices=True)
  return ranks.reshape(a.shape)


def l1_rescale(masked: Array, original: Array, eps: float = 1e-7) -> Array:
  r"""mergekit's norm-matching rescale: ``masked`` times :math:`\|x\|_1 / \|m \odot x\|_1` of the
  whole leaf, left as is where either norm is below ``eps`` (``sparsify.rescaled_masked_tensor``)."""
  before = jnp.sum(jnp.abs(original))
  after = jnp.sum(jnp.abs(masked))
  ok = (before >= eps) & (after >= eps)
  return jnp.where(ok, masked * (before / jnp.where(ok, after, 1.0)), masked)
