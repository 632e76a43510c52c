r"""Spherical interpolation methods: SLERP, NuSLERP, Multi-SLERP and the Karcher mean.

Each treats a leaf (or each row of it) as one vector :math:`v \in \mathbb{R}^d` and interpolates on
the sphere, :math:`\mathrm{slerp}(t; a, b) = \frac{\sin((1-t)\Omega)}{\sin\Omega} a +
\frac{\sin(t\Omega)}{\sin\Omega} b` with :math:`\cos\Omega = \langle a/\|a\|, b/\|b\|\rangle`.
The semantics are mergekit's (``merge_methods/slerp.py``, ``nuslerp.py``, ``multislerp.py``,
``karcher.py``); docs/MERGING.md lists where they depart from it. All math is float32.

On whole leaves each method's result is a linear combination of its input vectors whose coefficients
depend only on their inner products: a statistics pass measures each leaf's Gram matrix
(:mod:`mergejax.methods.gram`), and the kernels, elementwise given it, compute the coefficients and
combine (the engine then merges in flat chunks, one compiled kernel for every leaf shape). Row- and
column-wise NuSLERP stays a whole-leaf kernel.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mergejax.methods import gram as gram_lib, kernels
from mergejax.methods.base import (Array, MergeMethod, Traits, expert_weights, f32, flag, integer, method_factory,
                                   number)


def _norm(x: Array, axis: Any = None, keepdims: bool = False) -> Array:
  return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))


def slerp_coefficients(t: Array, gram: Array, dot_threshold: float = 0.9995, eps: float = 1e-8) -> tuple[Array, Array]:
  r"""mergekit's SLERP of two leaves, each flattened to one vector, as :math:`c_0 v_0 + c_1 v_1`: the
  coefficients from the vectors' Gram matrix (:mod:`mergejax.methods.gram`).

  .. math:: \cos\Omega = \mathrm{clip}(\langle \hat v_0, \hat v_1\rangle, -1, 1),\quad
            \hat v = v / \|v\| \ (\|v\| \le \epsilon: \hat v = v)

  and linear interpolation :math:`(1-t)v_0 + t v_1` where :math:`|\cos\Omega| >` ``dot_threshold``
  (nearly collinear or antipodal).
  """
  n = gram_lib.norms(gram)
  na = jnp.where(n[0] > eps, n[0], 1.0)
  nb = jnp.where(n[1] > eps, n[1], 1.0)
  dot = jnp.clip(gram[0, 1] / (na * nb), -1.0, 1.0)
  return _arc_weights(t, dot, jnp.abs(dot) > dot_threshold)


def nuslerp_coefficients(t: Array, gram: Array, eps: float = 1e-8) -> tuple[Array, Array]:
  r"""mergekit's NuSLERP of two whole vectors as :math:`c_0 v_0 + c_1 v_1` (coefficients from their Gram
  matrix): collinear vectors (:math:`1 - \cos^2\Omega \le \epsilon^2`) are interpolated linearly; norms
  are clamped at 1e-7."""
  n = jnp.maximum(gram_lib.norms(gram), 1e-7)
  cos = jnp.clip(gram[0, 1] / (n[0] * n[1]), -1.0, 1.0)
  return _arc_weights(t, cos, (1.0 - cos * cos) <= eps * eps)


def _arc_weights(t: Array, cos: Array, linear: Array) -> tuple[Array, Array]:
  r""":math:`\sin((1-t)\Omega) / \sin\Omega` and :math:`\sin(t\Omega) / \sin\Omega` for :math:`\cos\Omega` =
  ``cos``; :math:`1 - t` and :math:`t` (linear interpolation) where ``linear``."""
  t = jnp.asarray(t, jnp.float32)
  theta = jnp.arccos(jnp.where(linear, 0.0, cos))
  sin_theta = jnp.where(linear, 1.0, jnp.sin(theta))
  ca = jnp.where(linear, 1.0 - t, jnp.sin((1.0 - t) * theta) / sin_theta)
  cb = jnp.where(linear, t, jnp.sin(t * theta) / sin_theta)
  return ca, cb


def nuslerp_vectors(t: Array, v0: Array, v1: Array, *, flatten: bool, row_wise: bool, eps: float = 1e-8) -> Array:
  r"""mergekit's NuSLERP of each row (vectors along the last axis), or, with ``row_wise``, of each column
  (vectors along axis 0); with ``flatten`` (and for leaves of fewer than 2 axes), of the whole leaf.
  Collinear vectors (:math:`1 - \cos^2\Omega \le \epsilon^2`) are interpolated linearly; norms are
  clamped at 1e-7.
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


