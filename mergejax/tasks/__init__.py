"""The synthetic T0-like task suite as seqio Tasks and Mixtures (see docs/TASKS.md).

`import mergejax.tasks` registers, idempotently:
  * one Task per dataset: 16 held-in (8 T0 categories x 2), 7 held-out (4 categories), 16
    instruction-tuning tasks and the pretraining corpus `mj_corpus`;
  * `<task>_rank` for every choice task (T0 rank classification, scored with `score_fn`);
  * Mixtures `mj_pretrain`, `mj_instruct`, `mj_heldin[_<category>][_rank]`,
    `mj_heldout[_<category>][_rank]`.
Data is generated lazily on first use; sizes and the world seed are set with `configure(...)`.
"""

from mergejax.tasks import generators
from mergejax.tasks import registry
from mergejax.tasks.categories import RANK_SUFFIX, register_category, task_category
from mergejax.tasks.generators import HELDIN_CATEGORIES, HELDOUT_CATEGORIES, SPECS, Example
from mergejax.tasks.splits import SPLITS, SuiteConfig, configure, examples, get_config
from mergejax.tasks.vocab import get_vocabulary


def _check_category(category: str, known: tuple[str, ...]) -> None:
  if category not in known:
    raise ValueError(f"unknown category {category!r}; expected one of {known}")


def heldin_tasks(category: str) -> list[str]:
  """The 2 held-in task names of a category (e.g. "sentiment")."""
  _check_category(category, HELDIN_CATEGORIES)
  return generators.names("heldin", category)


def heldout_tasks(category: str | None = None) -> list[str]:
  """Held-out task names of a category, or all 7 when `category` is None."""
  if category is not None:
    _check_category(category, HELDOUT_CATEGORIES)
  return generators.names("heldout", category)


def instruct_tasks() -> list[str]:
  return generators.names("instruct")


def is_choice_task(name: str) -> bool:
  """Whether a synthetic task (or its `_rank` variant) has answer choices."""
  base = name[: -len(RANK_SUFFIX)] if name.endswith(RANK_SUFFIX) and name not in SPECS else name
  if base not in SPECS:
    raise KeyError(f"unknown synthetic task {name!r}")
  return SPECS[base].is_choice


registry.register_all()

__all__ = ["HELDIN_CATEGORIES", "HELDOUT_CATEGORIES", "SPECS", "SPLITS", "Example", "SuiteConfig",
           "RANK_SUFFIX", "configure", "examples", "get_config", "get_vocabulary", "heldin_tasks",
           "heldout_tasks", "instruct_tasks", "is_choice_task", "register_category", "task_category"]
