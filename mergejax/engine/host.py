"""Host views of leaves and results."""

from __future__ import annotations

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
