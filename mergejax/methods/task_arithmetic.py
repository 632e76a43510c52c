"""Task Arithmetic (Ilharco et al., ICLR 2023, arXiv 2212.04089)."""

from __future__ import annotations

from typing import Sequence

from mergejax.methods import gta
from mergejax.methods.base import MergeMethod, Traits, expert_weights, method_factory, number


@method_factory(formula="theta_0 + lam * sum_t w_t tau_t,  tau_t = theta_t - theta_0",
                lam=number("the scale of the summed task vectors (0.3-0.5 is typical for several experts)"),
                weights=expert_weights())
def task_arithmetic(lam: float = 1.0, weights: Sequence[float] | None = None) -> MergeMethod:
  r"""Adds the scaled sum of task vectors to the base.

  .. math:: \theta_m = \theta_0 + \lambda \sum_t w_t \tau_t,\qquad \tau_t = \theta_t - \theta_0

  Args:
    lam: the scale :math:`\lambda` (any finite number; 0.3-0.5 is typical for several experts).
    weights: per-expert weights :math:`w_t` (>= 0); None for all ones.
  """
  traits = Traits(uses_base=True, elementwise=True, lam_scales_task_vector=True, propagates_nonfinite=True)
  return MergeMethod(
      name="task_arithmetic", hparams={"lam": lam, "weights": weights}, traits=traits,
      kernel=gta.gta_method_kernel(dare=False, rescale=False, trim=False, sign=None, aggregate="sum",
                                   weighted=weights is not None),
      lam=lam, weights=weights, reference="Ilharco et al., ICLR 2023, arXiv 2212.04089")
