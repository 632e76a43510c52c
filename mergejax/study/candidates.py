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

Placement: everything stays where the models are. The task vectors are computed on the params' devices,
sharded like them (:func:`task_vectors`); the merges run through the engine's whole-leaf path on those
sharded inputs, so every merged leaf comes out sharded like the base's leaf, and the evaluator reads it
from there. Where compile time matters more than a copy of the inputs (one device, or one process's CPU
devices: :func:`flat_sharding`) the task vectors are also concatenated into one flat leaf, split evenly
over the mesh (:func:`flat_exact`), which compiles one merge program per model instead of one per leaf
shape; on accelerators and across processes the merges stay per leaf. Both give the same bits.

Task-vector dtype: float32 (the default) holds :math:`\\theta_t - \\theta_0` exactly as the kernels
compute it, so the candidates equal direct merges as above; bfloat16 halves their memory and rounds each
:math:`\\tau_t` once (to 8 significant bits) before the merge, so results move by that rounding.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import mergejax
from mergejax import methods as methods_lib
from mergejax.engine.output import cast_output
from mergejax.methods import steps

PyTree = Any
TASK_VECTOR_DTYPES = ("float32", "bfloat16")


@functools.lru_cache(maxsize=256)
def _jitted_like(fn: Any, treedef: Any, shardings: tuple[Any, ...] | None) -> Any:
  return jax.jit(fn, out_shardings=None if shardings is None else jax.tree.unflatten(treedef, list(shardings)))


def _like(fn: Any, like: PyTree) -> Any:
  """``fn`` jitted with its output placed exactly like ``like``'s leaves (device arrays; host leaves: where
  XLA puts it). Elementwise programs otherwise let XLA's propagation pick an output sharding of its own."""
  leaves, treedef = jax.tree.flatten(like)
  shardings = tuple(getattr(x, "sharding", None) for x in leaves)
  return _jitted_like(fn, treedef, None if None in shardings else shardings)


def _difference32(expert: PyTree, base: PyTree) -> PyTree:
  return jax.tree.map(lambda e, b: e.astype(jnp.float32) - b.astype(jnp.float32), expert, base)


def _difference16(expert: PyTree, base: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x.astype(jnp.bfloat16), _difference32(expert, base))


def task_vectors(base: PyTree, experts: Mapping[str, PyTree], dtype: str = "float32") -> dict[str, PyTree] | None:
  """Task vectors :math:`\\tau_t = \\theta_t - \\theta_0` per expert, computed in float32 and stored in
  ``dtype`` ("float32" or "bfloat16") on the params' devices, each leaf sharded like the params' leaf
  (one elementwise program per expert). None if a leaf is not floating point (then every candidate is
  merged directly)."""
  if dtype not in TASK_VECTOR_DTYPES:
    raise ValueError(f"task vector dtype {dtype!r}: choose from {TASK_VECTOR_DTYPES}")
  if any(not jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(base)):
    return None
  fn = _like(_difference32 if dtype == "float32" else _difference16, base)
  return {c: fn(p, base) for c, p in experts.items()}


def _scale_add(base: PyTree, g: PyTree, lam: jax.Array) -> PyTree:
  return jax.tree.map(lambda b, x: cast_output(b.astype(jnp.float32) + steps.rounded(lam * x, x), b.dtype), base, g)


def scale_add(base: PyTree, g: PyTree, lam: jax.Array) -> PyTree:
  r""":math:`\theta_0 + \lambda g`, leaf by leaf, in one program, in float32 and cast to the base's dtype as
  the merge kernels do (the product rounded on its own: :func:`mergejax.methods.steps.rounded`); sharded
  like the base."""
  return _like(_scale_add, base)(base, g, lam)


def _scale_add_flat(base: PyTree, g_flat: jax.Array, lam: jax.Array) -> PyTree:
  leaves, treedef = jax.tree.flatten(base)
  out, start = [], 0
  for x in leaves:
    g = g_flat[start:start + x.size].reshape(x.shape)
    out.append(cast_output(x.astype(jnp.float32) + steps.rounded(lam * g, g), x.dtype))
    start += x.size
  return jax.tree.unflatten(treedef, out)


def scale_add_flat(base: PyTree, g_flat: jax.Array, lam: jax.Array) -> PyTree:
  r""":math:`\theta_0 + \lambda g` with ``g`` flat: the base's leaves concatenated in tree order; sharded
  like the base."""
  return _like(_scale_add_flat, base)(base, g_flat, lam)


def _concatenate(tree: PyTree) -> dict[str, jax.Array]:
  return {"flat": jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])}


@functools.lru_cache(maxsize=16)
def _flattener(sharding: Any) -> Any:
  return jax.jit(_concatenate, out_shardings={"flat": sharding} if sharding is not None else None)


