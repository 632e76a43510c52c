"""Host views of leaves and results."""

from __future__ import annotations

import functools
import mmap
import sys
from typing import Any

import jax
import numpy as np


def to_host(x: Any) -> np.ndarray:
  """Host value of a (possibly multi-process) jax.Array; identical on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  (multi-host only)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_flat(x: Any) -> np.ndarray:
  """A 1-D host view of a leaf (no copy for numpy arrays, memory maps and CPU jax.Arrays)."""
  return np.asarray(x).reshape(-1)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory(mmap_below: int = 64 << 20, keep: int = 256 << 20) -> bool:
  """Makes glibc's malloc, for the rest of this process, serve blocks below ``mmap_below`` bytes from
  its heap and keep up to ``keep`` bytes of freed heap memory mapped: for the merge commands (which
  merge and exit), never for a library user.

  By default glibc moves its mapping threshold up and down with the blocks it frees and returns freed
  heap memory beyond twice that threshold, so the per-chunk buffers of a merge (XLA's outputs, a few
  MiB each) are mapped, zeroed and unmapped again and again: a page fault per 4 KiB. With them reused,
  a 1B-parameter linear merge's loop takes ~0.25 s less (system time 1.2 -> 0.85 s) and an sce merge of
  the 168M Llama ~0.3 s less (docs/BENCHMARKS.md); blocks of ``mmap_below`` or more (leaf-sized
  temporaries) are still mapped and returned one by one, so peak memory stays within ~30 MB of the
  default's. Results are unchanged. Returns whether it applied (glibc on Linux; elsewhere a no-op).
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    import ctypes  # pylint: disable=g-import-not-at-top  (Linux only)
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return bool(mallopt(_M_MMAP_THRESHOLD, mmap_below)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))


_MADV_POPULATE_READ = 22  # Linux >= 5.14: map every page of a range now (read faults, in bulk)


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
  """libc's ``madvise`` (Linux), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    import ctypes  # pylint: disable=g-import-not-at-top  (Linux only)
    fn = ctypes.CDLL(None, use_errno=True).madvise
  except (OSError, AttributeError):
    return None
  fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
  fn.restype = ctypes.c_int
  return fn


def populate(x: np.ndarray) -> None:
  """Maps every page of the memory-mapped array ``x`` into this process now, with one system call
  (``madvise(MADV_POPULATE_READ)``), instead of a page fault per few pages when a kernel first reads
  them. Called on a reader thread, this takes the mapping work off the thread that runs the kernels.
  Best effort: a no-op where the call is not available (the pages then fault in as before)."""
  fn = _madvise()
  if fn is None or x.nbytes == 0:
    return
  addr = x.ctypes.data
  start = addr - addr % mmap.PAGESIZE
  fn(start, addr + x.nbytes - start, _MADV_POPULATE_READ)
