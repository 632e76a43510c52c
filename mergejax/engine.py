"""The merge engine: applies a method over Sources into a Sink, one leaf group at a time.

validate -> plan leaf groups under a memory budget -> [statistics passes, if the method needs
global statistics] -> per group: read base + experts onto the mesh, jitted kernel, write, free ->
finalize (manifest, atomic rename). The same path serves :func:`mergejax.merge` on in-memory pytrees
and checkpoint merges of any size.

Memory: with a group of B bytes (per input), at most two groups are in flight (the one being merged
and the next one being read), so peak host memory is about

.. math:: 2 (N + 1) B + B_{out} + W

where W is the kernel's float32 workspace for the largest leaf; :func:`plan_groups` picks B so this
stays under ``memory_budget_bytes``, whatever the model's size.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mergejax import sharding as sharding_lib
from mergejax import tree as tree_lib
from mergejax.checkpoints.base import LeafSpec, Sink, Source
from mergejax.methods.base import MergeMethod


class NonFiniteError(ValueError):
  """An input leaf holds NaN or Inf."""


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


def _to_host(x: Any) -> np.ndarray:
  """Host value of a (possibly multi-process) jax.Array; identical on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@jax.jit
def _finite_flags(base, experts):
  xs = ([base] if base is not None else []) + list(experts)
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype"))
def _kernel_checked(base, experts, ctx, stats, *, kernel, out_dtype):
  """The merged leaf and the inputs' finite flags in one executable (one read of the inputs)."""
  return kernel(base, experts, ctx, stats, out_dtype=out_dtype), _finite_flags(base, experts)


@dataclasses.dataclass
class _Group:
  specs: list[LeafSpec]
  base: dict[str, Any]
  experts: list[dict[str, Any]]
  other: dict[str, Any]  # non-float leaves from the reference


