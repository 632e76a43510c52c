r"""Model Stock (Jang, Yun & Han, ECCV 2024, arXiv 2403.19522) and NearSwap (mergekit)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mergejax.methods import gram as gram_lib, kernels
from mergejax.methods.base import Array, MergeMethod, Traits, f32, flag, method_factory, number


def model_stock_ratio(gram: Array) -> Array:
  r"""Model Stock's interpolation ratio from the Gram matrix of the task vectors :math:`\tau_t`.

  .. math::
     \cos\theta = \operatorname{mean}_{s<t} \mathrm{clip}\Big(\frac{\langle\tau_s,\tau_t\rangle}
       {\max(\|\tau_s\|\|\tau_t\|, 10^{-6})}, -1, 1\Big),\quad
     r = \frac{N\cos\theta}{1 + (N-1)\cos\theta}

  Where :math:`|1 + (N-1)\cos\theta| < 10^{-6}` the ratio is 0 (the base), as mergekit.
  """
  n = gram.shape[0]
  norms = gram_lib.norms(gram)
  return _ratio([jnp.clip(gram[s, t] / jnp.maximum(norms[s] * norms[t], 1e-6), -1.0, 1.0)
                 for s in range(n) for t in range(s + 1, n)], n)


def _ratio(cos: list[Array], n: int) -> Array:
  """r = N cos / (1 + (N - 1) cos) of the pairwise cosines' mean; 0 where the denominator vanishes."""
  # One multiply by a constant per use of the summed cosines (no constant chain for XLA to fold, which
  # it does differently in one- and multi-device programs).
  cos_sum = sum(cos)
  den = 1.0 + cos_sum * ((n - 1) / len(cos))
  singular = jnp.abs(den) < 1e-6
  return jnp.where(singular, 0.0, cos_sum * (n / len(cos)) / jnp.where(singular, 1.0, den))


def model_stock_rows(base: Array, experts: tuple[Array, ...]) -> Array:
  r"""Model Stock with one ratio per vector along the last axis (``filter_wise``; a 1-D leaf is one
  vector): :math:`\theta_m = r\,\bar\theta + (1 - r)\,\theta_0`, r as :func:`model_stock_ratio`."""
  b = f32(base)
  shape = b.shape
  xs = [f32(e) for e in experts]
  if b.ndim < 1:
    b, xs = b.reshape(1), [x.reshape(1) for x in xs]
  taus = [x - b for x in xs]
  norms = [jnp.sqrt(jnp.sum(t * t, axis=-1, keepdims=True)) for t in taus]
  cos = []
  for i in range(len(taus)):
    for j in range(i + 1, len(taus)):
      c = jnp.sum(taus[i] * taus[j], axis=-1, keepdims=True) / jnp.maximum(norms[i] * norms[j], 1e-6)
      cos.append(jnp.clip(c, -1.0, 1.0))
  n = len(xs)
  ratio = _ratio(cos, n)
  mean = sum(xs) * (1.0 / n)
  return (ratio * mean + (1.0 - ratio) * b).reshape(shape)


def nearswap_leaf(base: Array, expert: Array, t: Array) -> Array:
  r"""mergekit's NearSwap: take the expert's value where it is within ``t`` of the base.

  .. math:: w = \mathrm{clip}\big(t / \max(|\theta_0 - \theta_1|, 10^{-6}), 0, 1\big),\quad
            \theta_m = w\,\theta_1 + (1 - w)\,\theta_0
  """
  a, b = f32(base), f32(expert)
  w = jnp.clip(jnp.asarray(t, jnp.float32) / jnp.maximum(jnp.abs(a - b), 1e-6), 0.0, 1.0)
  return w * b + (1.0 - w) * a


def _stock_rows_kernel(base, experts, ctx, stats, *, out_dtype):
  del ctx, stats
  return model_stock_rows(base, experts).astype(out_dtype)


_jit_stock_rows = jax.jit(kernels.on_whole_leaves(_stock_rows_kernel), static_argnames=("out_dtype",))


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def _stock_kernel(base, experts, ctx, stats, *, out_dtype):
  """Whole-leaf Model Stock, elementwise given the leaf's Gram matrix of task vectors."""
  del ctx
  ratio = model_stock_ratio(stats["gram"])
  b = f32(base)
  mean = sum(f32(e) for e in experts) * (1.0 / len(experts))
  return (ratio * mean + (1.0 - ratio) * b).astype(out_dtype)


@method_factory(formula="theta_0 + r (mean_t theta_t - theta_0), r = N cos / (1 + (N - 1) cos), cos the mean pairwise "
                        "cosine of the task vectors (per leaf)",
                filter_wise=flag("one ratio per vector along the last axis instead of per leaf"))
def model_stock(filter_wise: bool = False) -> MergeMethod:
  r"""Model Stock: the base pulled toward the experts' mean by the ratio their task vectors' angle
  implies (see :func:`model_stock_ratio`). At least two experts; symmetric in them. mergekit
  ``model_stock``."""
  return MergeMethod(name="model_stock", hparams={"filter_wise": filter_wise},
                     traits=Traits(uses_base=True, elementwise=not filter_wise, min_experts=2),
                     kernel=kernels.bind(_jit_stock_rows) if filter_wise else kernels.bind(_stock_kernel),
                     compute_stats=None if filter_wise else gram_lib.gram_stats("task_vectors"),
                     stats_like=None if filter_wise else gram_lib.gram_like("task_vectors"),
                     local_stats=not filter_wise,
                     reference="Jang, Yun & Han, ECCV 2024, arXiv 2403.19522")


def _nearswap_kernel(base, experts, ctx, stats, *, out_dtype, t):
  del ctx, stats
  return nearswap_leaf(base, experts[0], t).astype(out_dtype)


_jit_nearswap = jax.jit(_nearswap_kernel, static_argnames=("out_dtype", "t"))


@method_factory(formula="w theta_1 + (1 - w) theta_0, w = clip(t / |theta_0 - theta_1|, 0, 1) per entry",
                t=number("distance below which the expert's value is taken", 0.0, low_open=True))
def nearswap(t: float = 1e-4) -> MergeMethod:
  r"""NearSwap of the base and ONE expert (see :func:`nearswap_leaf`): entries where the two are
  within ``t`` take the expert's value, others move toward it by :math:`t/|\theta_0-\theta_1|`.
  mergekit ``nearswap`` (alchemonaut, QuartetAnemoi-70B, 2024)."""
  return MergeMethod(name="nearswap", hparams={"t": t},
                     traits=Traits(uses_base=True, elementwise=True, propagates_nonfinite=True, min_experts=1,
                                   max_experts=1),
                     kernel=kernels.bind(_jit_nearswap, t=t),
                     reference="mergekit nearswap (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001)")
