"""Rank-based selection within one leaf: the steps Breadcrumbs, DELLA and SCE are built from.

Every rank is *stable*: entries of equal value are ordered by their flat (row-major) position, the
lower position first. Selections therefore keep exactly the requested number of entries, and depend
only on the leaf's values and shape (not on sharding, device count or sort implementation).

Order statistics of non-negative values are found without sorting the leaf, over their float32 bit
patterns (whose unsigned order is the value order for values >= 0). On CPU the few scalars a selection
needs (the values at the edge ranks, and where among equal values the edge falls) come from NumPy in a
host callback: a strided sample narrows each order statistic to a window of the leaf, which is then
selected exactly (``np.partition``), a few linear passes in all; the mask itself is one fused XLA
pass. Elsewhere a two-level radix select of 16-bit digits runs on the device (histograms; XLA sorts
~50x slower). Both give the same masks.

A rank band is also a per-leaf statistic: its four :func:`in_band` edges (:func:`band_edges`, from
order statistics and the position of the m-th entry equal to an edge value, :func:`nth_set` of
:func:`pack_flags`' packed equality flags) make the mask elementwise, so a leaf can be masked in pieces
that know where they lie (Breadcrumbs without rescale).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

from mergejax.methods.base import Array

try:  # the C passes around NumPy's sort in _row_ranks_host (setup.py builds them where a C compiler is)
  from mergejax.methods import _row_ranks as _native_row_ranks
except ImportError:
  _native_row_ranks = None


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


_SAMPLE = 1 << 16  # sample size that narrows a host order statistic to a window of the leaf


def _edges_host(bits: np.ndarray, ranks: np.ndarray, targets: np.ndarray, from_top: bool,
                block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
  """For each edge i: v_i, the value at ascending rank ``ranks[i]``, and the flat position of the m-th
  (0-based) entry equal to it, m = ``targets[i]`` minus the entries below v_i (above it with
  ``from_top``); a position past the end when m is past the equal entries.

  A strided sample's quantiles ~4 standard deviations of rank either side of each rank bound a window of
  values; one pass over the leaf, in cache-sized blocks, counts the entries below each window and
  collects each window's values and positions, which hold the answer (if a window misses its rank, the
  whole leaf is partitioned instead)."""
  bits = np.asarray(bits).reshape(-1)
  n = bits.size
  ranks, targets = ranks.tolist(), targets.tolist()
  stride = n // _SAMPLE
  windows = []
  if stride >= 2:
    sample = np.sort(bits[::stride])
    windows = [_sample_window(sample, r, n) for r in ranks]
    below = [0] * len(ranks)
    found = [([], []) for _ in ranks]
    for start in range(0, n, block):
      chunk = bits[start:start + block]
      for i, (lo_v, hi_v) in enumerate(windows):
        below[i] += int(np.count_nonzero(chunk < lo_v))
        where = np.flatnonzero((chunk >= lo_v) & (chunk <= hi_v))
        found[i][0].append(where + start)
        found[i][1].append(chunk[where])
  values = np.empty(len(ranks), np.uint32)
  firsts = np.empty(len(ranks), np.int32)
  for i, (r, t) in enumerate(zip(ranks, targets)):
    if windows:
      where, window = np.concatenate(found[i][0]), np.concatenate(found[i][1])
    if windows and below[i] <= r < below[i] + window.size:
      v = np.partition(window, r - below[i])[r - below[i]]
      lt, equal = below[i] + int(np.count_nonzero(window < v)), where[window == v]
    else:
      v = np.partition(bits, r)[r]
      lt, equal = int(np.count_nonzero(bits < v)), np.flatnonzero(bits == v)
    m = t - (n - lt - equal.size if from_top else lt)
    values[i] = v
    firsts[i] = equal[m] if 0 <= m < equal.size else (0 if m < 0 else n)
  return values, firsts


def _edges_into(ctx, out, bits, ranks, targets, *, from_top: bool) -> None:
  """:func:`_edges_host` as a buffer callback: the leaf's patterns read in place (a pure callback copies
  its operands, leaf-sized, into fresh memory first)."""
  del ctx
  values, firsts = _edges_host(np.asarray(bits), np.asarray(ranks), np.asarray(targets), from_top)
  np.asarray(out[0])[...] = values
  np.asarray(out[1])[...] = firsts


def _edges(bits_n: Array, ranks: Array, targets: Array, from_top: bool) -> tuple[Array, Array]:
  """:func:`_edges_host` of a flat uint32 leaf: a host callback on CPU, the radix select elsewhere."""
  if jax.default_backend() == "cpu":
    k = ranks.shape[0]
    return buffer_callback(functools.partial(_edges_into, from_top=from_top),
                           (jax.ShapeDtypeStruct((k,), jnp.uint32), jax.ShapeDtypeStruct((k,), jnp.int32)),
                           vmap_method="sequential")(bits_n, ranks, targets)
  values = _kth_smallest(bits_n, tuple(ranks[i] for i in range(ranks.shape[0])))
  firsts = []
  for v, t in zip(values, (targets[i] for i in range(targets.shape[0]))):
    eq = bits_n == v
    offset = jnp.sum(bits_n > v, dtype=jnp.int32) if from_top else jnp.sum(bits_n < v, dtype=jnp.int32)
    firsts.append(_position_of(eq, t - offset))
  return jnp.stack(values), jnp.stack(firsts)


def rank_band(a: Array, lo: Array, hi: Array) -> Array:
  """Boolean mask of the entries of ``a`` (>= 0) whose stable ascending rank r satisfies ``lo <= r < hi``.

  The values at ranks ``lo`` and ``hi - 1`` and, among the entries equal to them, the positions where the
  band starts and ends are the selection's only non-elementwise steps (:func:`_edges`). ``lo``/``hi``
  may be traced.
  """
  shape = a.shape
  bits = _bits(a).reshape(-1)
  n = bits.shape[0]
  if n == 0:
    return jnp.zeros(shape, bool)
  lo = jnp.asarray(lo, jnp.int32)
  hi = jnp.asarray(hi, jnp.int32)
  values, firsts = _edges(bits, jnp.stack([jnp.clip(lo, 0, n - 1), jnp.clip(hi - 1, 0, n - 1)]), jnp.stack([lo, hi]),
                          from_top=False)
  edges = jnp.stack([values[0], firsts[0].astype(jnp.uint32), values[1], firsts[1].astype(jnp.uint32)])
  keep = in_band(bits, jax.lax.iota(jnp.uint32, n), edges) & (lo < n) & (hi > 0)
  return keep.reshape(shape)


def in_band(bits: Array, pos: Array, edges: Array) -> Array:
  """Elementwise: entries (uint32 patterns ``bits`` of values >= 0, at flat leaf positions ``pos``) inside
  the band ``edges`` = uint32[4] (v_lo, first_in, v_hi, first_out) of :func:`rank_band`: above v_lo, or
  equal to it from position first_in on, and below v_hi, or equal to it before position first_out
  (among equal values the lower positions rank first, so a band edge may fall between them)."""
  above = (bits > edges[0]) | ((bits == edges[0]) & (pos >= edges[1]))
  below = (bits < edges[2]) | ((bits == edges[2]) & (pos < edges[3]))
  return above & below


def band_edges(n: int, lo: int, hi: int, stats_Ex3: np.ndarray, nth_equal: Callable[[int, int], int]) -> np.ndarray:
  """uint32[4]: the :func:`in_band` edges of ranks [lo, hi) of an ``n``-entry leaf, from the order
  statistics at ranks clip(lo) and clip(hi - 1) (rows (v, #below v, #equal v)) and ``nth_equal(e, m)``,
  the flat position of the m-th (0-based) entry equal to v_e, asked only for 0 < m < #equal v_e.
  An empty band keeps nothing."""
  if not (lo < n and hi > lo and hi > 0):
    return np.zeros(4, np.uint32)  # entries below 0 (none), or equal to 0 before position 0 (none)
  edges = []
  for e, target in enumerate((lo, hi)):
    v, below, equal = (int(x) for x in stats_Ex3[e])
    m = target - below  # the band edge falls after the m-th entry equal to v
    edges += [v, 0 if m <= 0 else n if m >= equal else nth_equal(e, m)]
  return np.asarray(edges, np.uint32)


def pack_flags(flags_PxL: Array) -> Array:
  """uint8[P, ceil(L / 8)]: ``np.packbits(flags, axis=1, bitorder="little")``, eight strided slices
  shifted and added (one vectorized loop on XLA:CPU). Pieces of a leaf whose lengths are multiples of 8
  (but the last) pack to the leaf's packed flags, concatenated."""
  p, n = flags_PxL.shape
  x = jnp.pad(flags_PxL.astype(jnp.uint8), ((0, 0), (0, -n % 8))).reshape(p, -1, 8)
  return sum(x[:, :, k] << jnp.uint8(k) for k in range(8))


def nth_set(packed: np.ndarray, m: int) -> int:
  """The position of the m-th (0-based) set flag of :func:`pack_flags`' packed flags (``m`` below their
  number): popcounts of 64-bit words, their running sum, one word unpacked."""
  packed = np.asarray(packed, np.uint8).reshape(-1)
  words = np.pad(packed, (0, -packed.size % 8)).view(np.uint64)
  cum = np.cumsum(np.bitwise_count(words), dtype=np.int64)
  w = int(np.searchsorted(cum, m, side="right"))
  before = int(cum[w - 1]) if w else 0
  bits = np.unpackbits(packed[8 * w:8 * w + 8], bitorder="little")
  return 64 * w + int(np.flatnonzero(bits)[m - before])


def top_k(a: Array, k: Array) -> Array:
  """Mask of the ``k`` largest entries of ``a`` (>= 0); among equal values the lower flat positions first."""
  shape = a.shape
  bits = _bits(a).reshape(-1)
  n = bits.shape[0]
  if n == 0:
    return jnp.zeros(shape, bool)
  k = jnp.asarray(k, jnp.int32)
  values, firsts = _edges(bits, jnp.clip(n - k, 0, n - 1)[None], k[None], from_top=True)
  keep = (bits > values[0]) | ((bits == values[0]) & (jax.lax.iota(jnp.int32, n) < firsts[0]))
  return (keep & (k > 0)).reshape(shape)


def _host_workers() -> int:
  """Threads a host selection may use: the CPU cores this process may run on (NumPy's sorts and
  copies release the GIL)."""
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _on_host_workers(work: Callable[[int, int], Any], n: int, block: int) -> list[Any]:
  """``work(start, stop)`` over [0, ``n``) split at multiples of ``block`` into one contiguous part per
  :func:`_host_workers` thread (fewer if there are fewer blocks): the parts' results, in order."""
  blocks = -(-n // block)
  workers = max(1, min(_host_workers(), blocks))
  if workers == 1:
    return [work(0, n)]
  bounds = [min(n, blocks * i // workers * block) for i in range(workers + 1)]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(work, bounds[:-1], bounds[1:]))


_KEY32_MAX_COLUMN_BITS = 12  # rows of up to 2^12 entries are sorted by 32-bit keys (:func:`_row_ranks_host`)
_INF_BITS = np.uint32(0x7F800000)


def _row_ranks_host(bits: np.ndarray, dtype=np.int32, block: int = 1 << 16, out: np.ndarray | None = None,
                    magnitude: bool = False, native: bool | None = None) -> np.ndarray:
  """Ranks within the rows of uint32 patterns: order-preserving ones (:func:`_ordered_bits`), or with
  ``magnitude`` float32 patterns whose magnitudes are ranked (the sign bit left out: -0.0 equal to +0.0;
  every NaN equal, above +inf).

  Each entry's key is its value's pattern with its column below, distinct within its row, so an unstable
  vectorized sort of the keys is the stable argsort of the values (~5x faster than NumPy's stable
  argsort); the sorted keys' columns, scattered back, are the ranks. Rows of up to 2^12 entries take
  32-bit keys, which NumPy sorts ~3x faster than 64-bit ones: the pattern's bits 29 .. c - 2 above the
  c column bits of the row (the magnitude's top exponent bit, clear below 2.0, and its lowest mantissa
  bits left out). They order a row exactly when its values lie in [0, 2) and no two distinct values
  share the kept bits; a row holding an entry with a dropped bit set is checked after its sort (its full
  patterns in key order must not decrease; no NaN) and, where it fails, sorted again by 64-bit keys (the
  full pattern above the column), as longer rows are. Rows go in blocks of about ``block`` entries
  through cache-sized buffers (fresh leaf-sized temporaries cost more in page faults than the sort), the
  blocks split among :func:`_host_workers` threads. ``out``: where to write them (a fresh array if None).

  ``native`` (default: where the extension is built): the passes around the sort run in C
  (``mergejax/methods/_row_ranks.c``: the keys and flags in one pass; the check, a radix sort of the
  rows that fail it or are too long for 32-bit keys, and the ranks' scatter in another), ~1.7x faster;
  the ranks are the same.
  """
  bits = np.asarray(bits)
  rows, n = bits.shape
  ranks = np.empty((rows, n), dtype) if out is None else out
  if ranks.size == 0:
    return ranks
  step = max(1, block // n)
  if native is None:
    native = _native_row_ranks is not None
  if native and ranks.flags.c_contiguous and (ranks.dtype == np.int32 or (ranks.dtype == np.uint16 and n <= 1 << 16)):
    _native_row_ranks_host(np.ascontiguousarray(bits, np.uint32), ranks, step, magnitude)
    return ranks
  rank_values = np.tile(np.arange(n, dtype=dtype), step)
  row_offsets = np.arange(step, dtype=np.intp)[:, None] * n
  low_word = slice(0, None, 2) if np.little_endian else slice(1, None, 2)
  cols64 = np.arange(n, dtype=np.uint64)
  flat = ranks.reshape(-1)
  nan_keys = np.uint64(0x7F800001 << 32)  # magnitudes' keys from here up are NaNs'

  def columns64(b: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The columns of rows ``b`` in stable ascending order of their values, by 64-bit keys."""
    if magnitude:  # the pattern less its sign bit above the column
      np.left_shift(b, np.uint64(33), out=keys, dtype=np.uint64)
      keys >>= np.uint64(1)
      if keys.max() >= nan_keys:
        keys[keys >= nan_keys] = np.uint64(0x7FC00000 << 32)
    else:
      np.left_shift(b, np.uint64(32), out=keys, dtype=np.uint64)
    keys |= cols64
    keys.sort(axis=1)
    return keys.view(np.uint32)[:, low_word]

  c = max(2, (n - 1).bit_length())  # column bits
  if c > _KEY32_MAX_COLUMN_BITS:
    def rank_rows(lo: int, hi: int) -> None:
      keys, where = np.empty((step, n), np.uint64), np.empty((step, n), np.intp)
      for r0 in range(lo, hi, step):
        m = min(step, hi - r0)
        at = where[:m]
        np.add(columns64(bits[r0:r0 + m], keys[:m]), row_offsets[:m], out=at, casting="unsafe")
        flat[r0 * n:(r0 + m) * n][at.reshape(-1)] = rank_values[:m * n]
  else:
    drop, shift = np.uint32(c - 2), np.uint32(c)
    cols, col_mask = np.arange(n, dtype=np.uint32), np.uint32((1 << c) - 1)
    # Exact entries: in [0, 2) with the dropped bits clear (magnitudes: bit 30 clear; ordered patterns,
    # their top bit flipped: the top two bits clear).
    exact_mask = np.uint32((0x40000000 if magnitude else 0xC0000000) | ((1 << (c - 2)) - 1))
    value_mask = np.uint32(0x7FFFFFFF if magnitude else 0xFFFFFFFF)

    def rank_rows(lo: int, hi: int) -> None:
      keys, where = np.empty((step, n), np.uint32), np.empty((step, n), np.intp)
      scratch = np.empty((step, n), np.uint32)
      keys64 = None
      for r0 in range(lo, hi, step):
        m = min(step, hi - r0)
        b, k, at, t = bits[r0:r0 + m], keys[:m], where[:m], scratch[:m]
        np.right_shift(b, drop, out=k)
        np.left_shift(k, shift, out=k)
        k |= cols
        if magnitude:
          np.bitwise_and(b, exact_mask, out=t)
        else:
          np.bitwise_xor(b, np.uint32(0x80000000), out=t)
          t &= exact_mask
        check = np.flatnonzero(t.max(axis=1))
        k.sort(axis=1)
        k &= col_mask
        np.add(k, row_offsets[:m], out=at, casting="unsafe")
        if check.size:
          in_order = b.reshape(-1)[at[check]] & value_mask  # NaNs of other payloads: ranked by 64-bit keys
          bad = check[(in_order[:, 1:] < in_order[:, :-1]).any(axis=1) | (magnitude & (in_order[:, -1] > _INF_BITS))]
          if bad.size:
            keys64 = np.empty((step, n), np.uint64) if keys64 is None else keys64
            at[bad] = columns64(b[bad], keys64[:bad.size]) + row_offsets[bad]
        flat[r0 * n:(r0 + m) * n][at.reshape(-1)] = rank_values[:m * n]

  _on_host_workers(rank_rows, rows, step)
  return ranks


def _native_row_ranks_host(bits: np.ndarray, ranks: np.ndarray, step: int, magnitude: bool) -> None:
  """:func:`_row_ranks_host` with its passes around NumPy's sort in C, ``step`` rows at a time."""
  rows, n = bits.shape
  if (n - 1).bit_length() > _KEY32_MAX_COLUMN_BITS:
    _on_host_workers(lambda lo, hi: _native_row_ranks.rank_rows(bits[lo:hi], ranks[lo:hi], n, magnitude), rows, step)
    return

  def rank_rows(lo: int, hi: int) -> None:
    keys, flags = np.empty((step, n), np.uint32), np.empty(step, np.uint8)
    for r0 in range(lo, hi, step):
      m = min(step, hi - r0)
      b, k, f = bits[r0:r0 + m], keys[:m], flags[:m]
      _native_row_ranks.keys(b, k, f, n, magnitude)
      k.sort(axis=1)
      _native_row_ranks.ranks(b, k, f, ranks[r0:r0 + m], n, magnitude)

  _on_host_workers(rank_rows, rows, step)


def _row_ranks_into(ctx, out, bits, *, magnitude: bool = False) -> None:
  """:func:`_row_ranks_host` as a buffer callback: the patterns read and the ranks written in place in
  XLA's buffers (a pure callback copies its operand and its result, leaf-sized, page faults included)."""
  del ctx
  out = np.asarray(out)
  _row_ranks_host(np.asarray(bits).view(np.uint32), out.dtype, out=out, magnitude=magnitude)


def _ordered_bits(x: Array) -> Array:
  """uint32 patterns whose unsigned order is the float order of ``x`` (argsort's: -0.0 equal to +0.0,
  every NaN equal and last)."""
  x = x.astype(jnp.float32)
  x = jnp.where(jnp.isnan(x), jnp.float32(jnp.nan), jnp.where(x == 0, jnp.float32(0), x))
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 != 0, ~bits, bits | jnp.uint32(0x80000000))


def _sample_window(sample: np.ndarray, r: int, n: int) -> tuple[np.uint32, np.uint32]:
  """Bounds of the values around ascending rank ``r`` of ``n`` entries: the sorted strided ``sample``'s
  values ~4 standard deviations of rank either side of it."""
  m = sample.size
  at = r / n * m
  spread = 4.0 * math.sqrt(max(at * (1 - at / m), 1.0)) + 2
  return (sample[int(np.clip(math.floor(at - spread), 0, m - 1))],
          sample[int(np.clip(math.ceil(at + spread), 0, m - 1))])


def _values_host(bits: np.ndarray, ranks: tuple[int, ...], block: int = 1 << 16) -> np.ndarray:
  """The patterns at ascending ranks ``ranks`` of a flat uint32 array (values only: no positions, so
  ~half of :func:`_edges_host`'s passes). Each rank's sample window is tested as one unsigned
  ``bits - lo <= hi - lo``; the leaf's blocks are split among :func:`_host_workers` threads, each with
  cache-sized scratch."""
  bits = np.asarray(bits).reshape(-1)
  n = bits.size
  stride = n // _SAMPLE
  if stride < 2 or not ranks:
    return np.partition(bits, list(ranks))[list(ranks)] if n and ranks else np.zeros(len(ranks), np.uint32)
  sample = np.sort(bits[::stride])
  windows = []
  for r in ranks:
    lo, hi = _sample_window(sample, r, n)
    windows.append((lo, hi - lo))

  def scan(start: int, stop: int) -> tuple[list[int], list[list[np.ndarray]]]:
    below, found = [0] * len(ranks), [[] for _ in ranks]
    d, mask = np.empty(block, np.uint32), np.empty(block, bool)
    for s in range(start, stop, block):
      chunk = bits[s:min(s + block, stop)]
      k = chunk.size
      for i, (lo, width) in enumerate(windows):
        below[i] += int(np.count_nonzero(np.less(chunk, lo, out=mask[:k])))
        np.less_equal(np.subtract(chunk, lo, out=d[:k]), width, out=mask[:k])
        found[i].append(chunk[mask[:k]])
    return below, found

  parts = _on_host_workers(scan, n, block)
  values = np.empty(len(ranks), np.uint32)
  for i, r in enumerate(ranks):
    below = sum(p[0][i] for p in parts)
    window = np.concatenate([w for p in parts for w in p[1][i]])
    if below <= r < below + window.size:
      values[i] = np.partition(window, r - below)[r - below]
    else:  # the window missed its rank (rare): select from the whole leaf
      values[i] = np.partition(bits, r)[r]
  return values


def _values_into(ctx, out, bits, *, ranks: tuple[int, ...]) -> None:
  """:func:`_values_host` as a buffer callback: the leaf's patterns read in place (a pure callback would copy
  them into a fresh leaf-sized array first)."""
  del ctx
  np.asarray(out)[...] = _values_host(np.asarray(bits), ranks)


def order_statistics(a: Array, ranks: tuple[int, ...]) -> Array:
  """float32[k]: the values of ``a`` at the ascending ranks ``ranks`` of its flattened entries, what
  ``jnp.sort(a.reshape(-1))[list(ranks)]`` gives (-0.0 equal to +0.0, NaNs last), without sorting the leaf:
  a selection over order-preserving patterns (:func:`_ordered_bits`), on CPU :func:`_values_host` in a host
  callback, elsewhere :func:`_edges`' radix select."""
  bits = _ordered_bits(a).reshape(-1)
  ranks = tuple(int(r) for r in ranks)
  if jax.default_backend() == "cpu":
    values = buffer_callback(functools.partial(_values_into, ranks=ranks),
                             jax.ShapeDtypeStruct((len(ranks),), jnp.uint32), vmap_method="sequential")(bits)
  else:
    r = jnp.asarray(ranks, jnp.int32)
    values, _ = _edges(bits, r, r, from_top=False)
  return jax.lax.bitcast_convert_type(jnp.where(values >> 31 != 0, values & jnp.uint32(0x7FFFFFFF), ~values),
                                      jnp.float32)


def row_ranks(a: Array, *, magnitude: bool = False) -> Array:
  """int32 stable ascending rank of each entry within its row along axis 1 (0 .. n - 1); with
  ``magnitude``, the ranks of ``|a|`` (what ``row_ranks(jnp.abs(a))`` gives, without that leaf; on CPU
  a subnormal value ranks above zero, where XLA:CPU's comparisons flush it to zero: a task vector
  that XLA computed holds none).

  Leaves of fewer than 2 dimensions are one row. This is mergekit's ``della_magprune`` ranking
  (``argsort(dim=1).argsort(dim=1)``), with ties ordered by position. On CPU the sort runs in NumPy
  (a host callback: XLA:CPU sorts ~20x slower) on (value, column) keys (:func:`_row_ranks_host`);
  elsewhere one XLA argsort and a scatter. Both give the same ranks.
  """
  x = a.reshape(1, -1) if a.ndim < 2 else a
  if jax.default_backend() == "cpu":
    x2 = jnp.moveaxis(x, 1, -1).reshape(-1, x.shape[1])  # rows along axis 1, the other axes outer
    dtype = jnp.uint16 if x.shape[1] <= 1 << 16 else jnp.int32  # half the bytes back to XLA
    # Magnitudes: the callback reads the float32 values themselves (no leaf of patterns to write first).
    operand = x2.astype(jnp.float32) if magnitude else _ordered_bits(x2)
    ranks = buffer_callback(functools.partial(_row_ranks_into, magnitude=magnitude),
                            jax.ShapeDtypeStruct(x2.shape, dtype), vmap_method="sequential")(operand)
    ranks = ranks.astype(jnp.int32)
    moved = x.shape[:1] + x.shape[2:] + x.shape[1:2]
    return jnp.moveaxis(ranks.reshape(moved), -1, 1).reshape(a.shape)
  if magnitude:
    x = jnp.abs(x)
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
