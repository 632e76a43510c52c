"""What the engine does for XLA:CPU's sake: 64-byte-aligned windows of memory maps (the flat-chunk
executor), XLA:CPU's float32 semantics for NumPy twins of statistics functions, and wide vectors."""

from __future__ import annotations

import functools
import mmap
import os
import sys
import time
from typing import Iterator

import jax
import numpy as np

from mergejax.checkpoints.base import private_memory
from mergejax.engine.nonfinite import kernel_checked
from mergejax.engine.output import kernel_output

ALIGN = 64  # bytes: XLA:CPU reads a host buffer in place only if it is this aligned (else it copies it)
_TINY = np.finfo(np.float32).tiny


def as_f32(x: np.ndarray) -> np.ndarray:
  """A host array as float32 the way XLA:CPU computes: subnormal values are zero (it flushes
  subnormal inputs and results). For NumPy twins of statistics functions (``LeafPass(host=...)``)."""
  x = np.asarray(x, np.float32)
  return np.where(np.abs(x) < _TINY, np.float32(0), x)


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype", "fused"))
def kernel_aligned(base, experts, leads, ctx, stats, *, kernel, out_dtype, fused):
  """The merged ``size``-entry chunk from aligned windows of the inputs: with ``fused`` also
  :func:`~mergejax.engine.nonfinite.kernel_checked`'s inputs-finite flag, else the chunk alone.

  ``base`` and ``experts`` hold ``size + ALIGN // itemsize`` entries each, starting at an aligned
  address; input i's chunk starts ``leads[i]`` entries in (base first). The dynamic slices fuse into
  the kernel's loop (unaligned vector loads), so memory-mapped inputs are read in place, never copied.
  (Methods that propagate NaN/Inf are checked on their output chunks on the host instead: XLA:CPU
  computes a fused per-entry flag of the output in a second loop that recomputes the kernel.)
  """
  size = experts[0].shape[0] - ALIGN // experts[0].dtype.itemsize
  cut = lambda x, i: jax.lax.dynamic_slice(x, (leads[i],), (size,))
  b = cut(base, 0) if base is not None else None
  o = 1 if base is not None else 0
  es = tuple(cut(e, o + t) for t, e in enumerate(experts))
  if not fused:
    return kernel_output(kernel, b, es, ctx, stats, out_dtype)
  return kernel_checked(b, es, ctx, stats, kernel=kernel, out_dtype=out_dtype)


def aligned_pieces(amap: np.ndarray, lead: int, spans: list[tuple[int, int, int]]) -> Iterator[tuple[np.ndarray, int]]:
  """(window, lead) of each flat chunk ``spans`` (start, stop, padded size) of the tensor at
  ``amap[lead:lead + n]`` (an aligned view): an aligned window of the map itself where the map holds
  enough entries after the chunk, else an aligned copy (the zero-padded tail)."""
  extra = ALIGN // amap.dtype.itemsize
  for a, b, size in spans:
    if b - a == size and a + size + extra <= len(amap):
      yield amap[a:a + size + extra], lead
    else:
      raw = np.zeros((size + extra) * amap.dtype.itemsize + ALIGN, np.uint8)
      off = (-raw.ctypes.data) % ALIGN
      buf = raw[off:off + (size + extra) * amap.dtype.itemsize].view(amap.dtype)
      buf[:b - a] = amap[lead + a:lead + b]
      yield buf, 0


class StagingBuffers:
  """Recycled page-aligned host slabs for leaves read into memory (one slab per leaf group in flight),
  so that kernels read them in place (XLA:CPU aliases an ``ALIGN``-byte-aligned host array and copies
  any other).

  Fresh memory costs a page fault and a page of zeros per 4 KiB on first touch (on the 2-core
  development VM, more than reading the data itself); a recycled slab costs nothing. A slab is reused
  only when nothing refers to it any more: each array carved from it holds a reference, and so does
  every jax.Array aliasing one until the computations reading it are done. Slabs are anonymous maps
  of ``capacity`` bytes (the largest group's need), returned to the system by :meth:`clear`; beyond
  ``keep`` of them, :meth:`take` first waits up to ``wait_s`` for one to come free.
  """

  def __init__(self, capacity: int, keep: int = 2, wait_s: float = 0.25):
    self.capacity, self.keep, self.wait_s = capacity, keep, wait_s
    self.slabs: list[mmap.mmap] = []

  def _free(self, i: int) -> bool:
    # Every array carved from a slab refers to its map (NumPy points views at the object that owns
    # the memory); with none left, only the list and the call's argument do.
    return sys.getrefcount(self.slabs[i]) <= 2

  def take(self, nbytes: int) -> np.ndarray:
    """A page-aligned uint8 array of ``nbytes`` (carve pieces at multiples of ``ALIGN``): from a free
    slab, else from a new one (from a one-off map if ``nbytes`` exceeds the capacity)."""
    if nbytes > self.capacity:
      return np.frombuffer(private_memory(nbytes), np.uint8, count=nbytes)
    deadline = time.monotonic() + self.wait_s
    while True:
      for i in range(len(self.slabs)):
        if self._free(i):
          return np.frombuffer(self.slabs[i], np.uint8, count=nbytes)
      # Two slabs cover the group being used and the one being read; the group before them is
      # usually let go a moment after this read starts (its last computations finish): wait for it.
      if len(self.slabs) < self.keep or time.monotonic() > deadline:
        break
      time.sleep(0.002)
    self.slabs.append(private_memory(self.capacity))
    return np.frombuffer(self.slabs[-1], np.uint8, count=nbytes)

  def clear(self) -> None:
    self.slabs = []


def padded(nbytes: int) -> int:
  """``nbytes`` rounded up to a multiple of ``ALIGN``."""
  return -(-nbytes // ALIGN) * ALIGN


def prefer_wide_vectors() -> None:
  """Lets XLA:CPU emit 512-bit vector code (its default prefers 256 bits) on x86 CPUs with AVX-512.

  DARE's per-entry mask hashes are chains of 32-bit integer multiplies, which wider vectors speed up
  (docs/BENCHMARKS.md); merged outputs are bit-identical (elementwise kernels; integer counting). A
  no-op where XLA_FLAGS already sets a width, on other CPUs, and once the XLA backend exists (flags
  are read when it is created).
  """
  flags_env = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_prefer_vector_width" in flags_env or not _has_avx512():
    return
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (only on AVX-512 CPUs)
  if xla_bridge.backends_are_initialized():
    return
  os.environ["XLA_FLAGS"] = f"{flags_env} --xla_cpu_prefer_vector_width=512".strip()


def _has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return " avx512f " in f" {line.split(':', 1)[-1].strip()} "
  except OSError:
    pass
  return False
