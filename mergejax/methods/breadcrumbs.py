"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024, arXiv 2312.06795), with and without TIES' sign
consensus, as mergekit's ``breadcrumbs`` and ``breadcrumbs_ties``."""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import kernels, selection, sparsify, steps, threshold
from mergejax.methods.base import (LeafPass, MergeMethod, Traits, choice, expert_weights, f32, flag, method_factory,
                                   number)

_DENSITY = number("fraction of each task vector's entries KEPT (1: no sparsification)", 0.0, 1.0, low_open=True)
_GAMMA = number("fraction of the largest-magnitude entries dropped as outliers", 0.0, 1.0, high_open=True)
_LAM = number("scale of the merged task vector")
_RESCALE = flag("rescale each sparsified task vector to its L1 norm before the sparsification (mergekit)")
_AGGREGATE = choice("sum of the (agreeing) weighted task vectors (mergekit's default), or divide by the "
                    "(agreeing) weights' sum (mergekit's normalize)", ("sum", "mean"))


def _kernel(base, experts, ctx, stats, *, out_dtype, density, gamma, rescale, sign, aggregate):
  del stats
  taus = [sparsify.breadcrumbs(tau, density, gamma, "l1" if rescale else "none")
          for tau in steps.task_vectors(base, experts)]
  merged = sparsify.aggregate(taus, ctx.weights, consensus=sign, aggregate_=aggregate)
  return (f32(base) + steps.rounded(ctx.lam * merged, merged)).astype(out_dtype)


_jit_kernel = jax.jit(kernels.on_whole_leaves(_kernel),
                      static_argnames=("out_dtype", "density", "gamma", "rescale", "sign", "aggregate"))


def _banded_kernel(base, experts, ctx, stats, *, out_dtype, sign, aggregate):
  """The elementwise form of :func:`_kernel` without rescale: each task vector masked by its band's
  :func:`~mergejax.methods.selection.in_band` edges (``stats["edges"]``: uint32[N, 4], absent when
  nothing is dropped), on the whole leaf or on any piece of it (``ctx`` says where it lies)."""
  taus = steps.task_vectors(base, experts)
  edges = stats.get("edges")
  if edges is not None:
    pos = steps.leaf_positions(ctx, taus[0].shape)
    taus = [jnp.where(selection.in_band(jax.lax.bitcast_convert_type(jnp.abs(tau), jnp.uint32), pos, edges[t]),
                      tau, 0.0) for t, tau in enumerate(taus)]
  merged = sparsify.aggregate(taus, ctx.weights, consensus=sign, aggregate_=aggregate)
  return (f32(base) + steps.rounded(ctx.lam * merged, merged)).astype(out_dtype)


_jit_banded_kernel = jax.jit(_banded_kernel, static_argnames=("out_dtype", "sign", "aggregate"))


@jax.jit
@kernels.on_whole_leaves
def _equal_flags(base, experts, ctx, values_NxE):
  """Packed flags (:func:`~mergejax.methods.selection.pack_flags`) of |tau_t| == v_te for every expert t
  and edge e (rows t * E + e), flat, and the piece's length (int32[1])."""
  del ctx
  flags = []
  for t, tau in enumerate(steps.task_vectors(base, experts)):
    bits = jax.lax.bitcast_convert_type(jnp.abs(tau), jnp.uint32).reshape(-1)
    flags += [bits == values_NxE[t, e] for e in range(values_NxE.shape[1])]
  return selection.pack_flags(jnp.stack(flags)), jnp.full((1,), flags[0].shape[0], jnp.int32)


def _band_of(n: int, density: float, gamma: float) -> tuple[int, int]:
  """Ascending ranks [lo, hi) kept of an ``n``-entry leaf."""
  lo, count = sparsify.breadcrumbs_counts(n, density, gamma)
  return lo, lo + count


