"""mergejax-study: the paper's study as one command (resumable).

  mergejax-study --config=configs/study_tiny.py --workdir=runs/tiny

Builds the embedded world if it is not cached, runs every (cell, method) that has no row yet, and
writes DIR/report.md, CSVs and plots. Kill it at any moment and run it again to continue.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mergejax.cli import common

_CONFIG = common.define(config_flags.DEFINE_config_file, "config", None, "Study configuration (configs/study_*.py).",
                                          lock_config=True)
_WORKDIR = common.define(flags.DEFINE_string, "workdir", None, "Where the world, results and report go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() first (TPU pods, multi-host GPUs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=g-import-not-at-top
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
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
  app.run(main)


if __name__ == "__main__":
  run()
