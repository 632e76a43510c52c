"""The interface every checkpoint format implements: list leaves without loading, read a group of
leaves (optionally onto a mesh with given shardings), write leaves progressively."""

from __future__ import annotations

import dataclasses
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
  """Where merged leaves go. Optional methods: ``begin(specs)`` (called once with the output leaves
  before any write) and ``abort()`` (removes partial output after a failure)."""

  def write(self, leaves: Mapping[str, Any]) -> None:
    """Writes (or buffers) a group of finished leaves; they may be freed afterwards."""

  def finalize(self, metadata: Mapping[str, Any]) -> Any:
    """Completes the output (e.g. an atomic rename); returns what the caller gets back."""


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
