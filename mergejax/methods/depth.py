"""Layer depth from a leaf path, for methods whose hyperparameters vary with depth (LiNeS).

A leaf belongs to layer i when a component of its path (split at "/" and ".") is the integer i
("model.layers.3.mlp.up_proj.weight", "blocks/3/mlp/kernel") or ends in "_i" ("layer_3/mlp/kernel",
Flax linen's module names). A leaf under a component named "layers" without such an index is a stack
of all layers along its axis 0 (``flax.linen.scan``, as the built-in decoder with ``scan_layers``).
Every other leaf (embeddings, final norm, head) has no depth.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

_INDEXED = re.compile(r"^(?:\d+|.*_(\d+))$")
STACKED = "stacked"


def layer_of(path: str) -> int | str | None:
  """The layer index of ``path``, :data:`STACKED` for a leaf stacking all layers on axis 0, or None."""
  parts = re.split(r"[/.]", path)
  for part in parts:
    m = _INDEXED.match(part)
    if m:
      return int(m.group(1) if m.group(1) is not None else part)
  return STACKED if "layers" in parts else None


def count_layers(shapes: Mapping[str, Sequence[int]]) -> int:
  """The number of layers of a model: one more than the largest index, or a stacked leaf's axis-0 size
  (0 for a model without layers)."""
  n = 0
  for path, shape in shapes.items():
    d = layer_of(path)
    if d == STACKED:
      n = max(n, int(shape[0]) if len(shape) else 0)
    elif d is not None:
      n = max(n, d + 1)
  return n