def merge_sources(
    base: Source | None,
    experts: Sequence[Source],
    sink: Sink,
    method: MergeMethod,
    *,
    seed: int = 0,
    dtype: Any = None,
    passthrough: Callable[[str], Any] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: Sequence[sharding_lib.Rule] = (),
    memory_budget_bytes: float | None = None,
    allow_nonfinite: bool = True,
    progress: bool = False,
    prefetch: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
  """Merges ``experts`` (onto ``base``) with ``method`` and writes every leaf to ``sink``.

  Non-float leaves (integer buffers, step counters) are taken from the base unchanged (from the first
  expert when the method uses no base). Float leaves are merged in float32 and cast to the base's
  dtype, or to ``dtype`` when given.

  Args:
    base, experts: Sources with identical leaves (checked first; TreeMismatchError names the leaf).
    sink: receives each finished group; ``sink.finalize(manifest)`` is returned.
    method: the merge method; its kernel is compiled once per leaf shape/dtype/sharding.
    seed: merge seed (DARE masks); results do not depend on grouping, devices or processes.
    dtype: output dtype of float leaves (default: the input's).
    passthrough: where non-float leaves come from (default: the reference source).
    mesh: devices to place leaves on (None: leave in-memory leaves where they are, files on one device).
    rules: partition rules (regex, PartitionSpec); unmatched leaves shard their largest divisible axis.
    memory_budget_bytes: bounds the in-flight leaf groups (None: the whole model is one group).
    allow_nonfinite: if False, a NaN/Inf in any input leaf raises NonFiniteError naming source and leaf.
    progress: show a tqdm bar (leaves, bytes, ETA) on process 0.
    prefetch: read the next group on a thread while the current one is merged.
    metadata: extra manifest entries (input fingerprints, ...).
  """
  t0 = time.perf_counter()
  try:
    result = _merge(base, experts, sink, method, seed=seed, dtype=dtype, passthrough=passthrough, mesh=mesh,
                    rules=rules, memory_budget_bytes=memory_budget_bytes, allow_nonfinite=allow_nonfinite,
                    progress=progress, prefetch=prefetch, metadata=metadata or {}, t0=t0)
  except BaseException:
    if hasattr(sink, "abort"):
      sink.abort()
    raise
  return result


def _merge(base, experts, sink, method, *, seed, dtype, passthrough, mesh, rules, memory_budget_bytes,
           allow_nonfinite, progress, prefetch, metadata, t0):
  experts = list(experts)
  method.check_experts(len(experts))
  if method.uses_base and base is None:
    raise ValueError(f"{method.name} needs a base model")
  reference = base if base is not None else experts[0]
  others = experts if base is not None else experts[1:]
  specs = validate_sources(reference, others)
  n = len(experts)
  n_inputs = n + (1 if base is not None else 0)
  is_float = {s.path: tree_lib.is_float_dtype(s.dtype) for s in specs}
  out_dtype = {s.path: (np.dtype(dtype) if dtype is not None and is_float[s.path] else np.dtype(s.dtype))
               for s in specs}
  float_specs = [s for s in specs if is_float[s.path]]
  shapes = {s.path: s.shape for s in float_specs}
  groups = plan_groups(specs, n_inputs, memory_budget_bytes,
                       out_itemsize=np.dtype(dtype).itemsize if dtype is not None else None)
  shardings = ({s.path: sharding_lib.sharding_for(s.path, s.shape, mesh, rules) for s in specs}
               if mesh is not None else None)
  primary = jax.process_index() == 0
  checked: set[str] = set()
  ctx_cache: dict[str, Any] = {}

  def ctx_for(path: str):
    if path not in ctx_cache:
      ctx_cache[path] = method.context(n, seed, tree_lib.stable_path_hash(path))
    return ctx_cache[path]

  def read_group(g: list[LeafSpec], floats_only: bool) -> _Group:
    fp = [s.path for s in g if is_float[s.path]]
    sh = {p: shardings[p] for p in fp} if shardings else None
    b = base.read(fp, sh) if base is not None and fp else {}
    es = [e.read(fp, sh) if fp else {} for e in experts]
    other = {}
    if not floats_only:
      for s in g:
        if not is_float[s.path]:
          if passthrough is not None:
            other[s.path] = passthrough(s.path)
          else:
            other[s.path] = reference.read([s.path], {s.path: shardings[s.path]} if shardings else None)[s.path]
    return _Group(g, b, es, other)

  srcs = ([base] if base is not None else []) + experts
  # Without statistics the merge pass is the only read: the check is fused into the kernel there.
  fused_check = not allow_nonfinite and method.compute_stats is None

  def raise_if_nonfinite(flags: Mapping[str, Any]) -> None:
    for p, f in flags.items():
      f = _to_host(f)
      if not f.all():
        raise NonFiniteError(f"{srcs[int(np.argmin(f))].name}: leaf '{p}' contains NaN or Inf "
                             "(set --config.allow_nonfinite=True to merge anyway)")
      checked.add(p)

  def check_finite(grp: _Group) -> None:
    todo = [s.path for s in grp.specs if is_float[s.path] and s.path not in checked]
    if allow_nonfinite or fused_check or not todo:
      return
    raise_if_nonfinite({p: _finite_flags(grp.base.get(p), tuple(e[p] for e in grp.experts)) for p in todo})

  def stream(floats_only: bool, desc: str) -> Iterator[_Group]:
    todo = [g for g in groups if any(is_float[s.path] for s in g)] if floats_only else groups
    total = sum(s.nbytes * (n_inputs if is_float[s.path] else 1) for g in todo for s in g)
    bar = _progress_bar(progress and primary, total, desc, sum(len(g) for g in todo))
    pool = concurrent.futures.ThreadPoolExecutor(1) if prefetch and len(todo) > 1 else None
    try:
      fut = pool.submit(read_group, todo[0], floats_only) if pool and todo else None
      for i, g in enumerate(todo):
        grp = fut.result() if fut is not None else read_group(g, floats_only)
        fut = pool.submit(read_group, todo[i + 1], floats_only) if pool and i + 1 < len(todo) else None
        check_finite(grp)
        yield grp
        if bar is not None:
          bar.update(sum(s.nbytes * (n_inputs if is_float[s.path] else 1) for s in g))
          bar.set_postfix_str(f"{bar.leaves + len(g)}/{bar.n_leaves} leaves", refresh=False)
          bar.leaves += len(g)
        del grp
    finally:
      if fut is not None:
        fut.cancel()
      if pool is not None:
        pool.shutdown(wait=True)
      if bar is not None:
        bar.close()

  def run_fn(fn, grp: _Group, paths: Sequence[str], args_for) -> dict[str, Any]:
    res = {}
    for p in paths:
      args = args_for(p) if args_for is not None else ()
      res[p] = fn(grp.base.get(p), tuple(e[p] for e in grp.experts), ctx_for(p), *args)
    return {p: jax.tree.map(_to_host, r) for p, r in res.items()}

  pass_no = [0]

  def global_leaf_pass(fn, args_for=None):
    pass_no[0] += 1
    out = {}
    for grp in stream(True, f"stats pass {pass_no[0]}"):
      out.update(run_fn(fn, grp, [s.path for s in grp.specs if is_float[s.path]], args_for))
    return out

  stats: dict[str, Any] = {}
  if method.compute_stats is not None and not method.local_stats:
    stats = method.compute_stats(global_leaf_pass, n, shapes) or {}

  if hasattr(sink, "begin"):
    sink.begin([LeafSpec(s.path, s.shape, out_dtype[s.path]) for s in specs])

  for grp in stream(False, "merge"):
    fpaths = [s.path for s in grp.specs if is_float[s.path]]
    group_stats = stats
    if method.compute_stats is not None and method.local_stats and fpaths:
      lp = functools.partial(_local_pass, run_fn, grp, fpaths)
      group_stats = method.compute_stats(lp, n, {p: shapes[p] for p in fpaths}) or {}
    out, flags = {}, {}
    for s in grp.specs:
      if is_float[s.path]:
        args = (grp.base.get(s.path), tuple(e[s.path] for e in grp.experts), ctx_for(s.path),
                group_stats.get(s.path, {}))
        if fused_check:
          out[s.path], flags[s.path] = _kernel_checked(*args, kernel=method.kernel, out_dtype=out_dtype[s.path])
        else:
          out[s.path] = method.kernel(*args, out_dtype=out_dtype[s.path])
      else:
        out[s.path] = grp.other[s.path]
    raise_if_nonfinite(flags)  # before anything of this group is written
    sink.write(out)
    del out

  manifest = {"method": method.name, "hparams": dict(method.hparams), "seed": seed, "leaves": len(specs),
              "float_leaves": len(float_specs), "groups": len(groups), "n_experts": n,
              "dtype": str(np.dtype(dtype)) if dtype is not None else None,
              "memory_budget_bytes": memory_budget_bytes,
              "devices": len(mesh.devices.flat) if mesh is not None else None, "processes": jax.process_count(),
              **metadata}
  manifest["elapsed_s"] = time.perf_counter() - t0
  return sink.finalize(manifest)


def _local_pass(run_fn, grp, paths, fn, args_for=None):
  return run_fn(fn, grp, paths, args_for)


def _progress_bar(enabled: bool, total: int, desc: str, n_leaves: int):
  if not enabled:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)
  bar.leaves, bar.n_leaves = 0, n_leaves
  return bar
