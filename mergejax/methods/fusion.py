r"""Arcee Fusion (mergekit ``arcee_fusion``): the base, with the expert's value only where the change is
an outlier of importance.

Importance of an entry: :math:`s = |\theta_1 - \theta_0| \cdot \mathrm{KL}(\mathrm{softmax}(\theta_1) \,\|\,
\mathrm{softmax}(\theta_0))`, the KL divergence taken along the leaf's last axis (one value per row, the
whole vector for a 1-D leaf), with :math:`10^{-8}` added to both distributions. The expert's value is
kept where :math:`s \ge Q_2 + 1.5\,(Q_3 - Q_1)` (Tukey's upper fence over the leaf's importances).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import kernels, selection
from mergejax.methods.base import MergeMethod, Traits, f32, method_factory

_QUARTILES = (0.25, 0.5, 0.75)


def row_divergence(base, expert):
  r""":math:`\mathrm{KL}(p \| q)` of each row (float32, the last axis kept as 1) with
  :math:`p = \mathrm{softmax}(\theta_1) + 10^{-8}`, :math:`q = \mathrm{softmax}(\theta_0) + 10^{-8}` along it."""
  b, x = f32(base), f32(expert)
  if b.ndim == 0:
    b, x = b.reshape(1), x.reshape(1)
  p = jax.nn.softmax(x, axis=-1) + jnp.float32(1e-8)
  q = jax.nn.softmax(b, axis=-1) + jnp.float32(1e-8)
  return jnp.sum(p * jnp.log(p / q), axis=-1, keepdims=True)


def _importance(b, x, kl):
  r""":math:`s = |\theta_1 - \theta_0| \cdot \mathrm{KL}` from float32 inputs and their rows' divergences ``kl``."""
  return jnp.abs(x - b) * (kl if b.ndim else kl.reshape(()))


def quartile_positions(n: int) -> tuple[int, int, int]:
  """Sorted positions of the quartiles of ``n`` values, mergekit's rule: ``floor(q * (n - 1))`` in float32."""
  return tuple(int(np.float32(q) * np.float32(n - 1)) for q in _QUARTILES)


def arcee_fusion_leaf(base, expert):
  r"""One leaf: :math:`\theta_0 + (\theta_1 - \theta_0)\,[s \ge Q_2 + 1.5 (Q_3 - Q_1)]` (see the module doc).

  Three passes over the leaf, none storing a float32 copy of it: the rows' divergences (with their own
  float32 casts, fused into the softmax/KL pass), the importances' patterns for the quartiles' selection,
  and the output, which forms the importances again from the inputs and the divergences. The optimization
  barriers keep XLA from sharing one float32 cast of each input, or the importances themselves, between
  passes, which would store them as leaf-sized temporaries (fresh pages on every leaf)."""
  b, x = f32(base), f32(expert)
  if b.size == 0:
    return b
  kl = row_divergence(*jax.lax.optimization_barrier((base, expert)))
  q1, q2, q3 = selection.order_statistics(_importance(b, x, kl), quartile_positions(b.size))
  fence = q2 + jnp.float32(1.5) * (q3 - q1)
  base, expert, kl = jax.lax.optimization_barrier((base, expert, kl))
  b, x = f32(base), f32(expert)
  return b + (x - b) * (_importance(b, x, kl) >= fence).astype(jnp.float32)


def _kernel(base, experts, ctx, stats, *, out_dtype):
  del ctx, stats
  return arcee_fusion_leaf(base, experts[0]).astype(out_dtype)


_jit_kernel = jax.jit(kernels.on_whole_leaves(_kernel), static_argnames=("out_dtype",))


@method_factory(formula="theta_0 + tau [s >= Q2 + 1.5 (Q3 - Q1)], s = |tau| KL(softmax(theta_1) || softmax(theta_0)) "
                        "per row, quartiles over the leaf")
def arcee_fusion() -> MergeMethod:
  r"""Arcee Fusion of the base and ONE expert (see :func:`arcee_fusion_leaf`): keeps only the changes
  whose importance is an outlier of the leaf, so a fine-tune's few decisive changes survive and its
  diffuse drift does not.

  Quartiles are exact, taken at mergekit's positions of the sorted importances. mergekit takes them
  exactly for leaves of up to 1,000,000 entries and estimates them from 1,000,000 entries drawn with
  replacement by torch's generator for larger ones; there the two agree in distribution, not entry by
  entry (docs/MERGING.md)."""
  return MergeMethod(name="arcee_fusion", hparams={}, traits=Traits(uses_base=True, min_experts=1, max_experts=1),
                     kernel=kernels.bind(_jit_kernel), reference="mergekit arcee_fusion (Arcee AI, 2024)")
