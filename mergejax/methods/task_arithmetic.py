"""Task Arithmetic (Ilharco et al., ICLR 2023, arXiv 2212.04089)."""

from __future__ import annotations

from typing import Sequence

from mergejax.methods import gta
from mergejax.methods.base import MergeMethod, check_finite, check_weights


def task_arithmetic(lam: float = 1.0, weights: Sequence[float] | None = None) -> MergeMethod:
  r"""Adds the scaled sum of task vectors to the base.

  .. math:: \theta_m = \theta_0 + \lambda \sum_t w_t \tau_t,\qquad \tau_t = \theta_t - \theta_0

  Args:
    lam: the scale :math:`\lambda` (any finite number; 0.3-0.5 is typical for several experts).
    weights: per-expert weights :math:`w_t` (>= 0); None for all ones.
  """
  lam = check_finite("lam", lam)
  w = check_weights(weights)
  return MergeMethod(
      name="task_arithmetic", hparams={"lam": lam, "weights": w}, uses_base=True,
      kernel=gta.gta_method_kernel(dare=False, rescale=False, trim=False, consensus=None, aggregate="sum",
                                   weighted=w is not None),
      lam=lam, weights=w, reference="Ilharco et al., ICLR 2023, arXiv 2212.04089")
