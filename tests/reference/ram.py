"""RAM, RAM+ (tensor-local) and Arcee Fusion, in float64, from their formulas (arXiv 2601.13572; mergekit's
method descriptions)."""

from __future__ import annotations

import numpy as np


def _f(x):
  return np.asarray(x, np.float64)


def _masks(base, experts, epsilon):
  b = _f(base)
  taus = [_f(x) - b for x in experts]
  nz = [np.abs(t) > epsilon for t in taus]
  return b, taus, nz, sum(m.astype(np.int64) for m in nz)


def ram(base, experts, epsilon=1e-5):
  """Each entry: the mean change of the experts whose change exceeds epsilon (the base where none)."""
  b, taus, nz, c = _masks(base, experts, epsilon)
  return b + sum(t * m for t, m in zip(taus, nz)) / np.maximum(c, 1)


def ramplus_tl(base, experts, r=0.1, alpha=0.2, epsilon=1e-5):
  """RAM, with expert t's entries changed by it alone scaled by 1 + r * clip(rho_t, 0, alpha), rho_t the
  leaf's count of t's shared changes over its count of unique ones (denominator at least epsilon)."""
  b, taus, nz, c = _masks(base, experts, epsilon)
  out = b.copy()
  for t, m in zip(taus, nz):
    rho = np.sum(m & (c > 1)) / max(float(np.sum(m & (c == 1))), epsilon)
    lam = 1 + r * min(max(rho, 0.0), alpha)
    out = out + np.where(c == 1, lam * t * m, t * m / np.maximum(c, 1))
  return out


def fusion_importance(base, expert):
  """|theta_1 - theta_0| * KL(softmax(theta_1) + 1e-8 || softmax(theta_0) + 1e-8) along the last axis."""
  b, x = np.atleast_1d(_f(base)), np.atleast_1d(_f(expert))

  def softmax(v):
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

  p, q = softmax(x) + 1e-8, softmax(b) + 1e-8
  kl = np.sum(p * np.log(p / q), axis=-1, keepdims=True)
  return (np.abs(x - b) * kl).reshape(np.shape(base))


def arcee_fusion(base, expert):
  """The expert's value where importance >= Q2 + 1.5 (Q3 - Q1), the quartiles the sorted importances at
  positions floor(q (n - 1)); the base elsewhere. Also returns the importances and the fence."""
  s = fusion_importance(base, expert)
  srt = np.sort(s.reshape(-1))
  n = srt.size
  q1, q2, q3 = (srt[int(np.float32(q) * np.float32(n - 1))] for q in (0.25, 0.5, 0.75))
  fence = q2 + 1.5 * (q3 - q1)
  return np.where(s >= fence, _f(expert), _f(base)), s, fence