def flat_sharding(tree: PyTree) -> tuple[bool, Any]:
  """Whether the candidates of ``tree``'s models are merged flat, and the flat leaf's sharding (None: where
  XLA puts it). Flat where the merge programs' compile time matters more than a copy of the inputs: one
  device (or host arrays), or one process's CPU devices, the flat leaf split evenly over the mesh (its
  size divisible by the device count). Accelerator meshes and multi-process runs merge per leaf: a flat
  copy of N task vectors would cost N models of memory there, and compiles are small next to big models."""
  leaves = jax.tree.leaves(tree)
  shardings = {x.sharding for x in leaves if isinstance(x, jax.Array)}
  devices = set().union(*(s.device_set for s in shardings)) if shardings else set()
  if len(devices) <= 1:
    return True, None
  mesh = getattr(next(iter(shardings)), "mesh", None)
  size = sum(x.size for x in leaves)
  if (jax.process_count() > 1 or any(d.platform != "cpu" for d in devices) or mesh is None
      or set(mesh.devices.flat) != devices or size % len(devices)):
    return False, None
  return True, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))


def _zeros(tree: PyTree) -> PyTree:
  """Zeros shaped, typed and sharded like ``tree``'s leaves, made on their devices."""
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype, device=getattr(x, "sharding", None)), tree)


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

  Inputs are used where they are (the study's mesh, sharded like the params) and merged there through
  the engine's whole-leaf path (``mergejax.merge`` with the inputs' own shardings); outputs are sharded
  like the base. Only the latest merged task vector is kept (one model of float32 per merger).

  Args:
    method_name: a registered method.
    base: the base params.
    experts: the cell's experts, in merge order.
    taus: their task vectors (:func:`task_vectors`), or None to merge every candidate directly.
    seed: the merge seed (DARE's masks).
    data: the experts' examples, for a data-aware method (:class:`mergejax.expert_data.ExpertData`): each
      candidate's statistics are computed from them (per-expert ones once, cached) and it is merged
      directly.
  """

  def __init__(self, method_name: str, base: PyTree, experts: Sequence[PyTree], taus: Sequence[PyTree] | None,
               *, seed: int, data: Any = None):
    self.method_name, self.seed, self._data = method_name, seed, data
    self._base, self._experts = base, list(experts)
    self._taus = list(taus) if taus is not None else None
    self._flat_ok, self._flat_sharding = flat_sharding(base)
    self._placed: dict[bool, Any] = {}  # flat? -> (zero base, task vectors)
    self._g: tuple[tuple, PyTree] | None = None  # (hyperparameters, merged task vector)

  def factored(self, method: methods_lib.MergeMethod) -> bool:
    """Whether ``method`` is merged as theta_0 + lam * g with g shared across lams."""
    return self._taus is not None and method.traits.lam_scales_task_vector

  def __call__(self, hparams: Mapping[str, Any]) -> PyTree:
    """The merged params of one candidate (where the base is, sharded like it)."""
    method = methods_lib.get(self.method_name, **hparams)
    if self._data is not None:
      method = self._data.bind(method, self._base, self._experts)
    if not self.factored(method):
      return mergejax.merge(self._base, self._experts, method, seed=self.seed)
    g_method = methods_lib.get(self.method_name, **{**hparams, "lam": 1.0})
    lam = np.float32(method.lam)
    if self._flat_ok and flat_exact(g_method):
      return scale_add_flat(self._base, self._merge(g_method, flat=True)["flat"], lam)
    return scale_add(self._base, self._merge(g_method, flat=False), lam)

  def _inputs(self, flat: bool) -> Any:
    """A zero base and the task vectors, in tree form or flat (every leaf concatenated into one
    ``{"flat": [P]}``, one device only), built once."""
    if flat not in self._placed:
      zeros, taus = _zeros(self._taus[0]), self._taus
      if flat:
        flatten = _flattener(self._flat_sharding)
        zeros, taus = flatten(zeros), [flatten(t) for t in taus]
      self._placed[flat] = (zeros, taus)
    return self._placed[flat]

  def _merge(self, method: methods_lib.MergeMethod, flat: bool) -> PyTree:
    """g: the task vectors merged onto a zero base with ``lam = 1``, in float32. ``flat``: one leaf, so
    the merge (and TIES' threshold search) compiles for one shape per model instead of one per leaf
    shape, and runs one kernel per pass instead of one per leaf."""
    key = (flat,) + tuple(sorted((k, repr(v)) for k, v in method.hparams.items()))
    if self._g is None or self._g[0] != key:
      self._g = None  # freed before the next one is merged
      zeros, taus = self._inputs(flat)
      self._g = (key, mergejax.merge(zeros, taus, method, seed=self.seed, dtype=jnp.float32))
    return self._g[1]
