"""Merged candidates of one (cell, method): each merged task vector is computed once for every lam.

For the methods whose :math:`\\lambda` only scales the merged task vector,

.. math:: \\theta_m(\\lambda) = \\theta_0 + \\lambda\\, g(\\tau_1, \\dots, \\tau_N),\\qquad \\tau_t = \\theta_t - \\theta_0,

(Task Arithmetic: :math:`g = \\sum_t w_t \\tau_t`; TIES / DARE-TIES: the disjoint mean of the trimmed or
dropped, sign-agreeing task vectors; DARE: the rescaled masked sum), the candidates of a grid that differ
only in ``lam`` share :math:`g`: it is merged once (``mergejax.merge`` of the task vectors onto a zero
base with ``lam=1``, which gives :math:`g` itself: TIES' thresholds, sign votes and DARE's masks only see
the :math:`\\tau_t`, computed here in float32 exactly as the kernels do), and each candidate is then one
fused :math:`\\theta_0 + \\lambda g` on device. A TIES grid of 3 lams costs one TIES merge instead of 3.

Which methods take this path is read from their traits (``lam_scales_task_vector``), never their names,
so a user-registered method that declares it gets it too; others are merged directly for every
candidate. The result equals ``mergejax.merge(base, experts, method(lam=...))`` for Task Arithmetic and
TIES (the kernels compute the same float32 expression), and within one float32 rounding of the product
for the DARE methods (:math:`(\\lambda r) g'` vs :math:`\\lambda (r g')` with DARE's rescale
:math:`r`); a test checks both.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

import mergejax
from mergejax import methods as methods_lib
from mergejax.methods import steps

PyTree = Any

def task_vectors(base: PyTree, experts: Mapping[str, PyTree]) -> dict[str, PyTree] | None:
  """Float32 host task vectors :math:`\\tau_t = \\theta_t - \\theta_0` per expert, or None if a leaf
  is not float32 (then every candidate is merged directly)."""
  if any(np.asarray(x).dtype != np.float32 for x in jax.tree.leaves(base)):
    return None
  return {c: jax.tree.map(lambda e, b: np.subtract(e, b, dtype=np.float32), p, base) for c, p in experts.items()}


@jax.jit
def scale_add(base: PyTree, g: PyTree, lam: jax.Array) -> PyTree:
  r""":math:`\theta_0 + \lambda g`, leaf by leaf, in one program (the product rounded on its own, as the
  merge kernels: :func:`mergejax.methods.steps.rounded`)."""
  return jax.tree.map(lambda b, x: b + steps.rounded(lam * x, x), base, g)


@jax.jit
def scale_add_flat(base: PyTree, g_flat: jax.Array, lam: jax.Array) -> PyTree:
  r""":math:`\theta_0 + \lambda g` with ``g`` flat: the base's leaves concatenated in tree order."""
  leaves, treedef = jax.tree.flatten(base)
  out, start = [], 0
  for x in leaves:
    g = g_flat[start:start + x.size].reshape(x.shape)
    out.append(x + steps.rounded(lam * g, g))
    start += x.size
  return jax.tree.unflatten(treedef, out)


def flat_exact(method: methods_lib.MergeMethod) -> bool:
  """Whether merging the task vectors concatenated into one leaf gives the per-leaf merge exactly: an
  elementwise kernel whose randomness is not keyed by position (concatenation moves entries) and whose
  statistics, if any, are model-wide (Task Arithmetic; TIES with the paper's global trim). Not DARE
  (masks keyed by leaf path and row) nor per-tensor TIES (per-leaf statistics)."""
  t = method.traits
  per_leaf_stats = method.compute_stats is not None and method.local_stats
  return t.elementwise and not t.position_keyed and not t.stochastic and not per_leaf_stats


class CandidateMerger:
  """Merges one cell's candidates for one method, sharing the merged task vector across lams.

  Inputs are placed once on ``device`` and merged there (``mesh=None``: the engine's per-leaf path, which
  re-reads device-resident leaves without copies in every statistics pass; for models of this size
  it is several times faster than host leaves or the flat-chunk path of a one-device mesh).

  Args:
    method_name: a registered method.
    base: the base params (host arrays).
    experts: the cell's experts (host arrays), in merge order.
    taus: their float32 task vectors (:func:`task_vectors`), or None to merge every candidate directly.
    seed: the merge seed (DARE's masks).
    device: where to merge (default: this process's first device).
  """

  def __init__(self, method_name: str, base: PyTree, experts: Sequence[PyTree], taus: Sequence[PyTree] | None,
               *, seed: int, device: jax.Device | None = None):
    self.method_name, self.seed = method_name, seed
    self._device = device or jax.local_devices()[0]
    self._base_host, self._experts_host = base, list(experts)
    self._taus_host = list(taus) if taus is not None else None
    self._placed: dict[tuple, Any] = {}  # ("direct",) | ("taus", flat?) | ("base",) -> arrays on the device
    self._g: dict[tuple, PyTree] = {}

  def factored(self, method: methods_lib.MergeMethod) -> bool:
    """Whether ``method`` is merged as theta_0 + lam * g with g shared across lams."""
    return self._taus_host is not None and method.traits.lam_scales_task_vector

  def __call__(self, hparams: Mapping[str, Any]) -> PyTree:
    """The merged params of one candidate (on the merge device)."""
    method = methods_lib.get(self.method_name, **hparams)
    if not self.factored(method):
      base, experts = self._inputs(("direct",))
      return mergejax.merge(base, experts, method, seed=self.seed)
    g_method = methods_lib.get(self.method_name, **{**hparams, "lam": 1.0})
    lam = np.float32(method.lam)
    base = self._inputs(("base",))
    if flat_exact(g_method):
      return scale_add_flat(base, self._merge(g_method, flat=True)["flat"], lam)
    return scale_add(base, self._merge(g_method, flat=False), lam)

  def _inputs(self, key: tuple) -> Any:
    """Inputs placed on the merge device once: ``("direct",)`` the base and the experts; ``("base",)``
    theta_0 of theta_0 + lam g; ``("taus", flat)`` a zero base and the task vectors, in tree form or
    flat (every leaf concatenated into one ``{"flat": [P]}``)."""
    if key not in self._placed:
      if key[0] == "direct":
        value = (self._base_host, self._experts_host)
      elif key[0] == "base":
        value = self._base_host
      else:
        base, models = jax.tree.map(np.zeros_like, self._base_host), self._taus_host
        if key[1]:
          cat = lambda t: {"flat": np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])}
          base, models = cat(base), [cat(m) for m in models]
        value = (base, models)
      self._placed[key] = jax.device_put(value, self._device)
    return self._placed[key]

  def _merge(self, method: methods_lib.MergeMethod, flat: bool) -> PyTree:
    """g: the task vectors merged onto a zero base with ``lam = 1`` (cached per hyperparameters). ``flat``:
    one leaf, so the merge (and TIES' threshold search) compiles for one shape per model instead of one
    per leaf shape, and runs one kernel per pass instead of one per leaf."""
    key = (flat,) + tuple(sorted((k, repr(v)) for k, v in method.hparams.items()))
    if key not in self._g:
      zeros, taus = self._inputs(("taus", flat))
      self._g[key] = mergejax.merge(zeros, taus, method, seed=self.seed)
    return self._g[key]
