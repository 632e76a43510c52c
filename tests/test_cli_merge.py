"""mergejax-merge / mergejax-inspect: end to end in subprocesses (exit status, one-line errors, no
output left behind, SIGKILL at any point), and every bad-input case through ``merge_checkpoints``."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mergejax.cli import merge as merge_cli
from mergejax.configs import merge as merge_config
from mergejax.checkpoints import SafetensorsSource
from test_checkpoints_fixtures import bits, random_tree, write_hf, write_orbax, write_world

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "merge.py")


def _cli(module, *args, timeout=120, devices=8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", f"mergejax.cli.{module}", *args], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=REPO)


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith("mergejax-")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return write_world(tmp_path_factory.mktemp("world"), n_experts=2)


def test_merge_end_to_end_with_manifest_progress_and_overwrite(world, tmp_path):
  base, experts, trees = world
  out = tmp_path / "merged"
  args = [f"--base={base}", f"--experts={experts[0]},{experts[1]}", f"--output={out}", f"--config={CONFIG}",
          "--config.method.name=ties", "--config.method.density=0.3", "--config.method.scope=tensor",
          "--config.seed=4", "--config.memory_budget_gb=0.00005"]
  r = _cli("merge", *args)
  assert r.returncode == 0, r.stderr
  assert "merge:" in r.stderr and "leaves" in r.stderr  # tqdm bar with leaf counts and bytes
  names = sorted(p.name for p in out.iterdir())
  assert names == ["README.md", "config.json", "generation_config.json", "mergejax_manifest.json", "model.safetensors",
                   "tokenizer_config.json"]
  man = json.loads((out / "mergejax_manifest.json").read_text())
  assert man["method"] == "ties" and man["hparams"]["density"] == 0.3 and man["seed"] == 4
  assert man["leaves"] == len(trees[0]) and man["groups"] > 1 and man["elapsed_s"] > 0
  assert [i["role"] for i in man["inputs"]] == ["base", "expert", "expert"]
  assert all(i["bytes"] > 0 and len(i["sha256_sampled"]) == 64 for i in man["inputs"])
  assert {"mergejax", "jax", "orbax-checkpoint"} <= set(man["versions"])
  import mergejax  # pylint: disable=g-import-not-at-top
  ref = mergejax.merge(trees[0], trees[1:], mergejax.methods.ties(density=0.3, scope="tensor"), seed=4)
  src = SafetensorsSource(out)
  got = src.read(list(ref))
  for k in ref:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]))
  r2 = _cli("merge", *args)
  assert r2.returncode == 1 and _error_lines(r2.stderr) == [
      f"mergejax-merge: error: output path {out} exists (pass --overwrite to replace it)"]
  r3 = _cli("merge", *[a for a in args if not a.startswith("--config.method")], "--overwrite",
            "--config.method.name=task_arithmetic", "--output_format=orbax")
  assert r3.returncode == 0, r3.stderr
  assert (out / "_METADATA").exists() and (out / "config.json").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_one_device_merge_with_persistent_compilation_cache(world, tmp_path):
  """The CLI's usual single-device path (flat chunks) fills the compilation cache on a cold run and
  gives byte-identical output on a warm run; "none" turns the cache off."""
  base, experts, trees = world
  cache = tmp_path / "xla_cache"
  common = [f"--base={base}", f"--experts={experts[0]},{experts[1]}", f"--config={CONFIG}",
            "--config.method.name=task_arithmetic", "--config.method.lam=0.5", "--config.progress=False"]
  outs = []
  for i, cache_flag in enumerate([str(cache), str(cache), "none"]):
    out = tmp_path / f"m{i}"
    r = _cli("merge", *common, f"--output={out}", f"--config.compilation_cache_dir={cache_flag}", devices=1)
    assert r.returncode == 0, r.stderr
    outs.append((out / "model.safetensors").read_bytes())
    if i == 0:
      assert len(list(cache.iterdir())) > 0
  assert outs[0] == outs[1] == outs[2]
  import mergejax  # pylint: disable=g-import-not-at-top
  ref = mergejax.merge(trees[0], trees[1:], mergejax.methods.task_arithmetic(lam=0.5))
  got = SafetensorsSource(tmp_path / "m0").read(list(ref))
  for k in ref:
    np.testing.assert_array_equal(bits(got[k]), bits(ref[k]))


@pytest.mark.parametrize("case", ["missing", "hparam", "nan"])
def test_bad_input_exits_nonzero_with_one_line(world, tmp_path, case):
  base, experts, trees = world
  exp = [str(e) for e in experts]
  extra = []
  if case == "missing":
    exp[1] = str(tmp_path / "nope")
    want = f"mergejax-merge: error: {tmp_path / 'nope'}: no such file or directory"
  elif case == "hparam":
    extra = ["--config.method.density=1.5"]
    want = "mergejax-merge: error: ties: hyperparameter density=1.5 is out of range: allowed (0.0, 1.0]"
  else:
    t = dict(trees[1])
    t["lm_head.weight"] = t["lm_head.weight"].copy()
    t["lm_head.weight"][0, 0] = np.inf
    exp[1] = str(write_hf(tmp_path / "naned", t))
    want = (f"mergejax-merge: error: {exp[1]}: leaf 'lm_head.weight' contains NaN or Inf "
            "(set --config.allow_nonfinite=True to merge anyway)")
  out = tmp_path / "out"
  r = _cli("merge", f"--base={base}", f"--experts={','.join(exp)}", f"--output={out}", f"--config={CONFIG}",
           "--config.method.name=ties", *extra)
  assert r.returncode == 1
  assert _error_lines(r.stderr) == [want]
  assert not out.exists() and not list(tmp_path.glob(".out*"))


def _cfg(**kw):
  cfg = merge_config.get_config()
  cfg.progress = False
  for k, v in kw.items():
    node = cfg
    *parents, leaf = k.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return cfg


def _bad_world(tmp_path, case):
  base = random_tree(0)
  e = dict(random_tree(1, base=base))
  b = write_hf(tmp_path / "base", base)
  if case == "missing_leaf":
    del e["model.norm.weight"]
    return b, write_hf(tmp_path / "e", e), "e: leaf 'model.norm.weight' is in"
  if case == "extra_leaf":
    e["model.extra"] = e["model.norm.weight"]
    return b, write_hf(tmp_path / "e", e), "e: leaf 'model.extra' is in"
  if case == "shape":
    e["lm_head.weight"] = e["lm_head.weight"][:32]
    return b, write_hf(tmp_path / "e", e), "e: leaf 'lm_head.weight' has shape (32, 16)"
  if case == "dtype":  # float leaves of mixed dtypes merge (float32 math); integer ones must agree
    e["model.rotary.inv_freq_count"] = e["model.rotary.inv_freq_count"].astype(np.int64)
    return b, write_hf(tmp_path / "e", e), "e: leaf 'model.rotary.inv_freq_count' has dtype int64"
  if case == "truncated":
    p = write_hf(tmp_path / "e", e)
    f = p / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    return b, p, "model.safetensors: truncated: tensor"
  if case == "corrupt_index":
    p = write_hf(tmp_path / "e", e, shards=2)
    (p / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    return b, p, "model.safetensors.index.json: corrupt safetensors index"
  if case == "unknown_format":
    p = tmp_path / "e"
    p.mkdir()
    (p / "model.gguf").write_bytes(b"\0" * 16)
    return b, p, "e: unknown checkpoint format"
  if case == "not_torch":
    p = tmp_path / "e"
    p.mkdir()
    (p / "pytorch_model.bin").write_bytes(b"\0" * 16)
    return b, p, "pytorch_model.bin: not a torch checkpoint (not a zip archive)"
  if case == "inside_input":
    return b, write_hf(tmp_path / "e", e), "is inside input"
  raise ValueError(case)


@pytest.mark.parametrize("case", ["missing_leaf", "extra_leaf", "shape", "dtype", "truncated", "corrupt_index",
                                  "unknown_format", "not_torch", "inside_input"])
def test_bad_inputs_named_and_nothing_written(tmp_path, case):
  b, e, msg = _bad_world(tmp_path, case)
  out = (b / "merged") if case == "inside_input" else tmp_path / "out"
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  with pytest.raises(Exception) as err:
    merge_cli.merge_checkpoints(str(b), [str(e)], str(out), _cfg(method__name="task_arithmetic"))
  line = merge_cli.error_line(err.value)
  assert msg in line and "\n" not in line
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_bad_config_values(world, tmp_path):
  base, experts, _ = world
  for kw, msg in [({"dtype": "int8"}, "must be a floating dtype"), ({"memory_budget_gb": -1.0}, "must be > 0"),
                  ({"method__name": "nope"}, "unknown merge method 'nope'"),
                  ({"method__name": "average", "method__density": 0.5},
                   "unknown hyperparameter 'density' for merge method 'average' \\(allowed: weights\\)"),
                  ({"method__densty": 0.5}, "unknown hyperparameter 'densty' for merge method 'ties': did you mean 'density'"),
                  ({"memory_budet_gb": 1.0}, "unknown config field 'memory_budet_gb': did you mean 'memory_budget_gb'"),
                  ({"method__weights": (1, 2, 3)}, "weights has 3 entries but there are 2 experts")]:
    with pytest.raises(ValueError, match=msg):
      merge_cli.merge_checkpoints(str(base), [str(x) for x in experts], str(tmp_path / "o"), _cfg(**kw))
  assert list(tmp_path.iterdir()) == []


def test_sigkill_at_any_point_leaves_no_complete_output(tmp_path):
  """Kill a running merge at several moments: the destination either does not exist or is the whole
  output (a kill after the atomic rename that completes it), byte for byte; a rerun succeeds."""
  big = {f"model.layers.{i}.w": np.random.default_rng(i).standard_normal((256, 256)).astype(np.float32)
         for i in range(24)}
  base = write_hf(tmp_path / "b", big)
  ex = [write_hf(tmp_path / f"e{j}", {k: v + 0.01 * j for k, v in big.items()}) for j in (1, 2)]
  out = tmp_path / "out"
  args = [sys.executable, "-m", "mergejax.cli.merge", f"--base={base}", f"--experts={ex[0]},{ex[1]}",
          f"--output={out}", f"--config={CONFIG}", "--config.method.name=ties", "--config.method.scope=global",
          "--config.memory_budget_gb=0.002", "--config.progress=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  ref = tmp_path / "ref"
  r = subprocess.run([f"--output={ref}" if a == f"--output={out}" else a for a in args], env=env, cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  whole = {f.name: f.read_bytes() for f in ref.glob("*.safetensors")}
  assert whole
  partial = tmp_path / ".out.mergejax-partial"
  for delay in (0.0, 0.3, 1.0):
    p = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not partial.exists() and p.poll() is None and time.time() - t0 < 60:
      time.sleep(0.01)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if out.exists():  # the merge had completed its output (renamed into place) before the kill
      assert not partial.exists() and (out / "mergejax_manifest.json").exists(), f"partial output at +{delay}s"
      assert {f.name: f.read_bytes() for f in out.glob("*.safetensors")} == whole, f"incomplete output at +{delay}s"
      shutil.rmtree(out)
  r = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert out.exists() and not partial.exists()
  assert (out / "mergejax_manifest.json").exists()
  assert {f.name: f.read_bytes() for f in out.glob("*.safetensors")} == whole


def test_inspect_tree_and_differences(world, tmp_path):
  base, experts, trees = world
  r = _cli("inspect", str(base))
  assert r.returncode == 0
  assert "lm_head.weight" in r.stdout and "[64, 16]" in r.stdout and "bfloat16" in r.stdout
  total = sum(v.nbytes for v in trees[0].values())
  assert f"total: {len(trees[0])} leaves" in r.stdout and f"{total:,} bytes" in r.stdout
  e = dict(trees[1])
  del e["model.norm.weight"]
  e["lm_head.weight"] = e["lm_head.weight"].astype(np.float32)
  e["model.new"] = np.zeros((2,), np.float32)
  other = write_hf(tmp_path / "o", e)
  r = _cli("inspect", "--values", str(base), str(other))
  assert r.returncode == 1
  lines = r.stdout.splitlines()
  assert f"{other}: missing leaf 'model.norm.weight' (in {base})" in lines
  assert f"{other}: extra leaf 'model.new' (not in {base})" in lines
  assert f"{other}: leaf 'lm_head.weight' has dtype float32, {base} has bfloat16" in lines
  assert any(l.startswith(f"{other}: leaf 'model.embed_tokens.weight' values differ") for l in lines)
  r = _cli("inspect", str(base), str(base))
  assert r.returncode == 0 and "no differences" in r.stdout
