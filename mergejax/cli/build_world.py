"""mergejax-build-world: train the embedded world's bases, experts and multitask baselines."""

from __future__ import annotations

import importlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mergejax import cli
from mergejax import sharding
from mergejax.cli import common

_CONFIG = common.define(config_flags.DEFINE_config_file, "config", None, "World config (configs/world.py).",
                        lock_config=True)
_WORKDIR = common.define(flags.DEFINE_string, "workdir", None, "Where the world is built (resumable).")


def main(argv) -> int:
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; --verbosity=0 shows them
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  if cfg is None or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  if not common.distributed():
    sharding.split_host_cpu(cfg.cpu_devices)  # before JAX starts its CPU backend
  common.maybe_initialize_distributed()
  # TensorFlow and seqio load only once the command runs (a fast --help, quick flag errors).
  from mergejax import world  # pylint: disable=g-import-not-at-top
  from mergejax.training import recipes  # pylint: disable=g-import-not-at-top
  try:
    if cfg.task_module:
      importlib.import_module(cfg.task_module)
    summary = world.build_world(
        _WORKDIR.value, tuple(cfg.sizes), kinds=tuple(cfg.kinds), categories=tuple(cfg.categories) or None,
        multitask=cfg.multitask, recipe_overrides={r: dict(cfg.recipes[r]) for r in recipes.RECIPES},
        batch_size=cfg.batch_size, feature_lengths={"inputs": cfg.inputs_length, "targets": cfg.targets_length},
        seed=cfg.seed, mixture_prefix=cfg.mixture_prefix, checkpoint_every=cfg.checkpoint_every,
        progress=cfg.progress)
  except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
    print(f"mergejax-build-world: error: {cli.message(e)}", file=sys.stderr)
    return 1
  trained = [r for r in summary["runs"] if not r.get("skipped")]
  print(f"{_WORKDIR.value}: {len(trained)} trained, {len(summary['runs']) - len(trained)} already "
        f"complete, {summary['seconds']:.0f} s")
  return 0


def run():
  cli.run_main(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  run()
