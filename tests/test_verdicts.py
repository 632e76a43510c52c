"""The study's verdicts: the rule, the bootstrap's pairing and weighting, and calibration on synthetic
studies whose truth is known (tests/synthetic_study.py)."""

import collections
import dataclasses
import json
import pathlib

import numpy as np
import pytest

import synthetic_study as syn
from mergejax.evaluation import normalize
from mergejax.study import bootstrap, verdicts

FAST = verdicts.Settings(n_boot=300)


def _rows(seed=0, **kw):
  return syn.simulate(np.random.default_rng(seed), **kw)


def test_the_rule():
  s = verdicts.Settings(min_effect=0.02, margin=0.03)
  assert verdicts.decide(0.05, 0.01, 0.09, s) == verdicts.SUPPORTED
  assert verdicts.decide(0.015, 0.001, 0.029, s) == verdicts.EQUIVALENT  # nonzero but smaller than delta
  assert verdicts.decide(0.019, 0.001, 0.04, s) == verdicts.INCONCLUSIVE
  assert verdicts.decide(0.05, -0.01, 0.09, s) == verdicts.INCONCLUSIVE  # the interval contains 0
  assert verdicts.decide(-0.05, -0.09, -0.01, s) == verdicts.CONTRADICTED
  assert verdicts.decide(0.0, -0.02, 0.02, s) == verdicts.EQUIVALENT
  assert verdicts.decide(0.0, -0.04, 0.02, s) == verdicts.INCONCLUSIVE
  assert verdicts.decide(float("nan"), 0, 1, s) == verdicts.NOT_TESTABLE
  with pytest.raises(ValueError, match="confidence"):
    verdicts.Settings(confidence=1.0)


def test_point_estimates_are_the_papers_normalized_scores_averaged_over_seeds_then_equal_weights():
  rows = _rows(methods=("average", "dare_ties"))
  merges, refs = bootstrap.split_rows(rows)
  a = verdicts.analyze(rows, FAST)
  for kind, size, n, m in [("pretrained", "xs", 2, "average"), ("instruction_tuned", "s", 4, "dare_ties")]:
    own = [r for r in merges if (r["kind"], r["size"], r["n"], r["method"]) == (kind, size, n, m)]
    expert = {t: s for k, row in refs.items() if k[1:4] == (kind, size, "expert") for t, s in row["heldin_test"].items()}
    scores = [normalize.held_in(r["heldin_test"], expert, r["task_categories"], r["categories"]).score for r in own]
    assert a.cells[(kind, size, n, m)]["heldin"].value == pytest.approx(np.mean(scores))
    base = refs[("", kind, size, "base")]
    ho = [normalize.held_out(r["heldout_test"], base["heldout_test"],
                             {t: r["task_categories"][t] for t in r["heldout_test"]}).score for r in own]
    assert a.cells[(kind, size, n, m)]["heldout"].value == pytest.approx(np.mean(ho))
  # At N = all categories the deterministic method has one row and DARE four: each cell weighs the same.
  c1 = a.conclusions[0].evidence[0].value
  expected = np.mean([a.cells[(verdicts.IT, s, n, m)]["heldin"].value - a.cells[(verdicts.PT, s, n, m)]["heldin"].value
                      for s in syn.SIZES for n in (2, 4) for m in ("average", "dare_ties")])
  assert c1 == pytest.approx(expected)


def test_deterministic_given_the_seed():
  rows = _rows()
  a, b = verdicts.analyze(rows, FAST), verdicts.analyze(rows, FAST)
  assert a == b
  c = verdicts.analyze(rows, dataclasses.replace(FAST, seed=1))
  assert c.conclusions[0].evidence[0].lo != a.conclusions[0].evidence[0].lo
  assert c.conclusions[0].evidence[0].value == a.conclusions[0].evidence[0].value


def test_true_effects_are_found_and_a_reversal_is_contradicted():
  a = verdicts.analyze(_rows(it_effect=0.2, size_effect=-0.2), FAST)
  c1, c2 = a.conclusions[0], a.conclusions[1]
  assert c1.verdict == verdicts.SUPPORTED and c1.evidence[0].lo > 0
  assert c2.verdict == verdicts.CONTRADICTED and c2.evidence[0].hi < 0
  assert c2.evidence[0].label == "held-in s - xs"  # sizes by parameter count


