"""mergejax-study: the paper's study as one command (resumable).

  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny

Builds the embedded world if it is not cached, runs every (cell, method) that has no row yet, and
writes DIR/report.md, CSVs and plots. Kill it at any moment and run it again to continue.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from mergejax import cli
from mergejax.cli import common

_CONFIG = common.define(config_flags.DEFINE_config_file, "config", None, "Study configuration (configs/study_*.py).",
                                          lock_config=True)
_WORKDIR = common.define(flags.DEFINE_string, "workdir", None, "Where the world, results and report go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() first (TPU pods, multi-host GPUs).")
flags.mark_flags_as_required(["config", "workdir"])


def host_devices(requested: int) -> int:
  """How many CPU devices evaluation is split over: ``requested``, or for 0 one per core (at most 8).

  XLA:CPU runs one program at a time per device and the study's models are small, so one device per
  core evaluates ~1.3-1.4x faster than one device using every core; merges still run on one device.
  A device count already forced through XLA_FLAGS (as in the tests) is left alone.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return 1
  if requested:
    return max(1, int(requested))  # a negative count is reported by the study's config check
  return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  else:
    n = host_devices(_CONFIG.value.get("cpu_devices", 1))
    if n > 1:  # before the backend starts; the CPU backend is only the default where there is no accelerator
      jax.config.update("jax_num_cpu_devices", n)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from mergejax.study import report as report_lib  # pylint: disable=g-import-not-at-top
  from mergejax.study import runner  # pylint: disable=g-import-not-at-top
  cfg = _CONFIG.value
  try:
    path = runner.run_study(cfg, _WORKDIR.value, progress=cfg.progress)
  except runner.StudyConfigError as e:
    print(f"mergejax-study: bad configuration: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    print(f"\nReport: {path}\n")
    print(report_lib.summary_table(path))


def run():
  cli.run_main(main)


if __name__ == "__main__":
  run()
