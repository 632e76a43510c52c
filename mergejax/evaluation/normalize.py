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

**Chance-corrected retention** (:func:`held_in_retention`) replaces each category's ratios by

.. math::

   R(M, c) = \frac{\sum_{d \in c} \mathrm{Perf}(M, d) - \mathrm{chance}(d)}
                  {\sum_{d \in c} \mathrm{Perf}(E_c, d) - \mathrm{chance}(d)}

the share of the expert's gain over guessing on its category's datasets that the merge keeps (chance:
the score of a uniform random choice, e.g. the mean of 1 / #choices for rank classification; 0 for
generation). The gains are summed over the category's datasets before dividing, so a dataset on
which the expert is only a little above chance adds its small gain instead of dividing by it (a
per-dataset quotient there is noise that resampling turns into values far outside [0, 1]). Near a
chance-level expert the paper's ratio is close to 1 whatever the merge does, and retention is
undefined: a category whose expert gains nothing over chance is refused. :func:`check_expert` tells whether an expert is clearly
above its base and chance (``z`` standard errors on validation); the study leaves the categories of
experts that are not out of held-in normalization (``mergejax.study.verdicts``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalized:
  """A normalized score with its breakdown.

  Attributes:
    per_task: task -> Perf(M, d) / Perf(reference, d).
    per_category: category -> mean of its tasks' ratios (retention: the summed gains, :func:`category_retention`).
    score: mean over categories.
  """

  per_task: dict[str, float]
  per_category: dict[str, float]
  score: float


def ratio(model, reference, chance=0.0):
  """``(model - chance) / (reference - chance)``, elementwise on floats or arrays: the paper's ratio for
  ``chance = 0``, chance-corrected retention otherwise (one formula for every caller, e.g. the bootstrap)."""
  return (model - chance) / (reference - chance)


def _ratios(model: Mapping[str, float], reference: Mapping[str, float], task_categories: Mapping[str, str],
            categories: Sequence[str], what: str, chance: Mapping[str, float] | None = None) -> Normalized:
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
      guess = 0.0
      if chance is not None:
        if t not in chance:
          raise KeyError(f"normalize: no chance level for task {t!r} (category {c!r})")
        guess = float(chance[t])
      per_task[t] = ratio(float(model[t]), den, guess) if den != guess else float("nan")
      ratios.append(per_task[t])
    if chance is None:
      per_cat[c] = sum(ratios) / len(ratios)
    else:
      per_cat[c] = category_retention([float(model[t]) for t in tasks], [float(reference[t]) for t in tasks],
                                      [float(chance[t]) for t in tasks], name=f"category {c!r}")
  return Normalized(per_task, per_cat, sum(per_cat.values()) / len(per_cat))


def category_retention(model: Sequence, expert: Sequence, chance: Sequence, *, name: str = "") -> Any:
  """One category's retention from its datasets' scores (floats or arrays of bootstrap replicates):
  the summed gain over chance of ``model`` divided by that of ``expert``. Raises ValueError for floats
  whose denominator is not positive; arrays get NaN there (a replicate that cannot be normalized)."""
  gain_m = sum(m - c for m, c in zip(model, chance))
  gain_e = sum(e - c for e, c in zip(expert, chance))
  if np.ndim(gain_e) == 0:
    if not float(gain_e) > 0:
      raise ValueError(f"normalize: the expert of {name or 'a category'} is not above chance on its datasets "
                       f"(summed gain {float(gain_e):g}); chance-corrected retention is undefined "
                       "(check_expert flags such experts)")
    return gain_m / gain_e
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(gain_e > 0, gain_m / np.where(gain_e > 0, gain_e, 1.0), np.nan)


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


def held_in_retention(model: Mapping[str, float], expert: Mapping[str, float], chance: Mapping[str, float],
                      task_categories: Mapping[str, str], merged_categories: Sequence[str]) -> Normalized:
  """Chance-corrected held-in retention: :func:`held_in` with each category's ratios replaced by
  :func:`category_retention` (1: the merge keeps all of the expert's gain over guessing; 0: none of
  it); ``per_task`` holds the per-dataset quotients for inspection. Raises ValueError naming the
  category when its expert gains nothing over chance.

  Args:
    chance: task -> score of guessing, in the scores' unit (:func:`rank_chance` for rank tasks).
  """
  return _ratios(model, expert, task_categories, list(dict.fromkeys(merged_categories)), "expert", chance)


def rank_chance(num_choices: Sequence[int], num_correct: Sequence[int] | None = None, scale: float = 100.0) -> float:
  """Expected rank-classification score of a uniform random choice: the mean over examples of
  #correct / #choices, times ``scale`` (100 for the suite's percent accuracies)."""
  choices = np.asarray(num_choices, np.float64)
  if choices.size == 0 or np.any(choices < 1):
    raise ValueError("rank_chance: every example needs at least one choice")
  correct = np.ones_like(choices) if num_correct is None else np.asarray(num_correct, np.float64)
  return float(scale * np.mean(correct / choices))


@dataclasses.dataclass(frozen=True)
class ExpertCheck:
  """Whether an expert clearly learned its category (see :func:`check_expert`).

  Attributes:
    expert, base, chance: category means of the tasks' scores (the scores' unit).
    z_chance: (expert - chance) / SE(expert).
    z_base: (expert - base) / SE(expert - base) (base and expert taken as independent samples, which
      overstates the SE of a paired difference: the check errs towards flagging).
    clear: both z at least the threshold, and every task's expert at least the threshold above its
      chance level (``z_chance_tasks``).
  """

  expert: float
  base: float
  chance: float
  z_chance: float
  z_base: float
  clear: bool
  z_chance_tasks: float = float("inf")  # the least per-task (expert - chance) / SE(expert)
  below_base: tuple[str, ...] = ()  # tasks on which the expert scores below its base (a finding, not a flag)


def _category_se(scores: Mapping[str, float], counts: Mapping[str, int], tasks: Sequence[str], scale: float) -> float:
  var = 0.0
  for t in tasks:
    p = min(max(float(scores[t]) / scale, 0.0), 1.0)
    var += p * (1 - p) / int(counts[t])
  return scale * math.sqrt(var) / len(tasks)


def check_expert(expert: Mapping[str, float], base: Mapping[str, float] | None, chance: Mapping[str, float],
                 counts: Mapping[str, int], tasks: Sequence[str], *, z: float = 3.0, scale: float = 100.0) -> ExpertCheck:
  """Is an expert clearly above its base and chance on its category's ``tasks``?

  Compares category means (the mean over ``tasks``) with binomial standard errors from each task's
  example count: the expert must be at least ``z`` standard errors above chance and above the base
  (``base=None``: chance only), and on each task at least ``z`` standard errors above that task's
  chance (a task at chance would make its ratio noise). Tasks where the expert scores below its base
  are listed (``below_base``) but do not flag it: the category is the unit the study normalizes by.
  Use validation scores: the check decides what the study reports.

  Args:
    expert, base: task -> score (accuracy in ``scale`` units).
    chance: task -> chance score (same unit).
    counts: task -> number of examples scored.
  """
  if not tasks:
    raise ValueError("check_expert: no tasks")
  missing = [t for t in tasks if t not in expert or t not in chance or t not in counts or (base is not None and t not in base)]
  if missing:
    raise KeyError(f"check_expert: no score, chance level or example count for task {missing[0]!r}")
  mean = lambda m: sum(float(m[t]) for t in tasks) / len(tasks)
  e, c = mean(expert), mean(chance)
  se_e = _category_se(expert, counts, tasks, scale)
  z_chance = _z(e - c, se_e)
  z_tasks = min(_z(float(expert[t]) - float(chance[t]), _category_se(expert, counts, [t], scale)) for t in tasks)
  if base is None:
    b, z_base, below = float("nan"), float("inf"), ()
  else:
    b = mean(base)
    z_base = _z(e - b, math.hypot(se_e, _category_se(base, counts, tasks, scale)))
    below = tuple(t for t in tasks if float(expert[t]) < float(base[t]))
  return ExpertCheck(e, b, c, z_chance, z_base, bool(z_chance >= z and z_base >= z and z_tasks >= z), z_tasks, below)


def _z(diff: float, se: float) -> float:
  if se > 0:
    return diff / se
  return math.copysign(math.inf, diff) if diff else 0.0


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