def _make_stats_fn(density: float, gamma: float):
  """compute_stats of the elementwise form: per leaf and expert, the :func:`selection.in_band` edges of
  the kept ranks, from exact order statistics (:func:`threshold.leaf_order_statistics`) at the band's
  first and last rank, and, where the band starts or ends among entries equal to an edge value, the
  position of the first entry in (or out) from one pass of packed equality flags (:func:`_equal_flags`)."""

  def compute_stats(leaf_pass: LeafPass, n_experts: int, sizes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    numel = {p: math.prod(s) for p, s in sizes.items()}
    band = {p: _band_of(n, density, gamma) for p, n in numel.items()}

    def ranks_of(path: str, n: int) -> tuple[int, int]:
      del path
      lo, hi = _band_of(n, density, gamma)
      return min(max(lo, 0), n - 1), min(max(hi - 1, 0), n - 1)

    order = threshold.leaf_order_statistics(leaf_pass, sizes, n_experts, ranks_of)
    straddled = {p for p, st in order.items()  # an edge inside a run of equal values: its position is needed
                 if any(0 < target - st[t, e, 1] < st[t, e, 2]
                        for t in range(n_experts) for e, target in enumerate(band[p]))}
    flags = leaf_pass(_equal_flags, lambda p: (order[p][:, :, 0].astype(np.uint32),) if p in straddled else None)
    out = {}
    for p, st in order.items():
      if p in flags:
        packed, lengths = flags[p]
        if np.any(np.asarray(lengths)[:-1] % 8):
          raise ValueError(f"leaf '{p}': its band statistics need pieces of multiples of 8 entries (but the "
                           f"last), got lengths {np.asarray(lengths).tolist()}")
      nth = lambda t, e, m, p=p: selection.nth_set(flags[p][0][2 * t + e], m)  # noqa: E731
      edges = [selection.band_edges(numel[p], *band[p], st[t], functools.partial(nth, t)) for t in range(n_experts)]
      out[p] = {"edges": np.stack(edges)}
    return out

  return compute_stats


def _make(name, *, density, gamma, lam, weights, rescale, sign, aggregate) -> MergeMethod:
  hparams = {"density": density, "gamma": gamma, "lam": lam, "weights": weights, "rescale": rescale}
  if sign is not None:
    hparams["sign"] = sign
  hparams["aggregate"] = aggregate
  # Without rescale the band's edges are per-leaf statistics and the merge is elementwise (flat chunks on
  # one CPU device, told where they lie: ties at an edge are broken by position). The L1 rescale's sums
  # over the whole leaf keep that option on whole-leaf kernels (one summation order on every device count).
  sparse = density < 1.0
  elementwise = not (rescale and sparse)
  if elementwise:
    kernel = kernels.bind(_jit_banded_kernel, sign=sign, aggregate=aggregate)
  else:
    kernel = kernels.bind(_jit_kernel, density=density, gamma=gamma, rescale=rescale, sign=sign, aggregate=aggregate)
  return MergeMethod(
      name=name, hparams=hparams,
      traits=Traits(uses_base=True, elementwise=elementwise, position_keyed=elementwise and sparse,
                    lam_scales_task_vector=True),
      kernel=kernel, compute_stats=_make_stats_fn(density, gamma) if elementwise and sparse else None,
      local_stats=True, lam=lam, weights=weights, reference="Davari & Belilovsky, ECCV 2024, arXiv 2312.06795")


@method_factory(formula="theta_0 + lam * sum_t w_t crumbs(tau_t): per leaf drop the largest gamma and the smallest "
                        "entries, keeping density",
                density=_DENSITY, gamma=_GAMMA, lam=_LAM, weights=expert_weights(), rescale=_RESCALE,
                aggregate=_AGGREGATE)
def breadcrumbs(density: float = 0.9, gamma: float = 0.01, lam: float = 1.0, weights: Sequence[float] | None = None,
                rescale: bool = False, aggregate: str = "sum") -> MergeMethod:
  r"""Task arithmetic of task vectors with both tails of their magnitudes cut, per leaf.

  .. math:: \hat\tau_t = \tau_t \odot [\,b \le \mathrm{rank}(|\tau_t|) < b + \lfloor dn\rfloor\,],\quad
            b = \max(0, n - \lfloor dn\rfloor - \lfloor\gamma n\rfloor),\quad
            \theta_m = \theta_0 + \lambda \sum_t w_t\hat\tau_t

  with ranks ascending and stable (ties by position): exactly :math:`\lfloor dn\rfloor` entries of each
  n-entry leaf are kept, the :math:`\lfloor\gamma n\rfloor` largest dropped (fewer when
  :math:`d + \gamma > 1`). mergekit ``breadcrumbs`` (its ``density`` defaults to 1, no sparsification;
  ``normalize`` is ``aggregate="mean"``).
  """
  return _make("breadcrumbs", density=density, gamma=gamma, lam=lam, weights=weights, rescale=rescale, sign=None,
               aggregate=aggregate)


@method_factory(formula="theta_0 + lam * disjoint_sum{t: sgn = elected}(w_t crumbs(tau_t)) (Breadcrumbs + TIES "
                        "sign consensus)",
                density=_DENSITY, gamma=_GAMMA, lam=_LAM, weights=expert_weights(), rescale=_RESCALE,
                sign=choice("the sign election: magnitude-weighted vote or one vote per expert", ("sum", "count")),
                aggregate=_AGGREGATE)
def breadcrumbs_ties(density: float = 0.9, gamma: float = 0.01, lam: float = 1.0,
                     weights: Sequence[float] | None = None, rescale: bool = False, sign: str = "sum",
                     aggregate: str = "sum") -> MergeMethod:
  r""":func:`breadcrumbs`' sparsification, then TIES' sign election and disjoint merge per entry
  (a zero vote elects +1): :math:`\theta_m = \theta_0 + \lambda\sum_{t \in A} w_t\hat\tau_t`
  (divided by :math:`\sum_{t\in A} w_t` with ``aggregate="mean"``). mergekit ``breadcrumbs_ties``."""
  return _make("breadcrumbs_ties", density=density, gamma=gamma, lam=lam, weights=weights, rescale=rescale,
               sign=sign, aggregate=aggregate)
