r"""SCE: Select, Calculate, Erase (FuseChat, Wan et al., 2024, arXiv 2408.07990), as mergekit's ``sce``.

The per-leaf quantities (how many positions to keep, the variance at the cut and where among equal
variances it falls, each expert's mean square after the selection) come from statistics passes, so the
merge itself is elementwise: engines run it in flat chunks that know where they lie in the leaf.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mergejax.methods import gram, kernels, selection, steps, threshold
from mergejax.methods.base import Array, LeafPass, MergeMethod, Traits, f32, method_factory, number

_KEEP_NONE = np.asarray([0xFFFFFFFF, 0], np.uint32)  # a cut above every value: nothing selected


def _variance(taus: list[Array]) -> Array:
  """Population variance over the experts, per entry."""
  n = len(taus)
  mean = sum(taus) / n
  return sum((t - mean) ** 2 for t in taus) / n


def variance(base: Array, experts: tuple[Array, ...]) -> list[Array]:
  """[v]: the experts' task-vector variance per entry (the quantity SCE selects on)."""
  return [_variance(steps.task_vectors(base, experts))]


def selected(taus: list[Array], ctx, cut: Array) -> Array:
  """The selection mask of a leaf or a piece of it: entries whose variance lies above ``cut``'s value
  (uint32[2]: its float32 pattern v and the flat position p), or equals it before position p (among equal
  variances the lower positions are selected first)."""
  bits = jax.lax.bitcast_convert_type(_variance(taus), jnp.uint32)
  pos = steps.leaf_positions(ctx, taus[0].shape)
  return (bits > cut[0]) | ((bits == cut[0]) & (pos < cut[1]))


@jax.jit
@kernels.on_whole_leaves
def _equal_flags(base, experts, ctx, v):
  """Packed flags (:func:`~mergejax.methods.selection.pack_flags`) of variance == ``v``, and the piece's
  length (int32[1])."""
  del ctx
  bits = jax.lax.bitcast_convert_type(variance(base, experts)[0], jnp.uint32).reshape(-1)
  return selection.pack_flags((bits == v)[None]), jnp.full((1,), bits.shape[0], jnp.int32)


@jax.jit
@kernels.on_whole_leaves
def _square_blocks(base, experts, ctx, cut):
  """float32[N, B]: each expert's sums of its selected task vector's squares over blocks of
  :data:`~mergejax.methods.gram.BLOCK` entries (the block sums are added in float64 on the host, so the
  total is the same however the leaf is split)."""
  taus = steps.task_vectors(base, experts)
  keep = selected(taus, ctx, cut)
  sums = []
  for t in taus:
    sums.append(jnp.sum(gram.blocked(jnp.where(keep, t * t, 0.0)), axis=1))
  return jnp.stack(sums)


def _cut(n: int, k: int, stats_3: np.ndarray | None, first_equal) -> np.ndarray:
  """uint32[2] :func:`selected` cut keeping the ``k`` largest of ``n`` values; ``stats_3``: (pattern of the
  value v at ascending rank n - k, #below v, #equal v); ``first_equal(m)``: the position of the m-th
  (0-based) entry equal to v."""
  if k <= 0:
    return _KEEP_NONE
  if k >= n:
    return np.asarray([0, n], np.uint32)
  v, below, equal = (int(x) for x in stats_3)
  m = k - (n - below - equal)  # entries equal to v that are kept, the lowest positions first
  return np.asarray([v, 0 if m <= 0 else n if m >= equal else first_equal(m)], np.uint32)