def test_a_null_is_rarely_supported_and_a_modest_effect_usually_is():
  # 60 synthetic studies under the null (no IT effect, no size effect), the rule at its strictest
  # (min_effect = 0: any interval above 0). The intervals' nominal one-sided error is 2.5%.
  strict = verdicts.Settings(n_boot=200, min_effect=0.0)
  null = collections.Counter()
  for i in range(60):
    a = verdicts.analyze(_rows(100 + i, inter_sd=0.05), dataclasses.replace(strict, seed=i))
    null.update(c.evidence[0].verdict for c in a.conclusions[:2])
  assert null[verdicts.SUPPORTED] <= 6 and null[verdicts.CONTRADICTED] <= 6, null  # of 120 verdicts
  power = collections.Counter(verdicts.analyze(_rows(200 + i, it_effect=0.15), dataclasses.replace(FAST, seed=i))
                              .conclusions[0].verdict for i in range(15))
  assert power[verdicts.SUPPORTED] >= 12, power


def test_pairing_on_test_examples_narrows_the_intervals():
  rows = _rows(3, seeds=4, subset_sd=0.0, inter_sd=0.0)  # only test-sampling noise
  counts = _rows(3, seeds=4, subset_sd=0.0, inter_sd=0.0, level="counts")
  paired, unpaired = verdicts.analyze(rows, FAST), verdicts.analyze(counts, FAST)
  assert paired.conclusions[0].evidence[0].value == pytest.approx(unpaired.conclusions[0].evidence[0].value)
  width = lambda a: a.conclusions[0].evidence[0].hi - a.conclusions[0].evidence[0].lo
  assert width(paired) < 0.9 * width(unpaired)
  assert "paired across models" in paired.levels[2] and "not paired" in unpaired.levels[2]
  scores_only = verdicts.analyze(_rows(3, seeds=4, level="scores"), FAST)
  assert "not resampled" in scores_only.levels[2]


def test_a_crossover_with_n_is_not_a_verdict_either_way():
  # s beats xs at N = 2 and loses at N = 4 (the default run's pattern): pooled ~0, breakdown of both signs.
  a = verdicts.analyze(_rows(4, size_effect=0.15, size_n_effect=-0.15, n_examples=200, inter_sd=0.0), FAST)
  c2 = a.conclusions[1]
  by_n = {e.label: e.verdict for e in c2.breakdown}
  assert by_n == {"N=2": verdicts.SUPPORTED, "N=4": verdicts.CONTRADICTED}
  assert c2.verdict == verdicts.INCONCLUSIVE and "depends on N" in c2.note


def test_conclusion_3_needs_both_halves_and_uses_the_multitask_model():
  helps = verdicts.analyze(_rows(5, heldout_effect=0.15, multitask_ho=0.6), FAST).conclusions[2]
  assert [e.verdict for e in helps.evidence] == [verdicts.SUPPORTED, verdicts.SUPPORTED]
  assert helps.verdict == verdicts.SUPPORTED and "multitask" in helps.evidence[1].label
  loses = verdicts.analyze(_rows(5, heldout_effect=0.15, multitask_ho=0.8), FAST).conclusions[2]
  assert loses.evidence[1].verdict == verdicts.CONTRADICTED and loses.verdict == verdicts.CONTRADICTED
  no_mt = verdicts.analyze(_rows(5, heldout_effect=0.15), FAST).conclusions[2]
  assert no_mt.verdict == verdicts.INCONCLUSIVE and "not tested" in no_mt.note
  # The line names both parts with their own verdicts, and states how they combine.
  line = verdicts.conclusion_line(loses)
  a, b = loses.evidence
  assert f"(a) held-out - base {a.value:+.3f} [{a.lo:+.3f}, {a.hi:+.3f}] (supported)" in line
  assert f"(b) held-out at s, N=4: merged - multitask {b.value:+.3f} [{b.lo:+.3f}, {b.hi:+.3f}] (contradicted)" in line
  assert "CONTRADICTED when either is" in line and "Breakdown: (a) pretrained xs" in line


