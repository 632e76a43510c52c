"""The steps task-vector methods are built from, each a pure elementwise function.

Notation: theta_0 the base leaf, theta_t expert t's leaf, tau_t = theta_t - theta_0 its task vector,
w_t >= 0 the expert weights. All math is float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from mergejax.methods.base import Array, LeafContext, f32


def rounded(x: Array, like: Array) -> Array:
  """``x`` (a product computed from ``like``) rounded to float32 on its own before any later addition.

  XLA:CPU contracts ``a * b + c`` into one fused multiply-add (one rounding), and rewrites division by
  a scalar into multiplication by its reciprocal; the reference implementations (official TIES, MergeLM,
  mergekit's task arithmetic and lambda) round the product, then the sum. The select on ``like``'s NaNs
  (where ``x`` is NaN too) is data-dependent, so XLA keeps ``x`` a value of its own: the same float
  operations as the references, bit for bit, at no measurable cost.
  """
  return jnp.where(jnp.isnan(like), like, x)


def task_vectors(base: Array, experts: Sequence[Array]) -> list[Array]:
  r""":math:`\tau_t = \theta_t - \theta_0` in float32."""
  b = f32(base)
  return [f32(e) - b for e in experts]


def _fmix32(h: Array) -> Array:
  """MurmurHash3's 32-bit finalizer: a bijective avalanche mix."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _position_hash(k0: Array, k1: Array, shape: tuple[int, ...], row_offset: Array | int = 0) -> Array:
  """uint32 counter-based hash of (key words k0, k1, global row, position in row) for every element.

  ``row_offset`` is the global row of the array's first row (a row block of a leaf hashes as those
  rows of the leaf).

  A function of the key's words and each element's global index only, computed with iotas:
  independent of sharding, device count and leaf order, and ~13x faster on XLA:CPU than threefry
  (which DARE's 100M-entry masks would otherwise spend most of their time in). The per-row part of
  the hash is computed once per row (materialized behind an optimization barrier, so that XLA does
  not re-derive it for every element).
  """
  if len(shape) <= 1:
    row_h = _fmix32(jnp.uint32(0) + jnp.uint32(row_offset) + k0)
    col = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) if shape else jnp.uint32(0)
  else:
    rows = jax.lax.broadcasted_iota(jnp.uint32, (shape[0],) + (1,) * (len(shape) - 1), 0) + jnp.uint32(row_offset)
    row_h = _fmix32(rows + k0)
    row_h = jax.lax.optimization_barrier(row_h)
    col = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for ax in reversed(range(1, len(shape))):
      col = col + jax.lax.broadcasted_iota(jnp.uint32, shape, ax) * jnp.uint32(stride % 2**32)
      stride *= shape[ax]
  return _fmix32(row_h ^ (col * jnp.uint32(0x9E3779B9) + k1))


def _flat_position_hash(k0: Array, k1: Array, n: int, row_offset: Array, col_offset: Array, row_len: Array) -> Array:
  """:func:`_position_hash` of the ``n`` consecutive entries of a 1-D flat chunk of a leaf seen as a
  (rows, D = ``row_len``) matrix, the first at (``row_offset``, ``col_offset``): the same values as
  the leaf's own hash at those entries, with D a traced scalar (one compiled kernel for every D).

  Entry i lies at q = col_offset + i entries past the start of row ``row_offset``: row
  ``row_offset + q // D``, column ``q % D``. The quotient is trunc(q * f32(1/D)), exact after one
  correction step either way (q < 2^24 is exact in float32 and the estimate is off by at most 1 for
  q / D < 2^22), in ops that vectorize on XLA:CPU (no integer division). The engine uses flat DARE
  chunks only for D < 2^22 and chunks of at most 2^22 entries.
  """
  q = jax.lax.iota(jnp.uint32, n) + jnp.uint32(col_offset)
  d = jnp.uint32(row_len)
  r = (q.astype(jnp.float32) * (jnp.float32(1.0) / d.astype(jnp.float32))).astype(jnp.int32)
  c = q.astype(jnp.int32) - r * d.astype(jnp.int32)
  r = jnp.where(c < 0, r - 1, jnp.where(c >= d.astype(jnp.int32), r + 1, r))
  c = jnp.where(c < 0, c + d.astype(jnp.int32), jnp.where(c >= d.astype(jnp.int32), c - d.astype(jnp.int32), c))
  rows = r.astype(jnp.uint32) + jnp.uint32(row_offset)
  return _fmix32(_fmix32(rows + k0) ^ (c.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + k1))


def dare_hashes(ctx: LeafContext, shape: tuple[int, ...], n_experts: int) -> list[Array]:
  r"""Each expert's uint32 DARE hash of every element of a leaf (or of the piece of it ``ctx`` says).

  :math:`h_t = \mathrm{fmix32}(p + k_t)` with :math:`p` = :func:`_position_hash` keyed by the leaf's
  key fold_in(key(seed), path_hash) (one hash of (row, position in row) shared by all experts) and
  :math:`k_t` the first word of :func:`mergejax.methods.base.leaf_key` (seed, leaf path, expert t);
  the key words come from the host (``ctx.dare_words``, :func:`mergejax.methods.base.dare_key_words`).
  Each :math:`h_t` has gone through two MurmurHash3 finalizer rounds, as a per-expert position hash
  would, at N + 1 instead of 2N rounds per element. A pure function of (seed, leaf path, expert
  index, global row, position in row): identical across runs, leaf orders, devices and leaf pieces.
  """
  words = ctx.dare_words
  p0, p1, ks = words[0], words[1], [words[2 + t] for t in range(n_experts)]
  window = ctx.window
  if window is not None and window.row_len is not None:  # a 1-D flat chunk of the leaf
    p = _flat_position_hash(p0, p1, math.prod(shape), window.row_offset, window.col_offset, window.row_len)
    p = p.reshape(shape)
  else:
    p = _position_hash(p0, p1, shape, 0 if window is None else window.row_offset)
  return [_fmix32(p + k) for k in ks]