def _make_stats_fn(select_topk: float):
  """compute_stats: each leaf's ``{"cut": uint32[2], "ms": float32[N]}``. The selection keeps
  k = floor(#{v != 0} * select_topk) positions; the count and the cut come from exact order statistics
  of the variance (:func:`threshold.leaf_order_statistics`, which counts the non-zero variances in its
  first pass) and, where the cut falls among equal variances, one pass of packed equality flags; then
  one pass sums each expert's selected squares."""

  def compute_stats(leaf_pass: LeafPass, n_experts: int, sizes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    numel = {p: math.prod(s) for p, s in sizes.items()}
    cuts = {p: _KEEP_NONE if select_topk <= 0.0 else np.asarray([0, n], np.uint32) for p, n in numel.items()}
    if 0.0 < select_topk < 1.0:
      keep = {}

      def ranks_of(p: str, n: int, nonzero: tuple[int]) -> tuple[int, ...]:
        keep[p] = int(np.floor(np.float32(nonzero[0]) * np.float32(select_topk)))
        return (n - keep[p],) if 0 < keep[p] < n else ()

      order = threshold.leaf_order_statistics(leaf_pass, sizes, 1, ranks_of, values=variance, count_nonzero=True)
      order = {p: st for p, st in order.items() if st.shape[1]}
      keep.update({p: 0 for p in sizes if p not in keep})  # empty leaves
      straddled = {p for p, st in order.items() if 0 < keep[p] - (numel[p] - st[0, 0, 1] - st[0, 0, 2]) < st[0, 0, 2]}
      flags = leaf_pass(_equal_flags, lambda p: (np.uint32(order[p][0, 0, 0]),) if p in straddled else None)
      for p in keep:
        first = None
        if p in flags:
          packed, lengths = flags[p]
          if np.any(np.asarray(lengths)[:-1] % 8):
            raise ValueError(f"leaf '{p}': sce's statistics need pieces of multiples of 8 entries (but the "
                             f"last), got lengths {np.asarray(lengths).tolist()}")
          first = functools.partial(selection.nth_set, np.asarray(packed)[0])
        cuts[p] = _cut(numel[p], keep[p], order[p][0, 0] if p in order else None, first)
    out = {p: {"cut": cuts[p], "ms": np.zeros((n_experts,), np.float32)} for p in sizes}
    if select_topk > 0.0:
      blocks = leaf_pass(_square_blocks, lambda p: (cuts[p],) if numel[p] else None)
      for p, b in blocks.items():
        total = np.asarray(b, np.float64).sum(axis=-1).astype(np.float32)
        out[p]["ms"] = (total / np.float32(numel[p])).astype(np.float32)
    return out

  return compute_stats


def _stats_like(n_experts: int, has_base: bool) -> dict[str, jax.ShapeDtypeStruct]:
  del has_base
  return {"cut": jax.ShapeDtypeStruct((2,), jnp.uint32), "ms": jax.ShapeDtypeStruct((n_experts,), jnp.float32)}


def sce_task_vector(taus: list[Array], keep: Array | None, ms: Array) -> Array:
  r"""The merged task vector of one leaf (or a piece of it).

  1. Select: where ``select_topk`` < 1, keep (in every task vector) the k = int(select_topk * #{v > 0})
     positions of largest variance :math:`v = \mathrm{Var}_t(\tau_t)` (population variance over experts):
     ``keep``, None when everything is kept.
  2. Calculate: :math:`w_t = \mathrm{mean}(\hat\tau_t^2) / \sum_s \mathrm{mean}(\hat\tau_s^2)` (1/N each
     when that sum is below 1e-6), from ``ms``, the leaf's :math:`\mathrm{mean}(\hat\tau_t^2)`.
  3. Erase: TIES sign consensus (sum rule, a zero vote electing +1) over the selected task vectors;
     :math:`\tau_m = \sum_{t\in A} w_t\hat\tau_t / \max(\sum_{t\in A} w_t, 10^{-6})`.
  """
  n = len(taus)
  if keep is not None:
    taus = [jnp.where(keep, t, 0.0) for t in taus]
  total = jnp.sum(ms)
  w = jnp.where(jnp.abs(total) < 1e-6, jnp.full((n,), 1.0 / n, jnp.float32), ms / jnp.where(total == 0, 1.0, total))
  vote = sum(taus)
  positive = steps.elect_positive(vote, jnp.float32(1.0))
  agree = [jnp.where(positive, t > 0, t < 0) for t in taus]
  num = sum(jnp.where(a, w[i] * t, 0.0) for i, (a, t) in enumerate(zip(agree, taus)))
  den = sum(jnp.where(a, w[i], 0.0) for i, a in enumerate(agree))
  return num / jnp.maximum(den, 1e-6)


def _kernel(base, experts, ctx, stats, *, out_dtype, select_topk):
  taus = steps.task_vectors(base, experts)
  keep = selected(taus, ctx, stats["cut"]) if select_topk < 1.0 else None
  merged = sce_task_vector(taus, keep, stats["ms"])
  return (f32(base) + steps.rounded(ctx.lam * merged, merged)).astype(out_dtype)


_jit_kernel = jax.jit(_kernel, static_argnames=("out_dtype", "select_topk"))


@method_factory(formula="theta_0 + lam * sum_{t in A} w_t tau_t / sum_{t in A} w_t on the top-variance positions, "
                        "w_t ~ mean(tau_t^2), A the experts agreeing with the elected sign",
                select_topk=number("fraction of the positions (of non-zero variance) kept", 0.0, 1.0),
                lam=number("scale of the merged task vector"))
def sce(select_topk: float = 1.0, lam: float = 1.0) -> MergeMethod:
  r"""SCE per leaf (see :func:`sce_task_vector`). mergekit ``sce`` (which has no ``lam``: 1). Symmetric
  in the experts; with ``select_topk=1`` one expert gives it back (with less, one expert's task vector
  has zero variance everywhere, so nothing is selected and the base comes back).

  Each leaf's mean squares are float32 sums over blocks of 256 entries added in float64 (as the Gram
  statistics of the spherical methods), the same on any split of the leaf and any device count."""
  select = 0.0 < select_topk < 1.0
  return MergeMethod(name="sce", hparams={"select_topk": select_topk, "lam": lam},
                     traits=Traits(uses_base=True, lam_scales_task_vector=True, elementwise=True,
                                   position_keyed=select),
                     kernel=kernels.bind(_jit_kernel, select_topk=select_topk),
                     compute_stats=_make_stats_fn(select_topk), stats_like=_stats_like, local_stats=True, lam=lam,
                     reference="Wan et al. (FuseChat), 2024, arXiv 2408.07990")
