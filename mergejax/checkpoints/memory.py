"""In-memory pytrees (plain dicts, Flax linen params, flax.nnx.State) as a Source and a Sink."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from mergejax import tree as tree_lib
from mergejax.checkpoints.base import LeafSpec


class PytreeSource:
  """Leaves of an in-memory pytree; ``read`` returns them as jax.Arrays without copying."""

  def __init__(self, tree: Any, name: str = "pytree"):
    self.name = name
    self.paths, self._leaves, self.treedef = tree_lib.flatten(tree)
    self._by_path = dict(zip(self.paths, self._leaves))
    if len(self._by_path) != len(self.paths):
      raise ValueError(f"{name}: two leaves have the same path")

  def specs(self) -> list[LeafSpec]:
    out = []
    for p, x in zip(self.paths, self._leaves):
      shape, dtype = tree_lib.shape_dtype(x)
      out.append(LeafSpec(p, shape, dtype))
    return out

  def raw(self, path: str) -> Any:
    """The leaf exactly as given (used to pass non-float leaves through unchanged)."""
    return self._by_path[path]

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out = {}
    for p in paths:
      x = self._by_path[p]
      if shardings and shardings.get(p) is not None:
        x = jax.device_put(x, shardings[p])
      elif not isinstance(x, jax.Array):
        x = jnp.asarray(x)
      out[p] = x
    return out


class PytreeSink:
  """Collects merged leaves and rebuilds a pytree with the reference tree's structure."""

  def __init__(self, paths: Sequence[str], treedef: Any):
    self._paths, self._treedef = list(paths), treedef
    self._leaves: dict[str, Any] = {}

  def write(self, leaves: Mapping[str, Any]) -> None:
    self._leaves.update(leaves)

  def finalize(self, metadata: Mapping[str, Any]) -> Any:
    del metadata
    missing = [p for p in self._paths if p not in self._leaves]
    if missing:
      raise RuntimeError(f"merge produced no value for leaf '{missing[0]}'")
    return jax.tree_util.tree_unflatten(self._treedef, [self._leaves[p] for p in self._paths])
