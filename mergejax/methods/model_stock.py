r"""Model Stock (Jang, Yun & Han, ECCV 2024, arXiv 2403.19522) and NearSwap (mergekit)."""

from __future__ import annotations

import jax.numpy as jnp

from mergejax.methods.base import Array, f32


def model_stock(base: Array, experts: tuple[Array, ...], *, filter_wise: bool) -> Array:
  r"""Interpolates between the base and the experts' mean by a ratio set by the task vectors' angle.

  .. math::
     \cos\theta = \operatorname{mean}_{s<t} \mathrm{clip}\Big(\frac{\langle\tau_s,\tau_t\rangle}
       {\max(\|\tau_s\|\|\tau_t\|, 10^{-6})}, -1, 1\Big),\quad
     r = \frac{N\cos\theta}{1 + (N-1)\cos\theta},\quad
     \theta_m = r\,\bar\theta + (1 - r)\,\theta_0

  over the whole leaf, or with ``filter_wise`` per vector along the last axis (a 1-D leaf is one
  vector). Where :math:`|1 + (N-1)\cos\theta| < 10^{-6}` the ratio is 0 (the base), as mergekit.
  """
  b = f32(base)
  shape = b.shape
  xs = [f32(e) for e in experts]
  if filter_wise:
    if b.ndim < 1:
      b, xs = b.reshape(1), [x.reshape(1) for x in xs]
    axis = -1
  else:
    b, xs = b.reshape(-1), [x.reshape(-1) for x in xs]
    axis = -1
  taus = [x - b for x in xs]
  norms = [jnp.sqrt(jnp.sum(t * t, axis=axis, keepdims=True)) for t in taus]
  cos = []
  for i in range(len(taus)):
    for j in range(i + 1, len(taus)):
      c = jnp.sum(taus[i] * taus[j], axis=axis, keepdims=True) / jnp.maximum(norms[i] * norms[j], 1e-6)
      cos.append(jnp.clip(c, -1.0, 1.0))
  cos_theta = sum(cos) / len(cos)
  n = len(xs)
  den = 1.0 + (n - 1) * cos_theta
  singular = jnp.abs(den) < 1e-6
  ratio = jnp.where(singular, 0.0, n * cos_theta / jnp.where(singular, 1.0, den))
  mean = sum(xs) / n
  return (ratio * mean + (1.0 - ratio) * b).reshape(shape)


def nearswap(base: Array, expert: Array, t: Array) -> Array:
  r"""mergekit's NearSwap: take the expert's value where it is within ``t`` of the base.

  .. math:: w = \mathrm{clip}\big(t / \max(|\theta_0 - \theta_1|, 10^{-6}), 0, 1\big),\quad
            \theta_m = w\,\theta_1 + (1 - w)\,\theta_0
  """
  a, b = f32(base), f32(expert)
  w = jnp.clip(jnp.asarray(t, jnp.float32) / jnp.maximum(jnp.abs(a - b), 1e-6), 0.0, 1.0)
  return w * b + (1.0 - w) * a
