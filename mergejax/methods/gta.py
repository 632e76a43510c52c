r"""The generalized task-arithmetic kernel shared by task_arithmetic, ties, dare_linear and dare_ties.

.. math::
   \theta_m = \theta_0 + \lambda \cdot \mathrm{agg}_t\big(\mathrm{trim}(\mathrm{dare}(\tau_t))\big)

with the steps of :mod:`mergejax.methods.steps` switched on or off statically, and the statistics
pass that TIES-style methods need (trim thresholds, and for global scope the model-wide majority sign
that the official TIES code gives to entries whose vote is exactly zero).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import counting, steps, threshold
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
    jax.jit, static_argnames=("dare", "rescale", "trim", "consensus", "aggregate", "out_dtype"))
def gta_kernel(base: Array, experts: tuple[Array, ...], ctx: LeafContext, stats: dict[str, Array], *,
               dare: bool, rescale: bool, trim: bool, consensus: str | None, aggregate: str,
               out_dtype: Any) -> Array:
  """One leaf: base + lam * aggregate(trim(dare(tau))). ``stats``: thresholds f32[N], majority f32."""
  taus = _trimmed_task_vectors(base, experts, ctx, stats.get("thresholds"), dare=dare, trim=trim)
  w = ctx.weights
  if consensus is None:
    agg = sum(w[t] * tau for t, tau in enumerate(taus))
  else:
    gamma = steps.elect_sign(taus, w, consensus, stats["majority"])
    agg = steps.disjoint_aggregate(taus, w, gamma, aggregate)
  scale = ctx.lam * steps.dare_rescale(ctx.drop_rate) if dare and rescale else ctx.lam
  return (f32(base) + scale * agg).astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("dare", "trim", "consensus"))
def _vote_code_fn(base, experts, ctx, thresholds, *, dare, trim, consensus):
  """uint8 code 1 + sign of the vote before zero resolution (0: negative, 1: zero, 2: positive)."""
  taus = _trimmed_task_vectors(base, experts, ctx, thresholds, dare=dare, trim=trim)
  gamma = steps.elect_sign(taus, ctx.weights, consensus, jnp.float32(0.0))
  return (gamma + 1.0).astype(jnp.uint8)


def _sign_balance_fn(base, experts, ctx, thresholds, *, dare, trim, consensus):
  """int32[3, P] partial counts of [#(vote < 0), #(== 0), #(> 0)] (see counting.histograms)."""
  code = _vote_code_fn(base, experts, ctx, thresholds, dare=dare, trim=trim, consensus=consensus)
  return counting.histograms([code], 1, 2, 3)[0]


def make_stats_fn(*, density: float, scope: str, dare: bool, consensus: str | None):
  """compute_stats(leaf_pass, n_experts, seed) for a TIES-style method, or None if none is needed."""
  trim = density < 1.0
  if consensus is None and not trim:
    return None

  def compute_stats(leaf_pass: LeafPass, n_experts: int, sizes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    speculate = consensus is not None and scope == "global"
    balance = None
    if trim and speculate:
      thr, balance = threshold.find_thresholds(leaf_pass, sizes, n_experts, density, scope, dare, vote=consensus)
    elif trim:
      thr = threshold.find_thresholds(leaf_pass, sizes, n_experts, density, scope, dare)
    else:
      thr = {p: np.zeros((n_experts,), np.float32) for p in sizes}
    majority = {p: np.float32(1.0) for p in sizes}
    if speculate:
      if balance is None:  # no count pass, or a threshold differed from its guess: one more pass
        fn = functools.partial(_sign_balance_fn, dare=dare, trim=trim, consensus=consensus)
        bal = leaf_pass(fn, lambda p: (thr[p],))
        balance = (sum(int(np.asarray(v)[0].astype(np.int64).sum()) for v in bal.values()),
                   sum(int(np.asarray(v)[2].astype(np.int64).sum()) for v in bal.values()))
      neg, pos = balance
      m = np.float32(1.0 if pos >= neg else -1.0)
      majority = {p: m for p in sizes}
    return {p: {"thresholds": thr[p], "majority": majority[p]} for p in sizes}

  return compute_stats


def gta_method_kernel(*, dare: bool, rescale: bool, trim: bool, consensus: str | None, aggregate: str):
  return functools.partial(gta_kernel, dare=dare, rescale=rescale, trim=trim, consensus=consensus,
                           aggregate=aggregate)


def trim_count(n: int, density: float) -> int:
  """How many entries a trim with ``density`` keeps out of ``n`` (before ties): max(1, floor(density n))."""
  return max(1, math.floor(density * n))
