"""Independent float64 NumPy implementations of the merge methods, written from the papers' formulas
and the official TIES code's semantics (not from mergejax's code). Trees are {path: np.ndarray}."""

from __future__ import annotations

import math

import numpy as np


def _f64(tree):
  return {p: np.asarray(x, np.float64) for p, x in tree.items()}


def average(experts, weights=None):
  ex = [_f64(e) for e in experts]
  w = np.ones(len(ex)) if weights is None else np.asarray(weights, np.float64)
  return {p: sum(w[t] * ex[t][p] for t in range(len(ex))) / w.sum() for p in ex[0]}


def task_vectors(base, experts):
  b = _f64(base)
  return b, [{p: _f64(e)[p] - b[p] for p in b} for e in experts]


def task_arithmetic(base, experts, lam=1.0, weights=None, taus=None):
  b, tv = task_vectors(base, experts)
  tv = taus if taus is not None else tv
  w = np.ones(len(tv)) if weights is None else np.asarray(weights, np.float64)
  return {p: b[p] + lam * sum(w[t] * tv[t][p] for t in range(len(tv))) for p in b}


def kth_largest(values: np.ndarray, k: int) -> float:
  return float(np.sort(np.abs(values.ravel()))[::-1][k - 1])


def trim(taus, density, scope):
  """Keep |tau| >= the k-th largest |tau|, k = max(1, floor(density * n)), over the model or per leaf."""
  out = []
  for tau in taus:
    if density >= 1.0:
      out.append(dict(tau))
      continue
    if scope == "global":
      flat = np.concatenate([v.ravel() for v in tau.values()])
      thr = kth_largest(flat, max(1, math.floor(density * flat.size)))
      out.append({p: np.where(np.abs(v) >= thr, v, 0.0) for p, v in tau.items()})
    else:
      out.append({p: np.where(np.abs(v) >= kth_largest(v, max(1, math.floor(density * v.size))), v, 0.0)
                  for p, v in tau.items()})
  return out


def ties_from_taus(b, taus, *, density, lam, scope, sign, aggregate, weights):
  n = len(taus)
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  tt = trim(taus, density, scope)
  votes = {}
  for p in b:
    if sign == "sum":
      votes[p] = sum(w[t] * tt[t][p] for t in range(n))
    else:
      votes[p] = sum(np.sign(w[t] * tt[t][p]) for t in range(n))
  if scope == "global":  # official resolve_zero_signs(..., "majority") over the whole model
    total = sum(np.sign(v).sum() for v in votes.values())
    majority = 1.0 if total >= 0 else -1.0
  out = {}
  for p in b:
    gamma = np.sign(votes[p])
    gamma = np.where(gamma == 0, majority if scope == "global" else 1.0, gamma)
    agree = [(np.sign(tt[t][p]) == gamma) & (tt[t][p] != 0) for t in range(n)]
    num = sum(np.where(agree[t], w[t] * tt[t][p], 0.0) for t in range(n))
    if aggregate == "mean":
      den = sum(np.where(agree[t], w[t], 0.0) for t in range(n))
      num = num / np.where(den > 0, den, 1.0)
    out[p] = b[p] + lam * num
  return out


def ties(base, experts, *, density=0.2, lam=1.0, scope="global", sign="sum", aggregate="mean", weights=None):
  b, taus = task_vectors(base, experts)
  return ties_from_taus(b, taus, density=density, lam=lam, scope=scope, sign=sign, aggregate=aggregate,
                        weights=weights)


def dare_taus(base, experts, masks, drop_rate, rescale=True):
  """masks[t][path]: boolean keep masks (drawn by the library's documented key derivation)."""
  b, taus = task_vectors(base, experts)
  scale = 1.0 / (1.0 - drop_rate) if rescale else 1.0
  return b, [{p: np.where(masks[t][p], tau[p], 0.0) * scale for p in tau} for t, tau in enumerate(taus)]


def dare_linear(base, experts, masks, *, drop_rate, lam=1.0, rescale=True, weights=None):
  b, taus = dare_taus(base, experts, masks, drop_rate, rescale)
  return task_arithmetic(base, experts, lam=lam, weights=weights, taus=taus)


def dare_ties(base, experts, masks, *, drop_rate, density=1.0, lam=1.0, scope="global", sign="sum",
              aggregate="mean", weights=None):
  b, taus = dare_taus(base, experts, masks, drop_rate)
  return ties_from_taus(b, taus, density=density, lam=lam, scope=scope, sign=sign, aggregate=aggregate,
                        weights=weights)