def multislerp_coefficients(gram: Array, weights: Array, *, normalize_weights: bool, eps: float = 1e-8) -> Array:
  r"""mergekit's Multi-SLERP of vectors :math:`x_t`: barycentric interpolation on the sphere through the
  tangent space at the normalized weighted mean of the unit vectors, as :math:`\sum_t c_t x_t` (every
  vector below lies in their span; the coefficients from their Gram matrix).

  .. math::
     u_t = \frac{x_t}{\|x_t\| + \epsilon},\ m = \frac{\sum_t w_t u_t}{\|\sum_t w_t u_t\|},\
     g = \sum_t w_t (u_t - \langle u_t, m\rangle m),\
     x = \Big(m \cos\|g\|' + g \frac{\sin\|g\|'}{\|g\|'}\Big) \sum_t w_t \|x_t\|,\ \|g\|' = \|g\| + \epsilon

  If the weighted mean of the unit vectors vanishes (:math:`\|\sum_t w_t u_t\| < \epsilon`, antipodal
  inputs with balancing weights), the result is the weighted sum :math:`\sum_t w_t x_t` (mergekit
  does this for two inputs and raises for more).
  """
  w = jnp.asarray(weights, jnp.float32)
  if normalize_weights:
    w = w / jnp.sum(w)
  norms = gram_lib.norms(gram)
  unit = 1.0 / (norms + eps)  # u_t = unit_t x_t
  quad = lambda c: jnp.sqrt(jnp.maximum(c @ gram @ c, 0.0))  # noqa: E731  (the norm of sum_t c_t x_t)
  mean = w * unit
  mean_norm = quad(mean)
  mean = mean / jnp.where(mean_norm < eps, 1.0, mean_norm)
  dots = unit * (gram @ mean)  # <u_t, m>
  tangent = w * unit - jnp.sum(w * dots) * mean
  tn = quad(tangent) + eps
  out = (mean * jnp.cos(tn) + tangent * (jnp.sin(tn) / tn)) * jnp.sum(w * norms)
  return jnp.where(mean_norm < eps, w, out)


def karcher_coefficients(gram: Array, alphas: Array, *, max_iter: int, tol: float) -> Array:
  r"""mergekit's weighted Karcher (Riemannian) mean of the unit vectors :math:`u_t = x_t / \|x_t\|` on
  the sphere, rescaled by :math:`\sum_t \alpha_t \|x_t\|`, as :math:`\sum_t c_t x_t` (the iterates lie
  in the span of the inputs; the coefficients from their Gram matrix).

  Inputs of norm :math:`\le` ``tol`` take no part in the mean (their weight still counts in the scale).
  Starting from the normalized weighted mean (the first valid unit vector if that vanishes), each of at
  most ``max_iter`` steps moves along

  .. math:: g = \sum_{t:\ \theta_t \ge \mathrm{tol}} \alpha'_t \frac{\theta_t}{\sin\theta_t}
            (u_t - \cos\theta_t\, m),\quad \cos\theta_t = \mathrm{clip}\langle m, u_t\rangle

  by the exponential map :math:`m \leftarrow \cos\|g\|\, m + \sin\|g\|\, g / \|g\|` (renormalized),
  stopping once :math:`\|g\| <` ``tol``. :math:`\alpha'` are the valid inputs' weights normalized.
  """
  a = jnp.asarray(alphas, jnp.float32)
  norms = gram_lib.norms(gram)
  inv = jnp.where(norms == 0, 0.0, 1.0 / jnp.where(norms == 0, 1.0, norms))
  ugram = gram * inv[:, None] * inv[None, :]  # Gram matrix of the unit vectors
  quad = lambda c: jnp.sqrt(jnp.maximum(c @ ugram @ c, 0.0))  # noqa: E731
  valid = norms > tol
  av = jnp.where(valid, a, 0.0)
  av = av / jnp.where(jnp.any(valid), jnp.sum(av), 1.0)
  mean_norm = quad(av)
  first = jax.nn.one_hot(jnp.argmax(valid), len(norms), dtype=jnp.float32)
  mean = jnp.where(mean_norm < tol, first, av / jnp.where(mean_norm < tol, 1.0, mean_norm))

  def step(carry):
    m, i, _ = carry
    dot = jnp.clip(ugram @ m, -1.0, 1.0)
    theta = jnp.arccos(dot)
    use = valid & (theta >= tol)
    coef = jnp.where(use, av * theta / jnp.where(use, jnp.sin(theta), 1.0), 0.0)
    tangent = coef - jnp.sum(coef * dot) * m
    tn = quad(tangent)
    done = tn < tol
    moved = jnp.cos(tn) * m + jnp.sin(tn) * (tangent / jnp.where(done, 1.0, tn))
    un = quad(moved)
    moved = jnp.where(un > tol, moved / jnp.where(un > tol, un, 1.0), moved)
    return jnp.where(done, m, moved), i + 1, done

  mean, _, _ = jax.lax.while_loop(lambda c: (c[1] < max_iter) & ~c[2], step, (mean, jnp.int32(0), jnp.bool_(False)))
  scale = jnp.sum(a * norms)
  return jnp.where(jnp.any(valid), scale * mean * inv, 0.0)


