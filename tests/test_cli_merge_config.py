"""mergejax-merge's configuration: plain values, flags for every hyperparameter of every registered
method (a user's too), one-line errors with a did-you-mean, --help from the schema, and the packaged
default config (the command works from any directory)."""

import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import mergejax
from mergejax.checkpoints import SafetensorsSource
from test_checkpoints_fixtures import bits, write_world

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, cwd=REPO, timeout=120):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", "mergejax.cli.merge", *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return write_world(tmp_path_factory.mktemp("world"), n_experts=2)


def _inputs(world):
  base, experts, _ = world
  return [f"--base={base}", f"--experts={experts[0]},{experts[1]}", "--config.progress=False",
          "--config.compilation_cache_dir=none"]


def _check(out, ref):
  got = SafetensorsSource(out).read(list(ref))
  for k in ref:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]), err_msg=k)


def test_rescale_flag_reaches_dare_linear_and_dtype_bfloat16_is_accepted(world, tmp_path):
  _, _, trees = world
  out = tmp_path / "m"
  r = _cli(*_inputs(world), f"--output={out}", "--config.method.name=dare_linear", "--config.method.rescale=False",
           "--config.method.drop_rate=0.5", "--config.method.weights=(1.0,0.5)", "--config.dtype=bfloat16",
           "--config.seed=3", cwd=tmp_path)  # outside the repository: the packaged default config
  assert r.returncode == 0, r.stderr
  man = json.loads((out / "mergejax_manifest.json").read_text())
  assert man["hparams"] == {"drop_rate": 0.5, "lam": 1.0, "rescale": False, "weights": [1.0, 0.5]}
  assert man["dtype"] == "bfloat16"
  method = mergejax.methods.dare_linear(drop_rate=0.5, rescale=False, weights=(1.0, 0.5))
  _check(out, mergejax.merge(trees[0], trees[1:], method, seed=3, dtype=ml_dtypes.bfloat16))


def test_a_method_registered_by_a_users_module_merges_with_its_own_flags(world, tmp_path):
  from tests import user_method  # pylint: disable=g-import-not-at-top,unused-import  (registers largest_delta)
  _, _, trees = world
  out = tmp_path / "m"
  r = _cli(*_inputs(world), f"--output={out}", "--config.modules=tests.user_method",
           "--config.method.name=largest_delta", "--config.method.alpha=0.5", "--config.method.absolute=False")
  assert r.returncode == 0, r.stderr
  man = json.loads((out / "mergejax_manifest.json").read_text())
  assert man["method"] == "largest_delta" and man["hparams"] == {"alpha": 0.5, "absolute": False}
  assert man["executor"]["name"] == "flat_chunk"  # elementwise by its traits: the flat-chunk path
  _check(out, mergejax.merge(trees[0], trees[1:], mergejax.methods.get("largest_delta", alpha=0.5, absolute=False)))
  r = _cli(*_inputs(world), f"--output={tmp_path / 'x'}", "--config.modules=tests.user_method",
           "--config.method.name=largest_delta", "--config.method.alpha=3")
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      "mergejax-merge: error: largest_delta: hyperparameter alpha=3 is out of range: allowed [0.0, 2.0]")


@pytest.mark.parametrize("args,line", [
    (["--config.method.densty=0.2"],
     "unknown hyperparameter 'densty' for merge method 'ties': did you mean 'density'?"),
    (["--config.method.name=average", "--config.method.lam=0.5"],
     "unknown hyperparameter 'lam' for merge method 'average' (allowed: weights)"),
    (["--config.memory_budget=1"], "unknown config field 'memory_budget': did you mean 'memory_budget_gb'?"),
    (["--config.method.name=tie"], f"unknown merge method 'tie': choose one of {mergejax.methods.names()}"),
    (["--config.modules=no_such_module_xyz"], "config modules: cannot import 'no_such_module_xyz' "
     "(No module named 'no_such_module_xyz')"),
])
def test_config_mistakes_are_one_line_without_traceback(world, tmp_path, args, line):
  r = _cli(*_inputs(world), f"--output={tmp_path / 'm'}", *args)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines() == [f"mergejax-merge: error: {line}"]
  assert list(tmp_path.iterdir()) == []


def test_help_lists_methods_formulas_and_hyperparameters(tmp_path):
  r = _cli("--help", cwd=tmp_path)
  assert r.returncode == 1 and r.stderr == ""  # absl's --help exits with status 1
  out = r.stdout
  for name in ("average", "task_arithmetic", "ties", "dare_linear", "dare_ties"):
    assert f"  {name}: {mergejax.methods.formula(name)}" in out
  assert "rescale: bool, True or False, default True." in out
  assert "density: float, (0.0, 1.0], default 0.2." in out
  assert "--base:" in out and "--experts:" in out  # still absl's help, with the flags


def test_config_files_are_plain_values():
  from mergejax.configs import merge as packaged  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO))
  try:
    from configs import merge as repo_config  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(REPO))
  cfg = packaged.get_config()
  assert cfg.to_dict() == repo_config.get_config().to_dict()
  assert cfg.method.name in mergejax.methods.names() and isinstance(cfg.modules, tuple)
