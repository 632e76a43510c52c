"""The paper's normalization on hand-made numbers."""

import numpy as np
import pytest

from mergejax.evaluation import normalize

CATS = {"qa1": "qa", "qa2": "qa", "sent1": "sentiment", "sent2": "sentiment", "sum1": "summ", "sum2": "summ"}
EXPERT = {"qa": {"qa1": 80.0, "qa2": 40.0, "sent1": 10.0},
          "sentiment": {"sent1": 90.0, "sent2": 60.0, "qa1": 5.0},
          "summ": {"sum1": 30.0, "sum2": 20.0}}


def test_held_in_divides_by_each_tasks_own_expert_and_counts_only_merged_categories():
  expert = normalize.expert_scores(EXPERT, CATS)
  assert expert == {"qa1": 80.0, "qa2": 40.0, "sent1": 90.0, "sent2": 60.0, "sum1": 30.0, "sum2": 20.0}
  merged = {"qa1": 40.0, "qa2": 40.0, "sent1": 90.0, "sent2": 30.0, "sum1": 0.0, "sum2": 0.0}
  r = normalize.held_in(merged, expert, CATS, merged_categories=["qa", "sentiment"])
  # qa: (0.5 + 1.0) / 2 = 0.75; sentiment: (1.0 + 0.5) / 2 = 0.75; summ is not merged -> ignored.
  assert r.per_task == pytest.approx({"qa1": 0.5, "qa2": 1.0, "sent1": 1.0, "sent2": 0.5})
  assert r.per_category == pytest.approx({"qa": 0.75, "sentiment": 0.75})
  assert r.score == pytest.approx(0.75)


def test_category_mean_comes_before_the_mean_over_categories():
  cats = {"a1": "A", "b1": "B", "b2": "B", "b3": "B"}
  model = {"a1": 1.0, "b1": 3.0, "b2": 3.0, "b3": 3.0}
  base = {"a1": 1.0, "b1": 1.0, "b2": 1.0, "b3": 1.0}
  r = normalize.held_out(model, base, cats)
  assert r.per_category == pytest.approx({"A": 1.0, "B": 3.0})
  assert r.score == pytest.approx(2.0)  # not (1 + 3 + 3 + 3) / 4 = 2.5


def test_multitask_baseline_is_normalized_the_same_way_and_can_exceed_one():
  expert = normalize.expert_scores(EXPERT, CATS)
  multitask = {"qa1": 88.0, "qa2": 44.0, "sent1": 90.0, "sent2": 60.0, "sum1": 30.0, "sum2": 20.0}
  r = normalize.held_in(multitask, expert, CATS, ["qa"])
  assert r.score == pytest.approx(1.1)


def test_mean_over_seeds():
  cats = {"x": "c"}
  runs = [normalize.held_out({"x": v}, {"x": 2.0}, cats) for v in (1.0, 2.0, 3.0)]
  assert normalize.mean_over_seeds(runs) == pytest.approx(1.0)
  assert normalize.mean_over_seeds([0.5, 1.5]) == pytest.approx(1.0)
  with pytest.raises(ValueError):
    normalize.mean_over_seeds([])


def test_bad_inputs_name_the_task():
  expert = normalize.expert_scores(EXPERT, CATS)
  with pytest.raises(KeyError, match="qa2"):
    normalize.held_in({"qa1": 1.0}, expert, CATS, ["qa"])
  with pytest.raises(ValueError, match="sum1"):
    normalize.held_in({"sum1": 1.0, "sum2": 1.0}, {"sum1": 0.0, "sum2": 1.0}, CATS, ["summ"])
  with pytest.raises(ValueError, match="nope"):
    normalize.held_out({"x": 1.0}, {"x": 1.0}, {"x": "c"}, categories=["nope"])


