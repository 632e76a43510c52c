"""Aggregating seqio's per-task metrics into per-category and per-mixture scores.

Each task gets one *primary* score (the first of :data:`PRIMARY_METRICS` that it reports: rank
accuracy for choice tasks, ROUGE-L / F1 / exact match for generation tasks). A category's score is
the mean of its tasks' primary scores; a mixture's score is the mean over its categories (so a
category with more datasets does not weigh more), following the paper's averaging order.

Task categories come from :func:`mergejax.tasks.task_category` (registered ones, the synthetic
suite's, or the task's own name).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from mergejax.tasks import task_category

PRIMARY_METRICS = ("accuracy", "rank_accuracy", "rank_classification_accuracy", "rougeL", "rouge_l",
                   "rougeLsum", "token_f1", "f1", "exact_match", "sequence_accuracy")


def to_float(v: Any) -> float:
  """A metric value (float, numpy scalar or seqio ``metrics.Scalar``) as a float."""
  v = getattr(v, "value", v)
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def primary_metric(metrics: Mapping[str, Any]) -> tuple[str, float]:
  """(name, value) of the metric that scores the task."""
  for name in PRIMARY_METRICS:
    if name in metrics:
      return name, to_float(metrics[name])
  scalar = sorted(k for k, v in metrics.items() if not math.isnan(to_float(v)))
  if not scalar:
    raise ValueError(f"no scalar metric among {sorted(metrics)}")
  return scalar[0], to_float(metrics[scalar[0]])


@dataclasses.dataclass
class EvalResults:
  """Evaluation of one model on one mixture and split.

  Attributes:
    mixture: the seqio mixture or task name.
    split: the split evaluated ("validation" or "test").
    tasks: task -> {metric: value} (every metric seqio computed).
    task_scores: task -> primary score.
    primary: task -> name of the primary metric.
    task_categories: task -> category.
    categories: category -> mean primary score of its tasks.
    score: mean over categories.
    correct: task -> per-example correctness ("0110...", in example-index order) of rank-classification
      tasks, where the evaluator reports it (what a bootstrap over test examples resamples).
    chance: task -> score of a uniform random choice (same unit as the task's score), where known.
  """

  mixture: str
  split: str
  tasks: dict[str, dict[str, float]]
  task_scores: dict[str, float]
  primary: dict[str, str]
  task_categories: dict[str, str]
  categories: dict[str, float]
  score: float
  correct: dict[str, str] = dataclasses.field(default_factory=dict)
  chance: dict[str, float] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EvalResults":
    return cls(**d)


def aggregate(mixture: str, split: str, per_task: Mapping[str, Mapping[str, Any]],
              categories: Mapping[str, str] | None = None, *, correct: Mapping[str, str] | None = None,
              chance: Mapping[str, float] | None = None) -> EvalResults:
  """Builds :class:`EvalResults` from seqio's ``{task: {metric: value}}``.

  Args:
    categories: optional task -> category overrides (default: :func:`task_category`).
    correct, chance: optional per-example correctness and chance level per task (see EvalResults).
  """
  tasks = {t: {k: to_float(v) for k, v in m.items()} for t, m in per_task.items() if m}
  task_scores, primary, task_cats = {}, {}, {}
  for t, m in sorted(tasks.items()):
    primary[t], task_scores[t] = primary_metric(m)
    task_cats[t] = (categories or {}).get(t) or task_category(t)
  by_cat: dict[str, list[float]] = {}
  for t, s in task_scores.items():
    by_cat.setdefault(task_cats[t], []).append(s)
  cats = {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}
  score = sum(cats.values()) / len(cats) if cats else float("nan")
  return EvalResults(mixture, split, tasks, task_scores, primary, task_cats, cats, score,
                     {t: v for t, v in (correct or {}).items() if t in tasks},
                     {t: float(v) for t, v in (chance or {}).items() if t in tasks})


def format_table(results: EvalResults) -> str:
  """A plain-text table: one row per task (grouped by category), category means and the total."""
  rows = [("category", "task", "metric", "score")]
  for c in sorted(results.categories):
    for t in sorted(t for t, tc in results.task_categories.items() if tc == c):
      rows.append((c, t, results.primary[t], f"{results.task_scores[t]:.2f}"))
    rows.append((c, "(mean)", "", f"{results.categories[c]:.2f}"))
  rows.append((results.mixture, f"[{results.split}]", "mean of categories", f"{results.score:.2f}"))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
