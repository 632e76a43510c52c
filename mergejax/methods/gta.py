r"""The generalized task-arithmetic kernel shared by task_arithmetic, ties, dare_linear and dare_ties.

.. math::
   \theta_m = \theta_0 + \lambda \cdot \mathrm{agg}_t\big(\mathrm{trim}(\mathrm{dare}(\tau_t))\big)

with the steps of :mod:`mergejax.methods.steps` switched on or off statically, and the statistics
pass that TIES-style methods need (trim thresholds, and for global scope the model-wide majority sign
that the official TIES code gives to entries whose vote is exactly zero).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from mergejax.methods import steps, threshold
from mergejax.methods.base import Array, LeafContext, LeafPass, f32


def _trimmed_task_vectors(base, experts, ctx, thresholds, *, dare, trim):
  """DARE-dropped (not yet rescaled: see steps.dare_drop_all) and trimmed task vectors."""
  taus = steps.task_vectors(base, experts)
  if dare:
    taus = steps.dare_drop_all(taus, ctx)
  if trim:
    taus = [steps.magnitude_trim(tau, thresholds[t]) for t, tau in enumerate(taus)]
  return taus


@functools.partial(
    jax.jit, static_argnames=("dare", "rescale", "trim", "sign", "aggregate", "out_dtype", "weighted"))
def gta_kernel(base: Array, experts: tuple[Array, ...], ctx: LeafContext, stats: dict[str, Array], *,
               dare: bool, rescale: bool, trim: bool, sign: str | None, aggregate: str,
               out_dtype: Any, weighted: bool = True) -> Array:
  """One leaf: base + lam * aggregate(trim(dare(tau))). ``stats``: thresholds f32[N], majority f32.

  ``weighted=False`` (the method has no weights, so ctx.weights are all 1) skips the weight multiplies;
  the result is bit-identical. Straight-line code over the tuple of experts: one vectorized loop on
  XLA:CPU (see :mod:`mergejax.methods.steps` for the formulations that keep it so).
  """
  taus = _trimmed_task_vectors(base, experts, ctx, stats.get("thresholds"), dare=dare, trim=trim)
  w = ctx.weights
  if sign is None:  # products rounded before the sum, as the references (steps.rounded)
    agg = sum(steps.rounded(w[t] * tau, tau) if weighted else tau for t, tau in enumerate(taus))
  else:
    vote = steps.sign_vote(taus, w, sign, weighted)
    positive = steps.elect_positive(vote, stats.get("majority", np.float32(1.0)))  # default: scope="tensor"
    agg = steps.disjoint_aggregate(taus, w, vote, positive, aggregate, weighted)
  scale = ctx.lam * steps.dare_rescale(ctx.drop_rate) if dare and rescale else ctx.lam
  return (f32(base) + steps.rounded(scale * agg, agg)).astype(out_dtype)


def _sign_indicators(base, experts, ctx, thresholds, *, dare, trim, sign, weighted):
  """[vote < 0, vote > 0]: the signs of the TIES vote at trim ``thresholds`` (f32[N])."""
  taus = _trimmed_task_vectors(base, experts, ctx, thresholds, dare=dare, trim=trim)
  vote = steps.sign_vote(taus, ctx.weights, sign, weighted)
  return [vote < 0, vote > 0]


@functools.lru_cache(maxsize=None)
def _sign_balance(*, dare: bool, trim: bool, sign: str, weighted: bool):
  """The indicator function of one configuration (one object: engines key their compiles on it)."""
  return functools.partial(_sign_indicators, dare=dare, trim=trim, sign=sign, weighted=weighted)


def make_stats_fn(*, density: float, scope: str, dare: bool, sign: str | None, weighted: bool = True):
  """compute_stats(leaf_pass, n_experts, seed) for a TIES-style method, or None if none is needed."""
  trim = density < 1.0
  if not trim and (sign is None or scope == "tensor"):
    # Nothing to measure: no trim thresholds, and per-tensor scope elects +1 on a zero vote (mergekit),
    # a constant the kernel defaults to. Without statistics the engine reads each leaf once, with the
    # NaN/Inf check fused into the kernel.
    return None

  def compute_stats(leaf_pass: LeafPass, n_experts: int, sizes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    speculate = sign is not None and scope == "global"
    balance = None
    if trim and speculate:
      thr, balance = threshold.find_thresholds(leaf_pass, sizes, n_experts, density, scope, dare, sign=sign,
                                               weighted=weighted)
    elif trim:
      thr = threshold.find_thresholds(leaf_pass, sizes, n_experts, density, scope, dare)
    else:
      thr = {p: np.zeros((n_experts,), np.float32) for p in sizes}
    majority = {p: np.float32(1.0) for p in sizes}
    if speculate:
      if balance is None:  # no count pass, or a threshold differed from its guess: one more pass
        bal = leaf_pass.count(_sign_balance(dare=dare, trim=trim, sign=sign, weighted=weighted), 2,
                              lambda p: (thr[p],))
        balance = (sum(int(v[0]) for v in bal.values()), sum(int(v[1]) for v in bal.values()))
      neg, pos = balance
      m = np.float32(1.0 if pos >= neg else -1.0)
      majority = {p: m for p in sizes}
    return {p: {"thresholds": thr[p], "majority": majority[p]} for p in sizes}

  return compute_stats


@functools.lru_cache(maxsize=None)
def gta_method_kernel(*, dare: bool, rescale: bool, trim: bool, sign: str | None, aggregate: str,
                      weighted: bool = True):
  """The kernel of a method configuration; one object per configuration, so that wrappers keyed on the
  kernel (e.g. the engine's jitted bf16 rounding, with the kernel as a static argument) hit their
  compile caches across method instances (different lam, weights or seeds)."""
  return functools.partial(gta_kernel, dare=dare, rescale=rescale, trim=trim, sign=sign,
                           aggregate=aggregate, weighted=weighted)
