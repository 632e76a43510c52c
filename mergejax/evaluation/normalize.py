r"""The paper's normalized scores (Yadav et al., 2024, "What Matters for Model Merging at Scale?", §3).

Let :math:`S` be the categories whose experts were merged, :math:`E_c` the expert of category
:math:`c`, :math:`D_c` the datasets (tasks) of category :math:`c`, :math:`\theta_0` the base model
the experts were trained from and :math:`C_{out}` the held-out categories. For a model :math:`M`:

.. math::

   \mathrm{HeldIn}(M) = \frac{1}{|S|}\sum_{c \in S} \frac{1}{|D_c|}\sum_{d \in D_c}
       \frac{\mathrm{Perf}(M, d)}{\mathrm{Perf}(E_c, d)}
   \qquad
   \mathrm{HeldOut}(M) = \frac{1}{|C_{out}|}\sum_{c \in C_{out}} \frac{1}{|D_c|}\sum_{d \in D_c}
       \frac{\mathrm{Perf}(M, d)}{\mathrm{Perf}(\theta_0, d)}

Only the merged experts' categories count held-in. The reported number is the mean over the
expert-subset seeds (:func:`mean_over_seeds`). The multitask baseline is normalized the same way:
pass its scores as ``model`` with the same ``merged_categories``, so it is compared on the same tasks
as the merge (it can exceed 1.0). Held-out ratios use the base as the denominator, so they compare
only within one base type (a weak base inflates them).

Scores are per-task primary metrics (e.g. ``EvalResults.task_scores``); the ratio makes their unit
(percent or fraction) irrelevant as long as numerator and denominator agree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Normalized:
  """A normalized score with its breakdown.

  Attributes:
    per_task: task -> Perf(M, d) / Perf(reference, d).
    per_category: category -> mean of its tasks' ratios.
    score: mean over categories.
  """

  per_task: dict[str, float]
  per_category: dict[str, float]
  score: float


def _ratios(model: Mapping[str, float], reference: Mapping[str, float], task_categories: Mapping[str, str],
            categories: Sequence[str], what: str) -> Normalized:
  if not categories:
    raise ValueError("normalize: no categories to average over")
  per_task, per_cat = {}, {}
  for c in categories:
    tasks = sorted(t for t, tc in task_categories.items() if tc == c)
    if not tasks:
      raise ValueError(f"normalize: category {c!r} has no tasks in task_categories")
    ratios = []
    for t in tasks:
      if t not in model:
        raise KeyError(f"normalize: no score for task {t!r} (category {c!r}) from the evaluated model")
      if t not in reference:
        raise KeyError(f"normalize: no {what} score for task {t!r} (category {c!r})")
      den = float(reference[t])
      if den == 0.0 or math.isnan(den):
        raise ValueError(f"normalize: {what} score for task {t!r} is {den}; cannot normalize by it")
      per_task[t] = float(model[t]) / den
      ratios.append(per_task[t])
    per_cat[c] = sum(ratios) / len(ratios)
  return Normalized(per_task, per_cat, sum(per_cat.values()) / len(per_cat))


def held_in(model: Mapping[str, float], expert: Mapping[str, float], task_categories: Mapping[str, str],
            merged_categories: Sequence[str]) -> Normalized:
  """Held-in score: each merged category's tasks divided by that category's expert.

  Args:
    model: task -> score of the merged (or multitask) model.
    expert: task -> score of the expert trained on that task's category (see :func:`expert_scores`).
    task_categories: task -> category for every held-in task.
    merged_categories: the categories whose experts were merged (the only ones that count).
  """
  return _ratios(model, expert, task_categories, list(dict.fromkeys(merged_categories)), "expert")


def held_out(model: Mapping[str, float], base: Mapping[str, float], task_categories: Mapping[str, str],
             categories: Sequence[str] | None = None) -> Normalized:
  """Held-out score: every held-out task divided by the base model's score on it.

  Args:
    model: task -> score of the merged (or multitask) model.
    base: task -> score of the base model the experts were fine-tuned from.
    task_categories: task -> category for the held-out tasks.
    categories: which categories to average (default: all in ``task_categories``).
  """
  cats = list(dict.fromkeys(categories)) if categories is not None else sorted(set(task_categories.values()))
  return _ratios(model, base, task_categories, cats, "base")


def expert_scores(per_expert: Mapping[str, Mapping[str, float]], task_categories: Mapping[str, str]) -> dict[str, float]:
  """Picks, for every task, the score of its own category's expert.

  Args:
    per_expert: category -> (task -> score) of that category's expert (it may report other tasks
      too; only its own category's are used).
    task_categories: task -> category.
  """
  out = {}
  for t, c in task_categories.items():
    if c in per_expert and t in per_expert[c]:
      out[t] = float(per_expert[c][t])
  return out


def expert_table(per_expert: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, float], dict[str, str]]:
  """(task -> expert score, task -> category) when each expert reports exactly its own category's tasks
  (as the study's expert reference rows do): the denominators and categories of :func:`held_in`."""
  task_categories = {t: c for c, scores in per_expert.items() for t in scores}
  return expert_scores(per_expert, task_categories), task_categories


def mean_over_seeds(values: Sequence[float | Normalized]) -> float:
  """The reported number: the mean over expert-subset seeds."""
  vals = [v.score if isinstance(v, Normalized) else float(v) for v in values]
  if not vals:
    raise ValueError("mean_over_seeds: no values")
  return sum(vals) / len(vals)
