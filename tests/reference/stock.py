"""Model Stock, NearSwap and SCE, in float64."""

from __future__ import annotations

import itertools

import numpy as np

from tests.reference.sparse import stable_ranks


def _f(x):
  return np.asarray(x, np.float64)


def model_stock(base, experts, filter_wise=False):
  """t = N cos / (1 + (N - 1) cos), cos the mean pairwise cosine of the task vectors;
  theta = t * mean(theta_i) + (1 - t) * theta_0 (t = 0 where the denominator is ~0)."""
  b = _f(base)
  xs = [_f(e) for e in experts]
  n = len(xs)
  if filter_wise:
    bb = b.reshape(1) if b.ndim == 0 else b
    vecs = bb.reshape(-1, bb.shape[-1])
    rows = [model_stock(v, [x.reshape(vecs.shape)[i] for x in xs]) for i, v in enumerate(vecs)]
    return np.stack(rows).reshape(b.shape)
  taus = [(x - b).ravel() for x in xs]
  cos = [np.clip(s @ t / max(np.linalg.norm(s) * np.linalg.norm(t), 1e-6), -1, 1)
         for s, t in itertools.combinations(taus, 2)]
  c = float(np.mean(cos))
  den = 1 + (n - 1) * c
  t = 0.0 if abs(den) < 1e-6 else n * c / den
  return t * sum(xs) / n + (1 - t) * b


def nearswap(base, expert, t):
  a, b = _f(base), _f(expert)
  w = np.clip(t / np.maximum(np.abs(a - b), 1e-6), 0, 1)
  return w * b + (1 - w) * a


def sce(base, experts, select_topk=1.0):
  """Select top-variance positions (k = int(select_topk * #nonzero variance), ties by position), weight
  each task vector by its mean square (normalized), erase minority signs (sum rule), weighted mean."""
  b = _f(base)
  taus = [_f(e) - b for e in experts]
  n = len(taus)
  if select_topk < 1:
    var = np.var(np.stack(taus), axis=0)
    k = int(np.float32(np.count_nonzero(var)) * np.float32(select_topk)) if select_topk > 0 else 0
    r = stable_ranks(-var.ravel()).reshape(var.shape)  # descending, ties by position
    keep = r < k
    taus = [np.where(keep, t, 0.0) for t in taus]
  ms = np.array([np.mean(t ** 2) for t in taus])
  w = np.full(n, 1.0 / n) if abs(ms.sum()) < 1e-6 else ms / ms.sum()
  sign = np.where(sum(taus) >= 0, 1.0, -1.0)
  agree = [np.sign(t) == sign for t in taus]
  num = sum(np.where(a, wi * t, 0.0) for a, wi, t in zip(agree, w, taus))
  den = sum(np.where(a, wi, 0.0) for a, wi in zip(agree, w))
  return b + num / np.maximum(den, 1e-6)
