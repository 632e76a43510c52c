"""The paper's normalization on hand-made numbers."""

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
