r"""Subspace merging of 2-D leaves: TSV-M, Iso-C, Iso-CTS and CART.

Each works on one matrix :math:`\Delta \in \mathbb{R}^{m\times n}` at a time (r = min(m, n)) through
its thin SVD :math:`\Delta = U\,\mathrm{diag}(s)\,V^\top`; :func:`polar` is the orthogonal polar factor
:math:`\mathrm{polar}(A) = PQ^\top` of :math:`A = P\Sigma Q^\top` (the nearest matrix with orthonormal
columns, or rows). Leaves that are not 2-D take each method's documented fallback (in the factories).
All math is float32 (LAPACK's SVD on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mergejax.methods import kernels, steps
from mergejax.methods.base import Array, MergeMethod, Traits, f32, method_factory, number


def _svd(x: Array) -> tuple[Array, Array, Array]:
  return jnp.linalg.svd(x, full_matrices=False)


def polar(a: Array) -> Array:
  """The orthogonal polar factor P Q^T of a = P diag(s) Q^T (thin SVD)."""
  p, _, qt = _svd(a)
  return p @ qt


def tsv_rank(m: int, n: int, n_tasks: int) -> int:
  """Singular triplets TSV-M keeps per task: int(r * (1 / T)), as the official code computes it (in
  float64, so e.g. r = T = 49 gives 0)."""
  return int(min(m, n) * (1.0 / n_tasks))


def tsv_m_matrix(taus: list[Array]) -> Array:
  r"""Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025, arXiv 2412.00081), one matrix.

  Keep each task's top k = :func:`tsv_rank` singular triplets, concatenate
  :math:`U = [U_1 \dots U_T]`, :math:`s = [s_1 \dots s_T]`, :math:`V = [V_1 \dots V_T]`, and
  decorrelate the subspaces by orthogonalizing: :math:`\Delta = \mathrm{polar}(U)\,\mathrm{diag}(s)\,
  \mathrm{polar}(V^\top)`. (The official code pads :math:`U` with zero columns to r; the polar factor of
  the non-zero columns is the same.) Needs k >= 1.
  """
  m, n = taus[0].shape
  k = tsv_rank(m, n, len(taus))
  us, ss, vts = [], [], []
  for tau in taus:
    u, s, vt = _svd(tau)
    us.append(u[:, :k])
    ss.append(s[:k])
    vts.append(vt[:k])
  u, s, vt = jnp.concatenate(us, 1), jnp.concatenate(ss), jnp.concatenate(vts, 0)
  return (polar(u) * s) @ polar(vt)


def iso_c_matrix(taus: list[Array]) -> Array:
  r"""Iso-C (Marczak et al., ICML 2025, arXiv 2502.04959), one matrix: the task-arithmetic sum with a
  flat spectrum, :math:`\Delta = \bar s\, U V^\top` for :math:`\sum_t \tau_t = U\,\mathrm{diag}(s)\,V^\top`,
  :math:`\bar s` the mean of all r singular values."""
  u, s, vt = _svd(sum(taus))
  return jnp.mean(s) * (u @ vt)


def iso_cts_split(m: int, n: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
  """(common directions, directions per task) of Iso-CTS, as the official code: c = int(r f), then the
  task-specific total r - c is rounded (half to even) to a multiple of T; if that exceeds r, one
  multiple less (a case the official code gets wrong)."""
  r = min(m, n)
  c = int(r * common_space_fraction)
  total = round((r - c) / n_tasks) * n_tasks
  if total > r:
    total -= n_tasks
  return r - total, total // n_tasks


def iso_cts_matrix(taus: list[Array], common_space_fraction: float) -> Array:
  r"""Iso-CTS (Marczak et al., ICML 2025), one matrix: the top c singular directions of
  :math:`\sum_t\tau_t` (the common subspace), plus each task's top k directions of its residual
  :math:`\tau_t - U_c U_c^\top \tau_t` (:func:`iso_cts_split`), orthogonalized and given a flat spectrum:
  :math:`\Delta = \bar s\ \mathrm{polar}(U)\ \mathrm{polar}(V^\top)` with :math:`\bar s` the mean of
  the c + Tk = r singular values gathered."""
  m, n = taus[0].shape
  c, k = iso_cts_split(m, n, len(taus), common_space_fraction)
  u, s, vt = _svd(sum(taus))
  uc, sc, vtc = u[:, :c], s[:c], vt[:c]
  us, ss, vts = [uc], [sc], [vtc]
  if k:
    for tau in taus:
      ut, st, vtt = _svd(tau - uc @ (uc.T @ tau))
      us.append(ut[:, :k])
      ss.append(st[:k])
      vts.append(vtt[:k])
  s_all = jnp.concatenate(ss)
  return jnp.mean(s_all) * (polar(jnp.concatenate(us, 1)) @ polar(jnp.concatenate(vts, 0)))


def cart_rank(m: int, n: int, rank_ratio: float) -> int:
  """Rank CART keeps: max(1, int(rank_ratio * r)); all r at rank_ratio 1, none at 0."""
  r = min(m, n)
  if rank_ratio <= 0.0:
    return 0
  if rank_ratio >= 1.0:
    return r
  return max(1, int(rank_ratio * r))


def low_rank(x: Array, k: int) -> Array:
  """The best rank-k approximation of x (truncated SVD)."""
  if k == 0:
    return jnp.zeros_like(x)
  u, s, vt = _svd(x)
  return (u[:, :k] * s[:k]) @ vt[:k]


def cart_matrix(xs: list[Array], rank_ratio: float) -> tuple[Array, Array]:
  r"""CART (Choi et al., 2024, arXiv 2412.12153), one matrix: the experts' mean
  :math:`\bar\theta` and the sum of the rank-k approximations of the centered task vectors,
  :math:`\sum_t \mathrm{SVD}_k(\theta_t - \bar\theta)`, k = :func:`cart_rank`."""
  mean = sum(xs) / len(xs)
  k = cart_rank(*mean.shape, rank_ratio)
  return mean, sum(low_rank(x - mean, k) for x in xs)



# --------------------------------------------------------------------------- kernels and factories
# Leaves that are not matrices (biases, norms, scalars, and 3-D or larger leaves such as stacked
# layers) take the papers' fallback: the mean task vector (TSV-M, Iso-C, Iso-CTS), the mean (CART).


def require_matrices(name: str):
  """compute_stats that reads no data: ValueError, before any work, for a model without 2-D leaves."""

  def compute_stats(leaf_pass, n_experts, shapes):
    del leaf_pass, n_experts
    if not any(len(s) == 2 for s in shapes.values()):
      raise ValueError(f"{name}: a matrix method needs 2-D leaves, and this model has none "
                       f"(shapes {sorted(set(map(tuple, shapes.values())))[:4]}...)")
    return {}

  return compute_stats


def _is_matrix(x: Array) -> bool:
  return x.ndim == 2 and min(x.shape) > 0


def _tsv_kernel(base, experts, ctx, stats, *, out_dtype):
  del stats
  taus = steps.task_vectors(base, experts)
  if _is_matrix(taus[0]) and tsv_rank(*taus[0].shape, len(taus)) > 0:
    delta = tsv_m_matrix(taus)
  else:
    delta = sum(taus) / len(taus)
  return (f32(base) + steps.rounded(ctx.lam * delta, delta)).astype(out_dtype)


def _iso_kernel(base, experts, ctx, stats, *, out_dtype, common_space_fraction):
  del stats
  taus = steps.task_vectors(base, experts)
  if not _is_matrix(taus[0]):
    delta = sum(taus) / len(taus)
  elif common_space_fraction is None:
    delta = iso_c_matrix(taus)
  else:
    delta = iso_cts_matrix(taus, common_space_fraction)
  return (f32(base) + steps.rounded(ctx.lam * delta, delta)).astype(out_dtype)


def _cart_kernel(base, experts, ctx, stats, *, out_dtype, rank_ratio):
  del base, stats
  xs = [f32(e) for e in experts]
  if not _is_matrix(xs[0]):
    return (sum(xs) / len(xs)).astype(out_dtype)
  mean, lowrank = cart_matrix(xs, rank_ratio)
  return (mean + steps.rounded(ctx.lam * lowrank, lowrank)).astype(out_dtype)


_jit_tsv = jax.jit(kernels.on_whole_leaves(_tsv_kernel), static_argnames=("out_dtype",))
_jit_iso = jax.jit(kernels.on_whole_leaves(_iso_kernel), static_argnames=("out_dtype", "common_space_fraction"))
_jit_cart = jax.jit(kernels.on_whole_leaves(_cart_kernel), static_argnames=("out_dtype", "rank_ratio"))
_LAM = number("scale of the merged task vector")


@method_factory(formula="theta_0 + lam * polar(U) diag(s) polar(V^T), [U s V] each task's top r/T singular triplets "
                        "(2-D leaves; others: mean task vector)",
                lam=_LAM)
def tsv_m(lam: float = 1.0) -> MergeMethod:
  r"""TSV-M per 2-D leaf (see :func:`tsv_m_matrix`); other leaves (and matrices with min(m, n) < T, where
  the official code's int(r / T) = 0 would drop them) get the mean task vector. ``lam`` is the paper's
  :math:`\alpha` (1 by default; the paper tunes it on validation data in (0, 3]). Gargiulo et al.,
  CVPR 2025, arXiv 2412.00081; FusionBench ``TSVM``."""
  return MergeMethod(name="tsv_m", hparams={"lam": lam}, traits=Traits(uses_base=True, lam_scales_task_vector=True),
                     kernel=kernels.bind(_jit_tsv), compute_stats=require_matrices("tsv_m"), lam=lam,
                     reference="Gargiulo et al., CVPR 2025, arXiv 2412.00081")


@method_factory(formula="theta_0 + lam * mean(s) U V^T of sum_t tau_t = U diag(s) V^T (2-D leaves; others: mean "
                        "task vector)",
                lam=_LAM)
def iso_c(lam: float = 1.0) -> MergeMethod:
  r"""Iso-C per 2-D leaf (see :func:`iso_c_matrix`); other leaves get the mean task vector. ``lam`` is
  the paper's :math:`\alpha` (tuned on validation data; FusionBench uses 1.5). Marczak et al.,
  ICML 2025, arXiv 2502.04959; FusionBench ``iso_c``."""
  return MergeMethod(name="iso_c", hparams={"lam": lam}, traits=Traits(uses_base=True, lam_scales_task_vector=True),
                     kernel=kernels.bind(_jit_iso, common_space_fraction=None), compute_stats=require_matrices("iso_c"),
                     lam=lam, reference="Marczak et al., ICML 2025, arXiv 2502.04959")


@method_factory(formula="theta_0 + lam * mean(s) polar(U) polar(V^T) over the common subspace of sum_t tau_t and "
                        "each task's residual subspace (2-D leaves; others: mean task vector)",
                common_space_fraction=number("share of the r directions taken from the summed task matrix", 0.0, 1.0),
                lam=_LAM)
def iso_cts(common_space_fraction: float = 0.8, lam: float = 1.0) -> MergeMethod:
  r"""Iso-CTS per 2-D leaf (see :func:`iso_cts_matrix`); other leaves get the mean task vector. With
  ``common_space_fraction=1`` it is :func:`iso_c`. Marczak et al., ICML 2025; FusionBench ``iso_cts``."""
  return MergeMethod(name="iso_cts", hparams={"common_space_fraction": common_space_fraction, "lam": lam},
                     traits=Traits(uses_base=True, lam_scales_task_vector=True),
                     kernel=kernels.bind(_jit_iso, common_space_fraction=common_space_fraction),
                     compute_stats=require_matrices("iso_cts"), lam=lam,
                     reference="Marczak et al., ICML 2025, arXiv 2502.04959")


@method_factory(formula="mean_t theta_t + lam * sum_t SVD_k(theta_t - mean) (2-D leaves; others: the mean), "
                        "k = max(1, int(rank_ratio r))",
                rank_ratio=number("rank kept, as a fraction of min(m, n)", 0.0, 1.0),
                lam=number("scale of the summed low-rank centered task vectors (the paper's prior)"))
def cart(rank_ratio: float = 0.12, lam: float = 2.0) -> MergeMethod:
  r"""CART per 2-D leaf (see :func:`cart_matrix`): task vectors centered at the experts' average,
  truncated to low rank. The base is not used (centering cancels it). At ``lam=0`` or
  ``rank_ratio`` 0 or 1 it is the average. Defaults: the paper's 8-task ViT-B/32 configuration
  (prior 2.0, rank ratio 0.12). Choi et al., 2024, arXiv 2412.12153."""
  return MergeMethod(name="cart", hparams={"rank_ratio": rank_ratio, "lam": lam}, traits=Traits(uses_base=False),
                     kernel=kernels.bind(_jit_cart, rank_ratio=rank_ratio), compute_stats=require_matrices("cart"),
                     lam=lam, reference="Choi et al., 2024, arXiv 2412.12153")