# --------------------------------------------------------------------------- kernels and factories
# Whole-leaf SLERP, NuSLERP, Multi-SLERP and Karcher mean are elementwise given each leaf's Gram matrix
# (a statistics pass, :mod:`mergejax.methods.gram`): per-leaf coefficients, then a linear combination.

_INPUTS_GRAM = gram_lib.gram_stats("inputs")
_TASK_GRAM = gram_lib.gram_stats("task_vectors")
_INPUTS_GRAM_LIKE = gram_lib.gram_like("inputs")
_TASK_GRAM_LIKE = gram_lib.gram_like("task_vectors")


@functools.partial(jax.jit, static_argnames=("out_dtype", "t"))
def _slerp_kernel(base, experts, ctx, stats, *, out_dtype, t):
  del ctx
  ca, cb = slerp_coefficients(t, stats["gram"])
  return (ca * f32(base) + cb * f32(experts[0])).astype(out_dtype)


@method_factory(formula="slerp(t; theta_0, theta_1) of each leaf as one vector (lerp when nearly collinear)",
                t=number("interpolation factor: 0 gives the base, 1 the expert", 0.0, 1.0))
def slerp(t: float = 0.5) -> MergeMethod:
  r"""SLERP of the base and ONE expert (mergekit ``slerp``: ``base_model`` and one other model).

  .. math:: \theta_m = \frac{\sin((1-t)\Omega)}{\sin\Omega}\theta_0 + \frac{\sin(t\Omega)}{\sin\Omega}\theta_1,
            \quad \cos\Omega = \langle \theta_0/\|\theta_0\|, \theta_1/\|\theta_1\| \rangle

  per leaf (flattened), linear interpolation where :math:`|\cos\Omega| > 0.9995`. Shoemake,
  SIGGRAPH 1985; as a merge method, mergekit (Goddard et al., EMNLP 2024 Industry, arXiv 2403.13257).
  """
  return MergeMethod(name="slerp", hparams={"t": t},
                     traits=Traits(uses_base=True, elementwise=True, min_experts=1, max_experts=1),
                     kernel=kernels.bind(_slerp_kernel, t=t), compute_stats=_INPUTS_GRAM, stats_like=_INPUTS_GRAM_LIKE,
                     local_stats=True,
                     reference="Shoemake 1985; mergekit slerp (arXiv 2403.13257)")


def _nuslerp_t(w: Array) -> Array:
  total = w[0] + w[1]
  return jnp.where(jnp.abs(total) < 1e-6, 0.5, w[1] / jnp.where(total == 0, 1.0, total))


@functools.partial(jax.jit, static_argnames=("out_dtype", "flatten", "row_wise"))
@kernels.on_whole_leaves
def _nuslerp_rows_kernel(base, experts, ctx, stats, *, out_dtype, flatten, row_wise):
  del stats
  t = _nuslerp_t(ctx.weights)
  if base is None:
    return nuslerp_vectors(t, experts[0], experts[1], flatten=flatten, row_wise=row_wise).astype(out_dtype)
  b = f32(base)
  out = b + nuslerp_vectors(t, f32(experts[0]) - b, f32(experts[1]) - b, flatten=flatten, row_wise=row_wise)
  return out.astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def _nuslerp_kernel(base, experts, ctx, stats, *, out_dtype):
  ca, cb = nuslerp_coefficients(_nuslerp_t(ctx.weights), stats["gram"])
  x0, x1 = gram_lib.vectors(base, experts, "task_vectors")
  out = ca * x0 + cb * x1
  return (out if base is None else f32(base) + out).astype(out_dtype)


@method_factory(formula="slerp(w_1 / (w_0 + w_1); x_0, x_1), x_t = theta_t - theta_0 (+ theta_0) with a base, "
                        "theta_t without",
                weights=expert_weights("the two experts' weights; t = w_1 / (w_0 + w_1) (None: t = 0.5)"),
                nuslerp_flatten=flag("one vector per leaf (False: one per row, or per column with row_wise)"),
                nuslerp_row_wise=flag("with nuslerp_flatten False, interpolate the vectors along axis 0"))
