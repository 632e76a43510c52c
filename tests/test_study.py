"""The study runner: grid, start-up validation, split safety, resumability, the report, and the
same results from 2 processes (jax.distributed on localhost) as from 1."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import seqio
from absl import flags
from ml_collections import config_flags

import mergejax
from mergejax import data_merge, evaluation, expert_data, methods, models, world
from mergejax.configs import study as study_config_lib
from mergejax.study import grid, report, runner
from mergejax.study.candidates import CandidateMerger
from mergejax.evaluation.leak_guard import SplitGuard
from mergejax.study import store as store_lib
from mergejax.study import verdicts

import conftest
import test_eval  # compiles(): XLA compilations while a function runs

REPO = pathlib.Path(__file__).resolve().parents[1]
CATS = conftest.STUDY_CATEGORIES
TIMING_KEYS = {"merge_s", "select_eval_s", "test_eval_s", "study_s"}  # wall times differ between runs


def study_config(world_dir, **over):
  cfg = study_config_lib.get_config()
  cfg.kinds, cfg.sizes, cfg.categories = ("instruction_tuned",), ("xs",), CATS
  cfg.num_experts, cfg.subset_seeds = (1, 2), 2
  cfg.methods = ("average", "ties", "dare_ties")
  cfg.grids.ties = dict(density=(0.5,), lam=(0.5, 1.0))
  cfg.grids.dare_ties = dict(drop_rate=(0.5,), lam=(1.0,))
  cfg.world_dir, cfg.build_world, cfg.progress, cfg.eval_batch_size = str(world_dir), False, False, 32
  cfg.heldout_suite = "heldout_nli"  # one held-out category (2 tasks) keeps each run short; end to end uses all
  cfg.verdicts.n_boot = 200  # the report's bootstrap, small for speed
  for k, v in over.items():
    cfg[k] = v
  return cfg


@pytest.fixture
def tiny_world(study_world):
  return study_world  # conftest.study_world: CATS, TINY_MODEL


def merge_rows(workdir):
  rows = {}
  for p in sorted((pathlib.Path(workdir) / "results" / "rows").glob("*.json")):
    row = json.loads(p.read_text())
    rows[row["key"]] = {k: v for k, v in row.items() if k not in TIMING_KEYS}
  return rows


# ------------------------------------------------------------------------------------------ the grid


def test_cells_subsets_and_full_set_seeds():
  cats = tuple(f"c{i}" for i in range(8))
  cells = grid.cells(["pretrained"], ["xs"], [2, 8], 3, cats)  # balanced: 3 seeds round up to 4 pairs at N=2
  assert [c.n for c in cells] == [2, 2, 2, 2, 8, 8, 8]
  pairs = [c.categories for c in cells if c.n == 2]
  assert sorted(sum(pairs, ())) == sorted(cats)  # 4 disjoint pairs: every category once
  assert all(c.categories == cats for c in cells if c.n == 8)
  methods = ["average", "ties", "dare_ties"]
  assert grid.runs_in_cell(cells[4], methods, 8) == methods  # N=8, seed 0: everything
  assert grid.runs_in_cell(cells[5], methods, 8) == ["dare_ties"]  # N=8, seed 1: only random methods
  random = grid.cells(["pretrained"], ["xs"], [2, 8], 3, cats, design="random")  # the paper's random draws
  assert [c.n for c in random] == [2, 2, 2, 8, 8, 8]
  assert len({c.categories for c in random if c.n == 2}) == 3  # seeds draw different subsets
  assert grid.expert_subset(cats, 2, 1) == grid.expert_subset(cats, 2, 1)
  with pytest.raises(ValueError, match="unknown design 'latin'"):
    grid.cells(["pretrained"], ["xs"], [2], 3, cats, design="latin")


def test_grid_candidates_and_validation():
  assert grid.candidates("ties", {"lam": (1, 2), "density": (0.2,)}) == [
      {"density": 0.2, "lam": 1}, {"density": 0.2, "lam": 2}]
  assert grid.candidates("ties", {"density": 0.3}) == [{"density": 0.3}]  # a single value stands for itself
  assert grid.candidates("average", {}) == [{}]
  with pytest.raises(ValueError, match="density=1.5 is out of range"):
    grid.candidates("ties", {"density": (1.5,)})


def test_command_line_overrides_reach_the_study(tmp_path, monkeypatch):
  argv = ["mergejax-study", f"--config={REPO / 'configs' / 'study_tiny.py'}", "--config.grids.ties.lam=(0.7,1.0)",
          "--config.methods=ties", "--config.sizes=(\"s\",)", "--config.num_experts=(2,8)",
          "--config.world_steps.expert=5"]
  monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True)
  fv(argv)
  spec = runner.validate(fv.config, tmp_path)
  assert spec.methods == ("ties",) and spec.sizes == ("s",) and spec.ns == (2, 8)
  assert spec.grids["ties"] == [{"density": 0.2, "lam": 0.7}, {"density": 0.2, "lam": 1.0}]
  assert spec.world_steps == {"expert": 5}


@pytest.mark.parametrize("override,message", [
    ({"methods": ("average", "frankenmerge")}, "unknown merge method 'frankenmerge'"),
    ({"methods": ("average,ties",)}, "unknown merge method 'average,ties'"),
    ({"sizes": ("xs", "huge")}, "unknown model size 'huge'"),
    ({"num_experts": (2, 9)}, "num_experts 9 is out of range: there are 2 experts per base"),
    ({"num_experts": ("2",)}, r"num_experts=\('2',\): expected a tuple of int values"),
    ({"grids.ties": dict(density=(0.0,))}, r"grids.ties: ties: hyperparameter density=0.0 is out of range"),
    ({"methods": ("average", "slerp")}, r"methods: slerp: merges at most 1 expert, got 2 \(num_experts=\(1, 2\)\)"),
    ({"methods": ("regmean",), "merge_data.split": "test"}, r"merge_data.split='test' is the test split: regmean"),
    ({"merge_data.batches": 0}, r"merge_data: batches=0 must be a positive integer"),
    ({"kinds": ("chat",)}, "unknown base kind 'chat'"),
    ({"cpu_devices": -1}, r"cpu_devices=-1 must be >= 0"),
    ({"world_steps.expert": 0}, r"world_steps.expert=0 must be a positive integer"),
    ({"design": "latin"}, r"design='latin': choose from \('balanced', 'random'\)"),
    ({"verdicts.margin": -0.1}, r"verdicts: min_effect and margin must be >= 0"),
    ({"world_seeds": (0, 0)}, r"world_seeds=\(0, 0\): expected distinct seeds >= 0, the first 0"),
    ({"mesh": dict(data=16, model=1)}, r"mesh=\{'data': 16, 'model': 1\} needs 16 devices, there are 8"),
    ({"mesh": dict(data=-1, model=3)}, r"8 devices are not a multiple of 3"),
    ({"mesh": dict(fsdp=-1)}, r"needs a 'data' axis"),
    ({"task_vector_dtype": "float16"}, r"task_vector_dtype='float16': choose from \('float32', 'bfloat16'\)"),
])
def test_bad_configurations_fail_at_start_up(tmp_path, override, message):
  cfg = study_config(tmp_path / "no-world", build_world=True)
  for k, v in override.items():
    if "." in k:
      group, field = k.split(".", 1)
      cfg[group][field] = v
    else:
      cfg[k] = v
  with pytest.raises(runner.StudyConfigError, match=message):
    runner.validate(cfg, tmp_path)


def test_missing_checkpoint_fails_at_start_up(tmp_path):
  with pytest.raises(runner.StudyConfigError, match=r"missing checkpoint .*xs/instruction_tuned/base"):
    runner.validate(study_config(tmp_path / "empty"), tmp_path)


def test_world_build_time_survives_a_resume(tmp_path):
  spec = runner.validate(study_config(tmp_path / "w", build_world=True), tmp_path)
  store = store_lib.ResultsStore(tmp_path / "results")
  assert runner.world_build_seconds(store, spec, 0.2, trained=False) is None  # built elsewhere: no record
  assert runner.world_build_seconds(store, spec, 300.0, trained=True) == 300.0
  assert runner.world_build_seconds(store, spec, 0.3, trained=False) == 300.0  # a resume keeps the build time
  assert runner.world_build_seconds(store, spec, 50.0, trained=True) == 350.0  # a killed build finished later
  other = runner.validate(study_config(tmp_path / "w", build_world=True, categories=("topic",), num_experts=(1,)),
                          tmp_path)
  assert runner.world_build_seconds(store, other, 0.1, trained=False) is None  # another world


def test_world_build_time_of_the_runs_a_killed_build_finished_is_kept(tmp_path, monkeypatch):
  cfg = study_config(tmp_path / "w", build_world=True)

  def killed_build(*args, on_run_done, **kw):  # two runs finish, then the process is interrupted
    del args, kw
    for _ in range(2):
      time.sleep(0.05)
      on_run_done()
    raise KeyboardInterrupt
  monkeypatch.setattr(runner.world_lib, "build_world", killed_build)
  with pytest.raises(KeyboardInterrupt):
    runner.run_study(cfg, tmp_path / "study", progress=False)
  spec = runner.validate(cfg, tmp_path / "study")
  store = store_lib.ResultsStore(tmp_path / "study" / "results")
  kept = runner.world_build_seconds(store, spec, 0.0, trained=False)
  assert kept is not None and kept >= 0.1


# ------------------------------------------------------------------------------------ end to end


def test_world_seeds_add_worlds_as_the_top_bootstrap_level(tiny_world, tmp_path):
  second = runner.world_dir_for(tiny_world, 1)
  assert second == tiny_world.with_name(tiny_world.name + "_seed1")
  world.build_world(second, ("xs",), kinds=("instruction_tuned",), categories=CATS, multitask=False, seed=1,
                    recipe_overrides={r: {"steps": 2} for r in ("pretrain", "instruction_tune", "expert")},
                    batch_size=8, feature_lengths={"inputs": 96, "targets": 32}, progress=False,
                    model_overrides=conftest.TINY_MODEL)
  cfg = study_config(tiny_world, methods=("average",), num_experts=(2,), subset_seeds=1, multitask=False,
                     world_seeds=(0, 1))
  path = runner.run_study(cfg, tmp_path / "two", progress=False)
  rows = merge_rows(tmp_path / "two")
  merges = {k: v for k, v in rows.items() if v.get("type") == "merge"}
  assert sorted(k.split("/")[0] for k in merges) == ["seed0", "seed1"]
  assert {v["world"] for v in rows.values() if v.get("type") in ("merge", "reference")} == {"seed0", "seed1"}
  a, b = (merges[f"{w}/merge/instruction_tuned/xs/n2/s0/average"] for w in ("seed0", "seed1"))
  assert a["heldin_test"] != b["heldin_test"]  # trained with another seed: another world
  assert "worlds: 2;" in path.read_text()
  one = runner.run_study(study_config(tiny_world, methods=("average",), num_experts=(2,), subset_seeds=1,
                                      multitask=False), tmp_path / "one", progress=False)
  assert "worlds: 1 (training-seed variance absent: set world_seeds to measure it)" in one.read_text()


def test_study_end_to_end_resumes_after_a_kill_and_never_reads_test_during_selection(tiny_world, tmp_path,
                                                                                      monkeypatch):
  cfg = study_config(tiny_world, heldout_suite="heldout")  # every held-out category: per-category normalization
  # A run that dies after two merge rows...
  calls = {"n": 0}
  original = runner.run_cell_method

  def dying(*args, **kwargs):
    if calls["n"] == 2:
      raise KeyboardInterrupt("killed")
    calls["n"] += 1
    return original(*args, **kwargs)

  monkeypatch.setattr(runner, "run_cell_method", dying)
  with pytest.raises(KeyboardInterrupt):
    runner.run_study(cfg, tmp_path / "resumed", progress=False)
  partial = merge_rows(tmp_path / "resumed")
  assert sum(k.startswith("merge/") for k in partial) == 2

  # ...then continues without recomputing finished rows, recording what the data pipeline reads: every
  # split seqio loads and every split scored, and whether a selection was open at that moment.
  monkeypatch.setattr(runner, "run_cell_method", original)
  guard, loads, scored = SplitGuard(), [], []
  get_dataset, evaluate = seqio.Task.get_dataset, evaluation.Evaluator.evaluate

  def loading(self, *args, **kwargs):
    split = kwargs.get("split", args[1] if len(args) > 1 else None)
    loads.append((self.name, split, guard.selection_open))
    return get_dataset(self, *args, **kwargs)

  def scoring(self, *args, **kwargs):
    scored.append((self.split, guard.selection_open))
    return evaluate(self, *args, **kwargs)

  monkeypatch.setattr(seqio.Task, "get_dataset", loading)
  monkeypatch.setattr(evaluation.Evaluator, "evaluate", scoring)
  path = runner.run_study(cfg, tmp_path / "resumed", progress=False, guard=guard)
  resumed = merge_rows(tmp_path / "resumed")
  for k, v in partial.items():
    assert resumed[k] == v
  assert {split for _, split, _ in loads} == {"validation", "test"}  # both splits were read...
  assert all(split == "validation" for _, split, during in loads if during)  # ...test never during a selection
  assert ("validation", True) in scored and ("test", False) in scored
  assert all(split == "validation" for split, during in scored if during)
  assert all(split == "validation" for _, split, during in guard.reads if during)

  # An uninterrupted run gives identical rows.
  monkeypatch.setattr(seqio.Task, "get_dataset", get_dataset)
  monkeypatch.setattr(evaluation.Evaluator, "evaluate", evaluate)
  runner.run_study(cfg, tmp_path / "straight", progress=False)
  assert merge_rows(tmp_path / "straight") == resumed

  # Rows: N=1: 2 balanced subsets (one category each) x 3 methods; N=2 (all experts): 3 methods for
  # seed 0, dare_ties for seed 1.
  merges = [v for k, v in resumed.items() if k.startswith("merge/")]
  assert len(merges) == 6 + 3 + 1
  assert sorted(tuple(v["categories"]) for v in merges if v["n"] == 1 and v["method"] == "ties") == [
      ("sentiment",), ("topic",)]
  ties = next(v for v in merges if v["method"] == "ties" and v["n"] == 2)
  assert len(ties["candidates"]) == 2 and all(c["validation"] is not None for c in ties["candidates"])
  assert ties["hparams"] in [c["hparams"] for c in ties["candidates"]]
  best = max(ties["candidates"], key=lambda c: c["validation"])
  assert ties["hparams"] == best["hparams"]
  # The normalized scores are the paper's: per category, the mean over its tasks of merged / expert
  # (held-in: the merged experts' categories) or merged / base (held-out); then the mean over categories.
  refs = {k: v for k, v in resumed.items() if k.startswith("ref/")}
  for v in merges:
    ref = lambda role: refs[f"ref/{v['kind']}/{v['size']}/{role}"]
    ratio = lambda scores, den: {t: s / den[t] for t, s in scores.items()}
    hi = ratio(v["heldin_test"], {t: s for c in v["categories"] for t, s in ref(f"expert/{c}")["heldin_test"].items()})
    ho = ratio(v["heldout_test"], ref("base")["heldout_test"])
    by_cat = lambda r: [np.mean([x for t, x in r.items() if v["task_categories"][t] == c])
                        for c in sorted({v["task_categories"][t] for t in r})]
    assert sorted({v["task_categories"][t] for t in hi}) == sorted(v["categories"])
    assert v["heldin_norm"] == pytest.approx(np.mean(by_cat(hi)), rel=1e-12)
    assert v["heldout_norm"] == pytest.approx(np.mean(by_cat(ho)), rel=1e-12)

  # What the verdicts need: per-example correctness of every test score, chance levels, validation
  # scores of bases and experts, parameter counts read from the checkpoints; every row's fingerprint.
  for v in merges:
    assert set(v["test_correct"]) == set(v["heldin_test"]) | set(v["heldout_test"])
    assert all(100 * c.count("1") / len(c) == pytest.approx(v["heldin_test"].get(t, v["heldout_test"].get(t)))
               for t, c in v["test_correct"].items())
  base = resumed["ref/instruction_tuned/xs/base"]
  assert set(base["heldin_validation"]) == set(base["validation_correct"]) == set(base["validation_chance"])
  base_ckpt = world.checkpoint_path(tiny_world, "xs", "instruction_tuned", "base")
  leaves = jax.tree.leaves(models.load_checkpoint(base_ckpt)[1])
  assert base["params"] == sum(int(np.size(x)) for x in leaves) == models.param_count(models.load_config(base_ckpt))
  assert all(0 < c < 100 for c in base["task_chance"].values())
  assert len({v["fingerprint"] for v in resumed.values()}) == len(resumed)

  # The report: each verdict in bold with its statistic and interval, recomputable from the rows.
  text = path.read_text()
  spec = runner.validate(cfg, tmp_path / "resumed")
  analysis = verdicts.analyze(verdicts.load_rows(tmp_path / "resumed"), spec.verdicts, methods=spec.methods)
  for c in analysis.conclusions:
    assert verdicts.conclusion_line(c) in text
  # The rows alone suffice: they hold the report's verdict settings (n_boot 200 here) and its methods'
  # order, which the rows file's own order does not give.
  for source in (tmp_path / "resumed", path.parent):
    alone = verdicts.analyze(verdicts.load_rows(source))
    assert alone.methods == spec.methods and alone.settings == spec.verdicts
    assert [verdicts.conclusion_line(c) for c in alone.conclusions] == [
        verdicts.conclusion_line(c) for c in analysis.conclusions]
  # The rows file beside the report holds every stored row: a copy of the report's folder suffices.
  canonical = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
  assert canonical(verdicts.load_rows(path.parent / verdicts.ROWS_FILE)) == canonical(
      verdicts.load_rows(tmp_path / "resumed"))
  assert f"{verdicts.ROWS_FILE} (every stored row" in text
  assert "Resampled: worlds: 1" in text and "test examples: resampled per task" in text
  assert "## Experts" in text and "## Hyperparameter grids: choices on an edge" in text
  assert analysis.experts_checked == 2  # instruction_tuned xs: sentiment, topic
  for fig in ("heldin_vs_n.png", "heldout_vs_n.png", "vs_size.png", "methods_at_largest.png",
              "it_vs_pretrained.png"):
    assert (path.parent / fig).stat().st_size > 1000
    assert fig in text
  assert "## The paper's conclusions, checked on this run" in text
  assert (path.parent / "table_heldin.csv").read_text().startswith(
      "base,size,N,average,average_lo,average_hi,ties,ties_lo,ties_hi")
  assert "Larger models are easier to merge" in report.summary_table(path)

  # What a merge depends on beyond its grid changes its fingerprint too, e.g. the task vectors' dtype.
  cell = grid.Cell("instruction_tuned", "xs", 2, 0, ("sentiment", "topic"))
  assert runner.merge_fingerprint(spec, cell, "ties") != runner.merge_fingerprint(
      dataclasses.replace(spec, task_vector_dtype="bfloat16"), cell, "ties")

  # A new grid for one method recomputes that method's rows and reuses every other row.
  cfg.grids.ties = dict(density=(0.5,), lam=(0.7,))
  runner.run_study(cfg, tmp_path / "resumed", progress=False)
  regridded = merge_rows(tmp_path / "resumed")
  for k, v in resumed.items():
    if v.get("method") == "ties":
      assert regridded[k]["fingerprint"] != v["fingerprint"] and regridded[k]["hparams"]["lam"] == 0.7
    else:
      assert regridded[k] == v


def test_data_aware_methods_learn_from_each_merged_experts_own_examples(tiny_world, tmp_path):
  cfg = study_config(tiny_world, methods=("regmean", "fisher", "adamerging"), num_experts=(1, 2), subset_seeds=1)
  cfg.grids.regmean = dict(alpha=(0.5, 0.95))
  cfg.grids.adamerging = dict(granularity=("task", "layer"), lr=(1e-2,), steps=(3,))
  cfg.merge_data.batches, cfg.merge_data.batch_size = 1, 8
  guard = SplitGuard()
  runner.run_study(cfg, tmp_path, progress=False, guard=guard)
  merges = [v for k, v in merge_rows(tmp_path).items() if k.startswith("merge/")]
  assert sorted((v["n"], v["method"]) for v in merges) == sorted(  # N = 1: one cell per category
      [(1, m) for m in cfg.methods] * 2 + [(2, m) for m in cfg.methods])
  assert all(len(v["candidates"]) == 2 for v in merges if v["method"] != "fisher")
  # The experts' training split was read, and never while a selection was open.
  assert "train" in {split for _, split, _ in guard.reads}
  assert all(split == "validation" for _, split, during in guard.reads if during)

  # Each merge equals the library's: the method bound to each expert's own examples, statistics computed
  # for the subset at once (the study caches them per expert), merged, and scored alike.
  spec = runner.validate(cfg, tmp_path)
  ms = runner.load_models(spec, "instruction_tuned", "xs")
  data = expert_data.ExpertExamples(spec.merge_data)
  sources = [spec.heldin(c) for c in CATS]
  data.read(ms.vocabulary, sources)
  fresh = expert_data.ExpertExamples(spec.merge_data)  # read again; with_data below computes without a cache
  fresh.read(ms.vocabulary, sources)
  scorer = runner.Scorer(SplitGuard(), 32, {"test": spec.suites(CATS, heldout=True)}, mesh=spec.device_mesh)
  for row in merges:
    name, cats = row["method"], row["categories"]
    experts = [ms.experts[c] for c in cats]
    method = methods.get(name, **row["hparams"])
    own = fresh.for_experts(ms.adapter, ms.vocabulary, [spec.heldin(c) for c in cats], cats)
    direct = mergejax.merge(ms.base, experts, data_merge.with_data(
        method, own.model, ms.base, experts, own.batches[method.compute_stats.labels]))
    study = runner.cell_data(data, spec, "instruction_tuned", "xs", ms, cats, name)
    merged = CandidateMerger(name, ms.base, experts, None, seed=row["seed"], data=study)(row["hparams"])
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(merged)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    res = scorer(ms, direct, spec.suites(cats, heldout=True), "test")
    assert {**row["heldin_test"], **row["heldout_test"]} == res.task_scores
    if len(cats) == 1:
      continue
    swapped = data_merge.with_data(method, own.model, ms.base, experts, own.batches[method.compute_stats.labels][::-1])
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(direct), jax.tree.leaves(mergejax.merge(ms.base, experts, swapped))))
  # Without labels a position counts only if its input holds no answer token; with labels, the answer's.
  for b in own.batches[False][0]:
    answer = b["decoder_loss_weights"] > 0
    first = answer.argmax(axis=1)
    assert answer.any(axis=1).all() and (first > 0).all()  # every example has a prompt and an answer
    positions = np.arange(answer.shape[1])[None, :]
    np.testing.assert_array_equal(b["mask"], (positions <= first[:, None]) & (b["decoder_target_tokens"] != 0))
  for b in own.batches[True][0]:
    np.testing.assert_array_equal(b["mask"], b["decoder_loss_weights"] > 0)
  # What a data-aware merge learns from is part of its fingerprint (and only of its).
  cell = grid.Cell("instruction_tuned", "xs", 2, 0, CATS)
  spec = dataclasses.replace(spec, grids={**spec.grids, "ties": [{}]})
  other = dataclasses.replace(spec, merge_data=expert_data.Settings(batches=2))
  assert runner.merge_fingerprint(spec, cell, "regmean") != runner.merge_fingerprint(other, cell, "regmean")
  assert runner.merge_fingerprint(spec, cell, "ties") == runner.merge_fingerprint(other, cell, "ties")


@pytest.mark.parametrize("method", ["regmean", "adamerging"])
def test_mergejax_merge_binds_each_experts_examples_as_the_library_does(tiny_world, tmp_path, monkeypatch, method):
  """``mergejax-merge`` with a data-aware method and one source per expert: the streamed merge equals
  ``mergejax.merge`` with the method bound by ``with_data`` to the examples of each expert's source."""
  from mergejax.cli import merge as merge_cli  # pylint: disable=g-import-not-at-top
  from mergejax.configs import merge as merge_config  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import vocab as suite_vocab  # pylint: disable=g-import-not-at-top
  ckpt = lambda role, c=None: str(world.checkpoint_path(tiny_world, "xs", "instruction_tuned", role, c))  # noqa: E731
  base, experts = ckpt("base"), [ckpt("expert", c) for c in CATS]
  from_pretrained = models.from_pretrained
  cfg = merge_config.get_config()
  cfg.method = dict(name=method, **({"steps": 3, "lr": 1e-2} if method == "adamerging" else {}))
  cfg.progress = False
  with pytest.raises(ValueError, match=rf"^{method}: learns from each expert's examples: give one seqio suite"):
    merge_cli.merge_checkpoints(base, experts, str(tmp_path / "refused"), cfg)
  sources = tuple(f"heldin_{c}" for c in CATS)
  cfg.merge_data.sources = sources
  with pytest.raises(ValueError, match=rf"^{method}: learns from examples tokenized with one vocabulary"):
    merge_cli.merge_checkpoints(base, experts, str(tmp_path / "refused"), cfg, tokenizer_source="union")
  cfg.merge_data.batch = 1
  with pytest.raises(ValueError, match=r"unknown config field 'merge_data.batch': did you mean 'batches'"):
    merge_cli.merge_checkpoints(base, experts, str(tmp_path / "refused"), cfg)
  del cfg.merge_data["batch"]
  assert not (tmp_path / "refused").exists()
  cfg.merge_data.sources, cfg.merge_data.batches, cfg.merge_data.batch_size = sources, 1, 8
  loaded = []  # the checkpoints loaded whole for the statistics: the base only for a method that uses it
  with monkeypatch.context() as mp:
    mp.setattr(models, "from_pretrained", lambda p, **kw: loaded.append(str(p)) or from_pretrained(p, **kw))
    out = merge_cli.merge_checkpoints(base, experts, str(tmp_path / "merged"), cfg)
  assert loaded == ([base] if method == "adamerging" else []) + experts

  load = lambda p: models.from_pretrained(p, vocabulary=suite_vocab.get_vocabulary())  # noqa: E731
  base_lm, expert_lms = load(base), [load(e) for e in experts]
  data = expert_data.ExpertExamples(expert_data.Settings(batches=1, batch_size=8))
  data.read(base_lm.vocabulary, sources)
  own = data.for_experts(base_lm.adapter, base_lm.vocabulary, sources, sources)
  m = methods.get(**cfg.method)
  bound = data_merge.with_data(m, own.model, base_lm.params, [lm.params for lm in expert_lms],
                               own.batches[m.compute_stats.labels])
  want = mergejax.merge(base_lm.params, [lm.params for lm in expert_lms], bound)
  got = load(out).params
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  manifest = json.loads((pathlib.Path(out) / "mergejax_manifest.json").read_text())
  assert manifest["merge_data"]["sources"] == list(sources)
  assert "learned from each expert's examples: `heldin_sentiment`, `heldin_topic`" in (
      pathlib.Path(out) / "README.md").read_text()


