"""TIES-Merging (Yadav et al., NeurIPS 2023, arXiv 2306.01708) and DARE-TIES."""

from __future__ import annotations

from typing import Sequence

from mergejax.methods import gta
from mergejax.methods.base import MergeMethod, Traits, choice, expert_weights, method_factory, number

SCOPES = ("global", "tensor")
SIGN_RULES = ("sum", "count")
AGGREGATES = ("mean", "sum")


_DENSITY = number("fraction of each task vector's entries KEPT by the magnitude trim", 0.0, 1.0, low_open=True)
_LAM = number("scale of the merged task vector")
_SCOPE = choice("where the top-k trim is taken: the whole model (paper) or each tensor (mergekit)", SCOPES)
_SIGN = choice("the sign election: magnitude-weighted vote (paper's 'mass') or one vote per expert", SIGN_RULES)
_AGGREGATE = choice("disjoint mean of the agreeing entries, or their sum", AGGREGATES)


@method_factory(formula="theta_0 + lam * disjoint_mean{t: sgn trim(tau_t) = elected sign}(trim_density(tau_t))",
                density=_DENSITY, lam=_LAM, scope=_SCOPE, sign=_SIGN, aggregate=_AGGREGATE, weights=expert_weights())
def ties(density: float = 0.2, lam: float = 1.0, scope: str = "global", sign: str = "sum",
         aggregate: str = "mean", weights: Sequence[float] | None = None) -> MergeMethod:
  r"""Trim, elect sign, disjoint merge, as the official TIES code.

  .. math::
     \hat\tau_t = \tau_t \odot [|\tau_t| \ge \kappa_t],\quad
     \gamma = \mathrm{sgn}\textstyle\sum_t w_t\hat\tau_t,\quad
     \theta_m = \theta_0 + \lambda\,
       \frac{\sum_{t\in A} w_t \hat\tau_t}{\sum_{t\in A} w_t},\ A = \{t: \mathrm{sgn}\,\hat\tau_t = \gamma\}

  :math:`\kappa_t` is the k-th largest :math:`|\tau_t|`, k = max(1, floor(density * n)), over the
  whole task vector of expert t (``scope="global"``, the paper and official code) or per leaf
  (``"tensor"``, mergekit); entries equal to it are kept. Where the vote is exactly 0, global scope
  uses the model-wide majority of elected signs (official ``resolve_zero_signs``) and tensor scope +1
  (mergekit).

  Args:
    density: fraction of entries KEPT, in (0, 1] (official K=20 is 0.2; MergeLM's mask_rate = 1 - density).
    lam: scale applied after aggregation.
    scope: "global" or "tensor".
    sign: "sum" (magnitude-weighted vote, the paper's "mass") or "count" (one vote per expert).
    aggregate: "mean" (divide by the agreeing non-zero entries' weight, at least 1) or "sum".
    weights: per-expert weights (>= 0; applied before the vote, as mergekit); None for all ones.
  """
  return _ties_family("ties", density=density, lam=lam, scope=scope, sign=sign, aggregate=aggregate,
                      weights=weights, drop_rate=None)


@method_factory(formula="TIES (density 1: no trim) of the DARE-dropped task vectors, rescaled by 1 / (1 - drop_rate)",
                drop_rate=number("DARE's drop probability p (mergekit's dare_ties density is 1 - p: "
                                 "density=0.5 there is drop_rate=0.5 here)", 0.0, 1.0, high_open=True),
                density=number("TIES' magnitude trim after DARE: fraction of entries KEPT (1: no trim, as mergekit); "
                               "not mergekit's dare_ties density, which is 1 - drop_rate", 0.0, 1.0, low_open=True),
                lam=_LAM,
                scope=_SCOPE, sign=_SIGN, aggregate=_AGGREGATE, weights=expert_weights())
def dare_ties(drop_rate: float = 0.9, density: float = 1.0, lam: float = 1.0, scope: str = "global",
              sign: str = "sum", aggregate: str = "mean", weights: Sequence[float] | None = None) -> MergeMethod:
  r"""DARE on each task vector (drop with probability ``drop_rate``, rescale by 1/(1-p)), then TIES.

  The DARE paper's pipeline (MergeLM ``mask_merging`` with ``ties_merging``). ``density=1`` means no
  magnitude trim (mergekit's ``dare_ties`` has none, and sums unless normalize is on).

  Args:
    drop_rate: DARE's drop probability p, in [0, 1).
    density: TIES' kept fraction, in (0, 1]; 1 for no trim.
    lam, scope, sign, aggregate, weights: as :func:`ties`.
  """
  return _ties_family("dare_ties", density=density, lam=lam, scope=scope, sign=sign, aggregate=aggregate,
                      weights=weights, drop_rate=drop_rate)


def _ties_family(name, *, density, lam, scope, sign, aggregate, weights, drop_rate) -> MergeMethod:
  """TIES (``drop_rate`` None) or DARE-TIES, from validated hyperparameters."""
  hparams = {"density": density, "lam": lam, "scope": scope, "sign": sign, "aggregate": aggregate, "weights": weights}
  if drop_rate is not None:
    hparams = {"drop_rate": drop_rate, **hparams}
  dare = random = bool(drop_rate)  # p = 0 keeps every entry: no mask is drawn (TIES, times 1 / (1 - 0))
  traits = Traits(uses_base=True, elementwise=True, position_keyed=random, lam_scales_task_vector=True,
                  stochastic=random)
  trim = density < 1.0
  return MergeMethod(
      name=name, hparams=hparams, traits=traits,
      kernel=gta.gta_method_kernel(dare=dare, rescale=True, trim=trim, sign=sign, aggregate=aggregate,
                                   weighted=weights is not None),
      compute_stats=gta.make_stats_fn(density=density, scope=scope, dare=dare, sign=sign,
                                      weighted=weights is not None),
      local_stats=scope == "tensor", lam=lam, drop_rate=drop_rate or 0.0, weights=weights,
      reference=("Yu et al., ICML 2024, arXiv 2311.03099 + " if drop_rate is not None else "")
      + "Yadav et al., NeurIPS 2023, arXiv 2306.01708")
