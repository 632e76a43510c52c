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

Speed: every distinct kernel signature is compiled up front in parallel threads. On one CPU device,
elementwise kernels (DARE ones told where each chunk starts) and their statistics passes run on flat
1-D chunks of one size (:func:`chunks`, :func:`stat_spans`), so one compiled kernel serves every leaf
shape; safetensors inputs reach the kernel as 64-byte-aligned windows of memory maps, read in place
(:func:`_kernel_aligned`), and results go from the kernel's buffer straight to the output file.
Results are bit-identical to whole-leaf kernels.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
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


def _nonfinite_bytes(xs: Sequence[Any]) -> Any:
  """uint8 per entry: 1 where any of the same-shape arrays ``xs`` holds a NaN or Inf there."""
  return functools.reduce(jnp.bitwise_or, [(~jnp.isfinite(x)).astype(jnp.uint8) for x in xs])


def _none_set(bad: Any) -> Any:
  """bool[1]: no byte of ``bad`` is set. 1-D arrays of a multiple of 1024 entries are reduced as
  columns of a (-1, 1024) matrix first (vector adds on XLA:CPU, where a reduction to a scalar is a
  scalar loop)."""
  if bad.ndim == 1 and bad.size > 1024 and bad.size % 1024 == 0:
    bad = jnp.max(bad.reshape(-1, 1024), axis=0)
  return (jnp.max(bad, initial=0) == 0)[None]


@jax.jit
def _all_finite(base, experts):
  """bool[1]: every entry of every input is finite."""
  xs = ([base] if base is not None else []) + list(experts)
  return _none_set(jax.lax.optimization_barrier(_nonfinite_bytes(xs)))


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype", "by_output"))
def _kernel_checked(base, experts, ctx, stats, *, kernel, out_dtype, by_output=False):
  r"""The merged leaf and one bool[1] flag "every input is finite" in one executable (one read).

  Per entry the kernel's loop also writes one byte, "some input is NaN/Inf here" (with ``by_output``,
  for methods where a NaN/Inf input always yields a NaN/Inf output, see :func:`propagates_nonfinite`:
  "the output is NaN/Inf here"), and one small reduction of those bytes gives the flag
  (:func:`_none_set`); XLA:CPU would otherwise run a reduction fused with its producer as a scalar
  loop, recomputing the kernel in it. A False flag is resolved by the exact per-input check
  (:func:`_finite_flags`), which names the input.
  """
  out = kernel(base, experts, ctx, stats, out_dtype=out_dtype)
  xs = [out] if by_output else ([base] if base is not None else []) + list(experts)
  # Byte flags computed in the kernel's own loop, materialized (the barrier keeps XLA from
  # recomputing the kernel inside the reduction's loop), then reduced: ~0.3x a kernel's cost
  # instead of ~1x for a reduction fused with its producer.
  out, bad = jax.lax.optimization_barrier((out, _nonfinite_bytes(xs)))
  return out, _none_set(bad)


ALIGN = 64  # bytes: XLA:CPU reads a host buffer in place only if it is this aligned (else it copies it)


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype", "by_output", "size"))
def _kernel_aligned(base, experts, leads, ctx, stats, *, kernel, out_dtype, by_output, size):
  """The merged ``size``-entry chunk from aligned windows of the inputs: with ``by_output`` the merged
  chunk alone (checked for NaN/Inf on the host, :func:`finite_host`), else :func:`_kernel_checked`'s
  (merged chunk, inputs-finite flag).

  ``base`` and ``experts`` hold ``size + ALIGN // itemsize`` entries each, starting at an aligned
  address; input i's chunk starts ``leads[i]`` entries in (base first). The dynamic slices fuse into
  the kernel's loop (unaligned vector loads), so memory-mapped inputs are read in place, never copied.
  Methods that propagate NaN/Inf (:func:`propagates_nonfinite`) are checked on their output in numpy:
  XLA:CPU computes a fused per-entry flag of the output in a second loop that recomputes the kernel
  (task arithmetic ran ~2x slower with it).
  """
  cut = lambda x, i: jax.lax.dynamic_slice(x, (leads[i],), (size,))
  b = cut(base, 0) if base is not None else None
  o = 1 if base is not None else 0
  es = tuple(cut(e, o + t) for t, e in enumerate(experts))
  if by_output:
    return kernel(b, es, ctx, stats, out_dtype=out_dtype)
  return _kernel_checked(b, es, ctx, stats, kernel=kernel, out_dtype=out_dtype)


