r"""Subspace merging of 2-D leaves: TSV-M, Iso-C, Iso-CTS and CART.

Each works on one matrix :math:`\Delta \in \mathbb{R}^{m\times n}` at a time (r = min(m, n)) through
its thin SVD :math:`\Delta = U\,\mathrm{diag}(s)\,V^\top`; :func:`polar` is the orthogonal polar factor
:math:`\mathrm{polar}(A) = PQ^\top` of :math:`A = P\Sigma Q^\top` (the nearest matrix with orthonormal
columns, or rows). Leaves that are not 2-D take each method's documented fallback (in the factories).
All math is float32 (LAPACK's SVD on CPU).
"""

from __future__ import annotations

import jax.numpy as jnp

from mergejax.methods.base import Array


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


def tsv_m(taus: list[Array]) -> Array:
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


def iso_c(taus: list[Array]) -> Array:
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


def iso_cts(taus: list[Array], common_space_fraction: float) -> Array:
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


def cart(xs: list[Array], rank_ratio: float) -> tuple[Array, Array]:
  r"""CART (Choi et al., 2024, arXiv 2412.12153), one matrix: the experts' mean
  :math:`\bar\theta` and the sum of the rank-k approximations of the centered task vectors,
  :math:`\sum_t \mathrm{SVD}_k(\theta_t - \bar\theta)`, k = :func:`cart_rank`."""
  mean = sum(xs) / len(xs)
  k = cart_rank(*mean.shape, rank_ratio)
  return mean, sum(low_rank(x - mean, k) for x in xs)

