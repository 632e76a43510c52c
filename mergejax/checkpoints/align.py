"""Inputs whose float leaves differ in dtype (an f32 fine-tune of a bf16 base): every input's copy of such a
leaf is presented as float32 (an exact upcast), so the merge math, float32 anyway, sees the values as
stored; the output dtype stays the configured one, else the base's."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mergejax import tree as tree_lib
from mergejax.checkpoints.base import LeafSpec
from mergejax.checkpoints.mapped import MappedSource, host_leaf

F32 = np.dtype(np.float32)


def mixed_float_leaves(sources: Sequence[Any]) -> dict[str, list[np.dtype]]:
  """{path: [dtype per source]} of leaves that every source has as a float leaf of the same shape, in
  more than one dtype."""
  per = [{s.path: s for s in src.specs()} for src in sources]
  out = {}
  for path, spec in per[0].items():
    specs = [p.get(path) for p in per]
    if any(s is None or s.shape != spec.shape or not tree_lib.is_float_dtype(s.dtype) for s in specs):
      continue
    dtypes = [np.dtype(s.dtype) for s in specs]
    if len(set(dtypes)) > 1:
      out[path] = dtypes
  return out


def upcast(src: Any, paths: Sequence[str]) -> Any:
  """``src`` with the float leaves ``paths`` presented as float32 (unchanged if there are none)."""
  specs = {s.path: s for s in src.specs()}
  todo = [p for p in paths if np.dtype(specs[p].dtype) != F32]
  if not todo:
    return src
  return MappedSource(src, {p: (LeafSpec(p, specs[p].shape, F32),
                               lambda p=p: np.asarray(host_leaf(src, p), F32)) for p in todo})


def align_dtypes(sources: Sequence[Any], dtype: Any = None) -> tuple[list[Any], Any]:
  """(sources with mixed-dtype float leaves upcast to float32, output dtype).

  The output dtype is ``dtype`` when given; otherwise, when some leaf is mixed, the first source's
  (the base's) float dtype, which must then be one dtype for all its float leaves (else ValueError
  asking for an explicit dtype, naming a mixed leaf).
  """
  mixed = mixed_float_leaves(sources)
  if not mixed:
    return list(sources), dtype
  if dtype is None:
    ref = {np.dtype(s.dtype) for s in sources[0].specs() if tree_lib.is_float_dtype(s.dtype)}
    if len(ref) != 1:
      path, dts = next(iter(sorted(mixed.items())))
      raise ValueError(f"leaf '{path}' has dtypes {sorted({d.name for d in dts})} across the inputs and "
                       f"{sources[0].name} stores floats in several dtypes: choose the output dtype explicitly")
    dtype = ref.pop()
  return [upcast(s, list(mixed)) for s in sources], dtype