@functools.lru_cache(maxsize=None)
def _exponent_mask(dtype: np.dtype) -> tuple[np.dtype, int] | None:
  """(unsigned view dtype, mask of the exponent bits) of a float dtype, None for other dtypes."""
  dtype = np.dtype(dtype)
  if not tree_lib.is_float_dtype(dtype) or dtype.itemsize not in (2, 4, 8):
    return None
  fi = jnp.finfo(dtype)
  return np.dtype(f"uint{8 * dtype.itemsize}"), ((1 << int(fi.nexp)) - 1) << int(fi.nmant)


def finite_host(x: np.ndarray) -> bool:
  """True when no entry of the host array ``x`` is NaN or Inf: no entry's exponent bits are all ones.

  One masked integer max over the bit pattern (numpy's vectorized integer max: ~40 us per 2^18
  bfloat16 entries on the development VM, ~4x less than a reduction compiled by XLA:CPU).
  """
  em = _exponent_mask(x.dtype)
  if em is None or x.size == 0:
    return True
  view, mask = em
  return int(np.bitwise_and(x.reshape(-1).view(view), mask).max()) < mask


def _aligned_pieces(amap: np.ndarray, lead: int, n: int) -> Iterator[tuple[np.ndarray, int]]:
  """(window, lead) of each flat chunk of the ``n``-entry tensor at ``amap[lead:lead + n]`` (an
  :meth:`aligned_view`): an aligned window of the map itself where the map holds enough entries after
  the chunk, else an aligned copy (the zero-padded tail)."""
  extra = ALIGN // amap.dtype.itemsize
  for a, b, size in chunks(n):
    if b - a == size and a + size + extra <= len(amap):
      yield amap[a:a + size + extra], lead
    else:
      raw = np.zeros((size + extra) * amap.dtype.itemsize + ALIGN, np.uint8)
      off = (-raw.ctypes.data) % ALIGN
      buf = raw[off:off + (size + extra) * amap.dtype.itemsize].view(amap.dtype)
      buf[:b - a] = amap[lead + a:lead + b]
      yield buf, 0


def _merge_flat_aligned(kernel, base_al, experts_al, n: int, ctx, stats, out_dtype, by_output: bool,
                        write=None, shape=None) -> tuple[np.ndarray | None, Any]:
  """:func:`_merge_flat` from aligned views ((map, lead) pairs, base first or None): every kernel
  reads the page cache in place (:func:`_kernel_aligned`) and the NaN/Inf check is fused into it, or
  with ``by_output`` runs on each merged chunk on the host."""
  srcs = ([base_al] if base_al is not None else []) + list(experts_al)
  gens = [_aligned_pieces(m, lead, n) for m, lead in srcs]
  fn = functools.partial(_kernel_aligned, kernel=kernel, by_output=by_output, size=CHUNK)

  def pieces():
    for a, b, _ in chunks(n):
      got = [next(g) for g in gens]
      leads = np.asarray([lead for _, lead in got], np.int32)
      ws = [w for w, _ in got]
      bw = ws[0] if base_al is not None else None
      ews = tuple(ws[1:] if base_al is not None else ws)
      yield a, b, (bw, ews, leads, ctx if shape is None else chunk_context(ctx, shape, a), stats)

  return _merge_pieces(fn, pieces(), n, len(srcs), out_dtype, "host" if by_output else "kernel", write)


def propagates_nonfinite(method: MergeMethod, has_base: bool) -> bool:
  r"""True when a NaN/Inf in any input leaf makes the merged leaf non-finite at that entry: the
  method propagates NaN/Inf (:attr:`Traits.propagates_nonfinite`) and reads every input given (a
  method that ignores the base cannot vouch for it)."""
  return method.traits.propagates_nonfinite and (method.traits.uses_base or not has_base)


# Flat-chunk execution (one CPU device, elementwise kernels): every float leaf is merged as 1-D chunks
# of CHUNK entries (the last one zero-padded to CHUNK), so ONE compiled kernel per (method, dtype)
# serves every leaf shape. A padded tail costs at most one chunk's work per leaf (~1 ms), far less
# than compiling a program for a second size (0.2-0.5 s on 2 cores).
CHUNK = 1 << 18


