"""SLERP, NuSLERP, Multi-SLERP and the Karcher mean, in float64."""

from __future__ import annotations

import numpy as np


def _f(x):
  return np.asarray(x, np.float64)


def slerp_vectors(t, a, b, *, linear_if, eps=1e-8, norm_floor=None):
  """Spherical interpolation of two vectors a, b (t = 0 gives a); ``linear_if(cos)`` picks lerp."""
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  if norm_floor is None:
    ua = a / (na if na > eps else 1.0)
    ub = b / (nb if nb > eps else 1.0)
  else:
    ua, ub = a / max(na, norm_floor), b / max(nb, norm_floor)
  cos = float(np.clip(ua @ ub, -1.0, 1.0))
  if linear_if(cos):
    return (1 - t) * a + t * b
  omega = np.arccos(cos)
  return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def slerp(base, expert, t):
  """mergekit slerp: whole leaf as one vector, lerp where |cos| > 0.9995."""
  a, b = _f(base), _f(expert)
  out = slerp_vectors(t, a.ravel(), b.ravel(), linear_if=lambda c: abs(c) > 0.9995)
  return out.reshape(a.shape)


def nuslerp(base, experts, weights=(1.0, 1.0), flatten=True, row_wise=False):
  """mergekit nuslerp: t = w_1 / (w_0 + w_1); on task vectors when a base is given."""
  x0, x1 = _f(experts[0]), _f(experts[1])
  b = None if base is None else _f(base)
  if b is not None:
    x0, x1 = x0 - b, x1 - b
  total = weights[0] + weights[1]
  t = 0.5 if abs(total) < 1e-6 else weights[1] / total
  lin = lambda c: 1 - c * c <= 1e-16
  if flatten or x0.ndim < 2:
    out = slerp_vectors(t, x0.ravel(), x1.ravel(), linear_if=lin, norm_floor=1e-7).reshape(x0.shape)
  else:
    a, c = (np.swapaxes(x0, 0, -1), np.swapaxes(x1, 0, -1)) if row_wise else (x0, x1)
    flat_a, flat_c = a.reshape(-1, a.shape[-1]), c.reshape(-1, c.shape[-1])
    rows = [slerp_vectors(t, u, v, linear_if=lin, norm_floor=1e-7) for u, v in zip(flat_a, flat_c)]
    out = np.stack(rows).reshape(a.shape)
    if row_wise:
      out = np.swapaxes(out, 0, -1)
  return out if b is None else b + out


def multislerp(base, experts, weights=None, normalize_weights=True, eps=1e-8):
  """mergekit multislerp: exponential map at the normalized weighted mean of unit vectors."""
  xs = [_f(e) for e in experts]
  if len(xs) == 1:
    return xs[0]
  b = None if base is None else _f(base)
  if b is not None:
    xs = [x - b for x in xs]
  w = np.ones(len(xs)) if weights is None else np.asarray(weights, np.float64)
  if normalize_weights:
    w = w / w.sum()
  flat = [x.ravel() for x in xs]
  norms = np.array([np.linalg.norm(x) for x in flat])
  units = [x / (n + eps) for x, n in zip(flat, norms)]
  m = sum(wi * u for wi, u in zip(w, units))
  if np.linalg.norm(m) < eps:
    out = sum(wi * x for wi, x in zip(w, flat))
  else:
    m = m / np.linalg.norm(m)
    g = sum(wi * (u - (u @ m) * m) for wi, u in zip(w, units))
    gn = np.linalg.norm(g) + eps
    out = (m * np.cos(gn) + g * np.sin(gn) / gn) * float(w @ norms)
  out = out.reshape(xs[0].shape)
  return out if b is None else b + out


def karcher(experts, weights=None, max_iter=10, tol=1e-5):
  """Fréchet mean on the unit sphere by Riemannian gradient steps (log map, then exp map)."""
  xs = [_f(e).ravel() for e in experts]
  shape = np.shape(experts[0])
  if len(xs) == 1:
    return xs[0].reshape(shape)
  alpha = np.full(len(xs), 1.0 / len(xs)) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
  norms = np.array([np.linalg.norm(x) for x in xs])
  ok = [i for i in range(len(xs)) if norms[i] > tol]
  if not ok:
    return np.zeros(shape)
  a = alpha[ok] / alpha[ok].sum()
  units = [xs[i] / norms[i] for i in ok]
  m = sum(ai * u for ai, u in zip(a, units))
  m = units[0].copy() if np.linalg.norm(m) < tol else m / np.linalg.norm(m)
  for _ in range(max_iter):
    g = np.zeros_like(m)
    for ai, u in zip(a, units):  # log map of u at m, weighted
      c = float(np.clip(m @ u, -1.0, 1.0))
      theta = np.arccos(c)
      if theta >= tol:
        g += ai * theta / np.sin(theta) * (u - c * m)
    gn = np.linalg.norm(g)
    if gn < tol:
      break
    m = np.cos(gn) * m + np.sin(gn) * g / gn
    if np.linalg.norm(m) > tol:
      m = m / np.linalg.norm(m)
  return (float(alpha @ norms) * m).reshape(shape)
