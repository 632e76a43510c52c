"""Every command's configuration: a mistyped --config field is one line naming it and the closest real
field, exit status 2, no traceback, before any work."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command,args,line", [
    ("study", ["--config=configs/study_tiny.py", "--workdir=/nonexistent", "--config.grids.ties.lamb=(0.7,)"],
     "mergejax-study: error: unknown config field --config.grids.ties.lamb (did you mean --config.grids.ties.lam?)"),
    ("eval", ["--config=configs/eval.py", "--checkpoint=/nonexistent", "--config.mixturez=heldin"],
     "mergejax-eval: error: unknown config field --config.mixturez (did you mean --config.mixtures?)"),
    ("train", ["--config=configs/train.py", "--workdir=/nonexistent", "--config.stepz=3"],
     "mergejax-train: error: unknown config field --config.stepz (did you mean --config.steps?)"),
    ("build_world", ["--config=configs/world.py", "--workdir=/nonexistent", "--config.recipes.experts.steps=3"],
     "mergejax-build-world: error: unknown config field --config.recipes.experts.steps "
     "(did you mean --config.recipes.expert?)"),
])
def test_a_mistyped_config_field_is_one_line(command, args, line):
  proc = subprocess.run([sys.executable, "-m", f"mergejax.cli.{command}", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == line
  assert "Traceback" not in proc.stderr
