"""Atomic output directories and the merge manifest.

An output is assembled under ``<parent>/.<name>.mergejax-partial`` and renamed onto ``<name>`` only
when complete, so a crash or SIGKILL at any point leaves nothing at the destination (at worst a
hidden ``*.mergejax-partial`` folder, removed by the next run to the same destination).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import time
from typing import Any, Mapping, Sequence

import jax

from mergejax import files as files_lib

MANIFEST = "mergejax_manifest.json"
PARTIAL_SUFFIX = ".mergejax-partial"


def is_primary() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def check_output_path(output: str | os.PathLike, inputs: Sequence[str | os.PathLike], overwrite: bool) -> None:
  """ValueError when ``output`` is (inside) an input, contains one, or exists without ``overwrite``."""
  out = pathlib.Path(output).resolve()
  for i in inputs:
    p = pathlib.Path(i).resolve()
    if out == p or p in out.parents:
      raise ValueError(f"output path {output} is inside input {i}")
    if out in p.parents:
      raise ValueError(f"input {i} is inside output path {output}")
  if out.exists() and not overwrite:
    raise ValueError(f"output path {output} exists (pass --overwrite to replace it)")
  if not out.parent.is_dir():
    raise ValueError(f"output parent directory {out.parent} does not exist")


class AtomicDir:
  """A temporary directory beside ``dest`` that becomes ``dest`` on :meth:`commit`."""

  def __init__(self, dest: str | os.PathLike, overwrite: bool = False, create: bool = True):
    self.dest = pathlib.Path(dest).resolve()
    self.overwrite = overwrite
    self.tmp = self.dest.parent / f".{self.dest.name}{PARTIAL_SUFFIX}"
    if is_primary():
      if self.tmp.exists():
        shutil.rmtree(self.tmp)  # left by a killed run
      if create:
        self.tmp.mkdir()
    sync("mergejax-atomic-begin")

  def commit(self) -> pathlib.Path:
    sync("mergejax-atomic-commit")
    if is_primary():
      _fsync_tree(self.tmp)
      if self.dest.exists():
        if not self.overwrite:
          raise ValueError(f"output path {self.dest} exists (pass --overwrite to replace it)")
        trash = self.dest.parent / f".{self.dest.name}.mergejax-old"
        if trash.exists():
          shutil.rmtree(trash)
        os.rename(self.dest, trash)
        os.rename(self.tmp, self.dest)
        shutil.rmtree(trash, ignore_errors=True)
      else:
        os.rename(self.tmp, self.dest)
      _fsync_dir(self.dest.parent)
    sync("mergejax-atomic-done")
    return self.dest

  def abort(self) -> None:
    if is_primary() and self.tmp.exists():
      shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync_path(path: str | os.PathLike) -> None:
  """fsync a file or directory; best effort (some filesystems refuse directory fsync)."""
  try:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
  except OSError:
    pass


def _fsync_dir(path: pathlib.Path) -> None:
  _fsync_path(path)


def _fsync_tree(root: pathlib.Path) -> None:
  for dirpath, _, files in os.walk(root):
    for f in files:
      _fsync_path(os.path.join(dirpath, f))
    _fsync_path(dirpath)


def fingerprint(path: str | os.PathLike, samples: int = 16, block: int = 1 << 16) -> dict[str, Any]:
  """Size and a sampled content fingerprint of a file or directory (sha256 over every file's size,
  first/last 64 KiB and ``samples`` evenly spaced 64 KiB blocks: cheap on 100 GB inputs, and any
  header change, truncation or rewrite of a sampled region changes it)."""
  root = pathlib.Path(path)
  files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
  h = hashlib.sha256()
  total = 0
  for f in files:
    size = f.stat().st_size
    total += size
    h.update(str(f.relative_to(root) if f != root else f.name).encode())
    h.update(size.to_bytes(8, "little"))
    with open(f, "rb") as fh:
      offsets = sorted({0, max(0, size - block)} | {size * i // (samples + 1) for i in range(1, samples + 1)})
      for off in offsets:
        fh.seek(off)
        h.update(fh.read(block))
  return {"path": str(root.resolve()), "bytes": total, "files": len(files), "sha256_sampled": h.hexdigest()}


def versions() -> dict[str, str]:
  import mergejax  # pylint: disable=g-import-not-at-top
  out = {"mergejax": mergejax.__version__, "jax": jax.__version__}
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:  # the installed distribution's version: importing orbax here would cost ~0.5 s
    out["orbax-checkpoint"] = metadata.version("orbax-checkpoint")
  except metadata.PackageNotFoundError:
    pass
  import numpy  # pylint: disable=g-import-not-at-top
  out["numpy"] = numpy.__version__
  return out


def write_manifest(directory: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
  """Writes ``mergejax_manifest.json`` (process 0 only) with versions and a timestamp added."""
  if not is_primary():
    return
  data = dict(metadata)
  data.setdefault("versions", versions())
  data.setdefault("created_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
  files_lib.atomic_write_json(pathlib.Path(directory) / MANIFEST, data)


# Files in a model directory that are weights (never copied as sidecars).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_WEIGHT_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", MANIFEST)


def copy_sidecars(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, skip: Sequence[str] = ()) -> list[str]:
  """Copies top-level non-weight files (config.json, generation_config.json, tokenizer files,
  model_config.json, ...) from ``src_dir``; returns their names. Process 0 only."""
  src = pathlib.Path(src_dir)
  if not src.is_dir() or not is_primary():
    return []
  copied = []
  for f in sorted(src.iterdir()):
    if not f.is_file() or f.name in _WEIGHT_NAMES or f.name in skip or f.name.endswith(_WEIGHT_SUFFIXES):
      continue
    if f.name.startswith(".") or f.name.endswith(".tmp"):
      continue
    shutil.copy2(f, pathlib.Path(dst_dir) / f.name)
    copied.append(f.name)
  return copied
