r"""Exact, fast counts of per-element predicates over large leaves on XLA:CPU (packed fold counting).

The statistics passes of TIES-style methods need many counts :math:`\#\{x : P_j(x)\}` per leaf (the
threshold search counts :math:`|\tau_t| \ge t_j` for several candidate thresholds, the sign balance
counts positive and negative elected signs). On XLA:CPU a reduction that is fused with its
elementwise producer runs as a scalar loop, ~10-50x slower than an elementwise pass over the same
data, and every extra predicate adds another such loop. Elementwise fusions, in contrast, vectorize
and run near memory speed. So counting is done in two elementwise stages and one small reduction:

1. **pack**: per element, the indicator of predicate j goes into byte ``j % 4`` of int32 word ``j // 4``
   (:math:`w = \sum_j [P_j] \ll 8 (j \bmod 4)`): one word carries 4 counters;
2. **fold**: runs of 8 consecutive entries along one axis are summed with elementwise adds of strided
   slices (:func:`fold8`), which XLA fuses into the producing loop, so the first stage writes 1/8 of
   the leaf per word; a second fold (in a separate executable, on the small array) makes it 1/64;
3. **unpack and reduce** the small array: each byte holds at most 64 < 256, so no counter overflows
   into its neighbour; bytes are summed in float32 along the last axis (exact: fewer than
   :math:`2^{24}` in every row sum) and then in int32.

Counts are int32 partials per leaf (split along the first axis for leaves of :math:`2^{31}` or more
entries) that callers sum on the host in Python integers. Leaves with no axis divisible by 8 use
a plain fused reduction (slower, equally exact).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from mergejax.methods.base import Array

FOLD = 8  # entries summed per fold: 8 strided slices still fuse into one XLA:CPU loop, 16 do not
FIELDS_PER_WORD = 4  # 8-bit counters per int32 word; each holds at most FOLD**2 = 64 after two folds


def fold_axis(local_shape: tuple[int, ...]) -> int | None:
  """The axis :func:`fold8` sums along (the first, else the last, whose per-device size is divisible
  by 8, so that folding never moves data between devices), or None."""
  if not local_shape:
    return None
  for ax in (0, len(local_shape) - 1):
    if local_shape[ax] % FOLD == 0:
      return ax
  return None


def local_shape(x: Array) -> tuple[int, ...]:
  """The per-device shard shape of a concrete array (its shape if unsharded or not a jax.Array)."""
  sharding = getattr(x, "sharding", None)
  if sharding is None:
    return tuple(x.shape)
  return tuple(sharding.shard_shape(tuple(x.shape)))


def fold8(x: Array, axis: int) -> Array:
  """Sums each run of 8 consecutive entries along ``axis`` (size divisible by 8) elementwise.

  Written as 8 strided slices added together, not as a reduce, so that XLA fuses it into the
  loop that produces ``x``. Runs are consecutive, so on an array sharded along ``axis`` (with shard
  sizes divisible by 8) every run stays on its device.
  """
  n = x.shape[axis]
  y = x.reshape(x.shape[:axis] + (n // FOLD, FOLD) + x.shape[axis + 1:])
  return sum(jax.lax.index_in_dim(y, s, axis + 1, keepdims=False) for s in range(FOLD))


def pack(indicators: Sequence[Array]) -> list[Array]:
  """int32 words holding the 0/1 ``indicators`` as byte counters, 4 to a word."""
  words = []
  for w in range(0, len(indicators), FIELDS_PER_WORD):
    group = indicators[w:w + FIELDS_PER_WORD]
    words.append(sum(ind.astype(jnp.int32) << (8 * i) for i, ind in enumerate(group)))
  return words


def _fold_all(x: Array, local: list[int], times: int) -> Array:
  """Up to ``times`` more folds, each along the first axis whose per-device size (``local``, updated
  in place) is still divisible by 8."""
  for _ in range(times):
    axis = next((ax for ax in range(x.ndim) if local[ax] % FOLD == 0), None)
    if axis is None:
      break
    x = fold8(x, axis)
    local[axis] //= FOLD
  return x


def _sum_partials(x: Array, total_size: int) -> Array:
  """int32 partial sums of a non-negative int32 array whose total is at most ``total_size``."""
  if x.ndim == 0:
    return x[None]
  if total_size < 2**31:
    return jnp.sum(x, dtype=jnp.int32)[None]
  return jnp.sum(x.reshape(x.shape[0], -1), axis=1, dtype=jnp.int32)  # per-first-axis partials


@functools.partial(jax.jit, static_argnames=("n_groups", "n_fields", "total_size", "local"))
def unpack_counts(words: tuple[Array, ...], *, n_groups: int, n_fields: int, total_size: int,
                  local: tuple[int, ...]) -> Array:
  """Once-folded packed words -> int32[n_groups, n_fields, P] partial counts.

  ``words`` holds, for each of ``n_groups`` groups in turn, the words of its ``n_fields`` byte
  counters (each <= 8 after one fold). One more fold keeps bytes <= 64; then the bytes are spread
  into 16-bit halves of two words and folded up to 3 more times (<= 8^5 = 32768 < 2^16), so that the
  final (slow on XLA:CPU) reductions see at most 1/32768 of the leaf. ``total_size`` is the leaf's
  entry count, for overflow-safe partials; ``local`` the words' per-device shape.
  """
  per_group = -(-n_fields // FIELDS_PER_WORD)
  assert len(words) == n_groups * per_group, (len(words), n_groups, per_group)
  out = []
  for g in range(n_groups):
    fields = []
    for w in words[g * per_group:(g + 1) * per_group]:
      loc = list(local)
      w = _fold_all(w, loc, 1)
      even = _fold_all(w & 0x00FF00FF, list(loc), 3)  # bytes 0 and 2 as 16-bit fields
      odd = _fold_all((w >> 8) & 0x00FF00FF, list(loc), 3)  # bytes 1 and 3
      fields += [even & 0xFFFF, odd & 0xFFFF, even >> 16, odd >> 16]
    out.append(jnp.stack([_sum_partials(f, total_size) for f in fields[:n_fields]]))
  return jnp.stack(out)


def code_dtype(bits: int):
  """The smallest unsigned dtype holding ``bits`` bits (<= 32)."""
  return jnp.uint8 if bits <= 8 else jnp.uint16 if bits <= 16 else jnp.uint32


def pack_codes(values: Sequence[Array], bits: int) -> tuple[Array, ...]:
  """Small non-negative integers (< 2^bits each, one array per group) packed ``32 // bits`` groups
  to a code array (uint8/16/32, the smallest that fits): one output array instead of one per group,
  which XLA:CPU writes much faster."""
  per = 32 // bits
  codes = []
  for i in range(0, len(values), per):
    chunk = values[i:i + per]
    dt = code_dtype(bits * len(chunk))
    codes.append(sum(v.astype(dt) << dt(bits * j) for j, v in enumerate(chunk)))
  return tuple(codes)


def _group_values(codes: tuple[Array, ...], n_groups: int, bits: int) -> list[Array]:
  per = 32 // bits
  out = []
  for g in range(n_groups):
    c = codes[g // per].astype(jnp.uint32)
    out.append((c >> jnp.uint32(bits * (g % per))) & jnp.uint32((1 << bits) - 1))
  return out


@functools.partial(jax.jit, static_argnames=("n_groups", "bits", "n_buckets", "axis"))
def _code_words(codes: tuple[Array, ...], *, n_groups: int, bits: int, n_buckets: int, axis: int) -> tuple[Array, ...]:
  """One-hot byte counters: value b adds 1 to byte b % 4 of word b // 4 (one shift per word)."""
  words = []
  for v in _group_values(codes, n_groups, bits):
    for w in range(-(-n_buckets // FIELDS_PER_WORD)):
      # shifts of 32 or more (and negative amounts, wrapped to huge unsigned ones) give 0 in XLA
      shift = (v - jnp.uint32(FIELDS_PER_WORD * w)) * jnp.uint32(8)
      words.append(fold8((jnp.uint32(1) << shift).astype(jnp.int32), axis))
  return tuple(words)


@functools.partial(jax.jit, static_argnames=("n_groups", "bits", "n_buckets"))
def _code_hist_plain(codes: tuple[Array, ...], *, n_groups: int, bits: int, n_buckets: int) -> Array:
  return jnp.stack([plain_counts([v == j for j in range(n_buckets)]) for v in _group_values(codes, n_groups, bits)])


def histograms(codes: Sequence[Array], n_groups: int, bits: int, n_buckets: int) -> Array:
  """int32[n_groups, n_buckets, P] partial counts of ``value_g == b`` for b < ``n_buckets``.

  ``codes`` are :func:`pack_codes` of ``n_groups`` small-integer arrays of ``bits`` bits each (e.g.
  each expert's bucket index, written by one vectorized elementwise pass); reading them costs a
  byte or two per entry and one shift per 4 buckets, so counting is cheap next to the pass that
  wrote them.
  """
  codes = tuple(codes)
  shape = tuple(codes[0].shape)
  local = local_shape(codes[0])
  axis = fold_axis(local)
  kw = dict(n_groups=n_groups, bits=bits, n_buckets=n_buckets)
  if axis is None:
    return _code_hist_plain(codes, **kw)
  words = _code_words(codes, axis=axis, **kw)
  local = local[:axis] + (local[axis] // FOLD,) + local[axis + 1:]
  return unpack_counts(words, n_groups=n_groups, n_fields=n_buckets, total_size=math.prod(shape), local=local)


def plain_counts(indicators: Sequence[Array]) -> Array:
  """int32[len(indicators), P] partial counts by plain reductions (leaves with no fold axis)."""
  out = []
  for ind in indicators:
    ind = ind.astype(jnp.int32)
    if ind.ndim == 0:
      out.append(ind[None])
      continue
    rows = jnp.sum(ind, axis=-1, dtype=jnp.int32)
    if ind.size < 2**31 or rows.ndim == 0:
      out.append(jnp.sum(rows, dtype=jnp.int32)[None])
    else:
      out.append(jnp.sum(rows.reshape(rows.shape[0], -1), axis=1, dtype=jnp.int32))
  return jnp.stack(out)
