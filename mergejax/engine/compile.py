"""Compiles kernels ahead of use, in parallel threads (XLA compiles release the GIL)."""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Any


def lower(fn: Any, *args: Any, **kwargs: Any) -> Any:
  """``fn.lower(*args, **kwargs)`` for a jitted function, seeing through functools.partial."""
  if isinstance(fn, functools.partial):
    return lower(fn.func, *fn.args, *args, **{**fn.keywords, **kwargs})
  return fn.lower(*args, **kwargs)


class Precompiler:
  """Compiles the kernel for every distinct leaf signature ahead of use, in parallel threads.

  The compiles of different leaf shapes overlap each other and the reading of the first groups; a
  jitted call whose signature was compiled this way finds the executable in jit's cache. Any failure
  here is ignored: the call itself then compiles (and raises).
  """

  def __init__(self, enabled: bool):
    self.pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) if enabled else None
    self.futures: dict[Any, concurrent.futures.Future] = {}

  def submit(self, key: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
    if self.pool is not None and key not in self.futures:
      self.futures[key] = self.pool.submit(lambda: lower(fn, *args, **kwargs).compile())

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