@pytest.mark.parametrize("method", ["regmean", "adamerging"])
def test_mergejax_yaml_binds_each_models_examples_as_mergejax_merge(tiny_world, tmp_path, method):
  """A recipe naming a data-aware method, with ``mergejax: {merge_data: {sources: {MODEL: SOURCE}}}``,
  merges exactly as ``mergejax-merge`` with the same sources and settings (its merge is checked against
  the library's above)."""
  from mergejax.cli import merge as merge_cli  # pylint: disable=g-import-not-at-top
  from mergejax.configs import merge as merge_config  # pylint: disable=g-import-not-at-top
  from mergejax.recipes import mergekit as mk, run as recipe_run  # pylint: disable=g-import-not-at-top
  ckpt = lambda role, c=None: str(world.checkpoint_path(tiny_world, "xs", "instruction_tuned", role, c))  # noqa: E731
  base, experts = ckpt("base"), [ckpt("expert", c) for c in CATS]
  sources = tuple(f"heldin_{c}" for c in CATS)
  hparams = {"steps": 3, "lr": 1e-2} if method == "adamerging" else {}
  cfg = merge_config.get_config()
  cfg.method, cfg.progress = dict(name=method, **hparams), False
  cfg.merge_data.sources, cfg.merge_data.batches, cfg.merge_data.batch_size = sources, 1, 8
  want = merge_cli.merge_checkpoints(base if method == "adamerging" else None, experts, str(tmp_path / "cli"), cfg)
  recipe = {"merge_method": method, "models": [{"model": e} for e in experts],
            **({"base_model": base, "parameters": hparams} if method == "adamerging" else {}),
            "mergejax": {"merge_data": {"sources": dict(zip(experts, sources)), "batches": 1, "batch_size": 8}}}
  if method == "regmean":  # statistics of the whole model: one value per parameter
    graded = {**recipe, "parameters": {"alpha": [{"filter": "embed", "value": 0.5}, {"value": 0.9}]}}
    with pytest.raises(mk.RecipeError, match=r"^parameters: regmean with model-wide statistics .* needs one value"):
      recipe_run.run(mk.plan(mk.parse(json.dumps(graded))), str(tmp_path / "graded"))
    assert not (tmp_path / "graded").exists()
  got = recipe_run.run(mk.plan(mk.parse(json.dumps(recipe))), str(tmp_path / "yaml"))
  from mergejax.tasks import vocab as suite_vocab  # pylint: disable=g-import-not-at-top
  a, b = (models.from_pretrained(p, vocabulary=suite_vocab.get_vocabulary()).params for p in (want, got))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  manifest = json.loads((pathlib.Path(got) / "mergejax_manifest.json").read_text())
  assert manifest["merge_data"] == {"sources": list(sources), **dataclasses.asdict(
      expert_data.Settings(batches=1, batch_size=8))}
  assert "learned from each expert's examples: `heldin_sentiment`, `heldin_topic`" in (
      pathlib.Path(got) / "README.md").read_text()


