"""Input format detection: orbax directory, safetensors file or directory."""

from __future__ import annotations

import os
import pathlib

from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.orbax import OrbaxSource, is_orbax
from mergejax.checkpoints.safetensors import SafetensorsSource, is_safetensors

FORMATS = ("orbax", "safetensors")


def detect_format(path: str | os.PathLike) -> str:
  """'orbax' or 'safetensors'; CheckpointError naming the path otherwise."""
  p = pathlib.Path(path)
  if not p.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if is_orbax(p):
    return "orbax"
  if is_safetensors(p):
    return "safetensors"
  raise CheckpointError(f"{path}: unknown checkpoint format (expected an orbax checkpoint directory, "
                        "a .safetensors file or a directory of them)")


def open_source(path: str | os.PathLike, name: str | None = None):
  """The Source for a checkpoint path, by detected format."""
  fmt = detect_format(path)
  return OrbaxSource(path, name=name) if fmt == "orbax" else SafetensorsSource(path, name=name)
