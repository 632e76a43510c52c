"""The merge loop: applies a method over Sources into a Sink, one leaf group at a time.

validate and plan -> [statistics passes over the whole model, if the method needs global statistics]
-> per group: read base + experts, [the group's own statistics], merge each leaf, check NaN/Inf, write
-> finalize (manifest, atomic rename). The same loop serves :func:`mergejax.merge` on in-memory pytrees
and checkpoint merges of any size; how leaves are held and merged is the executor's
(:mod:`mergejax.engine.executors`), chosen once from the method's traits and the mesh.

Memory: with a group of B bytes (per input), at most two groups are in flight (the one being merged
and the next one being read), so peak host memory is about

.. math:: 2 (N + 1) B + B_{out} + W

where W is the kernel's float32 workspace for the largest leaf; :func:`~mergejax.engine.plan.plan_groups`
picks B so this stays under ``memory_budget_bytes``, whatever the model's size.
"""

from __future__ import annotations

import concurrent.futures
import functools
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from mergejax import sharding as sharding_lib
from mergejax.checkpoints.base import LeafSpec, Sink, Source, StagedSink
from mergejax.engine import counting
from mergejax.engine.executors import Group, LeafExecutor, choose_executor
from mergejax.engine.nonfinite import Guard
from mergejax.engine.plan import Job, plan
from mergejax.methods.base import MergeMethod


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
    allow_nonfinite: bool = False,
    progress: bool = False,
    prefetch: bool = True,
    metadata: Mapping[str, Any] | None = None,
    executor: LeafExecutor | None = None,
) -> Any:
  """Merges ``experts`` (onto ``base``) with ``method`` and writes every leaf to ``sink``.

  Non-float leaves (integer buffers, step counters) are taken from the base unchanged (from the first
  expert when there is no base). Float leaves are merged in float32 and cast to the base's dtype, or
  to ``dtype`` when given.

  Args:
    base, experts: Sources with identical leaves (checked first; TreeMismatchError names the leaf).
    sink: receives each finished group; ``sink.finalize(manifest)`` is returned.
    method: the merge method.
    seed: merge seed (DARE masks); results do not depend on grouping, devices or processes.
    dtype: output dtype of float leaves (default: the input's).
    passthrough: where non-float leaves come from (default: the reference source).
    mesh: devices to place leaves on (None: leave in-memory leaves where they are, files on one device).
    rules: partition rules (regex, PartitionSpec); unmatched leaves shard their largest divisible axis.
    memory_budget_bytes: bounds the in-flight leaf groups (None: the whole model is one group).
    allow_nonfinite: merge inputs holding NaN/Inf; by default such an input raises NonFiniteError
      naming the source and the leaf, before anything is written.
    progress: show a tqdm bar (leaves, bytes, ETA) on process 0.
    prefetch: read the next group on a thread while the current one is merged.
    metadata: extra manifest entries (input fingerprints, ...).
    executor: how leaves are merged (default: :func:`~mergejax.engine.executors.choose_executor`);
      the manifest's ``executor`` entry says which ran.
  """
  t0 = time.perf_counter()
  try:
    job = plan(base, experts, method, seed=seed, dtype=dtype, mesh=mesh, rules=rules,
               memory_budget_bytes=memory_budget_bytes)
    executor = executor if executor is not None else choose_executor(method, mesh)
    executor.start(job, sink)
    has_base = base is not None
    guard = Guard(refuse=not allow_nonfinite, source_names=[s.name for s in job.sources],
                  output_check=method.traits.propagates_nonfinite and (method.traits.uses_base or not has_base))
    groups = _GroupReader(job, executor, passthrough, prefetch=prefetch, progress=progress)
    try:
      stats: dict[str, Any] = {}
      if method.compute_stats is not None and not method.local_stats:  # statistics over the whole model
        stats = method.compute_stats(_ModelPass(job, executor, groups, guard), job.n_experts,
                                     executor.stat_shapes()) or {}
      if isinstance(sink, StagedSink):
        sink.begin([LeafSpec(s.path, s.shape, job.out_dtype[s.path]) for s in job.specs])
      for grp in groups.stream(floats_only=False, desc="merge"):
        group_stats = stats
        if method.compute_stats is not None and method.local_stats and grp.float_paths:  # this group's own
          shapes = executor.stat_shapes()
          group_stats = method.compute_stats(_GroupPass(job, executor, grp, guard), job.n_experts,
                                             {p: shapes[p] for p in grp.float_paths}) or {}
        if executor.flags_on_read():  # checked with the flags of the read: the kernels run unchecked
          guard.check(grp.float_paths, functools.partial(executor.exact_flags, grp))
        check = guard.merge_check(grp.float_paths)
        out, spans, fused = {}, [], {}
        for s in grp.specs:
          if not job.is_float[s.path]:
            out[s.path] = grp.other[s.path]
            continue
          leaf, flag = executor.merge_leaf(grp, s, group_stats.get(s.path, {}), check)
          if leaf is None:
            spans.append(s.path)
          else:
            out[s.path] = leaf
          if flag is not None:
            fused[s.path] = flag
        fused.update(executor.settle())  # every span written
        # Before the group's leaves are marked written (spans written already: the sink then aborts).
        guard.resolve(fused, functools.partial(executor.exact_flags, grp))
        sink.write(out)
        for p in spans:
          sink.mark_written(p)
        del grp, out  # before the next group is read: its memory can be reused for the one after it
    finally:
      executor.close()
    manifest = {"method": method.name, "hparams": dict(method.hparams), "seed": seed, "leaves": len(job.specs),
                "float_leaves": len(job.float_specs), "groups": len(job.groups), "n_experts": job.n_experts,
                # the float dtype written (one name, or "a, b" when leaves kept different input dtypes)
                "dtype": ", ".join(sorted({str(job.out_dtype[f.path]) for f in job.float_specs})) or None,
                "memory_budget_bytes": memory_budget_bytes, "executor": executor.describe(),
                "devices": len(mesh.devices.flat) if mesh is not None else None, "processes": jax.process_count(),
                **(metadata or {})}
    manifest["elapsed_s"] = time.perf_counter() - t0
    return sink.finalize(manifest)
  except BaseException:
    if isinstance(sink, StagedSink):
      sink.abort()
    raise


