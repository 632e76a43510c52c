"""The merge engine: applies a method leaf by leaf over Sources into a Sink.

validate -> [statistics passes, if the method needs global statistics] -> merge pass -> finalize.
The same path serves :func:`mergejax.merge` on in-memory pytrees and checkpoint merges.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mergejax import tree as tree_lib
from mergejax.checkpoints.base import LeafSpec, Sink, Source
from mergejax.methods.base import MergeMethod


def validate_sources(reference: Source, others: Sequence[Source]) -> list[LeafSpec]:
  """Checks every source has the reference's leaves, shapes and dtypes; returns the reference specs."""
  ref = reference.specs()
  ref_pair = ([s.path for s in ref], [_Abstract(s) for s in ref])
  tree_lib.check_same_structure(
      ref_pair,
      [(o.name, ([s.path for s in specs], [_Abstract(s) for s in specs])) for o, specs in
       ((o, o.specs()) for o in others)],
      reference_name=reference.name)
  return ref


class _Abstract:
  def __init__(self, spec: LeafSpec):
    self.shape, self.dtype = spec.shape, spec.dtype


def merge_sources(
    base: Source | None,
    experts: Sequence[Source],
    sink: Sink,
    method: MergeMethod,
    *,
    seed: int = 0,
    dtype: Any = None,
    passthrough: Callable[[str], Any] | None = None,
) -> Any:
  """Merges ``experts`` (onto ``base``) with ``method`` and writes every leaf to ``sink``.

  Non-float leaves (integer buffers, step counters) are taken from the base unchanged (from the first
  expert when the method uses no base). Float leaves are merged in float32 and cast to the base's
  dtype, or to ``dtype`` when given.
  """
  t0 = time.perf_counter()
  method.check_experts(len(experts))
  if method.uses_base and base is None:
    raise ValueError(f"{method.name} needs a base model")
  reference = base if base is not None else experts[0]
  others = list(experts) if base is not None else list(experts[1:])
  specs = validate_sources(reference, others)
  float_specs = [s for s in specs if tree_lib.is_float_dtype(s.dtype)]
  shapes = {s.path: s.shape for s in float_specs}
  n = len(experts)

  def read_group(path: str):
    b = base.read([path])[path] if base is not None else None
    es = tuple(e.read([path])[path] for e in experts)
    return b, es

  def ctx_for(path: str):
    return method.context(n, seed, tree_lib.stable_path_hash(path))

  def leaf_pass(fn, args_for=None):
    out = {}
    for s in float_specs:
      b, es = read_group(s.path)
      args = args_for(s.path) if args_for is not None else ()
      out[s.path] = jax.tree.map(np.asarray, jax.device_get(fn(b, es, ctx_for(s.path), *args)))
    return out

  stats = method.compute_stats(leaf_pass, n, shapes) if method.compute_stats is not None else {}
  for s in specs:
    if tree_lib.is_float_dtype(s.dtype):
      b, es = read_group(s.path)
      out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(s.dtype)
      merged = method.kernel(b, es, ctx_for(s.path), stats.get(s.path, {}), out_dtype=out_dtype)
    else:
      merged = passthrough(s.path) if passthrough is not None else reference.read([s.path])[s.path]
    sink.write({s.path: merged})
  return sink.finalize({"method": method.name, "hparams": dict(method.hparams), "seed": seed,
                        "leaves": len(specs), "elapsed_s": time.perf_counter() - t0})
