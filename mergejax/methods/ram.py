r"""Reinforced Agent Merging: RAM and RAM+ (tensor-local), as mergekit ``ram`` and ``ramplus_tl``
(arXiv 2601.13572).

Notation: :math:`\tau_t = \theta_t - \theta_0`, :math:`m_t = [|\tau_t| > \epsilon]` (expert t changed
the entry), :math:`c = \sum_t m_t` (how many experts changed it).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import kernels, steps
from mergejax.methods.base import Array, LeafPass, MergeMethod, Traits, f32, method_factory, number

_REFERENCE = "Reinforced Agent Merging, arXiv 2601.13572 (mergekit ram / ramplus_tl)"


def _masks(base, experts, epsilon):
  taus = steps.task_vectors(base, experts)
  nonzero = [jnp.abs(t) > jnp.float32(epsilon) for t in taus]
  count = sum(m.astype(jnp.int32) for m in nonzero)
  return taus, nonzero, count


def _sum_terms(base, terms):
  acc = jnp.zeros_like(terms[0])
  for x in terms:  # mergekit sums the stacked terms over the expert axis, in expert order
    acc = acc + x
  return f32(base) + acc


def ram_leaf(base, experts, *, epsilon: float):
  r"""RAM of one leaf: entries changed by one expert take its change, entries changed by several the
  mean of their changes, entries changed by none stay at the base.

  .. math:: \theta_m = \theta_0 + \sum_t \tau_t\, m_t \Big([c = 1] + \frac{[c > 1]}{\max(c, 1)}\Big)
  """
  taus, nonzero, count = _masks(base, experts, epsilon)
  unique, overlap = count == 1, count > 1
  div = jnp.maximum(count, 1).astype(jnp.float32)
  terms = []
  for t, m in zip(taus, nonzero):
    z = t * m.astype(jnp.float32)
    terms.append(z * unique.astype(jnp.float32) + z * overlap.astype(jnp.float32) / div)
  return _sum_terms(base, terms)


def ramplus_tl_leaf(base, experts, *, r: float, alpha: float, epsilon: float, counts: Array | None = None):
  r"""RAM+ with tensor-local statistics: RAM whose unique entries of expert t are scaled by
  :math:`\lambda_t = 1 + r \cdot \mathrm{clip}(\rho_t, 0, \alpha)`, where
  :math:`\rho_t = |\{m_t \wedge c > 1\}| / \max(|\{m_t \wedge c = 1\}|, \epsilon)` counts, over the leaf,
  how much of expert t's change is shared with other experts relative to its own.

  .. math:: \theta_m = \theta_0 + \sum_t \tau_t\, m_t \Big(\lambda_t [c = 1] + \frac{[c > 1]}{\max(c, 1)}\Big)

  ``counts``: int32[2, N], the leaf's counts :math:`|\{m_t \wedge c > 1\}|` (row 0) and
  :math:`|\{m_t \wedge c = 1\}|` (row 1) measured beforehand (:func:`overlap_indicators`), so that the
  inputs may be a piece of the leaf; None: counted here over the inputs (the whole leaf).
  """
  taus, nonzero, count = _masks(base, experts, epsilon)
  unique, overlap = count == 1, count > 1
  div = jnp.maximum(count, 1).astype(jnp.float32)
  terms = []
  for t, m in enumerate(nonzero):
    if counts is None:
      shared_n, own_n = jnp.sum(m & overlap, dtype=jnp.int32), jnp.sum(m & unique, dtype=jnp.int32)
    else:
      shared_n, own_n = counts[0, t], counts[1, t]
    shared = shared_n.astype(jnp.float32)
    own = jnp.maximum(own_n.astype(jnp.float32), jnp.float32(epsilon))
    lam = 1.0 + jnp.float32(r) * jnp.clip(shared / own, 0.0, jnp.float32(alpha))
    z = taus[t] * m.astype(jnp.float32)
    terms.append(z * unique.astype(jnp.float32) * lam + z * overlap.astype(jnp.float32) / div)
  return _sum_terms(base, terms)


def overlap_indicators(base, experts, ctx, *, epsilon: float) -> list[Array]:
  r"""2N per-entry predicates whose counts over a leaf are :func:`ramplus_tl_leaf`'s ``counts``:
  :math:`m_t \wedge c > 1` for each expert t, then :math:`m_t \wedge c = 1`."""
  del ctx
  _, nonzero, count = _masks(base, experts, epsilon)
  return [m & (count > 1) for m in nonzero] + [m & (count == 1) for m in nonzero]


@functools.lru_cache(maxsize=None)
def _overlap_counter(epsilon: float):
  """The indicators of one ``epsilon`` (one object: engines key their compiles on it)."""
  return functools.partial(overlap_indicators, epsilon=epsilon)


def _ramplus_stats(epsilon: float):
  """compute_stats of ``ramplus_tl``: each float leaf's ``{"counts": int32[2, N]}``, exact integer
  counts whether the engine reads the leaf whole or in pieces, on any device count."""

  def compute_stats(leaf_pass: LeafPass, n_experts: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    del shapes
    counts = leaf_pass.count(_overlap_counter(epsilon), 2 * n_experts)
    return {p: {"counts": np.asarray(c, np.int64).reshape(2, n_experts).astype(np.int32)} for p, c in counts.items()}

  return compute_stats


def _ramplus_like(n_experts: int, has_base: bool) -> dict[str, jax.ShapeDtypeStruct]:
  del has_base
  return {"counts": jax.ShapeDtypeStruct((2, n_experts), jnp.int32)}


def _ram_kernel(base, experts, ctx, stats, *, out_dtype, epsilon):
  del ctx, stats
  return ram_leaf(base, experts, epsilon=epsilon).astype(out_dtype)


def _ramplus_kernel(base, experts, ctx, stats, *, out_dtype, r, alpha, epsilon):
  del ctx
  return ramplus_tl_leaf(base, experts, r=r, alpha=alpha, epsilon=epsilon, counts=stats["counts"]).astype(out_dtype)


_jit_ram = jax.jit(_ram_kernel, static_argnames=("out_dtype", "epsilon"))
_jit_ramplus = jax.jit(_ramplus_kernel, static_argnames=("out_dtype", "r", "alpha", "epsilon"))

_EPSILON = number("a change counts when |tau| > epsilon", 0.0)


@method_factory(formula="theta_0 + sum_t tau_t m_t ([c = 1] + [c > 1] / c), m_t = [|tau_t| > epsilon], c = sum_t m_t",
                epsilon=_EPSILON)
def ram(epsilon: float = 1e-5) -> MergeMethod:
  r"""RAM (see :func:`ram_leaf`): each entry takes the mean change of the experts that changed it, so
  an expert's unique changes are kept whole instead of diluted by averaging with experts that left the
  entry alone. One expert gives back its changes larger than ``epsilon``; symmetric in the experts.
  mergekit ``ram``."""
  return MergeMethod(name="ram", hparams={"epsilon": epsilon},
                     traits=Traits(uses_base=True, elementwise=True),
                     kernel=kernels.bind(_jit_ram, epsilon=epsilon), reference=_REFERENCE)


@method_factory(formula="theta_0 + sum_t tau_t m_t (lambda_t [c = 1] + [c > 1] / c), lambda_t = 1 + r clip(rho_t, 0, "
                        "alpha), rho_t = |m_t and c > 1| / |m_t and c = 1| over the leaf",
                r=number("how much an expert's unique changes are amplified per unit of rho", 0.0),
                alpha=number("the cap on rho, the shared-to-unique ratio of an expert's changes", 0.0),
                epsilon=_EPSILON)
def ramplus_tl(r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5) -> MergeMethod:
  r"""RAM+ with tensor-local statistics (see :func:`ramplus_tl_leaf`): RAM, with an expert's unique
  changes amplified by up to :math:`1 + r\alpha` when much of its change overlaps other experts'
  (compensating the dilution of its shared entries). ``r=0`` is RAM. mergekit ``ramplus_tl``.

  A statistics pass counts each leaf's shared and unique changes (exact integers), so the merge itself
  is elementwise: engines run it in flat chunks, as ``ram``."""
  return MergeMethod(name="ramplus_tl", hparams={"r": r, "alpha": alpha, "epsilon": epsilon},
                     traits=Traits(uses_base=True, elementwise=True),
                     kernel=kernels.bind(_jit_ramplus, r=r, alpha=alpha, epsilon=epsilon),
                     compute_stats=_ramplus_stats(epsilon), stats_like=_ramplus_like, local_stats=True,
                     reference=_REFERENCE)
