"""Model Breadcrumbs, DELLA (MAGPRUNE) and mergekit's generalized task arithmetic, in float64.

Ranks are stable (ties by flat position), matching the library's documented tie rule.
"""

from __future__ import annotations

import numpy as np

M32 = 0xFFFFFFFF


def _f(x):
  return np.asarray(x, np.float64)


def stable_ranks(values):
  """Ascending rank of every entry of a flat array, ties broken by position."""
  order = np.argsort(values, kind="stable")
  ranks = np.empty(values.size, np.int64)
  ranks[order] = np.arange(values.size)
  return ranks


def l1_match(masked, tau, eps=1e-7):
  before, after = np.abs(tau).sum(), np.abs(masked).sum()
  return masked if before < eps or after < eps else masked * (before / after)


def breadcrumbs_sparsify(tau, density, gamma, rescale=False):
  """Drop the int(gamma n) largest |tau| and the smallest, keeping int(density n) entries."""
  if density >= 1:
    return tau
  n = tau.size
  keep_n = int(density * n)
  n_bottom = max(0, n - keep_n - int(gamma * n))
  r = stable_ranks(np.abs(tau).ravel()).reshape(tau.shape)
  out = np.where((r >= n_bottom) & (r < n_bottom + keep_n), tau, 0.0)
  return l1_match(out, tau) if rescale else out


def fmix32(h):
  h = np.asarray(h, np.uint64)
  h ^= h >> np.uint64(16)
  h = (h * np.uint64(0x85EBCA6B)) & np.uint64(M32)
  h ^= h >> np.uint64(13)
  h = (h * np.uint64(0xC2B2AE35)) & np.uint64(M32)
  return h ^ (h >> np.uint64(16))


def uniform_draws(leaf_words, expert_word, shape):
  """The library's documented per-entry uniform draw u in [0, 1) with 24 bits (docs/MERGING.md):
  h = fmix32(P(r, c) + k_t), P(r, c) = fmix32(fmix32(r + a0) ^ (c * 0x9E3779B9 + a1)), u = (h >> 8) / 2^24,
  with r the row (axis 0; a 1-D or 0-D leaf is row 0) and c the position within the row."""
  a0, a1 = (np.uint64(int(w)) for w in leaf_words)
  if len(shape) <= 1:
    r = np.zeros((1, 1), np.uint64)
    c = np.arange(max(1, int(np.prod(shape))), dtype=np.uint64)[None, :]
  else:
    r = np.arange(shape[0], dtype=np.uint64)[:, None]
    c = np.arange(int(np.prod(shape[1:])), dtype=np.uint64)[None, :]
  p = fmix32(fmix32((r + a0) & np.uint64(M32)) ^ ((c * np.uint64(0x9E3779B9) + a1) & np.uint64(M32)))
  h = fmix32((p + np.uint64(int(expert_word))) & np.uint64(M32))
  return ((h >> np.uint64(8)).astype(np.float64) / 2.0**24).reshape(shape)


def magprune_prob(tau, density, epsilon):
  """DELLA keep probabilities: linear in the magnitude rank within each row (axis 1)."""
  x = np.abs(tau).reshape(1, -1) if tau.ndim < 2 else np.abs(tau)
  n = x.shape[1]
  ranks = np.stack([stable_ranks(row.ravel()).reshape(row.shape) for row in np.moveaxis(x, 1, -1).reshape(-1, n)])
  ranks = np.moveaxis(ranks.reshape(np.moveaxis(x, 1, -1).shape), -1, 1)
  norm = ranks / (n - 1) if n > 1 else np.full(x.shape, 0.5)
  return ((density - epsilon) + norm * 2 * epsilon).reshape(tau.shape)


def magprune(tau, u, density, epsilon, rescale):
  """Keep each entry with probability p (u < p, u the uniform draw), rescale: l1 / inverse_prob / none."""
  if density >= 1:
    return tau
  p = magprune_prob(tau, density, epsilon)
  out = np.where(u >= 1 - p, tau, 0.0)
  if rescale == "l1":
    return l1_match(out, tau)
  if rescale == "inverse_prob":
    return out / p
  return out


def generalized_task_arithmetic(base, taus, weights, *, consensus, aggregate, lam):
  """theta_0 + lam * agg(w_t tau_t): consensus None / "sum" / "count" (zero vote -> +1), aggregate
  "sum" or "mean" (divide by the sum of the weights of the experts taking part)."""
  b = _f(base)
  w = np.ones(len(taus)) if weights is None else np.asarray(weights, np.float64)
  wt = [wi * t for wi, t in zip(w, taus)]
  if consensus is None:
    mixed = sum(wt)
    den = w.sum() if abs(w.sum()) >= 1e-8 else 1.0
  else:
    vote = sum(wt) if consensus == "sum" else sum(np.sign(x) for x in wt)
    sign = np.where(vote >= 0, 1.0, -1.0)
    agree = [np.sign(x) == sign for x in wt]
    mixed = sum(np.where(a, x, 0.0) for a, x in zip(agree, wt))
    den = sum(np.where(a, wi, 0.0) for a, wi in zip(agree, w))
    den = np.where(den == 0, 1.0, den)
  if aggregate == "mean":
    mixed = mixed / den
  return b + lam * mixed


def breadcrumbs(base, experts, *, density, gamma, lam=1.0, weights=None, rescale=False, consensus=None,
                aggregate="sum"):
  b = _f(base)
  taus = [breadcrumbs_sparsify(_f(e) - b, density, gamma, rescale) for e in experts]
  return generalized_task_arithmetic(b, taus, weights, consensus=consensus, aggregate=aggregate, lam=lam)


def della(base, experts, draws, *, density, epsilon, lam=1.0, weights=None, rescale="l1", consensus="sum",
          aggregate="mean"):
  """draws[t]: expert t's uniform draws for this leaf (see uniform_draws)."""
  b = _f(base)
  taus = [magprune(_f(e) - b, u, density, epsilon, rescale) for e, u in zip(experts, draws)]
  return generalized_task_arithmetic(b, taus, weights, consensus=consensus, aggregate=aggregate, lam=lam)