def chunks(n: int) -> list[tuple[int, int, int]]:
  """(start, stop, padded size) of the flat chunks of an ``n``-entry leaf."""
  out, a = [], 0
  while n - a >= CHUNK:
    out.append((a, a + CHUNK, CHUNK))
    a += CHUNK
  if a < n:  # tail: zero-padded to CHUNK (one compiled size in all)
    out.append((a, n, CHUNK))
  return out


def stat_spans(n: int) -> list[tuple[int, int]]:
  """(start, stop) of the flat spans statistics functions run on: CHUNK entries each and an unpadded
  tail (so that a sample of a small leaf is all of it, and padding never enters a count).

  Statistics functions (:class:`mergejax.methods.base.LeafPass`) return per-leaf partial results whose
  last axis indexes disjoint parts of the leaf (partial counts to be summed, samples to be pooled), so
  the spans' results concatenated along that axis are results for the whole leaf. The thresholds they
  find are exact, whatever the sample. Compiles: one per (CHUNK, tail length) instead of per shape.
  """
  return [(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)] or [(0, 0)]


def one_cpu_device(mesh: jax.sharding.Mesh | None) -> bool:
  """A one-process, one-CPU-device mesh: host arrays are device arrays (no transfers)."""
  return (mesh is not None and mesh.devices.size == 1 and jax.process_count() == 1
          and next(iter(mesh.devices.flat)).platform == "cpu")


# DARE kernels on flat chunks locate each entry's (row, column) with a float32 division (see
# mergejax.methods.steps._flat_position_hash), exact for rows shorter than this.
MAX_FLAT_ROW = 1 << 22


def flat_eligible(method: MergeMethod, mesh: jax.sharding.Mesh | None,
                  specs: Sequence[LeafSpec] | None = None) -> bool:
  """True when leaves may be merged as flat chunks with results identical to whole-leaf kernels.

  DARE methods (masks keyed by (row, position in row)) qualify when every leaf of ``specs`` has rows
  shorter than :data:`MAX_FLAT_ROW`: each chunk is then told where it starts (:func:`chunk_context`).
  """
  if not method.traits.elementwise or not one_cpu_device(mesh):
    return False
  if not method.traits.position_keyed:
    return True
  return specs is not None and all(block_rows(s.shape)[1] < MAX_FLAT_ROW for s in specs)


def blocks_eligible(method: MergeMethod, mesh: jax.sharding.Mesh | None,
                    specs: Sequence[LeafSpec] | None = None) -> bool:
  """True when the merge kernel must run on row blocks instead (DARE methods with rows of
  :data:`MAX_FLAT_ROW` or more entries)."""
  return (method.traits.elementwise and method.traits.position_keyed and one_cpu_device(mesh)
          and not flat_eligible(method, mesh, specs))


