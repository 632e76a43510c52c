"""The library entry point: merge in-memory pytrees."""

from __future__ import annotations

from typing import Any, Sequence

from mergejax import methods as methods_lib
from mergejax.checkpoints.memory import PytreeSink, PytreeSource
from mergejax.engine import merge_sources
from mergejax.methods.base import MergeMethod

PyTree = Any


def merge(base: PyTree | None, experts: Sequence[PyTree], method: MergeMethod | str, *, seed: int = 0,
          dtype: Any = None, mesh: Any = None, allow_nonfinite: bool = False) -> PyTree:
  """Merges expert pytrees (plain dicts, Flax linen params, flax.nnx.State) into one.

  Args:
    base: the shared base model's parameters (None for methods that do not use it, e.g. average).
    experts: the fine-tuned models, same structure, shapes and dtypes as ``base``.
    method: a :class:`MergeMethod` (``mergejax.methods.ties(density=0.2)``) or a registered name.
    seed: seeds DARE's masks; the result is a pure function of (inputs, method, seed).
    dtype: output dtype for float leaves (default: the base's dtype). Math is always float32.
    mesh: devices to merge on (default: where the leaves are). A one-device CPU mesh with host (NumPy)
      leaves runs elementwise methods on flat chunks: a few compiles serve every leaf shape.
    allow_nonfinite: merge inputs holding NaN/Inf; if False, such an input raises NonFiniteError
      naming the input and the leaf.

  Returns:
    A pytree with the base's structure. Non-float leaves are the base's, unchanged.
  """
  if isinstance(method, str):
    method = methods_lib.get(method)
  experts = list(experts)
  if not experts:
    raise ValueError("merge needs at least one expert")
  base_src = PytreeSource(base, name="base") if base is not None else None
  expert_srcs = [PytreeSource(e, name=f"expert {i}") for i, e in enumerate(experts)]
  reference = base_src if base_src is not None else expert_srcs[0]
  sink = PytreeSink(reference.paths, reference.treedef)
  return merge_sources(base_src, expert_srcs, sink, method, seed=seed, dtype=dtype, passthrough=reference.raw,
                       mesh=mesh, allow_nonfinite=allow_nonfinite)
