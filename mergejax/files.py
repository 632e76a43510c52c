"""Atomic file writes: the only way mergejax writes a small file (JSON, CSV, text, a vocabulary).

Every write goes to a temporary file in the destination's directory (same file system), is flushed
and fsynced, and is renamed over the destination: readers see the old file or the new one, never a
partial one, and a crash leaves at most a hidden ``.NAME.tmp-*`` file that the next write replaces.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def json_default(x: Any) -> Any:
  """``json.dumps`` fallback for NumPy / JAX scalars and arrays, dtypes and paths."""
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  return str(x)


def _new_file_mode() -> int:
  """The permissions ``open()`` gives a new file: 0o666 less the process umask (read once, at import:
  ``os.umask`` can only be read by setting it)."""
  umask = os.umask(0o022)
  os.umask(umask)
  return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> pathlib.Path:
  """Writes ``data`` to ``path`` atomically (temp file, fsync, rename); creates parent directories. The
  file gets the permissions of a file created with ``open()`` (``mkstemp``'s own are owner-only)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
  try:
    os.fchmod(fd, _NEW_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def dumps_json(obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> str:
  """The JSON text mergejax writes: ``indent``-ed, sorted keys, NumPy values converted, final newline."""
  return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = True) -> pathlib.Path:
  """Writes ``obj`` as JSON (:func:`dumps_json`) to ``path`` atomically."""
  return atomic_write(path, dumps_json(obj, indent=indent, sort_keys=sort_keys))
