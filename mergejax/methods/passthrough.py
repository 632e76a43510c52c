"""Passthrough: one model copied, optionally scaled (mergekit's ``passthrough``; its ``slices`` stack
layers of several models in ``mergejax-yaml``)."""

from __future__ import annotations

import functools
from typing import Any

import jax

from mergejax.methods import kernels
from mergejax.methods.base import Array, LeafContext, MergeMethod, Traits, f32, method_factory, number


@functools.partial(jax.jit, static_argnames=("out_dtype", "scale"))
def _kernel(base: Array | None, experts: tuple[Array, ...], ctx: LeafContext, stats: dict, *, out_dtype: Any,
            scale: float) -> Array:
  del base, ctx, stats
  x = experts[0]
  return (x if scale == 1.0 else f32(x) * scale).astype(out_dtype)


@method_factory(formula="scale * theta_1 (one model, copied; the base is not used)",
                scale=number("factor on every float leaf (1: an exact copy)"))
def passthrough(scale: float = 1.0) -> MergeMethod:
  r"""The one expert given, times ``scale``.

  .. math:: \theta_m = s\,\theta_1

  mergekit's ``passthrough`` (``mergekit/merge_methods/passthrough.py``): no merge, a copy of one input
  per tensor with an optional ``scale``, used to assemble models from ``slices`` of layers
  (frankenmerges: ``mergejax-yaml`` stacks them). With ``scale`` 1 the output is the input converted to
  the output dtype; otherwise the product is taken in float32 and rounded once.
  """
  traits = Traits(uses_base=False, elementwise=True, propagates_nonfinite=True, min_experts=1, max_experts=1)
  return MergeMethod(name="passthrough", hparams={"scale": scale}, traits=traits,
                     kernel=kernels.bind(_kernel, scale=scale),
                     reference="mergekit (Goddard et al., 2024, arXiv 2403.13257)")
