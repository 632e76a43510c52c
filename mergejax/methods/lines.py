r"""LiNeS: post-training layer scaling (Wang, Dimitriadis, Favero, Ortiz-Jimenez, Fleuret & Frossard,
ICLR 2025, arXiv 2410.17146), applied to the task-arithmetic sum as in the paper's multi-task merging."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import depth, kernels, steps
from mergejax.methods.base import MergeMethod, Traits, expert_weights, f32, integer, method_factory, number


def layer_scales(shapes: dict[str, tuple[int, ...]], *, alpha: float, beta: float, n_layers: int) -> dict[str, Any]:
  r"""Each leaf's scale :math:`\alpha + \beta\,\ell / (L - 1)` (:math:`\alpha` for leaves outside the
  layers; a float32[L] vector for a stacked leaf, one scale per slice of axis 0)."""
  step = beta / (n_layers - 1) if n_layers > 1 else 0.0
  out = {}
  for path, shape in shapes.items():
    d = depth.layer_of(path)
    if d is None:
      s = np.float32(alpha)
    elif d == depth.STACKED:
      if not shape or shape[0] != n_layers:
        raise ValueError(f"lines: leaf '{path}' stacks layers on axis 0 but has shape {tuple(shape)}, "
                         f"expected {n_layers} layers")
      s = (alpha + step * np.arange(n_layers)).astype(np.float32)
    else:
      if d >= n_layers:
        raise ValueError(f"lines: leaf '{path}' is in layer {d} but n_layers={n_layers}")
      s = np.float32(alpha + step * d)
    out[path] = {"scale": s}
  return out


def _kernel(base, experts, ctx, stats, *, out_dtype):
  b = f32(base)
  tv = sum(steps.rounded(ctx.weights[t] * tau, tau) for t, tau in enumerate(steps.task_vectors(base, experts)))
  scale = jnp.asarray(stats["scale"], jnp.float32)
  if scale.ndim:
    scale = scale.reshape(scale.shape + (1,) * (b.ndim - 1))
  return (b + steps.rounded(scale * tv, tv)).astype(out_dtype)


_jit_kernel = jax.jit(_kernel, static_argnames=("out_dtype",))


@method_factory(formula="theta_0 + (alpha + beta * l / (L - 1)) * sum_t w_t tau_t for a leaf in layer l of L "
                        "(alpha outside the layers)",
                beta=number("how much more the last layer's task vectors are scaled than the first's"),
                alpha=number("scale of the first layer and of leaves outside the layers (None: 1 / N)"),
                n_layers=integer("number of layers L (None: from the leaf paths)", 1, 1_000_000),
                weights=expert_weights())
def lines(beta: float = 0.5, alpha: float | None = None, n_layers: int | None = None,
          weights: Sequence[float] | None = None) -> MergeMethod:
  r"""Task arithmetic whose scale grows linearly with depth, so shallow layers stay near the base.

  .. math:: \theta_m^{(\ell)} = \theta_0^{(\ell)} + \Big(\alpha + \beta\frac{\ell}{L-1}\Big)\sum_t w_t\tau_t^{(\ell)}

  for a leaf in layer :math:`\ell` (0-based) of :math:`L`; leaves outside the layers (embeddings,
  final norm, head) take :math:`\alpha`. Layers come from the leaf paths
  (:mod:`mergejax.methods.depth`: "layers.3", "blocks/3", "layer_3", or a stack along axis 0 under
  "layers"). The paper sets :math:`\alpha = \|\sum_t\tau_t\|_1 / (N\,\|\tau_{MTL}\|_1)`, which for the
  task-arithmetic sum is :math:`1/N` (the default), and tunes :math:`\beta` on validation data. A
  model whose leaf paths name no layer is refused.
  """
  def compute_stats(leaf_pass, n_experts, shapes):
    del leaf_pass
    n = n_layers if n_layers is not None else depth.count_layers(shapes)
    if n == 0:
      raise ValueError("lines: no leaf path names a layer (e.g. 'layers.3', 'layer_3', 'blocks/3'), so every leaf "
                       "would get alpha: use task_arithmetic, or name the layers")
    return layer_scales(shapes, alpha=1.0 / n_experts if alpha is None else alpha, beta=beta, n_layers=n)

  return MergeMethod(name="lines", hparams={"beta": beta, "alpha": alpha, "n_layers": n_layers, "weights": weights},
                     traits=Traits(uses_base=True), kernel=kernels.bind(_jit_kernel), compute_stats=compute_stats,
                     weights=weights, reference="Wang et al., ICLR 2025, arXiv 2410.17146")
