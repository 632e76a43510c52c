"""Resumable results store: one JSON file per row, written atomically (temp file + rename).

A study killed at any moment leaves only complete rows; re-running skips the rows that exist. Rows
are keyed by a string (e.g. "merge/instruction_tuned/s/n4/s1/ties" or "ref/pretrained/xs/base").
A row carries the :func:`fingerprint` of everything that determines it (method and grid, categories,
design, the checkpoints it read); :meth:`ResultsStore.get` returns a stored row only when its
fingerprint is the one asked for, so a rerun with another grid, category set, design or world
recomputes (and replaces) the row instead of reusing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Iterator

import jax
from absl import logging

from mergejax import files
from mergejax import sharding


class ResultsStore:
  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    self.outdated: set[str] = set()  # keys whose stored row was computed from other inputs
    self.rows_dir = self.root / "rows"
    if jax.process_index() == 0:
      self.rows_dir.mkdir(parents=True, exist_ok=True)

  def _path(self, key: str) -> pathlib.Path:
    safe = key.replace("/", "__")
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return self.rows_dir / f"{safe}-{digest}.json"

  def get(self, key: str, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The row, or None (also when ``fingerprint`` is given and the row was computed from other
    inputs). In a multi-process run process 0 decides and broadcasts, so every process skips (or
    computes) the same rows and joins the same collectives."""
    row = self._read(key) if jax.process_index() == 0 else None
    if row is not None and fingerprint is not None and row.get("fingerprint") != fingerprint:
      if key not in self.outdated:
        logging.info("results row %s was computed from other inputs (fingerprint %s, now %s): recomputing",
                     key, row.get("fingerprint"), fingerprint)
      self.outdated.add(key)
      row = None
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

  def put(self, key: str, row: dict[str, Any], fingerprint: str | None = None) -> dict[str, Any]:
    """Writes (or replaces) the row under ``key``, with its ``fingerprint``; returns it as stored."""
    row = {"key": key, **row, **({"fingerprint": fingerprint} if fingerprint is not None else {})}
    row = json.loads(json.dumps(row, default=files.json_default))  # what a reader gets back
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


def fingerprint(inputs: Any) -> str:
  """A short hash of a JSON-able description of what determines a row (keys sorted)."""
  text = json.dumps(inputs, sort_keys=True, default=files.json_default)
  return hashlib.sha256(text.encode()).hexdigest()[:16]
