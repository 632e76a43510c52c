r"""SCE: Select, Calculate, Erase (FuseChat, Wan et al., 2024, arXiv 2408.07990), as mergekit's ``sce``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mergejax.methods import kernels, selection, steps
from mergejax.methods.base import Array, MergeMethod, Traits, f32, method_factory, number


def sce_task_vector(taus: list[Array], select_topk: float) -> Array:
  r"""The merged task vector of one leaf.

  1. Select: where ``select_topk`` < 1, keep (in every task vector) the k = int(select_topk * #{v > 0})
     positions of largest variance :math:`v = \mathrm{Var}_t(\tau_t)` (population variance over experts).
  2. Calculate: :math:`w_t = \mathrm{mean}(\hat\tau_t^2) / \sum_s \mathrm{mean}(\hat\tau_s^2)` (1/N each
     when that sum is below 1e-6).
  3. Erase: TIES sign consensus (sum rule, a zero vote electing +1) over the selected task vectors;
     :math:`\tau_m = \sum_{t\in A} w_t\hat\tau_t / \max(\sum_{t\in A} w_t, 10^{-6})`.
  """
  n = len(taus)
  if select_topk < 1.0:
    mean = sum(taus) / n
    var = sum((t - mean) ** 2 for t in taus) / n
    if select_topk <= 0.0:
      keep = jnp.zeros(var.shape, bool)
    else:
      k = jnp.floor(jnp.sum(var != 0).astype(jnp.float32) * jnp.float32(select_topk)).astype(jnp.int32)
      keep = selection.top_k(var, k)
    taus = [jnp.where(keep, t, 0.0) for t in taus]
  ms = jnp.stack([jnp.mean(t * t) if t.size else jnp.float32(0) for t in taus])
  total = jnp.sum(ms)
  w = jnp.where(jnp.abs(total) < 1e-6, jnp.full((n,), 1.0 / n, jnp.float32), ms / jnp.where(total == 0, 1.0, total))
  vote = sum(taus)
  positive = steps.elect_positive(vote, jnp.float32(1.0))
  agree = [jnp.where(positive, t > 0, t < 0) for t in taus]
  num = sum(jnp.where(a, w[i] * t, 0.0) for i, (a, t) in enumerate(zip(agree, taus)))
  den = sum(jnp.where(a, w[i], 0.0) for i, a in enumerate(agree))
  return num / jnp.maximum(den, 1e-6)


def _kernel(base, experts, ctx, stats, *, out_dtype, select_topk):
  del stats
  merged = sce_task_vector(steps.task_vectors(base, experts), select_topk)
  return (f32(base) + steps.rounded(ctx.lam * merged, merged)).astype(out_dtype)


_jit_kernel = jax.jit(kernels.on_whole_leaves(_kernel), static_argnames=("out_dtype", "select_topk"))


@method_factory(formula="theta_0 + lam * sum_{t in A} w_t tau_t / sum_{t in A} w_t on the top-variance positions, "
                        "w_t ~ mean(tau_t^2), A the experts agreeing with the elected sign",
                select_topk=number("fraction of the positions (of non-zero variance) kept", 0.0, 1.0),
                lam=number("scale of the merged task vector"))
def sce(select_topk: float = 1.0, lam: float = 1.0) -> MergeMethod:
  r"""SCE per leaf (see :func:`sce_task_vector`). mergekit ``sce`` (which has no ``lam``: 1). Symmetric
  in the experts; with ``select_topk=1`` one expert gives it back (with less, one expert's task vector
  has zero variance everywhere, so nothing is selected and the base comes back)."""
  return MergeMethod(name="sce", hparams={"select_topk": select_topk, "lam": lam},
                     traits=Traits(uses_base=True, lam_scales_task_vector=True),
                     kernel=kernels.bind(_jit_kernel, select_topk=select_topk), lam=lam,
                     reference="Wan et al. (FuseChat), 2024, arXiv 2408.07990")
