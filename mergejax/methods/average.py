"""Averaging: the paper's baseline (model soups; Wortsman et al., 2022, arXiv 2203.05482)."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mergejax.methods import steps
from mergejax.methods.base import Array, LeafContext, MergeMethod, Traits, expert_weights, f32, method_factory


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def average_kernel(base: Array | None, experts: tuple[Array, ...], ctx: LeafContext, stats: dict, *,
                   out_dtype: Any) -> Array:
  del base, stats
  w = ctx.weights
  # acc = w_0 x_0, then acc = fma(w_t, x_t, acc) in order: torch's addcmul chain (mergekit's linear). The
  # first product is rounded alone so that XLA fuses each later one into the running sum, never the first.
  num = steps.rounded(w[0] * f32(experts[0]), f32(experts[0]))
  for t in range(1, len(experts)):
    num = num + w[t] * f32(experts[t])
  # A true division by the weights' sum (steps.rounded keeps XLA from multiplying by its reciprocal), as
  # mergekit's linear and the official code.
  den = steps.rounded(jnp.broadcast_to(sum(w[t] for t in range(len(experts))), num.shape), num)
  return (num / den).astype(out_dtype)


@method_factory(formula="sum_t w_t theta_t / sum_t w_t (the base is not used)", weights=expert_weights())
def average(weights: Sequence[float] | None = None) -> MergeMethod:
  r"""The (weighted) mean of the experts; the base is not part of it.

  .. math:: \theta_m = \frac{\sum_t w_t \theta_t}{\sum_t w_t}

  "What Matters for Model Merging at Scale?" (Yadav et al., 2024) uses the unweighted mean, which
  equals task arithmetic with :math:`\lambda = 1/N`. mergekit: ``linear`` (normalize on).

  Args:
    weights: per-expert weights (>= 0, not all zero); None for equal weights.
  """
  traits = Traits(uses_base=False, elementwise=True, propagates_nonfinite=True)
  return MergeMethod(name="average", hparams={"weights": weights}, traits=traits, kernel=average_kernel,
                     weights=weights, reference="Wortsman et al., ICML 2022, arXiv 2203.05482")
