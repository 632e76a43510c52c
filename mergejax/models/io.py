"""Model checkpoints: an orbax StandardCheckpointer directory of the params pytree, with
``model_config.json`` inside it. Assembled in a temporary directory beside the destination and renamed
into place (:class:`mergejax.checkpoints.output.AtomicDir`), so a directory at the final path is always
complete."""

from __future__ import annotations

import json
import os
import pathlib
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from mergejax import files
from mergejax.checkpoints.output import AtomicDir, write_manifest
from mergejax.models.config import ModelConfig

CONFIG_FILE = "model_config.json"
INFO_FILE = "train_info.json"
TOKENIZER_FILE = "tokenizer.model"
_ORBAX_MARKER = "_CHECKPOINT_METADATA"

ORBAX_LOCK = threading.RLock()
"""Held around every orbax save and restore of this process. Orbax 0.12 keys the signals of a save by
a process-global "current operation id", so two threads saving at once (the world builder trains runs
side by side) can wait on each other's signals until a 300 s timeout fails the run."""


def is_complete(path: str | os.PathLike) -> bool:
  """True when ``path`` is a finished model checkpoint (config, orbax metadata and data present)."""
  p = pathlib.Path(path)
  return (p.is_dir() and (p / CONFIG_FILE).is_file() and (p / _ORBAX_MARKER).is_file()
          and not p.name.startswith("."))


def save_checkpoint(path: str | os.PathLike, config: ModelConfig, params: Any,
                    info: dict[str, Any] | None = None, overwrite: bool = False,
                    tokenizer_model: str | os.PathLike | None = None) -> pathlib.Path:
  """Atomically writes ``params`` and ``config`` (plus optional training ``info`` and the SentencePiece
  model the checkpoint's token ids come from, as ``tokenizer.model``) to ``path``.

  All processes must call this (orbax writes each process's shards; process 0 the metadata).
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path}: checkpoint already exists")
  path.parent.mkdir(parents=True, exist_ok=True)
  out = AtomicDir(path, overwrite=overwrite, create=False)  # orbax creates the directory itself
  try:
    with ORBAX_LOCK, ocp.StandardCheckpointer() as ckptr:
      ckptr.save(out.tmp, params)
      ckptr.wait_until_finished()
    if jax.process_index() == 0:
      files.atomic_write_json(out.tmp / CONFIG_FILE, config.to_dict())
      if info is not None:
        files.atomic_write_json(out.tmp / INFO_FILE, info)
      if tokenizer_model is not None:
        files.atomic_write(out.tmp / TOKENIZER_FILE, pathlib.Path(tokenizer_model).read_bytes())
    write_manifest(out.tmp, {"kind": "model checkpoint"})  # marks it as mergejax's, so it may be replaced
    return out.commit()
  except BaseException:
    out.abort()
    raise


def load_config(path: str | os.PathLike) -> ModelConfig:
  """The ModelConfig stored in a checkpoint directory."""
  p = pathlib.Path(path) / CONFIG_FILE
  if not p.is_file():
    raise FileNotFoundError(f"{path}: not a model checkpoint (no {CONFIG_FILE})")
  try:
    return ModelConfig.from_dict(json.loads(p.read_text()))
  except (ValueError, TypeError) as e:
    raise ValueError(f"{p}: invalid model config: {e}") from e


def load_checkpoint(path: str | os.PathLike, sharding: Any = None) -> tuple[ModelConfig, Any]:
  """Returns ``(config, params)``.

  Args:
    path: a directory written by :func:`save_checkpoint`.
    sharding: None (every leaf on the first local device), one ``jax.sharding.Sharding`` for all
      leaves, or a pytree of shardings matching the params.
  """
  path = pathlib.Path(path).absolute()
  if not is_complete(path):
    raise FileNotFoundError(f"{path}: not a complete model checkpoint")
  config = load_config(path)
  with ORBAX_LOCK, ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path).item_metadata
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta)
    else:
      abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), meta,
                              sharding)
    params = ckptr.restore(path, abstract)
  return config, params


def load_info(path: str | os.PathLike) -> dict[str, Any]:
  """Training metadata saved next to the params ({} if none)."""
  p = pathlib.Path(path) / INFO_FILE
  return json.loads(p.read_text()) if p.is_file() else {}
