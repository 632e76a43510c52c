"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024, arXiv 2312.06795), with and without TIES' sign
consensus, as mergekit's ``breadcrumbs`` and ``breadcrumbs_ties``."""

from __future__ import annotations

from typing import Sequence

import jax

from mergejax.methods import kernels, sparsify, steps
from mergejax.methods.base import MergeMethod, Traits, choice, expert_weights, f32, flag, method_factory, number

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


def _make(name, *, density, gamma, lam, weights, rescale, sign, aggregate) -> MergeMethod:
  hparams = {"density": density, "gamma": gamma, "lam": lam, "weights": weights, "rescale": rescale}
  if sign is not None:
    hparams["sign"] = sign
  hparams["aggregate"] = aggregate
  return MergeMethod(
      name=name, hparams=hparams,
      traits=Traits(uses_base=True, lam_scales_task_vector=True),
      kernel=kernels.bind(_jit_kernel, density=density, gamma=gamma, rescale=rescale, sign=sign, aggregate=aggregate),
      lam=lam, weights=weights, reference="Davari & Belilovsky, ECCV 2024, arXiv 2312.06795")


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
