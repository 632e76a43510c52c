"""The merge engine: applies a method over Sources into a Sink (:func:`merge_sources`).

* :mod:`~mergejax.engine.loop`: the loop (plan, statistics passes, per group read/merge/write, finalize);
* :mod:`~mergejax.engine.plan`: validation, leaf groups under a memory budget, per-leaf contexts;
* :mod:`~mergejax.engine.executors`: how a group's leaves are held and merged (whole leaves on any mesh,
  or flat chunks on one CPU device), chosen once per merge;
* :mod:`~mergejax.engine.nonfinite`: the NaN/Inf policy and checks;
* :mod:`~mergejax.engine.counting`, :mod:`~mergejax.engine.xla_cpu`, :mod:`~mergejax.engine.output`:
  what the executors do for XLA:CPU's sake (packed counting, aligned windows, bf16 rounding).
"""

from mergejax.engine.executors import FlatChunk, LeafExecutor, WholeLeaf, choose_executor
from mergejax.engine.loop import merge_sources
from mergejax.engine.nonfinite import NonFiniteError, finite_host
from mergejax.engine.plan import plan_groups, validate_sources

__all__ = ["FlatChunk", "LeafExecutor", "NonFiniteError", "WholeLeaf", "choose_executor", "finite_host",
           "merge_sources", "plan_groups", "validate_sources"]