def leaf_positions(ctx: LeafContext, shape: tuple[int, ...]) -> Array:
  """uint32 flat (row-major) position in its leaf of every entry of an array of ``shape``: the leaf
  itself, or the piece of it ``ctx`` says (a row block, or a 1-D flat chunk; see
  :meth:`~mergejax.methods.base.LeafContext.in_window`)."""
  flat = jax.lax.iota(jnp.uint32, math.prod(shape))
  window = ctx.window
  if window is not None:
    d = window.row_len if window.row_len is not None else math.prod(shape[1:])
    start = jnp.uint32(window.row_offset) * jnp.uint32(d)
    flat = flat + (start + jnp.uint32(window.col_offset) if window.col_offset is not None else start)
  return flat.reshape(shape)


def dare_keep(hashes: Sequence[Array], drop_rate: Array) -> list[Array]:
  r"""DARE's keep masks :math:`1 - m_t`, :math:`m_t \sim \mathrm{Bernoulli}(p)` elementwise (Yu et al., 2024).

  Keeps an element iff u = (h >> 8) 2^-24 >= p (a uniform draw of 24-bit resolution), evaluated
  exactly in integers: h >= ceil(p 2^24) 2^8 (p 2^24 is exact in float32).
  """
  cut = jnp.ceil(jnp.asarray(drop_rate, jnp.float32) * jnp.float32(2.0**24)).astype(jnp.uint32) << 8
  return [h >= cut for h in hashes]


def dare_drop_all(taus: Sequence[Array], ctx: LeafContext) -> list[Array]:
  """DARE's drop on each expert's task vector, masks from (seed, leaf path, expert index, position).

  DARE's rescale :math:`1/(1-p)` is the same factor for every expert and entry, so every method applies
  it once after aggregation (:func:`dare_rescale`): identical in exact arithmetic, and the TIES trim and
  sign vote then see unrounded values (an exact tie stays an exact tie).
  """
  keep = dare_keep(dare_hashes(ctx, tuple(taus[0].shape), len(taus)), ctx.drop_rate)
  return [jnp.where(k, tau, 0.0) for k, tau in zip(keep, taus)]


def dare_rescale(drop_rate: Array) -> Array:
  r"""The paper's exact rescale :math:`1/(1-p)` (mergekit instead matches each tensor's L1 norm)."""
  return 1.0 / (1.0 - drop_rate)


def magnitude_trim(tau: Array, threshold: Array) -> Array:
  r"""TIES trim: keep :math:`\tau` where :math:`|\tau| \ge` threshold (entries at the threshold are kept)."""
  return jnp.where(jnp.abs(tau) >= threshold, tau, 0.0)


def sign_vote(taus: Sequence[Array], weights: Array, sign: str, weighted: bool = True) -> Array:
  r"""TIES' vote before its sign is taken (the same float ops in every kernel and statistics pass).

  * ``"sum"`` (the paper's "mass"): :math:`v = \sum_t w_t \hat\tau_t`.
  * ``"count"``: :math:`v = \sum_t \mathrm{sgn}(w_t \hat\tau_t)`.

  ``weighted=False`` (all weights 1, known statically) skips the multiplies (bit-identical: x * 1 = x).
  """
  scaled = [weights[t] * tau for t, tau in enumerate(taus)] if weighted else list(taus)
  if sign == "sum":
    return sum(scaled)
  if sign == "count":
    return sum(jnp.sign(x) for x in scaled)
  raise ValueError(f"unknown sign rule {sign!r}")


def elect_positive(vote: Array, majority: Array) -> Array:
  r"""TIES sign election as a predicate: True where :math:`\gamma = +1`.

  :math:`\gamma = \mathrm{sgn}(v)`, and where the vote is exactly 0, ``majority`` (the official code's
  model-wide majority of elected signs for global scope; +1 for per-tensor scope, as mergekit).
  Written with compares rather than ``sign()`` and float products: they vectorize on XLA:CPU. A NaN
  vote elects neither sign (see :func:`disjoint_aggregate`).
  """
  return (vote > 0) | ((vote == 0) & (majority > 0))


def disjoint_aggregate(taus: Sequence[Array], weights: Array, vote: Array, positive: Array, aggregate: str,
                       weighted: bool = True) -> Array:
  r"""TIES disjoint merge over :math:`A = \{t : \mathrm{sgn}(\hat\tau_t) = \gamma\}` (non-zero entries only).

  * ``"mean"``: :math:`\sum_{t\in A} w_t\hat\tau_t / \max(\sum_{t \in A} w_t, \cdot)`, the divisor being the
    number of agreeing non-zero entries when unweighted (1 where none agree).
  * ``"sum"``: :math:`\sum_{t\in A} w_t \hat\tau_t`.

  ``positive`` is :func:`elect_positive` of ``vote``; where the vote is NaN nothing agrees (0).
  """
  agree = [jnp.where(positive, tau > 0, tau < 0) for tau in taus]  # zeros never agree
  num = sum(jnp.where(a, weights[t] * tau if weighted else tau, 0.0) for t, (a, tau) in enumerate(zip(agree, taus)))
  if aggregate == "sum":
    out = num
  elif aggregate == "mean":
    den = sum(jnp.where(a, weights[t] if weighted else 1.0, 0.0) for t, a in enumerate(agree))
    out = num / jnp.where(den > 0, den, 1.0)
  else:
    raise ValueError(f"unknown aggregate {aggregate!r}")
  return jnp.where(jnp.isnan(vote), 0.0, out)