def test_a_directional_verdict_never_rests_on_an_interval_containing_zero():
  for seed, kw in ((5, dict(heldout_effect=0.15, multitask_ho=0.8)), (6, dict(method_effect={"ties": 0.2})),
                   (10, dict(it_effect=0.2)), (3, {})):
    for c in verdicts.analyze(_rows(seed, n_examples=200, **kw), FAST).conclusions:
      for e in c.evidence + c.breakdown:
        if e.verdict in (verdicts.SUPPORTED, verdicts.CONTRADICTED):
          assert not e.lo <= 0 <= e.hi, (c.number, e)
      if c.verdict in (verdicts.SUPPORTED, verdicts.CONTRADICTED):
        assert any(e.verdict == c.verdict and not e.lo <= 0 <= e.hi for e in c.evidence), c


def test_conclusion_5_equivalence_and_difference_between_methods():
  same = verdicts.analyze(_rows(6, n_examples=200, methods=("average", "ties", "dare_ties")),
                          dataclasses.replace(FAST, margin=0.06)).conclusions[4]
  assert same.verdict == verdicts.EQUIVALENT
  assert -0.06 < same.evidence[0].lo and same.evidence[0].hi < 0.06
  pairs = [e for e in same.breakdown if e.label.endswith("at s")]
  assert len(pairs) == 3 and all(-0.06 < e.lo and e.hi < 0.06 for e in pairs)
  # The deciding pair is the one whose interval reaches furthest from 0.
  assert max(max(-e.lo, e.hi) for e in pairs) == max(-same.evidence[0].lo, same.evidence[0].hi)
  apart = verdicts.analyze(_rows(6, n_examples=200, method_effect={"ties": 0.2}), FAST).conclusions[4]
  assert apart.verdict == verdicts.CONTRADICTED
  worst = apart.evidence[0]
  assert worst.label == "average - ties at s" and worst.hi < 0  # its interval excludes 0
  assert "at xs for comparison: contradicted" in apart.note
  # The headline shows the pair's interval at the stated confidence (as in the breakdown); the
  # Bonferroni-widened one it was judged on is in the note.
  same_pair = next(e for e in apart.breakdown if e.label == worst.label)
  assert (worst.lo, worst.hi) == (same_pair.lo, same_pair.hi)
  assert f"judged on 95.0% intervals (Bonferroni over the 1 pair; the pair shown: [{worst.lo:+.3f}, {worst.hi:+.3f}])" in apart.note


def test_chance_level_experts_are_flagged_and_left_out_of_held_in():
  weak = {(kind, size, "c1"): 0.27 for kind in syn.KINDS for size in syn.SIZES[:1]}
  rows = _rows(7, expert_acc=weak)
  a = verdicts.analyze(rows, FAST)
  assert a.experts_checked == 16
  assert {(f.kind, f.size, f.category) for f in a.flagged} == {("pretrained", "xs", "c1"),
                                                               ("instruction_tuned", "xs", "c1")}
  assert all(f.check.z_chance < 3 for f in a.flagged)
  assert a.excluded == {"": ("c1",)}
  # Held-in scores now average over the other categories only, at every size (paired contrasts).
  merges, refs = bootstrap.split_rows(rows)
  own = [r for r in merges if (r["kind"], r["size"], r["n"], r["method"]) == ("pretrained", "s", 2, "ties")]
  expert = {t: s for k, row in refs.items() if k[1:4] == ("pretrained", "s", "expert") for t, s in row["heldin_test"].items()}
  kept = [normalize.held_in(r["heldin_test"], expert, r["task_categories"], [c for c in r["categories"] if c != "c1"]).score
          for r in own if r["categories"] != ["c1"]]
  assert a.cells[("pretrained", "s", 2, "ties")]["heldin"].value == pytest.approx(np.mean(kept))
  # Without validation counts nothing can be checked, and the analysis says so.
  unchecked = verdicts.analyze(_rows(7, expert_acc=weak, validation=False), FAST)
  assert unchecked.experts_checked == 0 and not unchecked.flagged and "no validation counts" in unchecked.levels[4]


def test_an_expert_at_chance_on_one_of_its_datasets_is_flagged_and_one_below_its_base_is_listed():
  counts, chance = {"a1": 400, "a2": 400}, {"a1": 25.0, "a2": 25.0}
  # Category mean 57.5 is far above chance 25, but a2 sits at chance: flagged.
  at_chance = normalize.check_expert({"a1": 90.0, "a2": 25.0}, None, chance, counts, ["a1", "a2"])
  assert at_chance.z_chance > 3 and at_chance.z_chance_tasks == 0.0 and not at_chance.clear
  # Clear on both datasets and on the category mean against the base, yet below the base on a2: listed.
  below = normalize.check_expert({"a1": 90.0, "a2": 60.0}, {"a1": 40.0, "a2": 70.0}, chance, counts, ["a1", "a2"])
  assert below.clear and below.below_base == ("a2",)


