"""Which category a seqio task belongs to: per-category aggregation and the paper's normalization
average tasks within a category first, then over categories.

A task's category is the one given to :func:`register_category` (the T0 tasks register theirs), else
the synthetic suite's (``mergejax.tasks.generators.SPECS``), else the task is its own category. A
``_rank`` suffix (the rank-classification variant of a task) is ignored when looking a task up.
"""

from __future__ import annotations

import threading

from mergejax.tasks import generators

RANK_SUFFIX = "_rank"

_REGISTERED: dict[str, str] = {}
_LOCK = threading.Lock()


def register_category(task: str, category: str) -> None:
  """Declares ``task``'s category (idempotent; thread-safe)."""
  with _LOCK:
    _REGISTERED[task] = category


def _strip(task: str) -> str:
  return task[:-len(RANK_SUFFIX)] if task.endswith(RANK_SUFFIX) else task


def task_category(task: str) -> str:
  """The category ``task`` belongs to (its own name, without ``_rank``, when unknown)."""
  for name in (task, _strip(task)):
    if name in _REGISTERED:
      return _REGISTERED[name]
  for name in (task, _strip(task)):
    if name in generators.SPECS:
      return generators.SPECS[name].category
  return _strip(task)
