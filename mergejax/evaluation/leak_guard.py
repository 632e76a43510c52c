"""Split safety at the data layer: while hyperparameters are being selected, no test split is read.

One :class:`SplitGuard` is shared by the evaluators of a study (``Evaluator(..., guard=guard)``).
``with guard.selecting():`` opens a selection. While one is open, from whichever thread, every
evaluator bound to the guard refuses to read any split but validation: an evaluator enters
:meth:`SplitGuard.reading` around everything that touches its split's data (reading and tokenizing
it at construction, scoring it in ``evaluate``), which raises :class:`SplitLeakError` for any other
split during a selection. Copies for other model sizes (``with_adapter``) share the guard, and
compiling ahead (``warm_up``) runs on zeros of the batches' shapes, not on the data, so no public
method reads a split around the guard. Reads and selections exclude each other: a selection that
opens while a test split is being read waits for that read to end.

The state is the guard's own (a condition variable and two counters), not a module or process
global, and every read is logged in :attr:`SplitGuard.reads`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

SELECTION_SPLIT = "validation"


class SplitLeakError(RuntimeError):
  """A test (or train) split was to be read while hyperparameters were being selected."""


class SplitGuard:
  """A thread-safe token: selections open and close it, evaluators consult it before every read.

  Attributes:
    allowed: the only split readable during a selection.
    reads: (what, split, during a selection) of every read, in order.
  """

  def __init__(self, allowed: str = SELECTION_SPLIT):
    self.allowed = allowed
    self.reads: list[tuple[str, str, bool]] = []
    self._cond = threading.Condition()
    self._selections = 0
    self._other_reads = 0

  @property
  def selection_open(self) -> bool:
    with self._cond:
      return self._selections > 0

  @contextlib.contextmanager
  def selecting(self) -> Iterator[None]:
    """Opens a selection for the duration of the block (waits for reads of other splits to end)."""
    with self._cond:
      self._cond.wait_for(lambda: self._other_reads == 0)
      self._selections += 1
    try:
      yield
    finally:
      with self._cond:
        self._selections -= 1
        self._cond.notify_all()

  @contextlib.contextmanager
  def reading(self, what: str, split: str) -> Iterator[None]:
    """Marks a read of ``what`` (a mixture or task) on ``split``; raises :class:`SplitLeakError` for a
    split other than :attr:`allowed` while a selection is open."""
    other = split != self.allowed
    with self._cond:
      selecting = self._selections > 0
      if selecting and other:
        raise SplitLeakError(f"split {split!r} of {what!r} requested during hyperparameter selection; "
                             f"selection may only read {self.allowed!r}")
      self.reads.append((what, split, selecting))
      self._other_reads += other
    try:
      yield
    finally:
      if other:
        with self._cond:
          self._other_reads -= 1
          self._cond.notify_all()
