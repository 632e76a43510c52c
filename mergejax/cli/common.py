"""Flags shared by several commands, defined once per process.

Each command is its own program, but tests (and notebooks) import several command modules into one
process to reuse their library functions; absl refuses a flag defined twice. ``define`` returns the
existing holder when the flag already exists (only the running command's main() reads flag values).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from absl import flags


def define(definer: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
  """``definer(name, ...)`` unless ``name`` is already defined; then its existing holder."""
  if name in flags.FLAGS:
    return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
  return definer(name, *args, **kwargs)


COORDINATOR = define(flags.DEFINE_string, "coordinator_address", None,
                     "host:port for jax.distributed.initialize (multi-host).")
NUM_PROCESSES = define(flags.DEFINE_integer, "num_processes", None, "Processes for jax.distributed.initialize.")
PROCESS_ID = define(flags.DEFINE_integer, "process_id", None, "This process's id for jax.distributed.initialize.")
DISTRIBUTED = define(flags.DEFINE_bool, "distributed", False,
                     "Call jax.distributed.initialize() with the cluster's own settings (TPU pods, multi-host GPUs).")


def distributed() -> bool:
  """Whether this run is multi-process (``--coordinator_address`` or ``--distributed``)."""
  return bool(COORDINATOR.value or DISTRIBUTED.value)


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize with the flags above: explicit (``--coordinator_address``, ...) or
  detected from the cluster (``--distributed``)."""
  if COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                               process_id=PROCESS_ID.value)
  elif DISTRIBUTED.value:
    jax.distributed.initialize()
