r"""Per-leaf sparsifiers of one task vector and the task-arithmetic aggregation they feed.

* :func:`breadcrumbs` (Model Breadcrumbs, Davari & Belilovsky, 2023, arXiv 2312.06795): drop the
  largest ``gamma`` fraction of :math:`|\tau|` (outliers) and the smallest entries, keeping ``density``.
* :func:`magprune_keep`, :func:`magprune_rescale` (DELLA's MAGPRUNE, Deep et al., 2024, arXiv
  2406.11617): keep each entry with a probability that grows linearly with its magnitude rank in its row,
  from density - epsilon to density + epsilon, then rescale.
* :func:`aggregate`: mergekit's generalized task arithmetic over the sparsified task vectors (weights,
  optional TIES sign consensus, sum or normalized mean).

Ranks are stable (:mod:`mergejax.methods.selection`), so exactly the stated counts are kept.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from mergejax.methods import selection, steps
from mergejax.methods.base import Array

RESCALES = ("none", "l1", "inverse_prob")


def breadcrumbs_counts(n: int, density: float, gamma: float) -> tuple[int, int]:
  """(first kept rank, number kept) of an ``n``-entry leaf, ranks ascending by magnitude, as mergekit's
  ``magnitude_outliers``: keep int(density n) entries above the n - int(density n) - int(gamma n)
  smallest (fewer outliers are dropped when density + gamma > 1)."""
  target = int(density * n)
  n_top = int(gamma * n)
  return max(0, n - target - n_top), target


def breadcrumbs(tau: Array, density: float, gamma: float, rescale: str) -> Array:
  """One task vector with its outliers and its smallest entries dropped (a no-op at density >= 1)."""
  if density >= 1.0:
    return tau
  lo, count = breadcrumbs_counts(math.prod(tau.shape), density, gamma)
  out = jnp.where(selection.rank_band(jnp.abs(tau), lo, lo + count), tau, 0.0)
  return selection.l1_rescale(out, tau) if rescale == "l1" else out


def magprune_keep_prob(tau: Array, density: float, epsilon: float) -> Array:
  r""":math:`p = (d - \epsilon) + 2\epsilon\, r / (n - 1)` with r the stable rank of :math:`|\tau|` in its
  row (axis 1; a leaf of fewer than 2 dimensions is one row) and n the row length; rows of one entry
  get :math:`p = d`."""
  ranks = selection.row_ranks(tau, magnitude=True)
  n = tau.shape[1] if tau.ndim >= 2 else max(1, math.prod(tau.shape))
  rank_norm = ranks.astype(jnp.float32) / jnp.float32(n - 1) if n > 1 else jnp.full(tau.shape, 0.5, jnp.float32)
  return jnp.float32(density - epsilon) + rank_norm * jnp.float32(2 * epsilon)


def magprune_keep(tau: Array, hash_: Array, density: float, epsilon: float) -> tuple[Array, Array]:
  """(keep mask, keep probability p) of DELLA's MAGPRUNE of one task vector with the uniform draws of
  ``hash_`` (see :func:`mergejax.methods.steps.dare_keep`): entry kept iff its draw u >= 1 - p."""
  p = magprune_keep_prob(tau, density, epsilon)
  return steps.dare_keep([hash_], 1.0 - p)[0], p


def magprune_rescale(tau: Array, keep: Array, p: Array, rescale: str) -> Array:
  """``tau`` where ``keep``, rescaled: ``"l1"`` (:func:`~mergejax.methods.selection.l1_rescale`),
  ``"inverse_prob"`` (divided by ``p``) or ``"none"``."""
  out = jnp.where(keep, tau, 0.0)
  if rescale == "l1":
    return selection.l1_rescale(out, tau)
  if rescale == "inverse_prob":
    return out / p
  return out


def aggregate(taus: Sequence[Array], weights: Array, *, consensus: str | None, aggregate_: str) -> Array:
  r"""mergekit's generalized task arithmetic (``merge_group``) of sparsified task vectors.

  Without consensus: :math:`\sum_t w_t\hat\tau_t`, divided by :math:`\sum_t w_t` for ``"mean"`` (by 1 if
  that is below 1e-8). With consensus (``"sum"`` or ``"count"``, as :func:`mergejax.methods.ties.ties`,
  a zero vote electing +1): only the experts whose non-zero entry agrees with the elected sign, summed
  or divided by the sum of their weights.
  """
  if consensus is None:
    # Products and the division rounded on their own (steps.rounded), as mergekit and task_arithmetic.
    out = sum(steps.rounded(weights[t] * tau, tau) for t, tau in enumerate(taus))
    if aggregate_ == "mean":
      den = sum(weights[t] for t in range(len(taus)))
      den = steps.rounded(jnp.broadcast_to(jnp.where(jnp.abs(den) < 1e-8, 1.0, den), out.shape), out)
      out = out / den
    return out
  vote = steps.sign_vote(taus, weights, consensus)
  positive = steps.elect_positive(vote, jnp.float32(1.0))
  return steps.disjoint_aggregate(taus, weights, vote, positive, aggregate_)
