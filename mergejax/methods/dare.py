"""DARE (Drop And REscale; Yu et al., ICML 2024, arXiv 2311.03099) followed by task arithmetic."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mergejax.methods import gta, steps
from mergejax.methods.base import MergeMethod, Traits, expert_weights, flag, method_factory, number


@method_factory(formula="theta_0 + lam * sum_t w_t keep_t tau_t / (1 - drop_rate),  keep_t ~ Bernoulli(1 - drop_rate)",
                drop_rate=number("the fraction of task-vector entries DROPPED (mergekit's density = 1 - p)", 0.0, 1.0,
                                 high_open=True),
                lam=number("scale of the summed task vectors"),
                rescale=flag("divide the kept entries by 1 - drop_rate (the paper)"), weights=expert_weights())
def dare_linear(drop_rate: float = 0.9, lam: float = 1.0, rescale: bool = True,
                weights: Sequence[float] | None = None) -> MergeMethod:
  r"""Drop each task-vector entry with probability p, rescale survivors, then task arithmetic.

  .. math:: \theta_m = \theta_0 + \lambda \sum_t w_t \frac{(1 - m_t)\odot\tau_t}{1 - p},\quad
            m_t \sim \mathrm{Bernoulli}(p)

  Masks come from keys fold_in(fold_in(key(seed), hash(leaf path)), t): reproducible and independent
  of leaf order and device count. The rescale is exactly 1/(1-p) as in the paper (mergekit matches L1
  norms instead).

  Args:
    drop_rate: p, the fraction DROPPED, in [0, 1) (mergekit's density = 1 - p).
    lam: scale applied to the sum.
    rescale: divide survivors by 1 - p.
    weights: per-expert weights (>= 0); None for all ones.
  """
  random = drop_rate != 0.0  # p = 0 keeps every entry: task arithmetic (times 1 / (1 - 0))
  traits = Traits(uses_base=True, elementwise=True, position_keyed=random, lam_scales_task_vector=True,
                  stochastic=random, propagates_nonfinite=not random)
  return MergeMethod(
      name="dare_linear", hparams={"drop_rate": drop_rate, "lam": lam, "rescale": rescale, "weights": weights},
      traits=traits,
      kernel=gta.gta_method_kernel(dare=random, rescale=rescale, trim=False, sign=None, aggregate="sum",
                                   weighted=weights is not None),
      lam=lam, drop_rate=drop_rate, weights=weights, reference="Yu et al., ICML 2024, arXiv 2311.03099")


def dare_keep_masks(seed: int, path: str, shape: tuple[int, ...], n_experts: int, drop_rate: float) -> list:
  """The keep masks DARE uses for leaf ``path`` (one per expert), for audits and reference tests.

  Identical to what the merge kernels draw (:func:`mergejax.methods.steps.dare_hashes`).
  """
  ctx = dare_linear(drop_rate=drop_rate).context(n_experts, seed, path)
  keep = steps.dare_keep(steps.dare_hashes(ctx, tuple(shape), n_experts), ctx.drop_rate)
  return [np.asarray(k) for k in keep]
