"""Evaluation suites: short names for what the paper evaluates, resolved to seqio mixtures.

The paper's protocol scores a choice task by rank classification and a generation task by its
generated text. The synthetic suite registers both variants of every choice task, so the suites here
combine, per category, each choice task's ``_rank`` variant with the generation tasks that have no
choices:

=======================  =====================================================================
name                     seqio mixture
=======================  =====================================================================
``heldin``               ``mj_heldin_eval`` (16 held-in tasks)
``heldin_<category>``    ``mj_heldin_<category>_eval``
``heldout``              ``mj_heldout_eval`` (7 held-out tasks)
``heldout_<category>``   ``mj_heldout_<category>_eval``
``all``                  ``mj_all_eval`` (held-in and held-out: a study's test evaluations)
``t0``                   ``t0_heldout_rank`` (the real T0 held-out tasks over TFDS)
``t0_heldin_<category>``  ``t0_heldin_<category>_eval`` (a category's real T0 held-in tasks)
anything else            used as a seqio mixture or task name as is
=======================  =====================================================================
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import seqio

from mergejax import tasks
from mergejax.tasks import registry
from mergejax.tasks import t0


def _eval_tasks(names: list[str]) -> list[str]:
  return [n + tasks.RANK_SUFFIX if tasks.is_choice_task(n) else n for n in names]


def _add(name: str, task_names: list[str]) -> str:
  registry.add_mixture(name, task_names)  # atomic check-then-add: evaluators are built on several threads
  return name


def task_names(suite: str) -> list[str]:
  """The seqio task names a suite (or mixture / task name) evaluates."""
  mt = seqio.get_mixture_or_task(resolve(suite))
  return [t.name for t in mt.tasks] if isinstance(mt, seqio.Mixture) else [mt.name]


def union(suites: Sequence[str]) -> str:
  """A seqio mixture of every task of ``suites`` (one suite: its own mixture), registered once under a
  name derived from the task list, e.g. a study's validation split over only its categories."""
  if len(suites) == 1:
    return resolve(suites[0])
  names: list[str] = []
  for suite in suites:
    names += [t for t in task_names(suite) if t not in names]
  return _add("mj_union_" + hashlib.sha1(",".join(names).encode()).hexdigest()[:12], names)


def training_variant(suite: str) -> str:
  """A mixture of the tasks ``suite`` evaluates in their training form: each ``_rank`` task's plain
  inputs / targets task (one row per example, the answer as its targets: what an expert was fine-tuned
  on), every other task as it is; registered once under a name derived from the task list."""
  names = []
  for t in task_names(suite):
    plain = t[:-len(tasks.RANK_SUFFIX)] if t.endswith(tasks.RANK_SUFFIX) else t
    names.append(plain if plain in seqio.TaskRegistry.names() else t)
  return _add("mj_train_" + hashlib.sha1(",".join(names).encode()).hexdigest()[:12], names)


def register_synthetic_suites() -> None:
  """Registers the ``mj_held{in,out}[_<category>]_eval`` mixtures (idempotent; safe from any thread)."""
  with registry.LOCK:  # the whole set at once: no thread sees half of it
    everything = []
    for group, cats, fn in (("heldin", tasks.HELDIN_CATEGORIES, tasks.heldin_tasks),
                            ("heldout", tasks.HELDOUT_CATEGORIES, tasks.heldout_tasks)):
      all_tasks = []
      for c in cats:
        names = _eval_tasks(list(fn(c)))
        all_tasks += names
        _add(f"mj_{group}_{c}_eval", names)
      _add(f"mj_{group}_eval", all_tasks)
      everything += all_tasks
    _add("mj_all_eval", everything)


def resolve(name: str, *, tfds_data_dir: str | None = None) -> str:
  """The seqio mixture for a suite name (registering what it needs)."""
  name = name.strip()
  if name in ("t0", "t0_heldout"):
    t0.ensure_registered(tfds_data_dir)
    return "t0_heldout_rank"
  if name in ("heldin", "heldout", "all") or name.startswith(("heldin_", "heldout_")):
    register_synthetic_suites()
    mixture = f"mj_{name}_eval"
    if mixture not in seqio.MixtureRegistry.names():
      raise ValueError(f"unknown evaluation suite {name!r} (no mixture {mixture})")
    return mixture
  if name.startswith("t0_"):
    t0.ensure_registered(tfds_data_dir)
    if name.startswith("t0_heldin") and not name.endswith("_eval"):
      return f"{name}_eval"  # the evaluation variant (rank classification, ROUGE), not the training mixture
  return name
