"""Split safety: hyperparameter selection may only read validation splits.

The runner scores candidates inside ``with guard.selecting():``; every evaluation goes through
:meth:`SplitGuard.check`, which raises :class:`SplitLeakError` for any other split during that phase.
Test splits are read once per (cell, method), after the choice is final.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

SELECTION_SPLIT = "validation"


class SplitLeakError(RuntimeError):
  """A test (or train) split was requested while hyperparameters were being selected."""


class SplitGuard:
  def __init__(self):
    self.phase = "final"
    self.log: list[tuple[str, str, str]] = []  # (phase, suite, split) of every evaluation

  @contextlib.contextmanager
  def selecting(self) -> Iterator[None]:
    prev, self.phase = self.phase, "selection"
    try:
      yield
    finally:
      self.phase = prev

  def check(self, suite: str, split: str) -> None:
    if self.phase == "selection" and split != SELECTION_SPLIT:
      raise SplitLeakError(f"split {split!r} of {suite!r} requested during hyperparameter selection; "
                           f"selection may only read {SELECTION_SPLIT!r}")
    self.log.append((self.phase, suite, split))