def test_retention_is_the_share_of_the_experts_gain_over_chance():
  cats = {"a1": "A", "a2": "A", "b1": "B"}
  chance = {"a1": 25.0, "a2": 50.0, "b1": 0.0}
  expert = {"a1": 75.0, "a2": 90.0, "b1": 40.0}
  merged = {"a1": 50.0, "a2": 50.0, "b1": 40.0}
  r = normalize.held_in_retention(merged, expert, chance, cats, ["A", "B"])
  # a1: (50-25)/(75-25) = 0.5; a2: (50-50)/(90-50) = 0; b1 (chance 0): the paper's ratio, 1.0.
  assert r.per_task == pytest.approx({"a1": 0.5, "a2": 0.0, "b1": 1.0})
  # A: the summed gains, (25 + 0) / (50 + 40), not the mean of the quotients.
  assert r.per_category == pytest.approx({"A": 25 / 90, "B": 1.0})
  assert r.score == pytest.approx((25 / 90 + 1.0) / 2)
  # The paper's ratio on the same numbers stays near 1 for the guessing-level merge of a2.
  assert normalize.held_in(merged, expert, cats, ["A"]).per_task["a2"] == pytest.approx(50 / 90)
  assert normalize.ratio(50.0, 75.0, 25.0) == pytest.approx(0.5)


def test_retention_refuses_an_expert_at_or_below_chance():
  cats = {"a1": "A"}
  with pytest.raises(ValueError, match=r"expert of category 'A' is not above chance on its datasets"):
    normalize.held_in_retention({"a1": 30.0}, {"a1": 25.0}, {"a1": 25.0}, cats, ["A"])
  # A dataset barely above chance adds its small gain; it is not divided by.
  two = {"a1": "A", "a2": "A"}
  r = normalize.held_in_retention({"a1": 50.0, "a2": 24.0}, {"a1": 75.0, "a2": 26.0}, {"a1": 25.0, "a2": 25.0},
                                  two, ["A"])
  assert r.per_category["A"] == pytest.approx((25 - 1) / (50 + 1)) and r.per_task["a2"] == pytest.approx(-1.0)
  # Replicates (arrays): NaN where the expert's summed gain is not positive, never a division by it.
  got = normalize.category_retention([np.array([50.0, 30.0])], [np.array([75.0, 25.0])], [25.0])
  assert got[0] == pytest.approx(0.5) and np.isnan(got[1])
  with pytest.raises(KeyError, match="no chance level for task 'a1'"):
    normalize.held_in_retention({"a1": 30.0}, {"a1": 60.0}, {}, cats, ["A"])


def test_rank_chance_is_the_mean_of_correct_over_choices():
  assert normalize.rank_chance([2, 4]) == pytest.approx(100 * (0.5 + 0.25) / 2)
  assert normalize.rank_chance([4, 4], num_correct=[2, 1], scale=1.0) == pytest.approx((0.5 + 0.25) / 2)
  with pytest.raises(ValueError, match="at least one choice"):
    normalize.rank_chance([])


def test_check_expert_flags_chance_level_experts_and_those_no_better_than_their_base():
  chance, counts, tasks = {"t1": 25.0, "t2": 50.0}, {"t1": 100, "t2": 100}, ["t1", "t2"]
  # Clear: 80% and 90% on 100 examples each, base at chance.
  ok = normalize.check_expert({"t1": 80.0, "t2": 90.0}, {"t1": 26.0, "t2": 50.0}, chance, counts, tasks)
  assert ok.clear and ok.z_chance > 10 and ok.z_base > 10
  assert ok.expert == pytest.approx(85.0) and ok.chance == pytest.approx(37.5)
  # Two points above chance with ~3.3 points of SE (category mean of two 100-example tasks): flagged.
  near = normalize.check_expert({"t1": 28.0, "t2": 51.0}, None, chance, counts, tasks)
  assert not near.clear and 0 < near.z_chance < 1
  se = 100 * ((0.28 * 0.72 / 100 + 0.51 * 0.49 / 100) ** 0.5) / 2
  assert near.z_chance == pytest.approx((39.5 - 37.5) / se)
  # Far above chance but no better than a base that already knows the task: flagged.
  strong_base = normalize.check_expert({"t1": 80.0, "t2": 90.0}, {"t1": 78.0, "t2": 90.0}, chance, counts, tasks)
  assert strong_base.z_chance > 10 and not strong_base.clear
  # A perfect expert has zero binomial SE: infinitely many SE above chance.
  perfect = normalize.check_expert({"t1": 100.0, "t2": 100.0}, None, chance, counts, tasks)
  assert perfect.clear and perfect.z_chance == float("inf")
  with pytest.raises(KeyError, match="'t2'"):
    normalize.check_expert({"t1": 80.0}, None, chance, counts, tasks)
