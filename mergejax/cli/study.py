"""mergejax-study: the paper's study as one command (resumable).

  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny

Builds the embedded world if it is not cached, runs every (cell, method) that has no row yet, and
writes DIR/report.md, CSVs and plots. Kill it at any moment and run it again to continue.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mergejax import cli
from mergejax import sharding
from mergejax.cli import common

_CONFIG = common.define(config_flags.DEFINE_config_file, "config", None, "Study configuration (configs/study_*.py).",
                        lock_config=True)
_WORKDIR = common.define(flags.DEFINE_string, "workdir", None, "Where the world, results and report go.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  logging.set_verbosity(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  cfg = _CONFIG.value
  if common.distributed():
    common.maybe_initialize_distributed()
  else:  # evaluation batches side by side, one per core (before JAX starts its CPU backend)
    sharding.split_host_cpu(max(0, int(cfg.get("cpu_devices", 0))))
  # TensorFlow and seqio load only once the command runs (a fast --help, quick flag errors).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from mergejax.study import report as report_lib  # pylint: disable=g-import-not-at-top
  from mergejax.study import runner  # pylint: disable=g-import-not-at-top
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
