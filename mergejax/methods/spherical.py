r"""Spherical interpolation methods: SLERP, NuSLERP, Multi-SLERP and the Karcher mean.

Each treats a leaf (or each row of it) as one vector :math:`v \in \mathbb{R}^d` and interpolates on
the sphere, :math:`\mathrm{slerp}(t; a, b) = \frac{\sin((1-t)\Omega)}{\sin\Omega} a +
\frac{\sin(t\Omega)}{\sin\Omega} b` with :math:`\cos\Omega = \langle a/\|a\|, b/\|b\|\rangle`.
The semantics are mergekit's (``merge_methods/slerp.py``, ``nuslerp.py``, ``multislerp.py``,
``karcher.py``); docs/MERGING.md lists where they depart from it. All math is float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mergejax.methods.base import Array, f32


def _norm(x: Array, axis: Any = None, keepdims: bool = False) -> Array:
  return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def slerp(t: Array, v0: Array, v1: Array, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Array:
  r"""mergekit's SLERP of two leaves, each flattened to one vector.

  .. math:: \cos\Omega = \mathrm{clip}(\langle \hat v_0, \hat v_1\rangle, -1, 1),\quad
            \hat v = v / \|v\| \ (\|v\| \le \epsilon: \hat v = v)

  and linear interpolation :math:`(1-t)v_0 + t v_1` where :math:`|\cos\Omega| >` ``dot_threshold``
  (nearly collinear or antipodal).
  """
  a, b = f32(v0), f32(v1)
  if a.size == 0:
    return a
  na, nb = _norm(a), _norm(b)
  na = jnp.where(na > eps, na, 1.0)
  nb = jnp.where(nb > eps, nb, 1.0)
  dot = jnp.clip(jnp.sum((a / na) * (b / nb)), -1.0, 1.0)
  t = jnp.asarray(t, jnp.float32)
  linear = jnp.abs(dot) > dot_threshold
  theta = jnp.arccos(jnp.where(linear, 0.0, dot))
  sin_theta = jnp.where(linear, 1.0, jnp.sin(theta))
  ca = jnp.where(linear, 1.0 - t, jnp.sin((1.0 - t) * theta) / sin_theta)
  cb = jnp.where(linear, t, jnp.sin(t * theta) / sin_theta)
  return ca * a + cb * b


def nuslerp(t: Array, v0: Array, v1: Array, *, flatten: bool, row_wise: bool, eps: float = 1e-8) -> Array:
  r"""mergekit's NuSLERP: SLERP of the whole leaf (``flatten``), of each row (vectors along the last
  axis), or, with ``row_wise``, of each column (vectors along axis 0). Collinear vectors
  (:math:`1 - \cos^2\Omega \le \epsilon^2`) are interpolated linearly; norms are clamped at 1e-7.
  """
  a, b = f32(v0), f32(v1)
  shape = a.shape
  if a.size == 0:
    return a
  if flatten or a.ndim < 2:
    a, b = a.reshape(-1), b.reshape(-1)
  elif row_wise:
    a, b = jnp.swapaxes(a, 0, -1), jnp.swapaxes(b, 0, -1)
  ua = a / jnp.maximum(_norm(a, -1, True), 1e-7)
  ub = b / jnp.maximum(_norm(b, -1, True), 1e-7)
  cos = jnp.clip(jnp.sum(ua * ub, axis=-1, keepdims=True), -1.0, 1.0)
  t = jnp.asarray(t, jnp.float32)
  colinear = (1.0 - cos * cos) <= eps * eps
  theta = jnp.arccos(jnp.where(colinear, 0.0, cos))
  sin_theta = jnp.where(colinear, 1.0, jnp.sin(theta))
  out = jnp.where(colinear, (1.0 - t) * a + t * b,
                  (jnp.sin((1.0 - t) * theta) * a + jnp.sin(t * theta) * b) / sin_theta)
  if not (flatten or len(shape) < 2) and row_wise:
    out = jnp.swapaxes(out, 0, -1)
  return out.reshape(shape)


def multislerp(xs: tuple[Array, ...], weights: Array, *, normalize_weights: bool, eps: float = 1e-8) -> Array:
  r"""mergekit's Multi-SLERP: barycentric interpolation on the sphere through the tangent space at the
  normalized weighted mean of the unit vectors.

  .. math::
     u_t = \frac{x_t}{\|x_t\| + \epsilon},\ m = \frac{\sum_t w_t u_t}{\|\sum_t w_t u_t\|},\
     g = \sum_t w_t (u_t - \langle u_t, m\rangle m),\
     x = \Big(m \cos\|g\|' + g \frac{\sin\|g\|'}{\|g\|'}\Big) \sum_t w_t \|x_t\|,\ \|g\|' = \|g\| + \epsilon

  If the weighted mean of the unit vectors vanishes (:math:`\|\sum_t w_t u_t\| < \epsilon`, antipodal
  inputs with balancing weights), the result is the weighted sum :math:`\sum_t w_t x_t` (mergekit
  does this for two inputs and raises for more).
  """
  shape = xs[0].shape
  xs = [f32(x).reshape(-1) for x in xs]
  w = jnp.asarray(weights, jnp.float32)
  if normalize_weights:
    w = w / jnp.sum(w)
  norms = [_norm(x) for x in xs]
  units = [x / (n + eps) for x, n in zip(xs, norms)]
  mean = sum(w[t] * u for t, u in enumerate(units))
  mean_norm = _norm(mean)
  mean = mean / jnp.where(mean_norm < eps, 1.0, mean_norm)
  tangent = sum(w[t] * (u - jnp.sum(u * mean) * mean) for t, u in enumerate(units))
  tn = _norm(tangent) + eps
  out = (mean * jnp.cos(tn) + tangent * (jnp.sin(tn) / tn)) * sum(w[t] * n for t, n in enumerate(norms))
  linear = sum(w[t] * x for t, x in enumerate(xs))
  return jnp.where(mean_norm < eps, linear, out).reshape(shape)


def karcher(xs: tuple[Array, ...], alphas: Array, *, max_iter: int, tol: float) -> Array:
  r"""mergekit's weighted Karcher (Riemannian) mean of the unit vectors on the sphere, rescaled by
  :math:`\sum_t \alpha_t \|x_t\|`.

  Inputs of norm :math:`\le` ``tol`` take no part in the mean (their weight still counts in the scale).
  Starting from the normalized weighted mean (the first valid unit vector if that vanishes), each of at
  most ``max_iter`` steps moves along

  .. math:: g = \sum_{t:\ \theta_t \ge \mathrm{tol}} \alpha'_t \frac{\theta_t}{\sin\theta_t}
            (u_t - \cos\theta_t\, m),\quad \cos\theta_t = \mathrm{clip}\langle m, u_t\rangle

  by the exponential map :math:`m \leftarrow \cos\|g\|\, m + \sin\|g\|\, g / \|g\|` (renormalized),
  stopping once :math:`\|g\| <` ``tol``. :math:`\alpha'` are the valid inputs' weights normalized.
  """
  shape = xs[0].shape
  xs = [f32(x).reshape(-1) for x in xs]
  a = jnp.asarray(alphas, jnp.float32)
  norms = jnp.stack([_norm(x) for x in xs])
  units = [jnp.where(norms[t] == 0, 0.0, x / jnp.where(norms[t] == 0, 1.0, norms[t])) for t, x in enumerate(xs)]
  valid = norms > tol
  av = jnp.where(valid, a, 0.0)
  av = av / jnp.where(jnp.any(valid), jnp.sum(av), 1.0)
  mean = sum(av[t] * u for t, u in enumerate(units))
  mean_norm = _norm(mean)
  first = jnp.argmax(valid)
  first_unit = sum(jnp.where(first == t, u, 0.0) for t, u in enumerate(units))
  mean = jnp.where(mean_norm < tol, first_unit, mean / jnp.where(mean_norm < tol, 1.0, mean_norm))

  def step(carry):
    m, i, _ = carry
    tangent = jnp.zeros_like(m)
    for t, u in enumerate(units):
      dot = jnp.clip(jnp.sum(m * u), -1.0, 1.0)
      theta = jnp.arccos(dot)
      use = valid[t] & (theta >= tol)
      coef = jnp.where(use, av[t] * theta / jnp.where(use, jnp.sin(theta), 1.0), 0.0)
      tangent = tangent + coef * (u - dot * m)
    tn = _norm(tangent)
    done = tn < tol
    moved = jnp.cos(tn) * m + jnp.sin(tn) * (tangent / jnp.where(done, 1.0, tn))
    un = _norm(moved)
    moved = jnp.where(un > tol, moved / jnp.where(un > tol, un, 1.0), moved)
    return jnp.where(done, m, moved), i + 1, done

  mean, _, _ = jax.lax.while_loop(lambda c: (c[1] < max_iter) & ~c[2], step, (mean, jnp.int32(0), jnp.bool_(False)))
  scale = jnp.sum(a * norms)
  out = jnp.where(jnp.any(valid), scale * mean, 0.0)
  return out.reshape(shape)
