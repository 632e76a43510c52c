"""What the flat-chunk executor does for XLA:CPU's sake: 64-byte-aligned windows of memory maps, and
XLA:CPU's float32 semantics for NumPy twins of statistics functions."""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import numpy as np

from mergejax.engine.nonfinite import kernel_checked
from mergejax.engine.output import kernel_output

ALIGN = 64  # bytes: XLA:CPU reads a host buffer in place only if it is this aligned (else it copies it)
_TINY = np.finfo(np.float32).tiny


def as_f32(x: np.ndarray) -> np.ndarray:
  """A host array as float32 the way XLA:CPU computes: subnormal values are zero (it flushes
  subnormal inputs and results). For NumPy twins of statistics functions (``LeafPass(host=...)``)."""
  x = np.asarray(x, np.float32)
  return np.where(np.abs(x) < _TINY, np.float32(0), x)


@functools.partial(jax.jit, static_argnames=("kernel", "out_dtype", "fused", "size"))
def kernel_aligned(base, experts, leads, ctx, stats, *, kernel, out_dtype, fused, size):
  """The merged ``size``-entry chunk from aligned windows of the inputs: with ``fused`` also
  :func:`~mergejax.engine.nonfinite.kernel_checked`'s inputs-finite flag, else the chunk alone.

  ``base`` and ``experts`` hold ``size + ALIGN // itemsize`` entries each, starting at an aligned
  address; input i's chunk starts ``leads[i]`` entries in (base first). The dynamic slices fuse into
  the kernel's loop (unaligned vector loads), so memory-mapped inputs are read in place, never copied.
  (Methods that propagate NaN/Inf are checked on their output chunks on the host instead: XLA:CPU
  computes a fused per-entry flag of the output in a second loop that recomputes the kernel.)
  """
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