def chunk_context(ctx: Any, shape: Sequence[int], start: int) -> Any:
  """``ctx`` for the flat chunk of a leaf of ``shape`` that starts at flat entry ``start``: its
  (row, column) in the leaf seen as a (rows, D) matrix and D (:func:`block_rows`), so that DARE's
  position hash of the chunk equals the leaf's at those entries."""
  _, d, _ = block_rows(shape)
  d = max(d, 1)
  return dataclasses.replace(ctx, row_offset=np.uint32(start // d), col_offset=np.uint32(start % d),
                             row_len=np.uint32(d))


def _piece(v: np.ndarray | None, a: int, b: int, size: int) -> np.ndarray | None:
  """Entries [a, b) of a flat array, zero-padded to ``size`` (a view when no padding is needed)."""
  if v is None or b - a == size:
    return None if v is None else v[a:b]
  buf = np.zeros((size,), v.dtype)
  buf[:b - a] = v[a:b]
  return buf


def _finite_flat(base: np.ndarray | None, experts: Sequence[np.ndarray]) -> Any:
  """Per-input all-finite flags of one leaf from flat host arrays, chunk by chunk (one compiled size):
  one cheap flag for all inputs (:func:`_all_finite`), and per-input flags only if that is False."""
  pieces = [(_piece(base, a, b, size), tuple(_piece(e, a, b, size) for e in experts))
            for a, b, size in chunks(len(experts[0]))]
  if all(np.asarray(f).all() for f in [_all_finite(*pc) for pc in pieces]):
    return np.ones((len(experts) + (base is not None),), bool)
  return np.logical_and.reduce([np.asarray(_finite_flags(*pc)) for pc in pieces])


def _merge_flat(kernel, base: np.ndarray | None, experts: Sequence[np.ndarray], ctx, stats, out_dtype,
                fused_check: bool, by_output: bool = False,
                write: Callable[[int, np.ndarray], None] | None = None,
                shape: Sequence[int] | None = None) -> tuple[np.ndarray | None, Any]:
  """One leaf merged chunk by chunk from flat host arrays; returns (flat output, finite flags or None).

  Kernels are dispatched asynchronously: chunk i+1's inputs are handed over (``jax.device_put`` copies
  a slice that is not 64-byte aligned; see :func:`_merge_flat_aligned`) while chunk i runs, and chunk
  i-1's result is copied out meanwhile, or with ``write`` handed to ``write(start, values)`` straight
  from the kernel's buffer (flat output None).
  With ``shape`` (DARE methods) each chunk's ctx says where in the leaf it starts (:func:`chunk_context`).
  """
  pieces = ((a, b, (_piece(base, a, b, size), tuple(_piece(e, a, b, size) for e in experts),
                    ctx if shape is None else chunk_context(ctx, shape, a), stats))
            for a, b, size in chunks(len(experts[0])))
  check = ("output" if by_output else "inputs") if fused_check else None
  return _merge_pieces(kernel, pieces, len(experts[0]), len(experts) + (base is not None), out_dtype, check, write)


def block_rows(shape: Sequence[int]) -> tuple[int, int, int]:
  """(rows, row length D, rows per block R) of a leaf seen as a (rows, D) matrix in row blocks.

  A leaf of shape (d0, d1, ...) is the matrix (d0, d1 * ...), a 1-D leaf (1, d0): DARE's masks hash
  (row, position in row) exactly so (:func:`mergejax.methods.steps._position_hash`). A block holds
  R = max(1, CHUNK // D) rows (the last one zero-padded to R), so one compiled kernel serves every
  leaf with the same D.
  """
  shape = tuple(shape)
  rows, d = (1, math.prod(shape)) if len(shape) <= 1 else (shape[0], math.prod(shape[1:]))
  return rows, d, max(1, CHUNK // max(d, 1))


def _merge_blocks(kernel, base: np.ndarray | None, experts: Sequence[np.ndarray], shape: Sequence[int], ctx,
                  stats, out_dtype, fused_check: bool,
                  write: Callable[[int, np.ndarray], None] | None = None) -> tuple[np.ndarray | None, Any]:
  """One leaf merged in row blocks (:func:`block_rows`) from flat host arrays, each block's kernel
  told its first row (``ctx.row_offset``): bit-identical to the whole-leaf kernel for methods whose
  only position dependence is DARE's (row, column) hash. As :func:`_merge_flat` otherwise."""
  rows, d, r = block_rows(shape)
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
              dataclasses.replace(ctx, row_offset=np.uint32(r0)), stats))
            for r0 in range(0, rows if n else 0, r))
  return _merge_pieces(kernel, pieces, n, len(experts) + (base is not None), out_dtype,
                       "inputs" if fused_check else None, write)