def nuslerp(weights: Sequence[float] | None = None, nuslerp_flatten: bool = True,
            nuslerp_row_wise: bool = False) -> MergeMethod:
  r"""mergekit's NuSLERP of TWO experts, on their task vectors when a base is given.

  .. math:: \theta_m = \theta_0 + \mathrm{slerp}\big(\tfrac{w_1}{w_0+w_1}; \tau_0, \tau_1\big)

  (without a base, of :math:`\theta_0, \theta_1` themselves). The weights' sum must not be 0 (then
  t = 0.5). mergekit ``nuslerp``; hyperparameter names as mergekit's.
  """
  return MergeMethod(name="nuslerp", hparams={"weights": weights, "nuslerp_flatten": nuslerp_flatten,
                                               "nuslerp_row_wise": nuslerp_row_wise},
                     traits=Traits(uses_base=False, base_is_origin=True, elementwise=nuslerp_flatten, min_experts=2,
                                   max_experts=2),
                     kernel=(kernels.bind(_nuslerp_kernel) if nuslerp_flatten else
                             kernels.bind(_nuslerp_rows_kernel, flatten=False, row_wise=nuslerp_row_wise)),
                     compute_stats=_TASK_GRAM if nuslerp_flatten else None, local_stats=nuslerp_flatten,
                     stats_like=_TASK_GRAM_LIKE if nuslerp_flatten else None,
                     weights=weights, reference="mergekit nuslerp (arXiv 2403.13257)")


@functools.partial(jax.jit, static_argnames=("out_dtype", "normalize_weights", "eps"))
def _multislerp_kernel(base, experts, ctx, stats, *, out_dtype, normalize_weights, eps):
  if len(experts) == 1:
    return f32(experts[0]).astype(out_dtype)
  coef = multislerp_coefficients(stats["gram"], ctx.weights, normalize_weights=normalize_weights, eps=eps)
  out = gram_lib.combine(gram_lib.vectors(base, experts, "task_vectors"), coef)
  return (out if base is None else f32(base) + out).astype(out_dtype)


@method_factory(formula="barycentric interpolation on the sphere of the task vectors (or the models, without a "
                        "base), scaled by the weighted mean norm",
                weights=expert_weights(), normalize_weights=flag("divide the weights by their sum"),
                eps=number("numerical floor of norms", 0.0, 1.0, low_open=True))
def multislerp(weights: Sequence[float] | None = None, normalize_weights: bool = True,
               eps: float = 1e-8) -> MergeMethod:
  r"""mergekit's Multi-SLERP of any number of experts (see :func:`multislerp_coefficients`), on their task
  vectors when a base is given. One expert is returned as is. mergekit ``multislerp``."""
  return MergeMethod(name="multislerp",
                     hparams={"weights": weights, "normalize_weights": normalize_weights, "eps": eps},
                     traits=Traits(uses_base=False, base_is_origin=True, elementwise=True),
                     kernel=kernels.bind(_multislerp_kernel, normalize_weights=normalize_weights, eps=eps),
                     compute_stats=_TASK_GRAM, stats_like=_TASK_GRAM_LIKE, local_stats=True,
                     weights=weights, reference="mergekit multislerp (goddard.blog, 2025)")


@functools.partial(jax.jit, static_argnames=("out_dtype", "max_iter", "tol"))
def _karcher_kernel(base, experts, ctx, stats, *, out_dtype, max_iter, tol):
  xs = gram_lib.vectors(base, experts, "inputs")
  if len(xs) == 1:
    return xs[0].astype(out_dtype)
  w = ctx.weights if base is None else jnp.concatenate([jnp.ones((1,), jnp.float32), ctx.weights])
  coef = karcher_coefficients(stats["gram"], w / jnp.sum(w), max_iter=max_iter, tol=tol)
  return gram_lib.combine(xs, coef).astype(out_dtype)


@method_factory(formula="Riemannian (Karcher) mean of the unit-normalized models on the sphere, rescaled by the "
                        "mean norm",
                max_iter=integer("most Riemannian gradient steps", 1, 10_000),
                tol=number("stop when the tangent step's norm falls below it; inputs of smaller norm are "
                           "left out of the mean", 0.0, 1.0, low_open=True),
                weights=expert_weights("the experts' weights alpha (a given base weighs 1); None: equal"))
def karcher(max_iter: int = 10, tol: float = 1e-5, weights: Sequence[float] | None = None) -> MergeMethod:
  r"""mergekit's Karcher mean of the models (see :func:`karcher_coefficients`). A base, when given, is one more
  point of the mean (mergekit adds ``base_model`` to the inputs), so without a base one expert is
  returned as is. Riemannian center of mass: Karcher, Comm. Pure Appl. Math. 1977; mergekit ``karcher``."""
  return MergeMethod(name="karcher", hparams={"max_iter": max_iter, "tol": tol, "weights": weights},
                     traits=Traits(uses_base=False, elementwise=True),
                     kernel=kernels.bind(_karcher_kernel, max_iter=max_iter, tol=tol), compute_stats=_INPUTS_GRAM,
                     stats_like=_INPUTS_GRAM_LIKE, local_stats=True,
                     weights=weights, reference="Karcher 1977; mergekit karcher (arXiv 2603.04972)")