def test_merge_warmup_compiles_every_merge_program_of_the_study_up_front(tiny_world, tmp_path):
  spec = runner.validate(study_config(tiny_world), tmp_path)
  jax.clear_caches()  # earlier tests in this process compiled the same programs
  warmup = runner.MergeWarmup(spec, {"xs": runner.load_models(spec, spec.kinds[0], "xs")})
  warmup.wait("xs")
  assert warmup.error is None

  def merge_everything():
    ms = runner.load_models(spec, "instruction_tuned", "xs")
    for n in spec.ns:
      cats = spec.categories[-n:]  # the warm-up merged the first n: another subset needs no new program
      for name in spec.methods:
        merger = CandidateMerger(name, ms.base, [ms.experts[c] for c in cats], [ms.taus[c] for c in cats], seed=7)
        for hp in spec.grids[name]:
          jax.block_until_ready(merger(hp))

  assert test_eval.compiles(merge_everything) == 0  # the warm-up compiled every (method, N) program of this size


def test_eight_devices_and_two_processes_give_the_same_rows_as_one_device(tiny_world, tmp_path):
  """The models sharded over 8 devices (FSDP over "data" and tensor parallel over "model"), and over the
  4 devices of 2 processes (jax.distributed on localhost), give the rows of a 1-device mesh, data-aware
  methods included."""
  # RegMean's Gram matrices and Fisher's squared gradients: statistics of forward and backward passes over
  # each expert's examples, sharded and split between processes like everything else.
  cfg_over = {"num_experts": (2,), "subset_seeds": 1, "methods": ("ties", "dare_ties", "regmean", "fisher"),
              "multitask": False}
  runner.run_study(study_config(tiny_world, mesh=dict(data=1, model=1), **cfg_over), tmp_path / "one", progress=False)
  runner.run_study(study_config(tiny_world, mesh=dict(data=4, model=2), **cfg_over), tmp_path / "eight",
                   progress=False)
  script = tmp_path / "main.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
      import jax
      jax.distributed.initialize("localhost:{_free_port()}", num_processes=2, process_id=int(sys.argv[1]))
      sys.path.insert(0, {str(REPO / 'tests')!r})
      import test_study
      from mergejax.study import runner
      cfg = test_study.study_config({str(tiny_world)!r}, **{cfg_over!r})
      runner.run_study(cfg, {str(tmp_path / 'two')!r}, progress=False)
      """))
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for i in range(2)]
  outs = [p.communicate(timeout=600)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
  one = merge_rows(tmp_path / "one")
  assert sum(k.startswith("merge/") for k in one) == 4 and sum(k.startswith("ref/") for k in one) == 3
  assert merge_rows(tmp_path / "eight") == one
  assert merge_rows(tmp_path / "two") == one


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
