"""The world builder: layout, loadable orbax checkpoints, skipping complete models, never taking a
half-written one for complete, and the command-line entry points."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from mergejax import models, world
from mergejax.training import recipes

import toy_tasks

REPO = pathlib.Path(__file__).resolve().parents[1]
CATS = toy_tasks.CATEGORIES
FAST = {r: {"steps": 2} for r in ("pretrain", "instruction_tune", "expert", "multitask")}
KW = dict(categories=CATS, mixture_prefix="mjtoy", recipe_overrides=FAST, batch_size=8,
          feature_lengths={"inputs": 24, "targets": 24}, progress=False,
          model_overrides={"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64})


def test_checkpoint_path_layout(tmp_path):
  assert world.checkpoint_path(tmp_path, "xs", "pretrained", "base") == tmp_path / "xs/pretrained/base"
  assert (world.checkpoint_path(tmp_path, "s", "instruction_tuned", "expert", "topic")
          == tmp_path / "s/instruction_tuned/experts/topic")
  assert world.checkpoint_path(tmp_path, "xs", "pretrained", "multitask") == tmp_path / "xs/pretrained/multitask"
  with pytest.raises(ValueError, match="unknown kind"):
    world.checkpoint_path(tmp_path, "xs", "chat", "base")


def test_multitask_budget_matches_the_experts(tmp_path):
  """The multitask baseline trains as many steps as all category experts together, on their schedule."""
  def mt(**over):
    runs = world.plan(tmp_path, ("xs",), kinds=("pretrained",), recipe_overrides=over)
    return next(r for r in runs if r.recipe == "multitask"), next(r for r in runs if r.recipe == "expert")
  m, e = mt()
  n = len(world.heldin_categories())
  assert m.steps == n * e.steps == n * recipes.defaults("expert", "xs")["steps"]
  assert (m.opt.lr, m.opt.min_lr_ratio, m.opt.warmup_steps) == (e.opt.lr, e.opt.min_lr_ratio, n * e.opt.warmup_steps)
  m, e = mt(expert={"steps": 10, "lr": 1e-3})
  assert (m.steps, m.opt.lr) == (n * 10, 1e-3)
  m, _ = mt(expert={"steps": 10}, multitask={"steps": 7})
  assert m.steps == 7  # an explicit multitask budget wins


def test_expert_budgets_per_size_and_their_matched_multitask_baselines(tmp_path):
  """Each size's experts take their size's defaults; an override applies to every size."""
  runs = world.plan(tmp_path, ("xs", "s"), kinds=("pretrained",))
  n = len(world.heldin_categories())
  for size in ("xs", "s"):
    e = next(r for r in runs if r.recipe == "expert" and r.model.name == size)
    m = next(r for r in runs if r.recipe == "multitask" and r.model.name == size)
    want = recipes.defaults("expert", size)
    assert (e.steps, e.opt.lr, e.opt.warmup_steps) == (want["steps"], want["lr"], want["warmup_steps"])
    assert (m.steps, m.opt.lr) == (n * e.steps, e.opt.lr)
  xs, s = (next(r for r in runs if r.recipe == "expert" and r.model.name == z) for z in ("xs", "s"))
  assert (xs.steps, xs.opt.lr) != (s.steps, s.opt.lr)
  over = world.plan(tmp_path, ("xs", "s"), kinds=("pretrained",), recipe_overrides={"expert": {"steps": 7}})
  assert {r.steps for r in over if r.recipe == "expert"} == {7}
  assert {r.steps for r in over if r.recipe == "multitask"} == {7 * n}
  with pytest.raises(ValueError, match="unknown recipe"):
    recipes.defaults("distill", "xs")


def test_tiny_world_builds_loadable_checkpoints_and_skips_complete_ones(tmp_path):
  summary = world.build_world(tmp_path, ("xs",), **KW)
  assert len(summary["runs"]) == 2 + 2 * (len(CATS) + 1)
  st = world.status(tmp_path, ("xs",), categories=CATS)
  assert len(st) == 2 * (len(CATS) + 2) and all(st.values())
  assert json.loads((tmp_path / "world.json").read_text())["runs"][0]["recipe"] == "pretrain"
  listed = yaml.safe_load((tmp_path / "models.yaml").read_text())  # the study's manifest of this world
  assert set(listed) == {"pretrained", "instruction_tuned"} and set(listed["pretrained"]) == {"xs"}
  entry = listed["instruction_tuned"]["xs"]
  assert set(entry["experts"]) == set(CATS)
  assert all(models.is_complete(tmp_path / p) for p in [entry["base"], entry["multitask"], *entry["experts"].values()])
  assert tmp_path / entry["experts"]["copy"] == world.checkpoint_path(tmp_path, "xs", "instruction_tuned", "expert", "copy")
  pt_cfg, pt = models.load_checkpoint(world.checkpoint_path(tmp_path, "xs", "pretrained", "base"))
  _, it = models.load_checkpoint(world.checkpoint_path(tmp_path, "xs", "instruction_tuned", "base"))
  ex_path = world.checkpoint_path(tmp_path, "xs", "instruction_tuned", "expert", "copy")
  ex_cfg, ex = models.load_checkpoint(ex_path)
  assert ex_cfg == pt_cfg and pt_cfg.vocab_size == 384
  assert models.load_info(ex_path)["init"] == str(world.checkpoint_path(tmp_path, "xs", "instruction_tuned", "base"))
  diff = lambda a, b: max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert diff(pt, it) > 0 and diff(it, ex) > 0

  # Damage the world: one expert gone, a directory mergejax did not write in place of another, a stray
  # temporary. The foreign directory is refused by name and left alone; once removed, both are retrained.
  gone = world.checkpoint_path(tmp_path, "xs", "pretrained", "expert", "copy")
  half = world.checkpoint_path(tmp_path, "xs", "pretrained", "expert", "reverse")
  for p in (gone, half):
    shutil.rmtree(p)
  half.mkdir()
  (half / "_CHECKPOINT_METADATA").write_text("{}")
  (half.parent / ".copy.tmp-deadbeef").mkdir()
  assert not models.is_complete(half)
  with pytest.raises(ValueError, match=f"{half}: exists but is not a complete model checkpoint"):
    world.build_world(tmp_path, ("xs",), **KW)
  assert (half / "_CHECKPOINT_METADATA").read_text() == "{}"
  shutil.rmtree(half)
  again = world.build_world(tmp_path, ("xs",), **KW)
  retrained = sorted(r["label"] for r in again["runs"] if not r["skipped"])
  assert "xs/pretrained/expert/reverse" in retrained and set(retrained) <= {
      "xs/pretrained/expert/copy", "xs/pretrained/expert/reverse"}
  assert all(world.status(tmp_path, ("xs",), categories=CATS).values())
  models.load_checkpoint(half)

  # A models.yaml mergejax did not write is refused by name before any work, and left alone.
  (tmp_path / "models.yaml").write_text("pretrained: {}\n")
  with pytest.raises(FileExistsError, match="models.yaml: exists and was not written by mergejax"):
    world.build_world(tmp_path, ("xs",), **KW)
  assert (tmp_path / "models.yaml").read_text() == "pretrained: {}\n"


def test_concurrent_build_is_deterministic_whatever_the_devices(tmp_path):
  """With several devices the builder trains independent runs side by side, one per device; the
  world it builds must be bit-identical to one built run after another on a single device."""
  devs, cats = jax.devices(), CATS[:1]
  kw = dict(KW, categories=cats)
  a = world.build_world(tmp_path / "a", ("xs",), devices=devs[:1], **kw)
  b = world.build_world(tmp_path / "b", ("xs",), devices=devs[5:8], **kw)
  assert a["devices"] == 1 and b["devices"] == 3
  used = {r.get("device") for r in b["runs"]}
  assert len(used) > 1, used  # runs really were spread over several devices
  for key in world.status(tmp_path / "a", ("xs",), categories=cats):
    rel = pathlib.Path(key).relative_to(tmp_path / "a")
    _, pa = models.load_checkpoint(tmp_path / "a" / rel)
    _, pb = models.load_checkpoint(tmp_path / "b" / rel)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), pa, pb)


def _cli(module, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
  return subprocess.run([sys.executable, "-m", f"mergejax.cli.{module}", *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=300)


def test_cli_train_then_build_world(tmp_path):
  common = ["--config.task_module=toy_tasks", "--config.mixture_prefix=mjtoy", "--config.batch_size=8",
            "--config.inputs_length=24", "--config.targets_length=24", "--config.progress=False"]
  r = _cli("train", "--config=configs/train.py", f"--workdir={tmp_path}", "--config.recipe=pretrain",
           "--config.steps=3", "--config.checkpoint_every=2", *common)
  assert r.returncode == 0, r.stderr[-2000:]
  assert models.is_complete(tmp_path / "xs" / "pretrained" / "base")
  assert "checkpoint" not in r.stderr, r.stderr[-2000:]  # orbax's INFO lines stay below the default verbosity
  steps = [f"--config.recipes.{k}.steps=1" for k in FAST]
  r = _cli("build_world", "--config=configs/world.py", f"--workdir={tmp_path}", "--config.sizes=xs",
           "--config.categories=copy", *steps, *common)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "5 trained, 1 already complete" in r.stdout
  assert "checkpoint" not in r.stderr, r.stderr[-2000:]
  assert all(world.status(tmp_path, ("xs",), categories=("copy",)).values())