def _merge_pieces(kernel, pieces, n: int, n_inputs: int, out_dtype, check: str | None,
                  write) -> tuple[np.ndarray | None, Any]:
  """Runs ``kernel`` on each (start, stop, args) piece; output entries [0, stop - start) of the
  flattened result are the leaf's entries [start, stop). See :func:`_merge_flat`.

  ``check`` says how NaN/Inf is found (flags: bool[n_inputs], or bool[1] for output checks):
  None: not at all (flags None); "inputs" / "output": a flag fused into each piece's kernel
  (:func:`_kernel_checked`, of the inputs or of the output); "kernel": ``kernel`` returns (piece, flag)
  itself; "host": each merged piece is checked on the host as it is drained (:func:`finite_host`),
  for methods whose output is non-finite wherever an input is (:func:`propagates_nonfinite`).
  """
  if check not in (None, "inputs", "output", "kernel", "host"):
    raise ValueError(f"unknown NaN/Inf check {check!r}")
  out = np.empty((n,), out_dtype) if write is None else None
  flags, pending = [], None

  def drain(item):
    a, b, r = item
    r = np.asarray(r).reshape(-1)[:b - a]
    if check == "host":
      flags.append(finite_host(r))
    if write is not None:
      write(a, r)
    else:
      out[a:b] = r

  for a, b, args in pieces:
    if check == "kernel":
      r, f = kernel(*args, out_dtype=out_dtype)
      flags.append(f)
    elif check in ("inputs", "output"):
      r, f = _kernel_checked(*args, kernel=kernel, out_dtype=out_dtype, by_output=check == "output")
      flags.append(f)
    else:
      r = kernel(*args, out_dtype=out_dtype)
    if pending is not None:
      drain(pending)
    pending = (a, b, r)
  if pending is not None:
    drain(pending)
  if check is None:
    return out, None
  if check == "host":
    return out, np.asarray([all(flags)])
  if not flags:
    return out, np.ones((n_inputs,), bool)
  return out, np.logical_and.reduce([np.asarray(f) for f in flags])


def _lower(fn: Any, *args: Any, **kwargs: Any) -> Any:
  """``fn.lower(*args, **kwargs)`` for a jitted function, seeing through functools.partial."""
  if isinstance(fn, functools.partial):
    return _lower(fn.func, *fn.args, *args, **{**fn.keywords, **kwargs})
  return fn.lower(*args, **kwargs)


