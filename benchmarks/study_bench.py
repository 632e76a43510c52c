"""Times the default study (configs/study_tiny.py): once from nothing (world build + study) and once
with the world already built (a new results directory over the same world).

  python benchmarks/study_bench.py --workdir=runs/study_bench [--config_overrides=--config.sizes=xs]
  python benchmarks/study_bench.py --workdir=runs/study_bench --world_dir=/path/to/built/world  # 2nd only

Prints and writes (--out_json) the two budget figures, ``from_nothing_s`` (world build + study) and
``world_built_s`` (the study over the built world, in a new results directory), with the machine and
load; the budget is <= 15 min (900 s) from nothing and <= 6 min (360 s) with the world built.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "runs/study_bench", "Scratch directory (emptied first).")
_OUT = flags.DEFINE_string("out_json", None, "Write the results here as JSON.")
_OVERRIDES = flags.DEFINE_list("config_overrides", [], "Extra --config.x=y flags for mergejax-study.")
_WORLD = flags.DEFINE_string("world_dir", None, "An already built world: time only the world-built run.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _study(workdir: pathlib.Path, world_dir: pathlib.Path, extra: list[str]) -> float:
  cmd = [sys.executable, "-m", "mergejax.cli.study", f"--config={REPO / 'configs' / 'study_tiny.py'}",
         f"--workdir={workdir}", f"--config.world_dir={world_dir}", "--config.progress=False", *extra]
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  return time.perf_counter() - t0


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value).absolute()
  shutil.rmtree(root, ignore_errors=True)
  if _WORLD.value:
    world, cold = pathlib.Path(_WORLD.value).absolute(), None
  else:
    world = root / "world"
    cold = _study(root / "cold", world, _OVERRIDES.value)
  warm = _study(root / "warm", world, [*_OVERRIDES.value, "--config.build_world=False"])
  result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_avg_1m": os.getloadavg()[0], "from_nothing_s": cold, "world_built_s": warm,
            "within_budget": {"from_nothing": None if cold is None else cold <= 900, "world_built": warm <= 360},
            "budget_from_nothing_s": 900, "budget_world_built_s": 360, "overrides": _OVERRIDES.value}
  print(json.dumps(result, indent=2))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