class _GroupReader:
  """Reads the planned leaf groups in order (the next one on a thread while the current one is used),
  with a progress bar per pass."""

  def __init__(self, job: Job, executor: LeafExecutor, passthrough: Callable[[str], Any] | None, *, prefetch: bool,
               progress: bool):
    self.job, self.executor, self.passthrough = job, executor, passthrough
    self.prefetch, self.progress = prefetch, progress and jax.process_index() == 0

  def read(self, specs: list[LeafSpec], floats_only: bool) -> Group:
    job = self.job
    floats = [s for s in specs if job.is_float[s.path]]
    base, experts = self.executor.read(floats)
    other = {}
    for s in ([] if floats_only else specs):
      if not job.is_float[s.path]:
        other[s.path] = (self.passthrough(s.path) if self.passthrough is not None else job.reference.read(
            [s.path], {s.path: job.shardings[s.path]} if job.shardings else None)[s.path])
    return Group(list(specs), [s.path for s in floats], base, experts, other)

  def stream(self, floats_only: bool, desc: str) -> Iterator[Group]:
    job = self.job
    todo = [g for g in job.groups if any(job.is_float[s.path] for s in g)] if floats_only else job.groups
    weight = lambda s: s.nbytes * (len(job.sources) if job.is_float[s.path] else 1)  # noqa: E731
    bar = _progress_bar(self.progress, sum(weight(s) for g in todo for s in g), desc, sum(len(g) for g in todo))
    pool = concurrent.futures.ThreadPoolExecutor(1) if self.prefetch and len(todo) > 1 else None
    fut = None
    try:
      fut = pool.submit(self.read, todo[0], floats_only) if pool and todo else None
      for i, g in enumerate(todo):
        grp = fut.result() if fut is not None else self.read(g, floats_only)
        fut = pool.submit(self.read, todo[i + 1], floats_only) if pool and i + 1 < len(todo) else None
        yield grp
        if bar is not None:
          bar.update(sum(weight(s) for s in g))
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


class _LeafPass:
  """The engine's :class:`~mergejax.methods.base.LeafPass`: counts and histograms are statistics
  functions of their own (:mod:`mergejax.engine.counting`), exact in int64 once summed."""

  def __init__(self, job: Job, executor: LeafExecutor, guard: Guard):
    self.job, self.executor, self.guard = job, executor, guard
    # A fused fold of the counters de-vectorizes DARE's position hashes on XLA:CPU.
    self.fold = not job.method.traits.position_keyed

  def groups(self) -> Iterator[Group]:
    raise NotImplementedError

  def _each_group(self, run: Callable[[Group], dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for grp in self.groups():
      self.guard.check(grp.float_paths, functools.partial(self.executor.exact_flags, grp))  # before run reads it
      out.update(run(grp))
      del grp  # before the next group is read (as in the merge loop)
    return out

  def __call__(self, fn, args_for=None, *, host=None) -> dict[str, Any]:
    return self._each_group(lambda grp: self.executor.run_stats(fn, grp, args_for, host))

  def count(self, indicators, n, args_for=None) -> dict[str, np.ndarray]:
    counts = self._each_group(lambda grp: self.executor.run_counts(indicators, n, grp, args_for, fold=self.fold))
    return {p: np.asarray(r).astype(np.int64).sum(axis=-1) for p, r in counts.items()}

  def histogram(self, levels, n_groups, n_levels, args_for=None) -> dict[str, np.ndarray]:
    fn = functools.partial(counting.histogram_levels, levels=levels, n_groups=n_groups, n_levels=n_levels)
    return {p: np.asarray(r).astype(np.int64).sum(axis=-1) for p, r in self(fn, args_for).items()}


class _ModelPass(_LeafPass):
  """Each pass streams every group holding float leaves."""

  def __init__(self, job: Job, executor: LeafExecutor, reader: _GroupReader, guard: Guard):
    super().__init__(job, executor, guard)
    self.reader, self.passes = reader, 0

  def groups(self) -> Iterator[Group]:
    self.passes += 1
    return self.reader.stream(floats_only=True, desc=f"stats pass {self.passes}")


class _GroupPass(_LeafPass):
  """Passes over one resident group (statistics that are per leaf)."""

  def __init__(self, job: Job, executor: LeafExecutor, grp: Group, guard: Guard):
    super().__init__(job, executor, guard)
    self.grp = grp

  def groups(self) -> Iterator[Group]:
    return iter([self.grp])


def _progress_bar(enabled: bool, total: int, desc: str, n_leaves: int):
  if not enabled:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top  (only with a bar)
  bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)
  bar.leaves, bar.n_leaves = 0, n_leaves
  return bar
