r"""Exact counts of per-entry predicates over large leaves, fast on XLA:CPU (packed fold counting).

The engine's :meth:`~mergejax.methods.base.LeafPass.count` and ``histogram`` (statistics passes state
predicates; this module counts them). The statistics passes of TIES-style methods need many counts
:math:`\#\{x : P_j(x)\}` per leaf (the
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
import numpy as np

Array = jax.Array

FOLD = 8  # entries summed per fold: 8 strided slices still fuse into one XLA:CPU loop, 16 do not
FIELDS_PER_WORD = 4  # 8-bit counters per int32 word; each holds at most FOLD**2 = 64 after two folds
# Fused indicator counting (:func:`pack_fields`): 3-bit counters, 10 to a uint32 word, folded 4 entries
# at a time inside the pass that computes the indicators (each counter then holds at most 4).
FIELD_FOLD = 4
FIELD_BITS = 3
FIELDS_PER_WORD3 = 10


def _divisible_axis(local_shape: tuple[int, ...], m: int) -> int | None:
  """The first, else the last, axis whose per-device size is divisible by ``m``, or None."""
  if not local_shape:
    return None
  for ax in (0, len(local_shape) - 1):
    if local_shape[ax] % m == 0:
      return ax
  return None


def fold_axis(local_shape: tuple[int, ...]) -> int | None:
  """The axis :func:`fold8` sums along (the first, else the last, whose per-device size is divisible
  by 8, so that folding never moves data between devices), or None."""
  return _divisible_axis(local_shape, FOLD)


def local_shape(x: Array) -> tuple[int, ...]:
  """The per-device shard shape of a concrete array (its shape if unsharded or not a jax.Array)."""
  sharding = getattr(x, "sharding", None)
  if sharding is None:
    return tuple(x.shape)
  return tuple(sharding.shard_shape(tuple(x.shape)))


def fold_by(x: Array, axis: int, k: int) -> Array:
  """Sums each run of ``k`` consecutive entries along ``axis`` with elementwise adds of strided slices."""
  n = x.shape[axis]
  y = x.reshape(x.shape[:axis] + (n // k, k) + x.shape[axis + 1:])
  return sum(jax.lax.index_in_dim(y, s, axis + 1, keepdims=False) for s in range(k))


def fold8(x: Array, axis: int) -> Array:
  """Sums each run of 8 consecutive entries along ``axis`` (size divisible by 8) elementwise.

  Written as 8 strided slices added together, not as a reduce, so that XLA fuses it into the
  loop that produces ``x``. Runs are consecutive, so on an array sharded along ``axis`` (with shard
  sizes divisible by 8) every run stays on its device.
  """
  return fold_by(x, axis, FOLD)


def _fold_all(x: Array, local: list[int], times: int, lead: int = 0) -> Array:
  """Up to ``times`` more folds, each along the first axis whose per-device size (``local``, updated
  in place) is still divisible by 8; ``local`` describes the axes after the first ``lead`` ones."""
  for _ in range(times):
    axis = next((ax for ax in range(len(local)) if local[ax] % FOLD == 0), None)
    if axis is None:
      break
    x = fold8(x, lead + axis)
    local[axis] //= FOLD
  return x


def _sum_partials(x: Array, total_size: int, lead: int = 0) -> Array:
  """int32 partial sums, over the axes after the first ``lead``, of a non-negative int32 array whose
  totals are at most ``total_size``: shape ``x.shape[:lead] + (P,)``."""
  data = x.shape[lead:]
  if not data:
    return x[..., None]
  if total_size < 2**31:
    return jnp.sum(x, axis=tuple(range(lead, x.ndim)), dtype=jnp.int32)[..., None]
  return jnp.sum(x, axis=tuple(range(lead + 1, x.ndim)), dtype=jnp.int32)  # per-first-axis partials


@functools.partial(jax.jit, static_argnames=("n_groups", "n_fields", "total_size", "local"))
def unpack_counts(words: tuple[Array, ...], *, n_groups: int, n_fields: int, total_size: int,
                  local: tuple[int, ...]) -> Array:
  """Once-folded packed words -> int32[n_groups, n_fields, P] partial counts.

  ``words`` holds, for each of ``n_groups`` groups in turn, the words of its ``n_fields`` byte
  counters (each <= 8 after one fold). One more fold keeps bytes <= 64; then the bytes are spread
  into 16-bit halves of two words and folded up to 3 more times (<= 8^5 = 32768 < 2^16), so that the
  final (slow on XLA:CPU) reductions see at most 1/32768 of the leaf. After that fold the words are
  stacked (1/64 of the leaf), and every group and word is a slice of the same arrays: one program
  whose size does not grow with the group count (its compile stays short). ``total_size`` is the
  leaf's entry count, for overflow-safe partials; ``local`` the words' per-device shape.
  """
  per_group = -(-n_fields // FIELDS_PER_WORD)
  assert len(words) == n_groups * per_group, (len(words), n_groups, per_group)
  folded = []
  for word in words:
    loc = list(local)
    folded.append(_fold_all(word, loc, 1))  # ``loc``: the folded words' shape
  w = jnp.stack(folded).reshape((n_groups, per_group) + folded[0].shape)
  even = _fold_all(w & 0x00FF00FF, list(loc), 3, lead=2)  # bytes 0 and 2 as 16-bit fields
  odd = _fold_all((w >> 8) & 0x00FF00FF, list(loc), 3, lead=2)  # bytes 1 and 3
  fields = jnp.stack([even & 0xFFFF, odd & 0xFFFF, even >> 16, odd >> 16], axis=2)  # [G, W, 4, ...]
  fields = fields.reshape((n_groups, -1) + fields.shape[3:])[:, :n_fields]
  return _sum_partials(fields, total_size, lead=2)


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


# --------------------------------------------------------------------------- fused indicator counting


def field_fold_axis(local_shape: tuple[int, ...]) -> int | None:
  """The axis :func:`pack_fields` folds along (the first, else the last, whose per-device size is
  divisible by 4), or None (no fold: the counters then hold 0 or 1)."""
  return _divisible_axis(local_shape, FIELD_FOLD)


def pack_fields(indicators: Sequence[Array], axis: int | None) -> tuple[Array, ...]:
  """Boolean ``indicators`` as 3-bit counters, 10 to a uint32 word, folded 4 entries along ``axis``.

  Meant to be traced inside the jitted pass that computes the indicators: the packing and the fold
  fuse into that pass's loop, so it writes 1/4 of a uint32 per entry and 10 predicates instead of one
  array per predicate (no reduction is fused with the producer; see the module docstring). Up to 10
  indicators make one word and hence one XLA loop; more make several loops, each recomputing its
  inputs. With ``axis=None`` nothing is folded and each word is the smallest unsigned dtype that holds
  it (uint8 for up to 3 indicators): for passes that XLA:CPU stops vectorizing when a fold is fused in
  (those that hash DARE masks). Count the result with :func:`count_fields`.
  """
  words = []
  for w in range(0, len(indicators), FIELDS_PER_WORD3):
    group = indicators[w:w + FIELDS_PER_WORD3]
    # Unfolded words (0/1 counters) use the smallest dtype that holds them (a byte for <= 3 fields).
    dt = jnp.uint32 if axis is not None else code_dtype(FIELD_BITS * (len(group) - 1) + 1)
    word = sum(ind.astype(dt) << dt(FIELD_BITS * i) for i, ind in enumerate(group))
    words.append(fold_by(word, axis, FIELD_FOLD) if axis is not None else word)
  return tuple(words)


def packed_local_shape(local: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
  """The per-device shape of :func:`pack_fields`' words for leaves of per-device shape ``local``."""
  if axis is None:
    return tuple(local)
  return local[:axis] + (local[axis] // FIELD_FOLD,) + local[axis + 1:]


_EVEN_FIELDS = sum(7 << (2 * FIELD_BITS * j) for j in range(FIELDS_PER_WORD3 // 2))  # 3-bit fields 0, 2, ..., 8


@functools.partial(jax.jit, static_argnames=("n_fields", "total_size", "local"))
def count_fields(words: tuple[Array, ...], *, n_fields: int, total_size: int, local: tuple[int, ...]) -> Array:
  """:func:`pack_fields` words -> int32[n_fields, P] partial counts of each indicator.

  Each word's even and odd 3-bit counters (<= 4) are split apart into 6-bit slots while 8 more entries
  are folded (one elementwise loop per parity, <= 32 per slot); slots then go in pairs into the 16-bit
  halves of a word while folding 3 more times (<= 32 * 8^3 = 16384 < 2^16), so only ~1/2^17 of the
  leaf reaches the final (slow, scalar) reductions. Each fold applies its extraction to the strided
  slices it adds (:func:`_fold_map`): XLA then fuses it into the fold's loop. ``total_size`` is the leaf's
  entry count (overflow-safe partials), ``local`` the words' per-device shape.
  """
  xs, loc = [], list(local)
  for w in words:
    for parity in (0, 1):
      def split(x, parity=parity):
        x = x.astype(jnp.uint32)
        return ((x >> jnp.uint32(FIELD_BITS * parity)) & jnp.uint32(_EVEN_FIELDS)).astype(jnp.int32)
      loc = list(local)
      xs.append(_fold_map(split, w, loc))  # 6-bit slots, <= 32 each
  # Every (word, parity) as one slice of a stack (1/8 of the leaf each): one program whose size does
  # not grow with the number of words (its compile stays short).
  x = jnp.stack(xs)
  slots = []
  for j in range(0, FIELDS_PER_WORD3 // 2, 2):
    def halves(y, j=j):
      lo = (y >> (2 * FIELD_BITS * j)) & 63
      if j + 1 == FIELDS_PER_WORD3 // 2:
        return lo
      return lo | (((y >> (2 * FIELD_BITS * (j + 1))) & 63) << 16)
    loc2 = list(loc)
    h = _fold_all(_fold_map(halves, x, loc2, lead=1), loc2, 2, lead=1)  # 16-bit halves, <= 32 * 8^3 = 16384
    slots += [h & 0xFFFF] + ([h >> 16] if j + 1 < FIELDS_PER_WORD3 // 2 else [])
  slots = jnp.stack(slots, axis=1)  # [2 * words, 5, ...]: counters parity, parity + 2, ..., parity + 8
  at = [divmod(i, FIELDS_PER_WORD3) for i in range(n_fields)]
  fields = slots[np.asarray([2 * w + f % 2 for w, f in at]), np.asarray([f // 2 for _, f in at])]
  return _sum_partials(fields, total_size, lead=1)


def _fold_map(fn, x: Array, local: list[int], lead: int = 0) -> Array:
  """:func:`fold8` of ``fn(x)`` along the first axis whose per-device size (``local``, updated in
  place, of the axes after the first ``lead``) is divisible by 8, with ``fn`` applied to each strided
  slice (so that it fuses into the fold's loop rather than being materialized first); just ``fn(x)``
  if there is no such axis."""
  axis = next((ax for ax in range(len(local)) if local[ax] % FOLD == 0), None)
  if axis is None:
    return fn(x)
  local[axis] //= FOLD
  axis += lead
  n = x.shape[axis]
  y = x.reshape(x.shape[:axis] + (n // FOLD, FOLD) + x.shape[axis + 1:])
  return sum(fn(jax.lax.index_in_dim(y, s, axis + 1, keepdims=False)) for s in range(FOLD))


# --------------------------------------------------------------------------- the engine's count primitives


@functools.partial(jax.jit, static_argnames=("indicators", "axis"))
def _indicator_words(base, experts, ctx, args, valid, *, indicators, axis):
  inds = list(indicators(base, experts, ctx, *args))
  if valid is not None:  # a padded 1-D chunk: entries from ``valid`` on are padding and never counted
    keep = jax.lax.iota(jnp.int32, experts[0].shape[0]) < valid
    inds = [jnp.logical_and(ind, keep) for ind in inds]
  return pack_fields(inds, axis)


def count_indicators(base, experts, ctx, *args, indicators, n: int, fold: bool, valid: Array | None = None) -> Array:
  """int32[n, P] partial counts of the ``n`` boolean arrays ``indicators(base, experts, ctx, *args)``.

  The indicators are computed, packed and folded in one jitted pass (:func:`pack_fields`; ``fold``
  False leaves them unfolded, for indicator functions that XLA:CPU stops vectorizing when a fold is
  fused in, such as DARE's hashes), then counted by :func:`count_fields`. ``valid`` (an int32 scalar,
  for 1-D inputs): only the first ``valid`` entries are counted, so that every chunk of a leaf, its
  zero-padded tail included, runs the same compiled programs.
  """
  local = local_shape(experts[0])
  axis = field_fold_axis(local) if fold else None
  words = _indicator_words(base, experts, ctx, args, valid, indicators=indicators, axis=axis)
  return count_fields(words, n_fields=n, total_size=math.prod(tuple(experts[0].shape)),
                      local=packed_local_shape(local, axis))


@functools.partial(jax.jit, static_argnames=("levels", "bits"))
def _level_codes(base, experts, ctx, args, *, levels, bits):
  return pack_codes(list(levels(base, experts, ctx, *args)), bits)


def histogram_levels(base, experts, ctx, *args, levels, n_groups: int, n_levels: int) -> Array:
  """int32[n_groups, n_levels, P] partial histograms of the small integers ``levels(base, experts, ctx,
  *args)`` (one array per group, values in [0, n_levels)): one pass writes them as packed codes
  (:func:`pack_codes`), :func:`histograms` counts every level from those bytes."""
  bits = max(1, (n_levels - 1).bit_length())
  codes = _level_codes(base, experts, ctx, args, levels=levels, bits=bits)
  return histograms(codes, n_groups, bits, n_levels)
