"""TSV-M, Iso-C, Iso-CTS and CART on one matrix, in float64, following the official codes' construction
(zero-padded singular-vector blocks orthogonalized by the SVD's U V^T)."""

from __future__ import annotations

import numpy as np


def _f(x):
  return np.asarray(x, np.float64)


def _svd(x):
  return np.linalg.svd(x, full_matrices=False)


def _orth(a):
  u, _, vt = _svd(a)
  return u @ vt


def tsv_m(base, experts, lam=1.0):
  """Gargiulo et al. 2025: per task the top int(r / T) triplets placed in block t of r-wide U, s, V;
  Delta = orth(U) diag(s) orth(V). Non-matrices: mean task vector."""
  b = _f(base)
  taus = [_f(e) - b for e in experts]
  T = len(taus)
  if b.ndim != 2 or int(min(b.shape) * (1.0 / T)) == 0:
    return b + lam * sum(taus) / T
  m, n = b.shape
  r = min(m, n)
  k = int(r * (1.0 / T))
  U, S, V = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
  for i, tau in enumerate(taus):
    u, s, vt = _svd(tau)
    U[:, i * k:(i + 1) * k] = u[:, :k]
    S[i * k:(i + 1) * k] = s[:k]
    V[i * k:(i + 1) * k] = vt[:k]
  return b + lam * (_orth(U) @ np.diag(S) @ _orth(V))


def iso_c(base, experts, lam=1.0):
  b = _f(base)
  taus = [_f(e) - b for e in experts]
  if b.ndim != 2:
    return b + lam * sum(taus) / len(taus)
  u, s, vt = _svd(sum(taus))
  return b + lam * s.mean() * (u @ vt)


def iso_cts(base, experts, common_space_fraction=0.8, lam=1.0):
  b = _f(base)
  taus = [_f(e) - b for e in experts]
  T = len(taus)
  if b.ndim != 2:
    return b + lam * sum(taus) / T
  r = min(b.shape)
  c = int(r * common_space_fraction)
  spec = round((r - c) / T) * T
  if spec > r:
    spec -= T
  c, k = r - spec, spec // T
  u, s, vt = _svd(sum(taus))
  U, S, V = np.zeros((b.shape[0], r)), np.zeros(r), np.zeros((r, b.shape[1]))
  for i, tau in enumerate(taus):
    resid = tau - u[:, :c] @ u[:, :c].T @ tau
    ut, st, vtt = _svd(resid)
    U[:, i * k:(i + 1) * k], S[i * k:(i + 1) * k], V[i * k:(i + 1) * k] = ut[:, :k], st[:k], vtt[:k]
  U[:, T * k:], S[T * k:], V[T * k:] = u[:, :c], s[:c], vt[:c]
  return b + lam * S.mean() * (_orth(U) @ _orth(V))


def cart(experts, rank_ratio=0.12, lam=2.0):
  """Choi et al. 2024: mean + lam * sum of rank-k SVDs of the experts centered at their mean."""
  xs = [_f(e) for e in experts]
  mean = sum(xs) / len(xs)
  if mean.ndim != 2:
    return mean
  r = min(mean.shape)
  k = 0 if rank_ratio <= 0 else r if rank_ratio >= 1 else max(1, int(rank_ratio * r))
  total = np.zeros_like(mean)
  for x in xs:
    u, s, vt = _svd(x - mean)
    total += u[:, :k] @ np.diag(s[:k]) @ vt[:k]
  return mean + lam * total
