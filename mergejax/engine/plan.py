"""What a merge will do, decided before any data is read: validated inputs, leaf groups under a memory
budget, output dtypes, shardings, and each leaf's kernel context."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

from mergejax import sharding as sharding_lib
from mergejax import tree as tree_lib
from mergejax.checkpoints.base import LeafSpec, Source
from mergejax.methods.base import LeafContext, MergeMethod


def validate_sources(reference: Source, others: Sequence[Source]) -> list[LeafSpec]:
  """Checks every source has the reference's leaves, shapes and dtypes; returns the reference specs."""
  ref = reference.specs()
  tree_lib.check_same_structure(
      ([s.path for s in ref], ref),
      [(o.name, ([s.path for s in specs], specs)) for o, specs in ((o, o.specs()) for o in others)],
      reference_name=reference.name)
  return ref


def plan_groups(specs: Sequence[LeafSpec], n_inputs: int, budget_bytes: float | None,
                out_itemsize: int | None = None) -> list[list[LeafSpec]]:
  """Consecutive leaf groups whose in-flight footprint fits ``budget_bytes`` (None: one group).

  Per-input group size B solves 2 n_inputs B + B_out + W <= budget with W = 4 (n_inputs + 1) x the
  largest leaf's element count (float32 workspace). A leaf larger than that is a group by itself.
  """
  if budget_bytes is None or not specs:
    return [list(specs)] if specs else []
  largest = max(specs, key=lambda s: s.size)
  workspace = 4 * (n_inputs + 1) * largest.size
  per_byte = 2 * n_inputs + (out_itemsize or 4) / 2
  floor = workspace + per_byte * largest.nbytes
  if budget_bytes < floor:
    logging.warning("memory budget %.3g GB is below the largest leaf's footprint (%s: %.3g GB); "
                    "each leaf becomes its own group and peak memory follows that leaf",
                    budget_bytes / 2**30, largest.path, floor / 2**30)
  target = max(1.0, (budget_bytes - workspace) / per_byte)
  groups: list[list[LeafSpec]] = [[]]
  size = 0
  for s in specs:
    if groups[-1] and size + s.nbytes > target:
      groups.append([])
      size = 0
    groups[-1].append(s)
    size += s.nbytes
  return groups


@dataclasses.dataclass
class Job:
  """One merge, planned: the inputs (base first), leaves, groups and per-leaf output dtypes."""

  method: MergeMethod
  base: Source | None
  experts: list[Source]
  seed: int
  specs: list[LeafSpec]
  groups: list[list[LeafSpec]]
  out_dtype: dict[str, np.dtype]
  is_float: dict[str, bool]
  mesh: jax.sharding.Mesh | None
  shardings: dict[str, Any] | None
  dtype: Any
  _contexts: dict[str, LeafContext] = dataclasses.field(default_factory=dict)

  @property
  def sources(self) -> list[Source]:
    """Every input, base first."""
    return ([self.base] if self.base is not None else []) + self.experts

  @property
  def reference(self) -> Source:
    """The source of the output's structure and of non-float leaves."""
    return self.base if self.base is not None else self.experts[0]

  @property
  def n_experts(self) -> int:
    return len(self.experts)

  @property
  def float_specs(self) -> list[LeafSpec]:
    return [s for s in self.specs if self.is_float[s.path]]

  def context(self, path: str) -> LeafContext:
    """The kernel context of leaf ``path`` (built once by the method)."""
    if path not in self._contexts:
      self._contexts[path] = self.method.context(self.n_experts, self.seed, path)
    return self._contexts[path]


def plan(base: Source | None, experts: Sequence[Source], method: MergeMethod, *, seed: int, dtype: Any,
         mesh: jax.sharding.Mesh | None, rules: Sequence[sharding_lib.Rule], memory_budget_bytes: float | None) -> Job:
  """Validates the inputs against the method and each other, and plans the merge."""
  experts = list(experts)
  method.check_experts(len(experts))
  if method.traits.uses_base and base is None:
    raise ValueError(f"{method.name} needs a base model")
  reference = base if base is not None else experts[0]
  specs = validate_sources(reference, experts if base is not None else experts[1:])
  is_float = {s.path: tree_lib.is_float_dtype(s.dtype) for s in specs}
  out_dtype = {s.path: np.dtype(dtype) if dtype is not None and is_float[s.path] else np.dtype(s.dtype) for s in specs}
  n_inputs = len(experts) + (base is not None)
  groups = plan_groups(specs, n_inputs, memory_budget_bytes,
                       out_itemsize=np.dtype(dtype).itemsize if dtype is not None else None)
  shardings = ({s.path: sharding_lib.sharding_for(s.path, s.shape, mesh, rules) for s in specs}
               if mesh is not None else None)
  return Job(method=method, base=base, experts=experts, seed=seed, specs=specs, groups=groups, out_dtype=out_dtype,
             is_float=is_float, mesh=mesh, shardings=shardings, dtype=dtype)
