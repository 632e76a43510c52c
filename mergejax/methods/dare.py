"""DARE (Drop And REscale; Yu et al., ICML 2024, arXiv 2311.03099) followed by task arithmetic."""

from __future__ import annotations

from typing import Sequence

from mergejax.methods import gta
from mergejax.methods.base import MergeMethod, check_bool, check_finite, check_fraction, check_weights


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
  drop_rate = check_fraction("drop_rate", drop_rate, low=0.0, high=1.0, low_open=False, high_open=True)
  lam = check_finite("lam", lam)
  rescale = check_bool("rescale", rescale)
  w = check_weights(weights)
  return MergeMethod(
      name="dare_linear", hparams={"drop_rate": drop_rate, "lam": lam, "rescale": rescale, "weights": w},
      uses_base=True,
      kernel=gta.gta_method_kernel(dare=True, rescale=rescale, trim=False, consensus=None, aggregate="sum",
                                   weighted=w is not None),
      lam=lam, drop_rate=drop_rate, weights=w, reference="Yu et al., ICML 2024, arXiv 2311.03099")


def dare_keep_masks(seed: int, path: str, shape: tuple[int, ...], n_experts: int, drop_rate: float) -> list:
  """The keep masks DARE uses for leaf ``path`` (one per expert), for audits and reference tests.

  Identical to what the merge kernels draw (:func:`mergejax.methods.steps.dare_hashes`).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mergejax.methods import steps  # pylint: disable=g-import-not-at-top
  from mergejax.methods.base import LeafContext, dare_key_words  # pylint: disable=g-import-not-at-top
  from mergejax.tree import stable_path_hash  # pylint: disable=g-import-not-at-top

  h = stable_path_hash(path)
  ctx = LeafContext(seed=np.uint32(seed), path_hash=np.uint32(h), lam=np.float32(1),
                    weights=np.ones((n_experts,), np.float32), drop_rate=np.float32(drop_rate),
                    dare_words=dare_key_words(seed, h, n_experts))
  keep = steps.dare_keep(steps.dare_hashes(ctx, tuple(shape), n_experts), ctx.drop_rate)
  return [np.asarray(k) for k in keep]