class _Precompiler:
  """Compiles the kernel for every distinct leaf signature ahead of use, in parallel threads.

  XLA compiles release the GIL, so the compiles of different leaf shapes overlap each other and the
  reading of the first groups; a jitted call whose signature was compiled this way finds the
  executable in jit's cache. Any failure here is ignored: the call itself then compiles (and raises).
  """

  def __init__(self, enabled: bool):
    self.pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) if enabled else None
    self.futures: dict[Any, concurrent.futures.Future] = {}
    self.started = False

  def submit(self, key: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
    if self.pool is not None and key not in self.futures:
      self.futures[key] = self.pool.submit(lambda: _lower(fn, *args, **kwargs).compile())

  def wait(self, key: Any) -> None:
    f = self.futures.get(key)
    if f is not None:
      try:
        f.result()
      except Exception:  # pylint: disable=broad-except
        pass

  def wait_all(self, kind: str) -> None:
    for key in list(self.futures):
      if key[0] == kind:
        self.wait(key)

  def close(self) -> None:
    if self.pool is not None:
      self.pool.shutdown(wait=False, cancel_futures=True)


def _host_flat(x: Any) -> np.ndarray:
  """A 1-D host view of a leaf (no copy for numpy arrays, memory maps and CPU jax.Arrays)."""
  return np.asarray(x).reshape(-1)


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
  if method.traits.uses_base and base is None:
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
  flat = flat_eligible(method, mesh, float_specs)
  positional = flat and method.traits.position_keyed  # flat DARE chunks: each told where it starts
  # With flat chunks, statistics functions see every leaf as 1-D (size,) and run on its flat spans.
  stat_shapes = {s.path: (s.size,) for s in float_specs} if flat else shapes
  blocks = blocks_eligible(method, mesh, float_specs)  # the merge pass only: statistics see whole leaves
  # Flat chunks of one process go straight from the kernel's buffer to the sink (no leaf buffer).
  span_writes = (flat or blocks) and hasattr(sink, "write_span") and jax.process_count() == 1
  # On one CPU device float leaves of sources that can memory-map them are not read into arrays at all:
  # kernels and statistics passes get read-only maps of the files (jit aliases them, no copy).
  all_specs = {s.path: s for s in specs}
  views = one_cpu_device(mesh) and all(
      hasattr(s, "flat_view") for s in ([base] if base is not None else []) + experts)
  checked: set[str] = set()
  ctx_cache: dict[str, Any] = {}
  in_srcs = ([base] if base is not None else []) + experts
  # Merge-pass kernels read 64-byte-aligned windows of the memory maps in place (no copy per chunk)
  # where no statistics pass has placed the leaves already (see _kernel_aligned).
  aligned = (flat and views and method.compute_stats is None and not allow_nonfinite
             and all(hasattr(x, "aligned_view") for x in in_srcs))

  def ctx_for(path: str):
    if path not in ctx_cache:
      ctx_cache[path] = method.context(n, seed, tree_lib.stable_path_hash(path))
    return ctx_cache[path]

  def read_group(g: list[LeafSpec], floats_only: bool) -> _Group:
    fp = [s.path for s in g if is_float[s.path]]
    sh = {p: shardings[p] for p in fp} if shardings else None
    if views:
      def view(src, p):
        v = src.flat_view(p).reshape(all_specs[p].shape)
        # Statistics passes read a leaf several times: place it once (an alias when the map is aligned,
        # else one copy, here on the prefetch thread) rather than once per pass.
        return jax.device_put(v) if method.compute_stats is not None else v
      b = {p: view(base, p) for p in fp} if base is not None else {}
      es = [{p: view(e, p) for p in fp} for e in experts]
    else:
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
  # The merge pass is the only read without statistics, and with per-leaf statistics computed while
  # the group is resident: the NaN/Inf check is then fused into the kernel (one pass over the data),
  # unless the statistics read the group first (then it runs before them, see ``local_pass``).
  fused_check = not allow_nonfinite and (method.compute_stats is None or method.local_stats)
  by_output = fused_check and method.compute_stats is None and propagates_nonfinite(method, base is not None)

  def raise_if_nonfinite(flags: Mapping[str, Any]) -> None:
    for p, f in flags.items():
      f = _to_host(f)
      if not f.all():
        raise NonFiniteError(f"{srcs[int(np.argmin(f))].name}: leaf '{p}' contains NaN or Inf "
                             "(set --config.allow_nonfinite=True to merge anyway)")
      checked.add(p)

  def check_finite(grp: _Group) -> None:
    todo = [s.path for s in grp.specs if is_float[s.path] and s.path not in checked]
    if allow_nonfinite or not todo or (fused_check and method.compute_stats is None):
      return
    if one_cpu_device(mesh):  # flat chunks: one compile per chunk size instead of per leaf shape
      compiler.wait_all("finite")
      raise_if_nonfinite({p: _finite_flat(_host_flat(grp.base[p]) if p in grp.base else None,
                                          [_host_flat(e[p]) for e in grp.experts]) for p in todo})
      return
    raise_if_nonfinite({p: _finite_flags(grp.base.get(p), tuple(e[p] for e in grp.experts)) for p in todo})

  def exact_flags(grp: _Group, p: str) -> Any:
    if one_cpu_device(mesh):
      return _finite_flat(_host_flat(grp.base[p]) if p in grp.base else None, [_host_flat(e[p]) for e in grp.experts])
    return _finite_flags(grp.base.get(p), tuple(e[p] for e in grp.experts))

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
        if floats_only or not method.local_stats:
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
    if flat:  # statistics on the flat spans of each leaf (see stat_spans), pooled along the last axis
      calls = []
      for p in paths:
        args = args_for(p) if args_for is not None else ()
        b = _host_flat(grp.base[p]) if p in grp.base else None
        es = [_host_flat(e[p]) for e in grp.experts]
        for a, z in stat_spans(len(es[0])):
          ctx = chunk_context(ctx_for(p), shapes[p], a) if positional else ctx_for(p)
          calls.append((p, None if b is None else b[a:z], tuple(e[a:z] for e in es), args, ctx))
      host = getattr(fn, "host", None)  # a NumPy twin of fn: no compile, same values
      out = [host(b, es, ctx, *args) for _, b, es, args, ctx in calls] if host is not None else _run_calls(fn, calls)
      res: dict[str, list[Any]] = {}
      for (p, *_), r in zip(calls, out):
        res.setdefault(p, []).append(r)
      return {p: jax.tree.map(lambda *xs: np.concatenate([_to_host(x) for x in xs], axis=-1), *r)
              for p, r in res.items()}
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

  # Files only (in-memory leaves may live anywhere); one process (compiles stay in lockstep otherwise).
  compiler = _Precompiler(enabled=mesh is not None and jax.process_count() == 1 and len(float_specs) > 1)
  if not allow_nonfinite and method.compute_stats is not None and one_cpu_device(mesh):
    # Keys hold dtype objects (np.dtype(bfloat16).str is '<V2', which names a void dtype, not bfloat16).
    for size, dt in sorted({(size, np.dtype(sp.dtype)) for sp in float_specs for *_, size in chunks(sp.size)}, key=str):
      x = jax.ShapeDtypeStruct((size,), dt)
      compiler.submit(("finite", size, dt), _all_finite, x if base is not None else None, (x,) * n)

  stats: dict[str, Any] = {}
  if method.compute_stats is not None and not method.local_stats:
    try:
      stats = method.compute_stats(global_leaf_pass, n, stat_shapes) or {}
    except BaseException:
      compiler.close()
      raise

  if hasattr(sink, "begin"):
    sink.begin([LeafSpec(s.path, s.shape, out_dtype[s.path]) for s in specs])

  def sig(spec: LeafSpec) -> tuple[Any, ...]:
    return (spec.shape, np.dtype(spec.dtype).str, out_dtype[spec.path].str,
            shardings[spec.path] if shardings and not views else None)

  def precompile_all(first: LeafSpec, leaf_stats: Any, fused: bool) -> None:
    """Submits one compile per distinct kernel signature, with the first leaf's ctx/stats structure."""
    compiler.started = True
    kernel_fn = (functools.partial(_kernel_checked, kernel=method.kernel, by_output=by_output and fused)
                 if fused else method.kernel)
    ctx = chunk_context(ctx_for(first.path), first.shape, 0) if positional else ctx_for(first.path)
    with_base = base is not None
    if aligned and fused:
      for dt, odt in sorted({(np.dtype(sp.dtype), out_dtype[sp.path]) for sp in float_specs}, key=str):
        x = jax.ShapeDtypeStruct((CHUNK + ALIGN // dt.itemsize,), dt)
        compiler.submit(("aligned", dt, odt), _kernel_aligned, x if with_base else None, (x,) * n,
                        jax.ShapeDtypeStruct((n_inputs,), np.int32), ctx, leaf_stats, kernel=method.kernel,
                        out_dtype=odt, by_output=by_output, size=CHUNK)
      compiler.wait_all("aligned")
      return
    if flat:
      todo = {(size, np.dtype(sp.dtype), out_dtype[sp.path]) for sp in float_specs for *_, size in chunks(sp.size)}
      for size, dt, odt in sorted(todo, key=str):
        x = jax.ShapeDtypeStruct((size,), dt)
        compiler.submit(("flat", size, dt, odt), kernel_fn, x if with_base else None, (x,) * n, ctx, leaf_stats,
                        out_dtype=odt)
      compiler.wait_all("flat")
      return
    if blocks:
      todo = {(block_rows(sp.shape)[2], block_rows(sp.shape)[1], np.dtype(sp.dtype), out_dtype[sp.path])
              for sp in float_specs}
      for r, d, dt, odt in sorted(todo, key=str):
        x = jax.ShapeDtypeStruct((r, d), dt)
        compiler.submit(("blocks", r, d, dt, odt), kernel_fn, x if with_base else None, (x,) * n, ctx, leaf_stats,
                        out_dtype=odt)
      compiler.wait_all("blocks")
      return
    for sp in float_specs:
      x = jax.ShapeDtypeStruct(sp.shape, sp.dtype, sharding=shardings[sp.path] if shardings and not views else None)
      compiler.submit(sig(sp), kernel_fn, x if with_base else None, (x,) * n, ctx, leaf_stats,
                      out_dtype=out_dtype[sp.path])

  try:
    for grp in stream(False, "merge"):
      fpaths = [s.path for s in grp.specs if is_float[s.path]]
      group_stats = stats
      fused = fused_check
      if method.compute_stats is not None and method.local_stats and fpaths:
        read_by_stats = []

        def local_pass(fn, args_for=None, grp=grp, fpaths=fpaths, read_by_stats=read_by_stats):
          if not read_by_stats:  # statistics are about to read the data: check it first
            read_by_stats.append(True)
            check_finite(grp)
          return _local_pass(run_fn, grp, fpaths, fn, args_for)

        group_stats = method.compute_stats(local_pass, n, {p: stat_shapes[p] for p in fpaths}) or {}
        fused = fused_check and not read_by_stats
      out, flags, spans = {}, {}, []
      for s in grp.specs:
        if is_float[s.path] and not compiler.started:
          precompile_all(s, group_stats.get(s.path, {}), fused)
        if is_float[s.path] and (flat or blocks):  # host arrays, merged piece by piece
          b = grp.base.get(s.path)
          base_flat = _host_flat(b) if b is not None else None
          experts_flat = [_host_flat(e[s.path]) for e in grp.experts]
          write = functools.partial(sink.write_span, s.path) if span_writes else None
          als = [x.aligned_view(s.path) for x in in_srcs] if aligned and fused else None
          if als is not None and all(a is not None for a in als):
            res, f = _merge_flat_aligned(method.kernel, als[0] if base is not None else None,
                                         als[1:] if base is not None else als, s.size, ctx_for(s.path),
                                         group_stats.get(s.path, {}), out_dtype[s.path], by_output and fused,
                                         write=write, shape=s.shape if positional else None)
          elif flat:
            res, f = _merge_flat(method.kernel, base_flat, experts_flat, ctx_for(s.path), group_stats.get(s.path, {}),
                                 out_dtype[s.path], fused, by_output and fused, write=write,
                                 shape=s.shape if positional else None)
          else:
            res, f = _merge_blocks(method.kernel, base_flat, experts_flat, s.shape, ctx_for(s.path),
                                   group_stats.get(s.path, {}), out_dtype[s.path], fused, write=write)
          if span_writes:
            spans.append(s.path)
          else:
            out[s.path] = res.reshape(s.shape)
          if f is not None:
            flags[s.path] = f
        elif is_float[s.path]:
          args = (grp.base.get(s.path), tuple(e[s.path] for e in grp.experts), ctx_for(s.path),
                  group_stats.get(s.path, {}))
          compiler.wait(sig(s))
          if fused:
            out[s.path], flags[s.path] = _kernel_checked(*args, kernel=method.kernel, out_dtype=out_dtype[s.path],
                                                         by_output=by_output and fused)
          else:
            out[s.path] = method.kernel(*args, out_dtype=out_dtype[s.path])
        else:
          out[s.path] = grp.other[s.path]
      if fused:  # a False fused flag: find the input (if any) by the exact check
        flags = {p: exact_flags(grp, p) for p, f in flags.items() if not _to_host(f).all()}
      raise_if_nonfinite(flags)  # before the group's other leaves are written (spans: the sink aborts)
      sink.write(out)
      for p in spans:
        sink.mark_written(p)
      del out
  finally:
    compiler.close()

  manifest = {"method": method.name, "hparams": dict(method.hparams), "seed": seed, "leaves": len(specs),
              "float_leaves": len(float_specs), "groups": len(groups), "n_experts": n,
              "dtype": str(np.dtype(dtype)) if dtype is not None else None,
              "memory_budget_bytes": memory_budget_bytes,
              "devices": len(mesh.devices.flat) if mesh is not None else None, "processes": jax.process_count(),
              **metadata}
  manifest["elapsed_s"] = time.perf_counter() - t0
  return sink.finalize(manifest)


def _call_signature(x: Any) -> Any:
  if isinstance(x, (np.ndarray, jax.Array, np.generic)):
    return (tuple(x.shape), np.dtype(x.dtype).str)
  return x


def _run_calls(fn, calls: Sequence[tuple[str, Any, tuple[Any, ...], tuple[Any, ...], Any]]) -> list[Any]:
  """``fn(base, experts, ctx, *args)`` for each (path, base, experts, args, ctx) call, in order (results
  not waited for).

  The first call of every distinct signature runs on its own thread, so that the compiles of a pass's
  few kernel variants (XLA releases the GIL) overlap instead of queueing on one core.
  """
  firsts: dict[str, int] = {}
  for i, (p, b, es, args, _) in enumerate(calls):
    key = repr(jax.tree.map(_call_signature, (b, es, args)))
    firsts.setdefault(key, i)

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


def _local_pass(run_fn, grp, paths, fn, args_for=None):
  return run_fn(fn, grp, paths, args_for)


def _progress_bar(enabled: bool, total: int, desc: str, n_leaves: int):
  if not enabled:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, dynamic_ncols=True)
  bar.leaves, bar.n_leaves = 0, n_leaves
  return bar
