"""Shard files named by an index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``,
``adapter_model.safetensors``...): a name must be a plain file name inside the checkpoint directory."""

from __future__ import annotations

import json
import os
import pathlib

from mergejax.checkpoints.base import CheckpointError


def shard_file(directory: str | os.PathLike, name: str, index: str | os.PathLike) -> pathlib.Path:
  """``directory / name`` for a shard listed in ``index``; CheckpointError (one line naming the index and
  the shard) when the name is absolute or climbs out with '..', or the file is missing. Symlinked shard
  files are followed (a Hugging Face cache links each file to its blob store)."""
  d = pathlib.Path(directory)
  if not isinstance(name, str) or not name or os.path.isabs(name) or pathlib.PurePath(name).is_absolute():
    raise CheckpointError(f"{index}: shard name {name!r} is not a file name inside {d} (absolute paths are refused)")
  if ".." in pathlib.PurePath(name).parts or "\\" in name:
    raise CheckpointError(f"{index}: shard name {name!r} reaches outside {d} (refused)")
  f = d / name
  if not f.is_file():
    raise CheckpointError(f"{index}: shard '{name}' is missing")
  return f


def weight_map(index: str | os.PathLike, kind: str) -> dict:
  """The ``weight_map`` (tensor name -> shard file name) of a sharded checkpoint's index file; a corrupt
  index is one :class:`CheckpointError` line naming it (``kind``: "safetensors index", "index")."""
  index = pathlib.Path(index)
  try:
    mapping = json.loads(index.read_text())["weight_map"]
    if not isinstance(mapping, dict):
      raise TypeError
  except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{index}: corrupt {kind} ({type(e).__name__}: {e})") from None
  return mapping
