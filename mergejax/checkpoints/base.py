"""The interface every checkpoint format implements: list leaves without loading, read a group of
leaves (optionally onto a mesh with given shardings), write leaves progressively."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """A leaf's canonical path ('a/b/c'), shape and dtype."""

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