def test_the_rows_file_beside_a_report_recomputes_the_same_analysis(tmp_path):
  rows = _rows(11, it_effect=0.2)
  verdicts.write_rows(rows, tmp_path / "a" / verdicts.ROWS_FILE)
  verdicts.write_rows(list(reversed(rows)), tmp_path / "b" / verdicts.ROWS_FILE)
  assert (tmp_path / "a" / verdicts.ROWS_FILE).read_bytes() == (tmp_path / "b" / verdicts.ROWS_FILE).read_bytes()
  back = verdicts.load_rows(tmp_path / "a")
  canonical = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
  assert canonical(back) == canonical(rows)
  assert verdicts.analyze(back, FAST) == verdicts.analyze(rows, FAST)
  with pytest.raises(FileNotFoundError, match="no results store"):
    verdicts.load_rows(tmp_path)


def test_retention_metric_and_several_worlds():
  rows = _rows(8, it_effect=0.2) + _rows(9, it_effect=0.2, world="w1") + _rows(10, it_effect=0.2, world="w2")
  a = verdicts.analyze(rows, dataclasses.replace(FAST, heldin_metric="retention"))
  assert a.levels[0] == "worlds: 3"
  assert a.conclusions[0].verdict == verdicts.SUPPORTED
  # Retention of a merge keeping r of the gain is about r: 0.7 at N = 2 for the pretrained base.
  assert a.cells[("pretrained", "xs", 2, "average")]["heldin"].value == pytest.approx(0.7, abs=0.1)
  one = verdicts.analyze(_rows(8, it_effect=0.2), dataclasses.replace(FAST, heldin_metric="retention"))
  assert "training-seed variance absent" in one.levels[0]


def test_rows_with_normalized_scores_only_give_the_seed_level():
  rows = [{"type": "merge", "kind": k, "size": s, "n": n, "seed": seed, "method": m, "categories": ["a"],
           "heldin_norm": 0.8 + 0.05 * (k == verdicts.IT) + 0.01 * seed, "heldout_norm": 0.9}
          for k in syn.KINDS for s in syn.SIZES for n in (2, 4) for seed in range(3) for m in ("average", "ties")]
  a = verdicts.analyze(rows, FAST, param_counts=syn.PARAMS)
  # results.csv carries each size's parameter count: the same order without param_counts.
  with_counts = [{**r, "params": syn.PARAMS[r["size"]]} for r in reversed(rows)]
  assert verdicts.analyze(with_counts, FAST).sizes == a.sizes == tuple(sorted(syn.PARAMS, key=syn.PARAMS.get))
  assert a.conclusions[0].evidence[0].value == pytest.approx(0.05)
  assert a.conclusions[0].verdict == verdicts.SUPPORTED
  assert a.conclusions[2].verdict == verdicts.CONTRADICTED  # held-out 0.9 < 1 everywhere, no noise
  assert "order of the rows" not in a.levels[3]


def test_report_line_prints_the_verdict_in_bold_with_every_interval():
  a = verdicts.analyze(_rows(10, it_effect=0.2), FAST)
  line = verdicts.conclusion_line(a.conclusions[0])
  e = a.conclusions[0].evidence[0]
  assert line.startswith("- **SUPPORTED**: 1. Merging is more effective")
  assert f"held-in IT - PT {e.value:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]" in line
  assert "Breakdown: xs" in line


def test_the_committed_default_run_is_recomputed_from_its_rows_and_the_readme_says_what_it_says():
  """docs/default_run holds every stored row (rows.jsonl.gz): its five conclusion lines come back exactly
  as report.md prints them, and README's results section quotes them."""
  root = pathlib.Path(__file__).resolve().parent.parent
  a = verdicts.analyze(verdicts.load_rows(root / "docs" / "default_run"))  # as README and docs/STUDY.md show it
  report_md = (root / "docs" / "default_run" / "report.md").read_text()
  readme = (root / "README.md").read_text()
  for c in a.conclusions:
    line = verdicts.conclusion_line(c)
    assert line in report_md and line in readme, c.number
