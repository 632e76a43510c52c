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
