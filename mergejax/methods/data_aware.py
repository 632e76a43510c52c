r"""Data-aware merge methods: RegMean, Fisher merging and AdaMerging.

Their kernels merge one leaf from per-leaf statistics that come from data: Gram matrices of each linear
layer's inputs (RegMean), diagonal Fisher information (Fisher), learned coefficients (AdaMerging).
The statistics are computed by running the model (:mod:`mergejax.data_merge`, which knows models:
this package does not); a method value built here without them is refused before any work:

>>> method = mergejax.data_merge.with_data(methods.regmean(), model, base, experts, batches)
>>> merged = mergejax.merge(base, experts, method)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from mergejax.methods import kernels, steps
from mergejax.methods.base import (MergeMethod, Traits, choice, expert_weights, f32, flag, integer, method_factory,
                                   number)


@dataclasses.dataclass(frozen=True)
class NeedsData:
  """The ``compute_stats`` of a data-aware method before its data is bound: merging raises, naming the
  method; :func:`mergejax.data_merge.with_data` computes the per-leaf statistics with
  ``mergejax.data_merge.<kind>_statistics(model, base, experts, batches, n_experts, **hparams)``."""

  name: str
  needs: str
  kind: str
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # ``statistics(model, base, experts, batches, n_experts, **hparams)``; None: the module's own
  # ``mergejax.data_merge.<kind>_statistics`` (a method of your own gives its function here)
  statistics: Any = None
  # Whether the statistics read the examples' labels (Fisher's log-likelihood of the targets); without,
  # only what a causal model computes before it sees an answer counts (the examples' inputs).
  labels: bool = False
  # Whether expert t's statistics depend on expert t and its own examples only (RegMean's Grams, Fisher):
  # computed once per expert and stacked, so a study caches them across the expert subsets it merges.
  per_expert: bool = False

  def __call__(self, leaf_pass, n_experts, shapes):
    del leaf_pass, n_experts, shapes
    raise ValueError(f"{self.name}: needs data ({self.needs}): bind each expert's batches with "
                     f"mergejax.data_merge.with_data(method, model, base, experts, batches)")


def bound(method: MergeMethod, stats: dict[str, Any]) -> MergeMethod:
  """``method`` with its per-leaf statistics fixed (what :func:`mergejax.data_merge.with_data` returns)."""

  def compute_stats(leaf_pass, n_experts, shapes):
    del leaf_pass, n_experts
    missing = [p for p in stats if p not in shapes]
    if missing:
      raise ValueError(f"{method.name}: statistics for leaf '{missing[0]}', which the models do not have")
    return {p: stats[p] for p in shapes if p in stats}

  return dataclasses.replace(method, compute_stats=compute_stats)


# --------------------------------------------------------------------------------------------- RegMean


def regmean_solve(ws: Sequence[jax.Array], grams: jax.Array, alpha: float) -> jax.Array:
  r""":math:`W^* = (\sum_t \tilde G_t)^{-1} \sum_t \tilde G_t W_t` with
  :math:`\tilde G = \alpha G + (1 - \alpha)\,\mathrm{diag}(G)`; ``ws`` are (D_in, D_out), ``grams`` [N, D_in, D_in].
  Solved by least squares (the minimum-norm solution where the summed Gram is singular: a feature that
  no expert's data activates)."""
  g = grams.astype(jnp.float32)
  eye = jnp.eye(g.shape[-1], dtype=jnp.float32)
  g = alpha * g + (1.0 - alpha) * g * eye
  lhs = jnp.sum(g, axis=0)
  rhs = sum(g[t] @ w for t, w in enumerate(ws))
  return jnp.linalg.lstsq(lhs, rhs)[0]


def _regmean_kernel(base, experts, ctx, stats, *, out_dtype, alpha):
  del base, ctx
  xs = [f32(e) for e in experts]
  grams = stats.get("grams")
  if grams is None:  # not a linear layer (or no statistics): the mean, as the paper
    return (sum(xs) / len(xs)).astype(out_dtype)
  trailing = grams.ndim == 4  # [N, 1, D, D]: the input axes trail the leaf (a PyTorch-layout (out, in) weight)
  g = grams.reshape(grams.shape[0], grams.shape[-1], grams.shape[-1])
  d = g.shape[-1]
  shape = xs[0].shape
  ws = [x.reshape(-1, d).T if trailing else x.reshape(d, -1) for x in xs]
  w = regmean_solve(ws, g, alpha)
  return (w.T if trailing else w).reshape(shape).astype(out_dtype)


_jit_regmean = jax.jit(kernels.on_whole_leaves(_regmean_kernel), static_argnames=("out_dtype", "alpha"))


@method_factory(formula="W* = (sum_t G~_t)^-1 sum_t G~_t W_t per linear layer, G_t = X_t^T X_t of its inputs on "
                        "expert t's data, G~ = alpha G + (1 - alpha) diag G; other leaves: the mean",
                alpha=number("weight of the Grams' off-diagonal entries (1: exact least squares)", 0.0, 1.0))
def regmean(alpha: float = 0.95) -> MergeMethod:
  r"""RegMean (Jin et al., ICLR 2023, arXiv 2212.09849): each linear layer's merged weight minimizes
  :math:`\sum_t \|X_t W - X_t W_t\|^2`, the experts' layer outputs on their own data, in closed form.

  .. math:: W^* = \Big(\sum_t \tilde G_t\Big)^{-1} \sum_t \tilde G_t W_t,\quad
            G_t = X_t^\top X_t,\quad \tilde G_t = \alpha G_t + (1-\alpha)\,\mathrm{diag}(G_t)

  :math:`X_t` are the inputs of the layer in expert t's forward pass over a few unlabeled examples of
  its own task (:func:`mergejax.data_merge.with_data`). Leaves that are not linear layers (embeddings
  looked up, norms, biases, weights used more than once) are averaged, as in the paper. The base is
  not used. FusionBench ``regmean`` (``reduce_non_diagonal_ratio`` = alpha = 0.95).
  """
  m = MergeMethod(name="regmean", hparams={"alpha": alpha}, traits=Traits(uses_base=False),
                  kernel=kernels.bind(_jit_regmean, alpha=alpha),
                  reference="Jin et al., ICLR 2023, arXiv 2212.09849")
  return dataclasses.replace(m, compute_stats=NeedsData("regmean", "Gram matrices of each linear layer's inputs "
                                                        "on each expert's examples", "regmean", per_expert=True))


# ---------------------------------------------------------------------------------------------- Fisher


def _fisher_kernel(base, experts, ctx, stats, *, out_dtype, min_fisher):
  del base
  xs = [f32(e) for e in experts]
  fisher = stats["fisher"].astype(jnp.float32) + min_fisher
  num = sum(ctx.weights[t] * fisher[t] * x for t, x in enumerate(xs))
  den = sum(ctx.weights[t] * fisher[t] for t in range(len(xs)))
  return (num / den).astype(out_dtype)


_jit_fisher = jax.jit(_fisher_kernel, static_argnames=("out_dtype", "min_fisher"))


@method_factory(formula="theta* = sum_t w_t F_t theta_t / sum_t w_t F_t per entry, F_t the diagonal Fisher of expert "
                        "t on its data (+ min_fisher)",
                min_fisher=number("added to every Fisher entry (keeps the divisor positive)", 0.0, 1.0,
                                  low_open=True),
                normalize=flag("divide each expert's Fisher by its L2 norm over the whole model (MergeLM's "
                               "normalize_fisher_weight)"),
                weights=expert_weights("per-expert scaling of the Fisher (MergeLM's fisher_scaling_coefficients)"))
def fisher(min_fisher: float = 1e-6, normalize: bool = True, weights: Sequence[float] | None = None) -> MergeMethod:
  r"""Fisher merging (Matena & Raffel, NeurIPS 2022, arXiv 2111.09832): a per-entry average weighted
  by each expert's diagonal Fisher information on its own data,

  .. math:: \theta^* = \frac{\sum_t w_t F_t \odot \theta_t}{\sum_t w_t F_t},\quad
            F_t = \mathbb{E}_{x \sim D_t}\big[(\nabla_\theta \log p_{\theta_t}(y \mid x))^2\big] + \epsilon

  estimated from per-example gradients (``jax.grad``) of the log-likelihood of the examples' targets
  (the empirical Fisher, as MergeLM and FusionBench). The base is not used. MergeLM ``fisher_merging``
  (``minimal_fisher_weight`` = ``min_fisher``), FusionBench ``fisher_merging``.
  """
  m = MergeMethod(name="fisher", hparams={"min_fisher": min_fisher, "normalize": normalize, "weights": weights},
                  traits=Traits(uses_base=False), kernel=kernels.bind(_jit_fisher, min_fisher=min_fisher),
                  weights=weights, reference="Matena & Raffel, NeurIPS 2022, arXiv 2111.09832")
  return dataclasses.replace(m, compute_stats=NeedsData("fisher", "squared gradients of the log-likelihood of each "
                                                        "expert's examples", "fisher", {"normalize": normalize},
                                                        labels=True, per_expert=True))


# ------------------------------------------------------------------------------------------ AdaMerging


def _adamerging_kernel(base, experts, ctx, stats, *, out_dtype):
  del ctx
  c = stats["coefficients"].astype(jnp.float32)
  b = f32(base)
  return (b + sum(c[t] * tau for t, tau in enumerate(steps.task_vectors(base, experts)))).astype(out_dtype)


_jit_adamerging = jax.jit(_adamerging_kernel, static_argnames=("out_dtype",))


@method_factory(formula="theta_0 + sum_t lambda_t^(leaf) tau_t, lambda learned by Adam on the entropy of the merged "
                        "model's predictions on unlabeled inputs",
                granularity=choice("one coefficient per expert and leaf ('layer', AdaMerging) or per expert ('task')",
                                   ("layer", "task")),
                init=number("initial coefficient (FusionBench: 0.3)", 0.0, 1.0),
                lr=number("Adam learning rate", 0.0, 1.0, low_open=True),
                steps=integer("optimization steps", 1, 1_000_000),
                clamp=flag("keep the coefficients in [0, 1] (the official code's clamp)"))
def adamerging(granularity: str = "layer", init: float = 0.3, lr: float = 1e-3, steps: int = 100,
               clamp: bool = True) -> MergeMethod:
  r"""AdaMerging (Yang et al., ICLR 2024, arXiv 2310.02575): task arithmetic whose coefficients are
  learned without labels, by gradient descent through the merge and the forward pass on the entropy of
  the merged model's predictions over the experts' unlabeled inputs,

  .. math:: \min_\lambda \sum_{x} H\big(p_{\theta(\lambda)}(\cdot \mid x)\big),\quad
            \theta(\lambda)^{(\ell)} = \theta_0^{(\ell)} + \sum_t \lambda_t^{(\ell)} \tau_t^{(\ell)}

  (``granularity="layer"``: one :math:`\lambda_t` per leaf; ``"task"``: one per expert). Adam with
  ``lr`` for ``steps`` steps from ``init`` (FusionBench: 0.3, 1e-3, 1000). For language models H is
  the next-token distribution's entropy at every counted position. FusionBench ``adamerging``.
  """
  m = MergeMethod(name="adamerging", hparams={"granularity": granularity, "init": init, "lr": lr, "steps": steps,
                                              "clamp": clamp},
                  traits=Traits(uses_base=True, elementwise=True), kernel=kernels.bind(_jit_adamerging),
                  reference="Yang et al., ICLR 2024, arXiv 2310.02575")
  return dataclasses.replace(m, compute_stats=NeedsData("adamerging", "unlabeled inputs to learn the coefficients on",
                                                        "adamerging", dict(m.hparams)))
