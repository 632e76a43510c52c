r"""Exact top-k magnitude thresholds without sorting and without gathering sharded arrays.

TIES keeps the entries of each task vector whose magnitude is among the top ``density`` fraction,
either over the whole model (the official code's global scope) or per tensor (mergekit). The k-th
largest :math:`|\tau|` is found by *selection over the float32 bit pattern* (non-negative float order
equals int32 bit-pattern order) using only counts :math:`c(t) = \#\{|\tau| \ge t\}`, which are sharded
reductions (a local sum plus a scalar all-reduce; never an all-gather or sort):

1. a strided sample of :math:`|\tau|` proposes a guess g of the k-th largest value (if the sample is
   the whole group, the threshold is read off it exactly and no count pass is needed);
2. the first count pass evaluates :math:`c(g)` and :math:`c(g + 1\,\mathrm{ulp})` (or, for continuous
   data, two sample quantiles around the target rank) in one pass (:func:`_pinpoint_indicators`); for
   discrete (bf16) data :math:`c(g) \ge k > c(g^+)` usually holds, which proves g exact;
3. further count passes evaluate :math:`c` at 3 or 7 thresholds inside the current bracket
   :math:`[lo, hi)` with :math:`c(lo) \ge k > c(hi)`, narrowing it until :math:`hi = lo + 1` in bit space;
   then ``lo`` is exactly the k-th largest value. They skip leaves whose brackets are all done.

Counts are the engine's (:meth:`LeafPass.count`, :meth:`LeafPass.histogram`: exact int64 per leaf,
summed on the host, so totals never overflow for models above :math:`2^{31}` parameters): a pass
states its predicates (every threshold of every expert at once) and the engine counts them in one
read of the data. The sample takes every s-th row (outer axes first), so it reads about 1/s of the data.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import kernels, steps
from mergejax.methods.base import Array, LeafContext, LeafPass

INF_PLUS_BITS = 0x7F800001  # one above +inf: c(INF_PLUS) = 0 for finite data
SAMPLE_GLOBAL = 1 << 18  # sample size per expert for a model-wide threshold
SAMPLE_TENSOR = 1 << 15  # sample size per expert and leaf for per-tensor thresholds
SAMPLE_EDGES = 1 << 16  # sample size per expert and leaf of leaf_order_statistics (pins most bf16 edges in one pass)
PAIR_PASSES = 6  # further two-threshold passes with the first count pass's compiled program


def _bits_to_float(bits: int) -> np.float32:
  return np.array(bits, np.int32).view(np.float32)[()]


def _task_vectors(base: Array, experts: Sequence[Array], ctx: LeafContext, dare: bool) -> list[Array]:
  """tau_t, after DARE's drop if ``dare`` (its common rescale factor does not change any rank)."""
  taus = steps.task_vectors(base, experts)
  return steps.dare_drop_all(taus, ctx) if dare else taus


def _abs_task_vectors(base: Array, experts: Sequence[Array], ctx: LeafContext, dare: bool) -> list[Array]:
  """|tau_t| (after DARE's drop)."""
  return [jnp.abs(t) for t in _task_vectors(base, experts, ctx, dare)]


def _abs_bits(taus: Sequence[Array]) -> list[Array]:
  """The int32 bit patterns of |tau_t|: non-negative floats order as their bits."""
  return [jax.lax.bitcast_convert_type(jnp.abs(t), jnp.int32) for t in taus]


def _strided(rows: Sequence[Array], strides: tuple[int, ...]) -> Array:
  """The rows' strided samples, stacked (the host flattens each)."""
  idx = tuple(slice(None, None, s) for s in strides)
  return jnp.stack([_uneven_whole(a, strides)[idx] for a in rows])


def _bucket_of(bits: Sequence[Array], thr_bits: Array) -> list[Array]:
  """Each row's bucket #{j : bits >= thr_bits[t, j]} (uint8 in [0, T])."""
  return [sum((b >= thr_bits[t, j]).astype(jnp.uint8) for j in range(thr_bits.shape[1])) for t, b in enumerate(bits)]


@functools.partial(jax.jit, static_argnums=(3,), static_argnames=("dare",))
def _sample_fn(base, experts, ctx, strides, *, dare: bool):
  return _strided(_abs_task_vectors(base, experts, ctx, dare), strides)


