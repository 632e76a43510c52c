"""Resumable results store: one JSON file per row, written atomically (temp file + rename).

A study killed at any moment leaves only complete rows; re-running skips the rows that exist. Rows
are keyed by a string (e.g. "merge/instruction_tuned/s/n4/s1/ties" or "ref/pretrained/xs/base").
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Iterator

import jax

from mergejax import files
from mergejax import sharding


class ResultsStore:
  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    self.rows_dir = self.root / "rows"
    if jax.process_index() == 0:
      self.rows_dir.mkdir(parents=True, exist_ok=True)

  def _path(self, key: str) -> pathlib.Path:
    safe = key.replace("/", "__")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return self.rows_dir / f"{safe}-{digest}.json"

  def get(self, key: str) -> dict[str, Any] | None:
    """The row, or None. In a multi-process run process 0 decides and broadcasts, so every process
    skips (or computes) the same rows and joins the same collectives."""
    row = self._read(key) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      row = sharding.broadcast_json(row)
    return row

  def _read(self, key: str) -> dict[str, Any] | None:
    p = self._path(key)
    if not p.is_file():
      return None
    try:
      row = json.loads(p.read_text())
    except (OSError, ValueError):
      return None
    return row if row.get("key") == key else None

  def put(self, key: str, row: dict[str, Any]) -> dict[str, Any]:
    row = json.loads(json.dumps({"key": key, **row}, default=files.json_default))  # what a reader gets back
    if jax.process_index() == 0:
      files.atomic_write_json(self._path(key), row, indent=1)
    return row

  def rows(self, prefix: str = "") -> Iterator[dict[str, Any]]:
    for p in sorted(self.rows_dir.glob("*.json")):
      try:
        row = json.loads(p.read_text())
      except (OSError, ValueError):
        continue
      if row.get("key", "").startswith(prefix):
        yield row

