"""Leaf executors: how the engine's loop reads a group's float leaves, runs statistics functions on
them and merges each leaf. One is chosen per merge (:func:`choose_executor`):

* :class:`FlatChunk` when the method is elementwise (:attr:`~mergejax.methods.Traits.elementwise`) and
  the mesh is one CPU device: every leaf as flat 1-D chunks of one size, so ONE compiled kernel per
  (method, dtype) serves every leaf shape (statistics counts too: padded chunks, each told how many
  entries count). Inputs that offer host views (:class:`~mergejax.checkpoints.base.HostViews`, e.g.
  safetensors memory maps) are never copied into fresh arrays: without statistics passes kernels read
  64-byte-aligned windows of the maps in place (pages mapped a leaf ahead on a thread of their own);
  with them, and for computed leaves, each leaf is read once into recycled aligned memory (staged).
  Position-keyed kernels (DARE) are told where each chunk lies in its leaf, or get row blocks when a
  leaf's rows are too long for that; a sink that takes spans
  (:class:`~mergejax.checkpoints.base.SpanSink`) gets each chunk straight from the kernel's buffer, on
  a draining thread while the next chunks run.
* :class:`WholeLeaf` otherwise: whole leaves as (sharded) jax.Arrays on any mesh, one compiled kernel
  per leaf shape, dtype and sharding (on one CPU device, leaves of files staged as above).

Both give bit-identical results (tests/test_engine.py).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
import os
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import numpy as np

from mergejax.checkpoints.base import HostViews, LeafSpec, Sink, SpanSink
from mergejax.engine import counting, xla_cpu
from mergejax.engine.compile import Precompiler
from mergejax.engine.host import host_flat, populate, to_host
from mergejax.engine.nonfinite import Check, all_finite, finite_flags, finite_host, kernel_checked
from mergejax.engine.output import run_kernel
from mergejax.engine.plan import Job
from mergejax.methods.base import MAX_WINDOW_ROW, LeafContext, MergeMethod


@dataclasses.dataclass
class Group:
  """One leaf group as read: float leaves of the base (if any) and of each expert, by path, and the
  non-float leaves (passed through)."""

  specs: list[LeafSpec]
  float_paths: list[str]
  base: dict[str, Any]
  experts: list[dict[str, Any]]
  other: dict[str, Any]


class LeafExecutor(Protocol):
  """How a merge's float leaves are held, read by statistics functions, merged and checked."""

  name: str

  def start(self, job: Job, sink: Sink) -> None:
    """Prepares one merge (called once, before anything is read)."""

  def describe(self) -> dict[str, Any]:
    """What runs, for the manifest: {"name": ..., and the executor's choices}."""

  def stat_shapes(self) -> dict[str, tuple[int, ...]]:
    """The leaf shapes statistics functions see, by path."""

  def read(self, specs: Sequence[LeafSpec]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The float leaves ``specs`` of the base ({} without one) and of each expert."""

  def run_stats(self, fn: Callable[..., Any], grp: Group, args_for: Callable[[str], tuple | None] | None,
                host: Callable[..., Any] | None) -> dict[str, Any]:
    """``fn(base, experts, ctx, *args)`` of each float leaf of ``grp`` as host results, pieces of a
    leaf concatenated along the last axis (see :class:`~mergejax.methods.base.LeafPass`)."""

  def run_counts(self, indicators: Callable[..., Any], n: int, grp: Group,
                 args_for: Callable[[str], tuple | None] | None, fold: bool) -> dict[str, Any]:
    """:func:`~mergejax.engine.counting.count_indicators` of each float leaf of ``grp`` (as
    :meth:`run_stats`): int32[n, P] partial counts whose sum over the last axis is the leaf's."""

  def merge_leaf(self, grp: Group, spec: LeafSpec, stats: Any, check: Check) -> tuple[Any, Any]:
    """(merged leaf, or None if it goes to the sink in spans; finite flag, or None if unchecked or
    (spans) given by :meth:`settle`)."""

  def settle(self) -> dict[str, Any]:
    """Waits until the spans of every leaf merged so far are written; returns the finite flags
    :meth:`merge_leaf` left to it, by path."""

  def exact_flags(self, grp: Group, path: str) -> np.ndarray:
    """bool[n_inputs]: each input's leaf ``path`` (base first) is all finite."""

  def flags_on_read(self) -> bool:
    """Whether :meth:`read` finds every input's NaN/Inf flags (staged leaves): :meth:`exact_flags` then
    costs nothing, and a merge checks each group with them instead of a flag fused into its kernel."""

  def close(self) -> None:
    """Releases what :meth:`start` set up."""


def one_cpu_device(mesh: jax.sharding.Mesh | None) -> bool:
  """A one-process, one-CPU-device mesh: host arrays are device arrays (no transfers)."""
  return (mesh is not None and mesh.devices.size == 1 and jax.process_count() == 1
          and next(iter(mesh.devices.flat)).platform == "cpu")


def choose_executor(method: MergeMethod, mesh: jax.sharding.Mesh | None) -> LeafExecutor:
  """:class:`FlatChunk` for elementwise methods on one CPU device, else :class:`WholeLeaf`."""
  if method.traits.elementwise and one_cpu_device(mesh):
    return FlatChunk()
  return WholeLeaf()


def _precompiler(job: Job) -> Precompiler:
  # Files only (in-memory leaves may live anywhere); one process (compiles stay in lockstep otherwise).
  return Precompiler(enabled=job.mesh is not None and jax.process_count() == 1 and len(job.float_specs) > 1)


class _Stager:
  """Reads float leaves from their files into recycled aligned slabs (one per leaf group in flight:
  :class:`~mergejax.engine.xla_cpu.StagingBuffers`), which kernels read in place, and finds each input's
  NaN/Inf flags while the data is fresh (:meth:`flags`). Each staged leaf is followed by ``ALIGN``
  bytes, so that it can also serve as an aligned window (:func:`xla_cpu.kernel_aligned`)."""

  def __init__(self, job: Job):
    self.job = job
    need = lambda g: len(job.sources) * sum(self.size(s) for s in g if job.is_float[s.path])  # noqa: E731
    self.buffers = xla_cpu.StagingBuffers(max((need(g) for g in job.groups), default=0))
    self.found: dict[str, np.ndarray] = {}

  @staticmethod
  def size(spec: LeafSpec) -> int:
    return xla_cpu.padded(spec.nbytes) + xla_cpu.ALIGN

  def read(self, todo: Sequence[tuple[LeafSpec, int]], check: bool) -> dict[tuple[str, int], np.ndarray]:
    """{(path, input index): 1-D buffer of the leaf's entries plus ``ALIGN`` bytes} for each (spec, input
    index) of ``todo``; with ``check``, every input of a leaf must be in ``todo`` (its flags are kept)."""
    if not todo:
      return {}
    sources = self.job.sources
    slab = self.buffers.take(sum(self.size(s) for s, _ in todo))
    out, off, flags = {}, 0, collections.defaultdict(dict)
    for s, i in todo:
      buf = slab[off:off + s.nbytes + xla_cpu.ALIGN].view(s.dtype)
      off += self.size(s)
      sources[i].read_into(s.path, buf[:s.size])
      if check:
        flags[s.path][i] = finite_host(buf[:s.size])
      out[s.path, i] = buf
    for p, f in flags.items():
      self.found[p] = np.asarray([f[i] for i in range(len(sources))])
    return out

  def flags(self, path: str) -> np.ndarray | None:
    """bool[n_inputs] (base first): each input's staged leaf ``path`` is all finite; None if not staged."""
    return self.found.get(path)

  def close(self) -> None:
    self.found.clear()
    self.buffers.clear()


def _stages(job: Job) -> bool:
  """Whether float leaves can be staged: every input offers host views and one process reads them."""
  return all(isinstance(s, HostViews) for s in job.sources) and jax.process_count() == 1


class WholeLeaf:
  """Whole leaves as jax.Arrays on any mesh (placed with the planned shardings); one compiled kernel
  per leaf shape, dtype and sharding, compiled up front in parallel threads."""

  name = "whole_leaf"

  def start(self, job: Job, sink: Sink) -> None:
    del sink
    self.job = job
    self.compiler = _precompiler(job)
    self.compiled = False
    # On one CPU device, leaves of files are staged (read once into recycled aligned memory, which the
    # placed jax.Arrays alias) instead of copied from a memory map into fresh arrays.
    self.stager = _Stager(job) if one_cpu_device(job.mesh) and _stages(job) else None

  def describe(self) -> dict[str, Any]:
    return {"name": self.name, **({"inputs": "staged"} if self.stager is not None else {})}

  def stat_shapes(self) -> dict[str, tuple[int, ...]]:
    return {s.path: s.shape for s in self.job.float_specs}

  def read(self, specs: Sequence[LeafSpec]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    paths = [s.path for s in specs]
    sh = {p: self.job.shardings[p] for p in paths} if self.job.shardings else None
    if self.stager is not None:
      bufs = self.stager.read([(s, i) for s in specs for i in range(len(self.job.sources))], check=True)
      leaves = [{s.path: jax.device_put(bufs[s.path, i][:s.size].reshape(s.shape), sh[s.path] if sh else None)
                 for s in specs} for i in range(len(self.job.sources))]
      return (leaves[0], leaves[1:]) if self.job.base is not None else ({}, leaves)
    base = self.job.base.read(paths, sh) if self.job.base is not None and paths else {}
    return base, [e.read(paths, sh) if paths else {} for e in self.job.experts]

  def run_stats(self, fn, grp, args_for, host):
    del host
    out = {}
    for p in grp.float_paths:
      args = args_for(p) if args_for is not None else ()
      if args is not None:
        r = fn(grp.base.get(p), tuple(e[p] for e in grp.experts), self.job.context(p), *args)
        out[p] = jax.tree.map(to_host, r)
    return out

  def run_counts(self, indicators, n, grp, args_for, fold):
    fn = functools.partial(counting.count_indicators, indicators=indicators, n=n, fold=fold)
    return self.run_stats(fn, grp, args_for, None)

  def _signature(self, spec: LeafSpec) -> tuple[Any, ...]:
    return (spec.shape, np.dtype(spec.dtype).str, self.job.out_dtype[spec.path].str,
            self.job.shardings[spec.path] if self.job.shardings else None)

  def _precompile(self, first: LeafSpec, stats: Any, check: Check) -> None:
    """One compile per distinct kernel signature, with the first leaf's ctx/stats structure."""
    self.compiled = True
    fn = _kernel_fn(self.job.method, check)
    job = self.job
    for sp in job.float_specs:
      x = jax.ShapeDtypeStruct(sp.shape, sp.dtype, sharding=job.shardings[sp.path] if job.shardings else None)
      self.compiler.submit(self._signature(sp), fn, x if job.base is not None else None, (x,) * job.n_experts,
                           job.context(first.path), stats, out_dtype=job.out_dtype[sp.path])

  def merge_leaf(self, grp, spec, stats, check):
    if not self.compiled:
      self._precompile(spec, stats, check)
    p = spec.path
    args = (grp.base.get(p), tuple(e[p] for e in grp.experts), self.job.context(p), stats)
    self.compiler.wait(self._signature(spec))
    out = _kernel_fn(self.job.method, check)(*args, out_dtype=self.job.out_dtype[p])
    return (out, None) if check is Check.NONE else out

  def settle(self):
    return {}

  def exact_flags(self, grp, path):
    found = self.stager.flags(path) if self.stager is not None else None
    return found if found is not None else finite_flags(grp.base.get(path), tuple(e[path] for e in grp.experts))

  def flags_on_read(self) -> bool:
    return self.stager is not None

  def close(self) -> None:
    self.compiler.close()
    if self.stager is not None:
      self.stager.close()


def _kernel_fn(method: MergeMethod, check: Check) -> Callable[..., Any]:
  """The jitted program that merges one leaf (or piece): the kernel alone, or with a fused flag."""
  if check is Check.NONE:
    return functools.partial(run_kernel, kernel=method.kernel)
  return functools.partial(kernel_checked, kernel=method.kernel, by_output=check is Check.OUTPUT)


# Flat chunks of CHUNK entries (the last one zero-padded to CHUNK): one compiled program per (method,
# dtype) serves every leaf shape. A padded tail costs at most one chunk's work per leaf (~1 ms), far less
# than compiling a program for every leaf size (0.2-0.5 s each on 2 cores). The merge pass takes the
# leaf in pieces of MERGE_CHUNK entries while a whole one remains, then CHUNK-entry pieces: a second
# program, compiled beside the first, for MERGE_CHUNKS times fewer dispatches, drains and writes (a
# 1B-parameter linear merge's loop: 2.2 -> 1.5 s, docs/BENCHMARKS.md), where the model holds at least
# MIN_MERGE_PIECES of them (below that, the second compile costs more than the dispatches it saves).
CHUNK = 1 << 18
MERGE_CHUNKS = 4  # chunks per merge-pass piece
MIN_MERGE_PIECES = 256


class FlatChunk:
  """Elementwise methods on one CPU device: leaves as flat 1-D chunks of ``chunk`` entries.

  Args:
    chunk: entries per chunk (and per statistics span).
    max_flat_row: position-keyed kernels get flat chunks only when every leaf's rows (the leaf seen as
      a (rows, D) matrix) are shorter than this, else row blocks of max(1, chunk // D) rows.
    merge_chunk: entries per merge-pass piece while a whole one remains in the leaf (a multiple of
      ``chunk``); the rest of the leaf goes in ``chunk``-entry pieces. Default: ``MERGE_CHUNKS * chunk``
      where the model's float leaves hold at least :data:`MIN_MERGE_PIECES` such pieces, else ``chunk``.
  """

  name = "flat_chunk"

  def __init__(self, chunk: int = CHUNK, max_flat_row: int = MAX_WINDOW_ROW, merge_chunk: int | None = None):
    self.chunk = chunk
    if merge_chunk is not None and (merge_chunk < chunk or merge_chunk % chunk):
      raise ValueError(f"merge_chunk={merge_chunk} must be a multiple of chunk={chunk}")
    self.merge_chunk = merge_chunk
    self.max_flat_row = min(max_flat_row, MAX_WINDOW_ROW)

  def start(self, job: Job, sink: Sink) -> None:
    self.job = job
    traits = job.method.traits
    if not traits.elementwise:
      raise ValueError(f"{job.method.name} is not elementwise: it cannot be merged in flat chunks")
    self.positional = traits.position_keyed  # each chunk is told where it lies in its leaf
    if self.merge_chunk is None:
      big = MERGE_CHUNKS * self.chunk
      enough = sum(s.size // big for s in job.float_specs) >= MIN_MERGE_PIECES
      self.merge_chunk = big if enough else self.chunk
    short_rows = all(self.block_rows(s.shape)[1] < self.max_flat_row for s in job.float_specs)
    self.pieces = "chunks" if not self.positional or short_rows else "row_blocks"
    # Float leaves of sources that can map them are not read into jax.Arrays: without statistics
    # passes, kernels read 64-byte-aligned windows of read-only maps of the files in place (their pages
    # mapped a leaf ahead on a thread of its own); statistics passes read each leaf several times, so
    # each leaf is read once from its file into a recycled aligned buffer (``staged``), read in place.
    self.views = all(isinstance(s, HostViews) for s in job.sources)
    self.staged = self.views and job.method.compute_stats is not None
    self.aligned = self.pieces == "chunks" and self.views and not self.staged
    self.stager = _Stager(job)
    self._windows: dict[str, list[tuple[np.ndarray, int, bool] | None]] = {}  # (map, lead, pages to map) by leaf
    self.spans = isinstance(sink, SpanSink) and jax.process_count() == 1
    self.sink = sink
    self.shapes = {s.path: s.shape for s in job.float_specs}
    self.compiler = _precompiler(job)
    self.compiled = False
    # Merged chunks are waited for, checked and written on a thread of their own, so that the next
    # chunks (of the same leaf or the next ones) are dispatched meanwhile (the 2-core development VM
    # keeps both cores busy).
    self.drain = _Drain()
    # Pages of the next leaf's windows are mapped on a thread of their own (:meth:`_map`).
    self.mapper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mergejax-map")
    order = [s.path for s in job.float_specs]
    self._next = dict(zip(order, order[1:]))
    if job.method.compute_stats is not None and not self.staged:  # the exact NaN/Inf check: one size
      for size, dt in sorted({(size, np.dtype(sp.dtype)) for sp in job.float_specs
                              for *_, size in self.chunks(sp.size)}, key=str):
        x = jax.ShapeDtypeStruct((size,), dt)
        self.compiler.submit(("finite", size, dt), all_finite, x if job.base is not None else None,
                             (x,) * job.n_experts)
    if job.method.compute_stats is not None and job.method.stats_like is not None and job.float_specs:
      # Every leaf's statistics have a known structure: the merge programs compile while they are
      # measured (inputs checked by the statistics passes, so the merge pass runs unchecked).
      self._submit_merge(job.float_specs[0], job.method.stats_like(job.n_experts, job.base is not None),
                         Check.NONE)

  def describe(self) -> dict[str, Any]:
    inputs = ("aligned_windows" if self.aligned else "staged" if self.staged else "host_views" if self.views
              else "arrays")
    return {"name": self.name, "pieces": self.pieces, "chunk": self.chunk, "merge_chunk": self.merge_chunk,
            "inputs": inputs,
            "output": "spans" if self.spans else "leaves"}

  # ------------------------------------------------------------------------------------- geometry

  def chunks(self, n: int) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) of the flat chunks of an ``n``-entry leaf."""
    return [(a, min(a + self.chunk, n), self.chunk) for a in range(0, n, self.chunk)]

  def merge_pieces(self, n: int) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) of the merge pass's pieces of an ``n``-entry leaf: ``merge_chunk``
    entries while a whole one remains, then :meth:`chunks` of the rest."""
    big = n - n % self.merge_chunk
    return ([(a, a + self.merge_chunk, self.merge_chunk) for a in range(0, big, self.merge_chunk)]
            + [(big + a, big + b, size) for a, b, size in self.chunks(n - big)])

  def stat_spans(self, n: int) -> list[tuple[int, int]]:
    """(start, stop) of the flat spans statistics functions run on: ``chunk`` entries each and an
    unpadded tail (a sample of a small leaf is all of it, and padding never enters a count). Results of
    the spans concatenated along the last axis are results for the whole leaf."""
    return [(a, min(a + self.chunk, n)) for a in range(0, n, self.chunk)] or [(0, 0)]

  def block_rows(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """(rows, row length D, rows per block R) of a leaf seen as a (rows, D) matrix in row blocks.

    A leaf of shape (d0, d1, ...) is the matrix (d0, d1 * ...), a 1-D leaf (1, d0): DARE's masks hash
    (row, position in row) exactly so. A block holds R = max(1, chunk // D) rows (the last one
    zero-padded to R), so one compiled kernel serves every leaf with the same D.
    """
    shape = tuple(shape)
    rows, d = (1, math.prod(shape)) if len(shape) <= 1 else (shape[0], math.prod(shape[1:]))
    return rows, d, max(1, self.chunk // max(d, 1))

  def _chunk_context(self, ctx: LeafContext, shape: Sequence[int], start: int) -> LeafContext:
    """``ctx`` of the flat chunk of a leaf of ``shape`` starting at flat entry ``start``."""
    if not self.positional:
      return ctx
    _, d, _ = self.block_rows(shape)
    d = max(d, 1)
    return ctx.in_window(start // d, start % d, d)

  # ----------------------------------------------------------------------------- reading, statistics

  def stat_shapes(self) -> dict[str, tuple[int, ...]]:
    if self.pieces == "chunks":  # statistics functions see every leaf as 1-D and run on its flat spans
      return {s.path: (s.size,) for s in self.job.float_specs}
    return {s.path: s.shape for s in self.job.float_specs}

  def read(self, specs: Sequence[LeafSpec]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    paths = [s.path for s in specs]
    job = self.job
    if not self.views:
      sh = {p: job.shardings[p] for p in paths} if job.shardings else None
      base = job.base.read(paths, sh) if job.base is not None and paths else {}
      return base, [e.read(paths, sh) if paths else {} for e in job.experts]
    leaves = self._read_staged(specs) if self.staged else self._read_windows(specs)
    return (leaves[0], leaves[1:]) if job.base is not None else ({}, leaves)

  def _read_windows(self, specs: Sequence[LeafSpec]) -> list[dict[str, np.ndarray]]:
    """Each input's leaves as views of its maps, and with aligned windows, the windows (kept for
    :meth:`merge_leaf`: ``(map, lead, map_ahead)``). A leaf with no window in its file (a computed leaf:
    LoRA, vocabulary mapping) is staged here, on the prefetch thread, and its buffer serves as its window."""
    sources = self.job.sources
    windows = {s.path: [src.aligned_view(s.path, xla_cpu.ALIGN) if self.aligned else None for src in sources]
               for s in specs}
    todo = [(s, i) for s in specs for i in range(len(sources)) if self.aligned and windows[s.path][i] is None]
    for (p, i), buf in self.stager.read(todo, check=False).items():
      windows[p][i] = (buf, 0)
    staged = {(s.path, i) for s, i in todo}
    out: list[dict[str, np.ndarray]] = [{} for _ in sources]
    for s in specs:
      for i, src in enumerate(sources):
        w = windows[s.path][i]
        # The group keeps maps of its own (mapped page by page only if read: NaN/Inf tracing); the
        # windows go when their leaf is merged, so mapped pages stay bounded by a leaf or two.
        out[i][s.path] = (w[0][:s.size] if (s.path, i) in staged else src.flat_view(s.path)).reshape(s.shape)
      if self.aligned:
        self._windows[s.path] = [None if w is None else (*w, (s.path, i) not in staged)
                                 for i, w in enumerate(windows[s.path])]
    return out

  def _read_staged(self, specs: Sequence[LeafSpec]) -> list[dict[str, np.ndarray]]:
    """Each input's leaves staged (read once from their files, checked for NaN/Inf: :meth:`exact_flags`)."""
    bufs = self.stager.read([(s, i) for s in specs for i in range(len(self.job.sources))], check=True)
    return [{s.path: bufs[s.path, i][:s.size].reshape(s.shape) for s in specs} for i in range(len(self.job.sources))]

  def run_stats(self, fn, grp, args_for, host):
    if self.pieces != "chunks":  # row blocks are for the merge pass only: statistics see whole leaves
      return WholeLeaf.run_stats(self, fn, grp, args_for, None)
    calls = []
    for p in grp.float_paths:
      args = args_for(p) if args_for is not None else ()
      if args is None:
        continue
      b = host_flat(grp.base[p]) if p in grp.base else None
      es = [host_flat(e[p]) for e in grp.experts]
      for a, z in self.stat_spans(len(es[0])):
        ctx = self._chunk_context(self.job.context(p), self.shapes[p], a)
        calls.append((p, None if b is None else b[a:z], tuple(e[a:z] for e in es), args, ctx))
    if host is not None:  # a NumPy twin of fn: no compile, same values
      out = [host(b, es, ctx, *args, f32=xla_cpu.as_f32) for _, b, es, args, ctx in calls]
    else:
      out = _run_calls(fn, calls)
    res: dict[str, list[Any]] = {}
    for (p, *_), r in zip(calls, out):
      res.setdefault(p, []).append(r)
    return {p: jax.tree.map(lambda *xs: np.concatenate([to_host(x) for x in xs], axis=-1), *r) for p, r in res.items()}

  def run_counts(self, indicators, n, grp, args_for, fold):
    """Counts over the same zero-padded chunks as the merge (each told how many of its entries to
    count): one compiled count program per pass, whatever the leaf sizes."""
    fn = functools.partial(counting.count_indicators, indicators=indicators, n=n, fold=fold)
    if self.pieces != "chunks":
      return WholeLeaf.run_stats(self, fn, grp, args_for, None)
    calls, out = [], {}
    for p in grp.float_paths:
      args = args_for(p) if args_for is not None else ()
      if args is None:
        continue
      b = host_flat(grp.base[p]) if p in grp.base else None
      es = [host_flat(e[p]) for e in grp.experts]
      if not es[0].size:
        out[p] = np.zeros((n, 1), np.int32)
      for a, z, size in self.chunks(len(es[0])):
        ctx = self._chunk_context(self.job.context(p), self.shapes[p], a)
        calls.append((p, _piece(b, a, z, size), tuple(_piece(e, a, z, size) for e in es),
                      (*args, np.int32(z - a)), ctx))
    res: dict[str, list[Any]] = {}
    for (p, *_), r in zip(calls, _run_calls(_count_valid(fn), calls)):
      res.setdefault(p, []).append(r)
    out.update({p: np.concatenate([to_host(x) for x in r], axis=-1) for p, r in res.items()})
    return out

  def exact_flags(self, grp, path):
    """Per-input all-finite flags: those found when a staged leaf was read, else from flat host arrays,
    chunk by chunk (one compiled size): one cheap flag for all inputs, per-input flags only if that is
    False."""
    found = self.stager.flags(path)
    if found is not None:
      return found
    self.compiler.wait_all("finite")
    base = host_flat(grp.base[path]) if path in grp.base else None
    experts = [host_flat(e[path]) for e in grp.experts]
    pieces = [(_piece(base, a, b, size), tuple(_piece(e, a, b, size) for e in experts))
              for a, b, size in self.chunks(len(experts[0]))]
    if all(np.asarray(f).all() for f in [all_finite(*pc) for pc in pieces]):
      return np.ones((len(experts) + (base is not None),), bool)
    return np.logical_and.reduce([np.asarray(finite_flags(*pc)) for pc in pieces])

  def flags_on_read(self) -> bool:
    return self.staged

  # ------------------------------------------------------------------------------------------ merging

  def merge_leaf(self, grp, spec, stats, check):
    self._map(spec.path)  # if not mapped a leaf ahead (the first leaf: while its programs compile or load)
    if not self.compiled:
      self._precompile(spec, stats, check)
    p, job = spec.path, self.job
    write = functools.partial(self.sink.write_span, p) if self.spans else None
    ctx, out_dtype = job.context(p), job.out_dtype[p]
    windows = self._windows.pop(p, None)
    self._map(self._next.get(p))  # the next leaf's pages, mapped while this one merges
    if windows is not None:
      windows = [None if w is None else w[:2] for w in windows]
    if windows is not None and all(w is not None for w in windows):
      res = self._merge_aligned(windows, spec, ctx, stats, out_dtype, check, write)
    else:
      base = host_flat(grp.base[p]) if p in grp.base else None
      experts = [host_flat(e[p]) for e in grp.experts]
      if self.pieces == "chunks":
        res = self._merge_chunks(base, experts, spec, ctx, stats, out_dtype, check, write)
      else:
        res = self._merge_blocks(base, experts, spec, ctx, stats, out_dtype, check, write)
    if self.spans:  # pieces may still be in flight: their flags come from :meth:`settle`
      return None, None
    flag = self.drain.settle().get(p)
    return res.reshape(spec.shape), flag

  def settle(self) -> dict[str, Any]:
    """Waits until every piece of the leaves merged so far is written; returns their finite flags."""
    return self.drain.settle()

  def _map(self, path: str | None) -> None:
    """Maps the pages of the windows of leaf ``path`` (if read already and not mapped yet) on the mapper
    thread: its kernels then find every page mapped (:func:`populate`)."""
    windows = self._windows.get(path) if path is not None else None
    if windows:
      todo = [w for w in windows if w is not None and w[2]]
      self._windows[path] = [None if w is None else (w[0], w[1], False) for w in windows]
      self.mapper.submit(lambda: [populate(w[0]) for w in todo])

  def _merge_aligned(self, windows, spec, ctx, stats, out_dtype, check, write):
    """Chunks read in place from aligned windows of the maps (:func:`xla_cpu.kernel_aligned`); the
    NaN/Inf check fused into the kernel, or (output checks) run on each merged chunk on the host."""
    spans = self.merge_pieces(spec.size)
    gens = [xla_cpu.aligned_pieces(m, lead, spans) for m, lead in windows]
    has_base = self.job.base is not None
    fn = functools.partial(xla_cpu.kernel_aligned, kernel=self.job.method.kernel, fused=check is Check.INPUTS)

    def pieces():
      for a, b, _ in spans:
        got = [next(g) for g in gens]
        leads = np.asarray([lead for _, lead in got], np.int32)
        ws = [w for w, _ in got]
        yield a, b, (ws[0] if has_base else None, tuple(ws[1:] if has_base else ws), leads,
                     self._chunk_context(ctx, spec.shape, a), stats)

    return _merge_pieces(fn, pieces(), spec.size, out_dtype, write, spec.path, self.drain,
                         flagged=check is Check.INPUTS, host_check=check is Check.OUTPUT)

  def _merge_chunks(self, base, experts, spec, ctx, stats, out_dtype, check, write):
    """Chunk by chunk from flat host arrays. Kernels are dispatched asynchronously: chunk i+1's inputs
    are handed over (``jax.device_put`` copies a slice that is not 64-byte aligned) while chunk i
    runs, and chunk i-1's result is copied out (or written as a span) meanwhile."""
    pieces = ((a, b, (_piece(base, a, b, size), tuple(_piece(e, a, b, size) for e in experts),
                      self._chunk_context(ctx, spec.shape, a), stats))
              for a, b, size in self.merge_pieces(len(experts[0])))
    return _merge_pieces(_kernel_fn(self.job.method, check), pieces, len(experts[0]), out_dtype, write,
                         spec.path, self.drain, flagged=check is not Check.NONE)

  def _merge_blocks(self, base, experts, spec, ctx, stats, out_dtype, check, write):
    """Row blocks (:meth:`block_rows`), each kernel told its first row: bit-identical to the whole-leaf
    kernel for methods whose only position dependence is by (row, column)."""
    rows, d, r = self.block_rows(spec.shape)
    n = rows * d

    def block(x, r0, r1):
      if x is None:
        return None
      v = x.reshape(rows, d)[r0:r1]
      if r1 - r0 == r:
        return v
      buf = np.zeros((r, d), x.dtype)
      buf[:r1 - r0] = v
      return buf

    pieces = ((r0 * d, min(r0 + r, rows) * d,
               (block(base, r0, min(r0 + r, rows)), tuple(block(e, r0, min(r0 + r, rows)) for e in experts),
                ctx.in_window(r0), stats))
              for r0 in range(0, rows if n else 0, r))
    return _merge_pieces(_kernel_fn(self.job.method, check), pieces, n, out_dtype, write, spec.path, self.drain,
                         flagged=check is not Check.NONE)

  def _precompile(self, first: LeafSpec, stats: Any, check: Check) -> None:
    """Compiles the one or few programs the merge pass runs (every chunk size, dtype pair, block
    shape), with the first leaf's ctx/stats structure, and waits for them."""
    self.compiled = True
    kind = self._submit_merge(first, stats, check)
    self.compiler.wait_all(kind)

  def _submit_merge(self, first: LeafSpec, stats: Any, check: Check) -> str:
    """Starts compiling :meth:`_precompile`'s programs (``stats``: arrays or ``jax.ShapeDtypeStruct``);
    returns the kind of compile to wait for."""
    job, kernel = self.job, self.job.method.kernel
    ctx = self._chunk_context(job.context(first.path), first.shape, 0)
    with_base = job.base is not None
    if self.aligned:
      todo = {(size, np.dtype(sp.dtype), job.out_dtype[sp.path])
              for sp in job.float_specs for *_, size in self.merge_pieces(sp.size)}
      for size, dt, odt in sorted(todo, key=str):
        x = jax.ShapeDtypeStruct((size + xla_cpu.ALIGN // dt.itemsize,), dt)
        self.compiler.submit(("aligned", size, dt, odt, check), xla_cpu.kernel_aligned, x if with_base else None,
                             (x,) * job.n_experts, jax.ShapeDtypeStruct((len(job.sources),), np.int32), ctx, stats,
                             kernel=kernel, out_dtype=odt, fused=check is Check.INPUTS)
      return "aligned"
    fn = _kernel_fn(job.method, check)
    if self.pieces == "chunks":
      todo = {((size,), np.dtype(sp.dtype), job.out_dtype[sp.path])
              for sp in job.float_specs for *_, size in self.merge_pieces(sp.size)}
    else:
      todo = set()
      for sp in job.float_specs:
        _, d, r = self.block_rows(sp.shape)
        todo.add(((r, d), np.dtype(sp.dtype), job.out_dtype[sp.path]))
      ctx = ctx.in_window(0)
    for shape, dt, odt in sorted(todo, key=str):
      x = jax.ShapeDtypeStruct(shape, dt)
      self.compiler.submit(("pieces", shape, dt, odt, check), fn, x if with_base else None, (x,) * job.n_experts,
                           ctx, stats, out_dtype=odt)
    return "pieces"

  def close(self) -> None:
    self.compiler.close()
    self.drain.close()
    self.mapper.shutdown(wait=True)
    self._windows.clear()
    self.stager.close()


def _piece(v: np.ndarray | None, a: int, b: int, size: int) -> np.ndarray | None:
  """Entries [a, b) of a flat array, zero-padded to ``size`` (a view when no padding is needed)."""
  if v is None or b - a == size:
    return None if v is None else v[a:b]
  buf = np.zeros((size,), v.dtype)
  buf[:b - a] = v[a:b]
  return buf


DRAIN_DEPTH = 4  # merged pieces in flight between the dispatching thread and the draining one
CHECK_LAG = 2  # pieces dispatched after the one the dispatching thread checks next (it has run by then)


class _Drain:
  """Merged pieces on their way out, in order: each one checked for NaN/Inf on the host (where asked)
  by the dispatching thread, :data:`CHECK_LAG` pieces behind the kernels it dispatches, then written
  (or copied into its leaf) on a draining thread of its own, at most :data:`DRAIN_DEPTH` behind. The
  two threads share the work of each piece (writes to one file do not run in parallel, checks do),
  and pieces of consecutive leaves flow through without a pause at each leaf's end (:meth:`settle`
  waits for all of them). The first piece that fails (e.g. a full disk) stops the writing of every
  piece after it.
  """

  def __init__(self):
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mergejax-drain")
    self.dispatched: collections.deque[tuple[Any, int, list | None, Callable[[np.ndarray], None]]] = collections.deque()
    self.pending: collections.deque[concurrent.futures.Future] = collections.deque()
    self.failed = False
    self.flags: dict[str, list[Any]] = {}  # finite flags of the pieces of each leaf since :meth:`settle`

  def submit(self, r: Any, n: int, checks: list | None, finish: Callable[[np.ndarray], None]) -> None:
    """Queues the merged piece ``r``, of which the first ``n`` entries count: checked (the flag appended
    to ``checks``, unless None), then given to ``finish`` on the draining thread."""
    self.dispatched.append((r, n, checks, finish))
    if len(self.dispatched) > CHECK_LAG:
      self._hand_over()

  def _hand_over(self) -> None:
    r, n, checks, finish = self.dispatched.popleft()
    if checks is not None:
      r = np.asarray(r).reshape(-1)[:n]
      checks.append(finite_host(r))
    self.pending.append(self.pool.submit(self._run, finish, r, n))
    if len(self.pending) > DRAIN_DEPTH:
      self.pending.popleft().result()

  def _run(self, finish: Callable[[np.ndarray], None], r: Any, n: int) -> None:
    if self.failed:  # a piece before this one failed: write nothing more
      return
    try:
      finish(np.asarray(r).reshape(-1)[:n])
    except BaseException:
      self.failed = True
      raise

  def wait(self) -> None:
    """Waits for every piece submitted (raising the first error)."""
    while self.dispatched:
      self._hand_over()
    while self.pending:
      self.pending.popleft().result()

  def settle(self) -> dict[str, np.ndarray]:
    """Waits for every piece submitted; returns the bool[1] finite flag of each checked leaf since the
    last call."""
    self.wait()
    flags, self.flags = self.flags, {}
    return {p: np.asarray([all(bool(np.asarray(f).all()) for f in fs)]) for p, fs in flags.items()}

  def close(self) -> None:
    """Drops the pieces not started; a running one finishes first."""
    self.dispatched.clear()
    for f in self.pending:
      f.cancel()
    self.pending.clear()
    self.pool.shutdown(wait=True, cancel_futures=True)


def _merge_pieces(fn, pieces: Iterator[tuple[int, int, tuple]], n: int, out_dtype, write, path: str, drain: _Drain,
                  *, flagged: bool, host_check: bool = False) -> np.ndarray | None:
  """Runs ``fn(*args, out_dtype=...)`` on each (start, stop, args) piece of leaf ``path``; entries
  [0, stop - start) of its flattened result are the leaf's entries [start, stop), drained by ``drain``.
  Returns the flat leaf (all of it merged), or None when each piece goes to ``write(start, values)``:
  those may still be in flight (:meth:`_Drain.settle`).

  ``flagged``: ``fn`` returns (piece, bool[1] finite flag). ``host_check``: each merged piece is
  checked on the host (:func:`finite_host`). Either way the leaf's flags are ``drain.flags[path]``.
  """
  out = np.empty((n,), out_dtype) if write is None else None
  flags = drain.flags.setdefault(path, []) if flagged or host_check else None

  def finish(a, values):
    if write is not None:
      write(a, values)
    else:
      out[a:a + values.size] = values

  for a, b, args in pieces:
    if flagged:
      r, f = fn(*args, out_dtype=out_dtype)
      flags.append(f)
    else:
      r = fn(*args, out_dtype=out_dtype)
    drain.submit(r, b - a, flags if host_check else None, functools.partial(finish, a))
  if write is None:
    drain.wait()
  return out


def _count_valid(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``fn(base, experts, ctx, *args, valid=...)`` called as ``(base, experts, ctx, *args, valid)``."""
  def call(base, experts, ctx, *args_valid):
    *args, valid = args_valid
    return fn(base, experts, ctx, *args, valid=valid)
  return call


def _call_signature(x: Any) -> Any:
  if isinstance(x, (np.ndarray, jax.Array, np.generic)):
    return (tuple(x.shape), np.dtype(x.dtype).str)
  return x


def _run_calls(fn, calls: Sequence[tuple[str, Any, tuple[Any, ...], tuple[Any, ...], Any]]) -> list[Any]:
  """``fn(base, experts, ctx, *args)`` for each (path, base, experts, args, ctx) call, in order (results
  not waited for). The first call of every distinct signature runs on its own thread, so that the
  compiles of a pass's few kernel variants overlap instead of queueing on one core."""
  firsts: dict[str, int] = {}
  for i, (_, b, es, args, _) in enumerate(calls):
    firsts.setdefault(repr(jax.tree.map(_call_signature, (b, es, args))), i)

  def one(i):
    _, b, es, args, ctx = calls[i]
    return fn(b, es, ctx, *args)

  out: list[Any] = [None] * len(calls)
  if len(firsts) > 1:
    with concurrent.futures.ThreadPoolExecutor(min(len(firsts), max(2, os.cpu_count() or 1))) as pool:
      for i, r in zip(firsts.values(), pool.map(one, firsts.values())):
        out[i] = r
  else:
    firsts = {}
  done = set(firsts.values())
  for i in range(len(calls)):
    if i not in done:
      out[i] = one(i)
  return out