def _uneven_whole(a: Array, strides: tuple[int, ...]) -> Array:
  """``a``, replicated (:func:`kernels.whole`) if a strided slice of one of its explicitly sharded axes would
  not split evenly over that axis's devices (which explicit sharding refuses)."""
  sharding = jax.typeof(a).sharding
  mesh = sharding.mesh
  if mesh.empty:
    return a
  explicit = {n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Explicit}
  for ax, names in enumerate(sharding.spec):
    names = () if names is None else names if isinstance(names, tuple) else (names,)
    if not set(names) & explicit:
      continue
    devices = math.prod(mesh.shape[n] for n in names)
    if -(-a.shape[ax] // strides[ax]) % devices:
      return kernels.whole(a)
  return a


def _sample_host(base, experts, ctx, strides, *, f32):
  """:func:`_sample_fn` (without DARE) in NumPy on host arrays: the same values (float32 conversion
  and subtraction are exact IEEE operations in both; ``f32`` applies the backend's float32 semantics),
  no compile per stride. A :class:`LeafPass` host twin."""
  del ctx
  idx = tuple(slice(None, None, s) for s in strides)
  b = f32(base[idx])
  return np.stack([f32(np.abs(f32(f32(e[idx]) - b))) for e in experts])


def _bucket_levels(base, experts, ctx, thr_bits, *, dare: bool):
  """thr_bits: int32[N, T] sorted per expert -> each expert's bucket #{j : |tau_t| >= threshold_j}
  (uint8 in [0, T]): #(|tau_t| >= t_j) is then #(bucket >= j + 1), T thresholds from one histogram."""
  return _bucket_of(_abs_bits(_task_vectors(base, experts, ctx, dare)), thr_bits)


@functools.partial(jax.jit, static_argnums=(3,), static_argnames=("values",))
def _sample_values(base, experts, ctx, strides, *, values):
  """:func:`_sample_fn` of another quantity: the rows ``values(base, experts)``."""
  del ctx
  return _strided(values(base, experts), strides)


def _value_levels(base, experts, ctx, thr_bits, *, values):
  """:func:`_bucket_levels` of the rows ``values(base, experts)`` (non-negative float32)."""
  del ctx
  return _bucket_of([jax.lax.bitcast_convert_type(a, jnp.int32) for a in values(base, experts)], thr_bits)


@functools.lru_cache(maxsize=None)
def _value_buckets(values):
  return functools.partial(_value_levels, values=values)


def _pinpoint_indicators(base, experts, ctx, thr_bits, guess, *, dare: bool, sign: str | None, weighted: bool):
  """thr_bits: int32[N, 2] -> [|tau_t| >= thr_t0], [|tau_t| >= thr_t1] for every expert and, with
  ``sign`` (a TIES sign rule), the TIES vote's [v < 0], [v > 0] with trim thresholds ``guess`` (f32[N]).

  The first count pass: two thresholds per expert (the sample's guess g and the next float up, which
  pin the k-th largest value exactly when c(g) >= k > c(g + 1 ulp), as they usually do for bf16
  models, whose task vectors have many ties), and the vote counted in the same pass.
  """
  taus = _task_vectors(base, experts, ctx, dare)
  bits = _abs_bits(taus)
  inds = []
  for t, b in enumerate(bits):
    inds += [b >= thr_bits[t, 0], b >= thr_bits[t, 1]]
  if sign is not None:
    trimmed = [steps.magnitude_trim(tau, guess[t]) for t, tau in enumerate(taus)]
    v = steps.sign_vote(trimmed, ctx.weights, sign, weighted)
    inds += [v < 0, v > 0]
  return inds


@functools.lru_cache(maxsize=None)
def _pinpoint(*, dare: bool, sign: str | None, weighted: bool):
  """The indicator function of one configuration (one object: engines key their compiles on it)."""
  return functools.partial(_pinpoint_indicators, dare=dare, sign=sign, weighted=weighted)


@functools.lru_cache(maxsize=None)
def _buckets(*, dare: bool):
  return functools.partial(_bucket_levels, dare=dare)


def _axis_strides(shape: tuple[int, ...], stride: int) -> tuple[int, ...]:
  """Per-axis strides whose product is about ``stride``, outermost axes first (whole rows: cheap reads)."""
  out = [1] * len(shape)
  rem = stride
  for ax in range(len(shape)):
    if rem <= 1:
      break
    s = min(rem, shape[ax])
    out[ax] = max(1, s)
    rem = math.ceil(rem / s)
  return tuple(out)


class _Bracket:
  """Bit-space bracket [lo, hi) around the k-th largest value of one (group, expert).

  Invariant: c(lo) >= k > c(hi), with the counts c_lo, c_hi known once measured. Proposals come from
  the sample on the first pass, then from interpolation search on the measured counts (thresholds at
  geometric distances around the interpolated crossing, plus two uniform bit-space splits so that
  discrete or skewed data still converges).
  """

  def __init__(self, k: int, n: int, sample_bits: np.ndarray):
    self.k, self.n = k, n
    self.lo, self.hi = 0, INF_PLUS_BITS
    self.c_lo, self.c_hi = n, 0
    self.sample_bits = np.sort(sample_bits)[::-1]  # descending
    m = self.sample_bits.size
    # The most likely answer: the sample's value at the target rank (the sign balance is computed
    # speculatively with it; see find_thresholds).
    self.guess = int(self.sample_bits[int(np.clip(round(k / n * m), 1, m)) - 1]) if m else 0
    if sample_bits.size == n:  # the sample is the whole group: exact already, counts included
      self.lo = int(self.sample_bits[k - 1])
      self.hi = self.lo + 1
      self.guess = self.lo
      self.c_lo = int(np.count_nonzero(sample_bits >= self.lo))
      self.c_hi = int(np.count_nonzero(sample_bits > self.lo))

  def _rank_spread(self) -> tuple[float, float]:
    """(target rank in the sample, ~4 standard deviations of it + 2)."""
    m = self.sample_bits.size
    r = self.k / self.n * m
    return r, 4.0 * math.sqrt(max(r * (1 - r / max(m, 1)), 1.0)) + 2

  def pin_pair(self) -> list[int]:
    """Two thresholds for the first count pass.

    When the sample's guess g occurs more than once in the sample (discrete data such as bf16 task
    vectors, whose k-th largest value is then usually g itself: 57 of 60 per-tensor brackets of the
    benchmark model), (g, g + 1): their counts prove g exact in one pass. Otherwise (continuous data)
    the sample values ~4 standard deviations of rank either side of the target, a tight bracket for
    the following passes. Padded with ``lo`` once done.
    """
    if self.done or not self.sample_bits.size:
      return [self.lo, self.lo]
    sb, m = self.sample_bits, self.sample_bits.size
    r, delta = self._rank_spread()
    asc = sb[::-1]  # ascending
    n_ge = m - int(np.searchsorted(asc, self.guess, side="left"))  # sample entries >= guess
    n_gt = m - int(np.searchsorted(asc, self.guess, side="right"))  # sample entries > guess
    pair = [self.guess, self.guess + 1] if n_ge - n_gt >= 2 else self.bounds()  # tied: discrete data, whose
    pair = [p for p in pair if self.lo < p < self.hi]  # k-th largest is then usually the tied value too
    return (pair + [self.lo, self.lo])[:2] if pair else [self.lo, self.lo]

  def bounds(self) -> list[int]:
    """The sample's values ~4 standard deviations of rank either side of the target (the upper one + 1):
    the k-th largest lies between them but for a chance of ~1e-4."""
    if not self.sample_bits.size:
      return []
    sb, m = self.sample_bits, self.sample_bits.size
    r, delta = self._rank_spread()
    below = int(sb[int(np.clip(round(r + delta) - 1, 0, m - 1))])
    above = int(sb[int(np.clip(round(r - delta) - 1, 0, m - 1))]) + 1
    return [below, above]

  def pin_neighbours(self) -> list[int]:
    """For discrete data (the guess tied in the sample), the distinct sample value just above (below) the
    guess's run of equal values, with the next float up, when the run ends within the sample's rank
    uncertainty (:meth:`_rank_spread`) above (below) the target rank: the k-th largest is then often
    that value. Empty otherwise (continuous data, or a run that surely holds the target)."""
    if self.done or not self.sample_bits.size:
      return []
    asc, m = self.sample_bits[::-1], self.sample_bits.size
    i, j = int(np.searchsorted(asc, self.guess, side="left")), int(np.searchsorted(asc, self.guess, side="right"))
    if j - i < 2:
      return []
    r, delta = self._rank_spread()  # descending, 1-based; the run holds descending ranks m - j + 1 .. m - i
    near = ([int(asc[j])] if j < m and r - (m - j + 1) < delta else [])
    near += [int(asc[i - 1])] if i > 0 and (m - i) - r < delta else []
    return [x for v in near for x in (v, v + 1) if self.lo < x < self.hi]

  def pair(self) -> list[int]:
    """Two thresholds for a further pass of the first count pass's program (no new compile).

    The sample value inside the bracket at the rank interpolated from the bracket's measured counts
    (the k-th largest lies c(lo) - k entries above lo), and the next float up: the pair that proves a
    discrete value exact, as :meth:`pin_pair`. Without a sample value inside, the interpolated
    crossing and the bracket's bit-space midpoint (the bracket at least halves).
    """
    lo, hi = self.lo, self.hi
    if hi - lo - 1 <= 2:
      return (list(range(lo + 1, hi)) + [lo, lo])[:2]
    sb, m = self.sample_bits, self.sample_bits.size  # descending
    asc = sb[::-1]
    n_gt_lo = m - int(np.searchsorted(asc, lo, side="right"))  # sample entries > lo: indices < n_gt_lo
    n_ge_hi = m - int(np.searchsorted(asc, hi, side="left"))  # sample entries >= hi: indices < n_ge_hi
    if n_gt_lo > n_ge_hi:
      n_ge_lo = m - int(np.searchsorted(asc, lo, side="left"))
      frac = (self.k - self.c_hi) / max(self.c_lo - self.c_hi, 1)
      r = n_ge_hi + (n_ge_lo - n_ge_hi) * frac  # the k-th largest's rank in the sample, 1-based
      v = int(sb[int(np.clip(round(r) - 1, n_ge_hi, n_gt_lo - 1))])
      return [v, v + 1] if v + 1 < hi else [v, lo]
    mid = lo + (hi - lo) // 2
    if hi >= 0x7F800000 or self.c_lo - self.c_hi <= 64:
      return [lo + (hi - lo) // 3, lo + 2 * (hi - lo) // 3]
    v_lo, v_hi = float(_bits_to_float(lo)), float(_bits_to_float(hi))
    frac = (self.c_lo - self.k + 0.5) / max(self.c_lo - self.c_hi, 1)
    star = int(np.array(v_lo + frac * (v_hi - v_lo), np.float32).view(np.int32))
    pair = sorted({p for p in (star, mid) if lo < p < hi})
    return (pair + [lo, lo])[:2]

  def guided(self, count: int) -> list[int]:
    """Up to ``count`` thresholds where the sample's values inside the bracket place the k-th largest,
    spread over ~2 standard deviations of that estimate (a tied sample value with its next float up),
    so that the bracket narrows from S sample values inside to ~sqrt(S); empty when the bracket holds
    fewer than 2 sample values or is not yet measured on both sides."""
    lo, hi = self.lo, self.hi
    if hi >= INF_PLUS_BITS or self.c_lo <= self.c_hi:
      return []
    asc = self.sample_bits[::-1]
    inside = asc[int(np.searchsorted(asc, lo, side="right")):int(np.searchsorted(asc, hi, side="left"))]
    m = inside.size
    if m < 2:
      return []
    f = (self.c_lo - self.k) / (self.c_lo - self.c_hi)  # the target's fraction of the bracket, from below
    sd = math.sqrt(max(m * f * (1 - f), 1.0))
    out: list[int] = []
    for x in np.linspace(max(f * m - 2 * sd, 0), min(f * m + 2 * sd, m - 1), count).round().astype(int):
      v = int(inside[x])
      tied = (x > 0 and inside[x - 1] == v) or (x + 1 < m and inside[x + 1] == v)
      out += [v, v + 1] if tied else [v]
    return [v for v in dict.fromkeys(out) if lo < v < hi][:count]

  def interpolated(self, count: int) -> list[int]:
    """Up to ``count`` thresholds around the crossing interpolated from the bracket's measured counts (the
    entries inside taken as uniform in bit space), at 1, 4 and 16 standard deviations of its noise
    (~sqrt(W f (1 - f)) of the W entries inside) either side, the rest uniform splits of the bracket (a
    bracket of at most 64 entries gets uniform splits only); empty unless measured on both sides."""
    lo, hi = self.lo, self.hi
    w = self.c_lo - self.c_hi
    if hi >= INF_PLUS_BITS or w <= 0:
      return []
    points: list[float] = []
    if w > 64:
      f = (self.c_lo - self.k + 0.5) / w
      star, sd = lo + f * (hi - lo), (math.sqrt(w * f * (1 - f)) + 1) / w * (hi - lo)
      points = [star + o * sd for o in (-1, 1, -4, 4, -16, 16)]
    points += np.linspace(lo, hi, count + 2)[1:-1].tolist()
    out = [v for v in dict.fromkeys(int(round(x)) for x in points) if lo < v < hi]
    return sorted(out[:count])

  @property
  def done(self) -> bool:
    return self.hi - self.lo <= 1

  def proposals(self, count: int, first: bool) -> list[int]:
    """Up to ``count`` thresholds strictly inside (lo, hi)."""
    lo, hi = self.lo, self.hi
    if hi - lo - 1 <= count:
      return list(range(lo + 1, hi))
    sb = self.sample_bits
    if first and sb.size:
      # Sample quantiles around the target rank, each with its next float up (discrete data, e.g.
      # bf16 task vectors, has many ties: the k-th value v then needs the bracket [v, v + 1)), and the
      # sample maximum + 1 as an upper bound.
      m = sb.size
      r, delta = self._rank_spread()  # target rank in the sample (1-based, descending)
      ranks = np.linspace(r - delta, r + delta, max(1, (count - 1) // 2))
      props = [int(sb[0]) + 1]
      for x in ranks:
        v = int(sb[int(np.clip(round(x) - 1, 0, m - 1))])
        props += [v, v + 1]
    elif hi >= 0x7F800000:  # no finite upper bound yet: uniform splits in bit space
      props = list(np.linspace(lo, hi, count + 2)[1:-1].round().astype(np.int64))
    elif self.c_lo - self.c_hi <= 64:  # few elements left: T-ary search in bit space
      props = list(np.linspace(lo, hi, count + 2)[1:-1].round().astype(np.int64))
    else:  # interpolation search on the counts, at geometric distances around the crossing
      v_lo, v_hi = float(_bits_to_float(lo)), float(_bits_to_float(min(hi, 0x7F7FFFFF)))
      frac = (self.c_lo - self.k + 0.5) / max(self.c_lo - self.c_hi, 1)
      v_star = v_lo + frac * (v_hi - v_lo)
      # Two uniform bit-space splits guarantee the bracket shrinks 3x per pass even when the counts
      # mislead the interpolation (heavy ties just inside the bracket).
      props = [int(np.array(v_star, np.float32).view(np.int32))]
      props += [int(x) for x in np.linspace(lo, hi, 4)[1:-1].round()] if count >= 3 else []
      for j in range((count - 3) // 2):
        spread = (v_hi - v_lo) * 4.0 ** (-(j + 2))
        for v in (v_star - spread, v_star + spread):
          props.append(int(np.array(max(v, 0.0), np.float32).view(np.int32)))
    props = sorted({int(p) for p in props if lo < p < hi})[:count]
    return props or [lo + (hi - lo) // 2]

  def update(self, thresholds: Sequence[int], counts: Sequence[int]) -> None:
    for t, c in zip(thresholds, counts):
      if c >= self.k and t > self.lo:
        self.lo, self.c_lo = t, c
      if c < self.k and t < self.hi:
        self.hi, self.c_hi = t, c

  def value(self) -> np.float32:
    return _bits_to_float(self.lo)


def find_thresholds(
    leaf_pass: LeafPass,
    sizes: Mapping[str, tuple[int, ...]],
    n_experts: int,
    density: float,
    scope: str,
    dare: bool,
    thresholds_per_pass: int = 7,
    max_passes: int = 48,
    sign: str | None = None,
    weighted: bool = True,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], tuple[int, int] | None]:
  """Exact per-expert trim thresholds: {leaf path: float32[N]}.

  For each expert t and each group g (the whole model for ``scope="global"``, each leaf for
  ``"tensor"``), the threshold is the k-th largest :math:`|\\tau_t|` over g, k = max(1, floor(density n_g)).

  With ``sign`` (a TIES sign rule), the first count pass also counts the model-wide signs of the TIES
  vote, trimming each expert at the sample's guess of its threshold, and the result is
  ``(thresholds, (#negative, #positive))``; the counts are exact and returned only if every final
  threshold equals its guess (else None: the caller needs a separate pass). ``weighted=False`` says
  the weights are all 1 (the vote then skips its multiplies, bit-identically).

  Passes: a sample (~1/s of the data), then a first count pass with two thresholds per expert
  (:meth:`_Bracket.pin_pair`; for bf16 models usually the last), then passes of 3 or 7 thresholds
  (sample quantiles, then interpolation search) until every bracket is one float wide.
  """
  paths = list(sizes)
  shapes = {p: tuple(sizes[p]) for p in paths}
  numel = {p: int(np.prod(shapes[p], dtype=np.int64)) for p in paths}
  groups = {"<model>": paths} if scope == "global" else {p: [p] for p in paths}
  group_of = {p: g for g, ps in groups.items() for p in ps}
  group_n = {g: sum(numel[p] for p in ps) for g, ps in groups.items()}
  total = sum(numel.values())

  # Round 0: samples.
  def stride_of(p: str) -> int:
    target = SAMPLE_GLOBAL if scope == "global" else SAMPLE_TENSOR
    n = total if scope == "global" else numel[p]
    return max(1, math.ceil(n / target))

  strides = {p: _axis_strides(shapes[p], stride_of(p)) for p in paths}
  samples = leaf_pass(functools.partial(_sample_fn, dare=dare), lambda p: (strides[p],),
                      host=None if dare else _sample_host)
  brackets: dict[tuple[str, int], _Bracket] = {}
  for g, ps in groups.items():
    k = max(1, math.floor(density * group_n[g]))
    for t in range(n_experts):
      s = np.concatenate([np.asarray(samples[p])[t].reshape(-1) for p in ps]).astype(np.float32)
      brackets[g, t] = _Bracket(k, group_n[g], s.view(np.int32))

  guess = {g: np.asarray([_bits_to_float(brackets[g, t].guess) for t in range(n_experts)], np.float32)
           for g in groups}
  balance = None
  for pass_index in range(max_passes):
    todo = {gt: b for gt, b in brackets.items() if not b.done}
    if not todo:
      break
    # Per-tensor brackets the first count pass left open (a few) are narrowed by the same compiled
    # program, two thresholds at a time, for up to PAIR_PASSES passes; then 3 or 7 at a time.
    pair_pass = sign is None and 0 < pass_index <= PAIR_PASSES
    if pass_index == 0:
      # Two thresholds per expert (and the speculative vote), counted inside one fused pass.
      props = {gt: b.pin_pair() for gt, b in todo.items()}
      width = 2
    elif pair_pass:
      props = {gt: [p for p in b.pair() if b.lo < p < b.hi] or [b.lo + (b.hi - b.lo) // 2] for gt, b in todo.items()}
      width = 2
    else:
      props = {gt: b.proposals(thresholds_per_pass, first=pass_index == 1) for gt, b in todo.items()}
      # Each threshold costs a compare per entry: count only as many as the widest proposal list
      # needs, rounded to 3 or 7 (1 or 2 packed count words) so kernels compile at most twice per shape.
      need = max(len(v) for v in props.values())
      width = next((w for w in (3, 7) if need <= w), thresholds_per_pass)
    table = {g: _threshold_table([props.get((g, t), [brackets[g, t].lo]) for t in range(n_experts)], width)
             for g in groups}
    busy = {g for g, _ in todo}  # leaves whose groups are all exact already are not read
    if pass_index == 0 or pair_pass:
      n_ind = 2 * n_experts + (2 if sign is not None else 0)
      counts = leaf_pass.count(
          _pinpoint(dare=dare, sign=sign, weighted=weighted), n_ind,
          lambda p: (table[group_of[p]], guess[group_of[p]]) if sign is not None or group_of[p] in busy else None)
      if sign is not None:
        balance = (sum(int(c[2 * n_experts]) for c in counts.values()),
                   sum(int(c[2 * n_experts + 1]) for c in counts.values()))
      counts = {p: c[:2 * n_experts].reshape(n_experts, 2) for p, c in counts.items()}
    else:
      hist = leaf_pass.histogram(_buckets(dare=dare), n_experts, width + 1,
                                 lambda p: (table[group_of[p]],) if group_of[p] in busy else None)
      counts = {p: _counts_at_thresholds(h) for p, h in hist.items()}
    totals: dict[str, np.ndarray] = {}
    for p, c in counts.items():  # [N, T] exact in int64
      g = group_of[p]
      totals[g] = totals[g] + c if g in totals else c
    for (g, t), b in todo.items():
      v = props[g, t]
      b.update(v, [int(x) for x in totals[g][t, : len(v)]])
  else:
    raise RuntimeError("threshold search did not converge (non-finite task vectors?)")

  out = {}
  for p in paths:
    g = group_of[p]
    out[p] = np.asarray([brackets[g, t].value() for t in range(n_experts)], np.float32)
  if sign is None:
    return out
  if not all(b.lo == b.guess for b in brackets.values()):
    balance = None
  return out, balance


def _threshold_table(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
  """int32[N, width]: each expert's thresholds (at least one), padded by repeating its last one (a
  repeated threshold only repeats its count): one compiled count program per width."""
  return np.asarray([list(v) + [v[-1]] * (width - len(v)) for v in rows], np.int32)


def _counts_at_thresholds(hist: np.ndarray) -> np.ndarray:
  """int64[N, T]: #(|tau_t| >= threshold_j) from the histogram int64[N, T + 1] of each entry's bucket
  #{j : |tau_t| >= threshold_j} (:func:`_bucket_levels`): #(bucket >= j + 1), reversed cumulative sums."""
  return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]


def _share(wishes: Sequence[Sequence[int]], width: int) -> list[int]:
  """Up to ``width`` distinct thresholds taken from the lists in turn (each list's first, then each
  one's second, ...): every open bracket of an expert gets its most wanted thresholds counted."""
  out: list[int] = []
  for i in range(max((len(w) for w in wishes), default=0)):
    for w in wishes:
      if i < len(w) and w[i] not in out and len(out) < width:
        out.append(w[i])
  return out


def leaf_order_statistics(leaf_pass: LeafPass, sizes: Mapping[str, tuple[int, ...]], n_experts: int,
                          ranks_of: Callable[..., Sequence[int]], max_passes: int = 48, *,
                          values: Callable[[Array, Sequence[Array]], list[Array]] | None = None,
                          count_nonzero: bool = False) -> dict[str, np.ndarray]:
  r"""Exact order statistics of each expert's :math:`|\tau_t|` within each leaf: {path: int64[N, E, 3]},
  for each expert t and each ascending rank r of ``ranks_of(path, n)`` (E ranks in [0, n) for an n-entry
  leaf; empty leaves are left out): the float32 bit pattern of v, the value at rank r, and the numbers of
  entries below v and equal to it.

  ``values``: another quantity than :math:`|\tau_t|`, a jittable module-level function returning
  ``n_experts`` non-negative float32 arrays shaped like the leaf (e.g. one row: the experts' variance
  per entry), computed elementwise so that a piece of the leaf gives the leaf's values there. Its
  sample is taken on the device too: a small leaf's sample is the whole leaf and settles its brackets,
  so a NumPy twin would have to reproduce XLA's bits exactly (it does for |tau|, not for a variance).

  The k-th largest value with k = n - r, by :func:`find_thresholds`' brackets: a sample, then histogram
  passes in which each expert's thresholds are those its E brackets propose together, every bracket
  updated with every count (up to 7 thresholds per expert, shared in turn among its open brackets: one
  compiled program): first their :meth:`_Bracket.pin_pair`, :meth:`_Bracket.bounds` and
  :meth:`_Bracket.pin_neighbours` (which settle most brackets of bf16 data and bound the rest), then
  lo + 1 (is lo the value?) with :meth:`_Bracket.guided` (the sample's values inside the bracket, while
  it holds some) or :meth:`_Bracket.interpolated` (the counts), after ``PAIR_PASSES`` passes
  :meth:`_Bracket.proposals` alone (the bracket then shrinks every pass); leaves whose brackets are all
  done are not read again. A finished bracket [v, v + 1) has
  measured c(v) = #(>= v) and c(v + 1) = #(> v).

  ``count_nonzero``: the ranks depend on how many values are above zero (bit pattern >= 1), and
  ``ranks_of(path, n, nonzero)`` gets those counts (one per row). The first histogram pass counts them
  beside its thresholds, proposed for the ranks the sample estimates; the brackets of the exact ranks
  are then told every count of that pass (a leaf whose sample is all of it needs no pass at all).
  """
  paths = [p for p in sizes if math.prod(sizes[p])]
  shapes = {p: tuple(sizes[p]) for p in paths}
  numel = {p: math.prod(shapes[p]) for p in paths}
  strides = {p: _axis_strides(shapes[p], max(1, math.ceil(numel[p] / SAMPLE_EDGES))) for p in paths}
  if values is None:
    sample_fn, sample_host, buckets = functools.partial(_sample_fn, dare=False), _sample_host, _buckets(dare=False)
  else:
    sample_fn, sample_host, buckets = functools.partial(_sample_values, values=values), None, _value_buckets(values)
  samples = leaf_pass(sample_fn, lambda p: (strides[p],) if p in strides else None, host=sample_host)
  rows = {(p, t): np.asarray(samples[p])[t].reshape(-1).astype(np.float32).view(np.int32)
          for p in paths for t in range(n_experts)}
  ranks: dict[str, list[int]] = {}
  brackets: dict[tuple[str, int, int], _Bracket] = {}

  def build(p: str, nonzero: tuple[int, ...] | None) -> None:
    ranks[p] = [int(r) for r in (ranks_of(p, numel[p]) if nonzero is None else ranks_of(p, numel[p], nonzero))]
    for key in [key for key in brackets if key[0] == p]:
      del brackets[key]
    for t in range(n_experts):
      for e, r in enumerate(ranks[p]):
        brackets[p, t, e] = _Bracket(numel[p] - r, numel[p], rows[p, t])

  pending = set()  # leaves whose non-zero counts come with the first histogram pass
  for p in paths:
    nonzero = None
    if count_nonzero:
      nonzero = tuple(int(np.count_nonzero(rows[p, t] >= 1)) for t in range(n_experts))
      if rows[p, 0].size < numel[p]:  # the sample's estimate until the first pass counts them
        nonzero = tuple(round(c * numel[p] / rows[p, t].size) for t, c in enumerate(nonzero))
        pending.add(p)
    build(p, nonzero)
  width = 7  # thresholds per expert and pass: one compiled histogram program (3-bit levels)
  for pass_index in range(max_passes):
    todo = {key: b for key, b in brackets.items() if not b.done}
    if not todo and not pending:
      break
    wishes: dict[tuple[str, int], list[list[int]]] = {}  # each open bracket's thresholds, most wanted first
    for p in pending:  # #(>= 1): the non-zero count
      for t in range(n_experts):
        wishes[p, t] = [[1]]
    for (p, t, _), b in todo.items():
      if pass_index == 0:
        v = b.pin_pair() + b.bounds() + b.pin_neighbours()
      elif pass_index <= PAIR_PASSES:
        # lo + 1: is lo the value? Then where the sample or the counts place the target.
        v = [b.lo + 1] + (b.guided(width - 1) or b.interpolated(width - 1)
                          or b.pair() + b.proposals(width - 3, first=False))
      else:
        v = b.proposals(width, first=False)  # bit-space splits: the bracket shrinks every pass
      wishes.setdefault((p, t), []).append([x for x in v if b.lo < x < b.hi])
    table = {p: _threshold_table([sorted(_share(wishes.get((p, t), []), width))
                                  or [brackets[p, t, 0].lo if ranks[p] else 1] for t in range(n_experts)], width)
             for p in {p for p, _ in wishes}}
    hist = leaf_pass.histogram(buckets, n_experts, width + 1, lambda p: (table[p],) if p in table else None)
    for p, h in hist.items():
      counts = _counts_at_thresholds(h)
      if p in pending:  # the exact ranks: brackets anew, told every count of this pass
        build(p, tuple(int(counts[t][list(table[p][t]).index(1)]) for t in range(n_experts)))
      for t in range(n_experts):
        for e in range(len(ranks[p])):  # (a finished bracket ignores counts)
          brackets[p, t, e].update(table[p][t].tolist(), [int(c) for c in counts[t]])
    pending = set()
  else:
    raise RuntimeError("order statistics did not converge (non-finite task vectors?)")
  out = {}
  for p in paths:
    rows = [[(b.lo, numel[p] - b.c_lo, b.c_lo - b.c_hi) for b in (brackets[p, t, e] for e in range(len(ranks[p])))]
            for t in range(n_experts)]
    out[p] = np.asarray(rows, np.int64).reshape(n_experts, len(ranks[p]), 3)
  return out
