"""The interface every checkpoint format implements: list leaves without loading, read a group of
leaves (optionally onto a mesh with given shardings), write leaves progressively.

Optional capabilities are declared, not discovered: a Source or Sink that has one inherits its class
(:class:`HostViews`, :class:`TreeKeys`, :class:`StagedSink`, :class:`SpanSink`), and the engine and
CLI test ``isinstance(x, Capability)``. A format without them still works everywhere, on the general
path.
"""

from __future__ import annotations

import abc
import dataclasses
import mmap
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint is missing, of unknown format, truncated or corrupt (message names the file/leaf)."""


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """A leaf's canonical path ('a/b/c' for pytrees, the tensor name for safetensors), shape and dtype."""

  path: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    return self.size * np.dtype(self.dtype).itemsize


class Source(Protocol):
  """Where leaves come from."""

  name: str  # for error messages: a file path, or "expert 2"

  def specs(self) -> list[LeafSpec]:
    """All leaves, in the source's canonical order, without loading any data."""

  def read(self, paths: Sequence[str], shardings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The given leaves as jax.Arrays (placed with ``shardings[path]`` when given)."""


class Sink(Protocol):
  """Where merged leaves go."""

  def write(self, leaves: Mapping[str, Any]) -> None:
    """Writes (or buffers) a group of finished leaves; they may be freed afterwards."""

  def finalize(self, metadata: Mapping[str, Any]) -> Any:
    """Completes the output (e.g. an atomic rename); returns what the caller gets back."""


class HostViews(abc.ABC):
  """Source capability: float leaves as read-only 1-D host views (memory maps: no copy, data read on
  first touch). On one CPU device the engine merges from these instead of :meth:`Source.read`."""

  @abc.abstractmethod
  def flat_view(self, path: str) -> np.ndarray:
    """Leaf ``path`` as a read-only 1-D array in row-major order."""

  @abc.abstractmethod
  def aligned_view(self, path: str, align: int = 64) -> tuple[np.ndarray, int] | None:
    """(map, lead): a read-only 1-D array of the leaf's dtype whose first byte is ``align``-byte
    aligned in memory, holding the leaf's entries at ``map[lead:lead + n]`` followed by whatever lies
    after them (up to ``align`` bytes); None where no such view exists."""

  def read_into(self, path: str, out: np.ndarray) -> None:
    """Copies leaf ``path`` (row-major) into the 1-D array ``out`` of its dtype and size. Formats that
    can read straight from their files (no memory map, no page faults) override this."""
    np.copyto(out, self.flat_view(path))


class TreeKeys(abc.ABC):
  """Source capability: the tree keys of each leaf path (an orbax output keeps the input's structure)."""

  @abc.abstractmethod
  def keys(self, path: str) -> tuple[str, ...]:
    """The keys from the root to leaf ``path``."""


class StagedSink(abc.ABC):
  """Sink capability: told the output leaves before any write, and able to remove partial output."""

  @abc.abstractmethod
  def begin(self, specs: Sequence[LeafSpec]) -> None:
    """Called once with every output leaf (path, shape, dtype) before the first write."""

  @abc.abstractmethod
  def abort(self) -> None:
    """Removes everything written so far (called when the merge fails)."""


class SpanSink(abc.ABC):
  """Sink capability (one process): leaves written piece by piece as they are merged, no leaf buffer."""

  @abc.abstractmethod
  def write_span(self, path: str, start: int, data: np.ndarray) -> None:
    """Writes entries [start, start + data.size) of leaf ``path`` (row-major flat order) in place."""

  @abc.abstractmethod
  def mark_written(self, path: str) -> None:
    """Records leaf ``path`` as complete (every span written)."""


def private_memory(nbytes: int) -> mmap.mmap:
  """``nbytes`` of fresh, page-aligned, zeroed memory of this process alone (a private anonymous map),
  for large host buffers that kernels read in place. Private memory is faulted in at about half the
  cost of the shared memory that ``mmap.mmap(-1, n)`` maps (shmem), and never as transparent huge
  pages unless asked for (see :func:`mergejax.engine.xla_cpu.StagingBuffers`)."""
  flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
  return mmap.mmap(-1, max(nbytes, 1), flags=flags) if flags else mmap.mmap(-1, max(nbytes, 1))


def array_from_host(shape: tuple[int, ...], dtype: Any, sharding: Any,
                    read_block: Callable[[tuple[slice, ...]], np.ndarray]) -> jax.Array:
  """A global jax.Array whose addressable shards are read with ``read_block(index)`` (host numpy).

  Each process reads only the blocks its own devices hold, so multi-host reads are disjoint.
  Identical blocks (replicated shardings) are read once per process.
  """
  cache: dict[Any, np.ndarray] = {}

  def cb(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      cache[key] = np.ascontiguousarray(read_block(index), dtype=dtype)
    return cache[key]

  out = jax.make_array_from_callback(tuple(shape), sharding, cb)
  cache.clear()
  return out


def normalize_index(index: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
  return tuple(slice(*s.indices(d)[:2]) for s, d in zip(index, shape))
