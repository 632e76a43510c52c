"""Input format detection: orbax directory, safetensors file or directory."""

from __future__ import annotations

import os
import pathlib

from mergejax.checkpoints.base import CheckpointError
from mergejax.checkpoints.safetensors import SafetensorsSource, is_safetensors

FORMATS = ("orbax", "safetensors")


def is_orbax(path: str | os.PathLike) -> bool:
  """An orbax checkpoint directory (checked without importing orbax)."""
  p = pathlib.Path(path)
  return p.is_dir() and ((p / "_METADATA").is_file() or (p / "_CHECKPOINT_METADATA").is_file())


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
  if fmt == "orbax":
    from mergejax.checkpoints.orbax import OrbaxSource  # pylint: disable=g-import-not-at-top
    return OrbaxSource(path, name=name)
  return SafetensorsSource(path, name=name)
