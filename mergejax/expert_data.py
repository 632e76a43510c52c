"""Each expert's own examples for the data-aware merge methods (RegMean, Fisher, AdaMerging), read from
seqio and bound to a method: what the study and ``mergejax-merge`` feed them.

Expert t's examples are the first ``batches x batch_size`` examples of its source (a suite, a seqio
mixture or a task: in a study its category's held-in suite) in their training form
(:func:`mergejax.evaluation.suites.training_variant`: a choice task's plain inputs / targets) on
``split``: by default "train", the data the experts were fine-tuned on, as RegMean and Fisher merging
use it. One example per row, shuffled with ``seed``, tokenized with the checkpoints' own vocabulary,
read once per (vocabulary, source), through a split guard when one is given. RegMean and AdaMerging
see only what a causal model computes before the answer; Fisher the answer's log-likelihood
(:func:`mergejax.data_merge.example_mask`).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

import numpy as np

from mergejax import data_merge
from mergejax.methods.base import MergeMethod
from mergejax.methods.data_aware import NeedsData

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Settings:
  """Which examples the data-aware methods read per expert (a config's ``merge_data``)."""

  split: str = "train"
  batches: int = 2
  batch_size: int = 16
  inputs_length: int = 96
  targets_length: int = 32
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.split, str) or not self.split:
      raise ValueError(f"split={self.split!r}: expected a split name")
    for name in ("batches", "batch_size", "inputs_length", "targets_length"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def needs_data(method: MergeMethod) -> bool:
  """Whether ``method`` learns from each expert's examples (its statistics are bound to data)."""
  return isinstance(method.compute_stats, NeedsData)


@dataclasses.dataclass(frozen=True)
class ExpertData:
  """What the merge of some experts reads: the model's :class:`~mergejax.data_merge.DataModel`, each
  expert's batches (by ``labels``: ``batches[labels][t]``), keys naming each expert and its examples, and
  a cache of per-expert statistics."""

  model: Any
  batches: dict[bool, list[list[Batch]]]
  keys: tuple[Any, ...]
  cache: data_merge.StatisticsCache

  def bind(self, method: MergeMethod, base: Any, experts: Sequence[Any]) -> MergeMethod:
    """``method`` with its statistics computed from these experts' examples (per-expert ones cached)."""
    return data_merge.with_data(method, self.model, base, experts, self.batches[method.compute_stats.labels],
                                cache=self.cache, expert_keys=self.keys)


class ExpertExamples:
  """Reads (once) and keeps each source's examples, and caches per-expert statistics. Thread-safe.

  Args:
    settings: which examples.
    guard: a :class:`~mergejax.evaluation.leak_guard.SplitGuard` every read goes through (a study's:
      read outside selections, which refuse any split but validation), or None.
  """

  def __init__(self, settings: Settings, guard: Any = None):
    self.settings, self._guard = settings, guard
    self._examples: dict[tuple[str, str], list[Batch]] = {}
    self._lock = threading.Lock()
    self.statistics = data_merge.StatisticsCache()

  def read(self, vocabulary: Any, sources: Sequence[str]) -> None:
    """Reads every source's examples, tokenized with ``vocabulary`` (a seqio vocabulary)."""
    for source in sources:
      self._read(vocabulary, source)

  def _read(self, vocabulary: Any, source: str) -> None:
    # seqio and TensorFlow only when examples are read
    from mergejax.evaluation import suites as suites_lib  # pylint: disable=g-import-not-at-top
    from mergejax.tasks import per_vocabulary  # pylint: disable=g-import-not-at-top
    from mergejax.training import data as data_lib  # pylint: disable=g-import-not-at-top
    key = (per_vocabulary.vocabulary_tag(vocabulary), source)
    with self._lock:
      if key not in self._examples:
        s = self.settings
        mixture = per_vocabulary.with_vocabulary(suites_lib.training_variant(source), vocabulary)
        kw = dict(batch_size=s.batch_size, seed=s.seed, split=s.split, pack=False,
                  feature_lengths={"inputs": s.inputs_length, "targets": s.targets_length})
        if self._guard is None:
          self._examples[key] = data_lib.materialize(mixture, s.batches, **kw)
        else:
          with self._guard.reading(mixture, s.split):
            self._examples[key] = data_lib.materialize(mixture, s.batches, **kw)

  def for_experts(self, adapter: Any, vocabulary: Any, sources: Sequence[str], keys: Sequence[Any]) -> ExpertData:
    """The :class:`ExpertData` of experts whose examples come from ``sources`` (in merge order; read
    before with :meth:`read`), run through ``adapter`` (a :class:`~mergejax.ModelAdapter`); ``keys`` name
    the experts for the statistics cache, each unique to one expert and its examples (a study's: world,
    kind, size, category, checkpoint path and identity, source)."""
    from mergejax.tasks import per_vocabulary  # pylint: disable=g-import-not-at-top
    tag = per_vocabulary.vocabulary_tag(vocabulary)
    with self._lock:
      missing = [s for s in sources if (tag, s) not in self._examples]
      if missing:
        raise RuntimeError(f"the examples of {missing[0]!r} were not read before the merge")
      examples = [self._examples[(tag, s)] for s in sources]
    batches = {labels: [[{**b, "mask": data_merge.example_mask(b, labels)} for b in bs] for bs in examples]
               for labels in (False, True)}
    return ExpertData(data_merge.SeqioModel(adapter), batches, tuple(keys), self.statistics)


def bind_checkpoints(method: MergeMethod, base: str | None, experts: Sequence[str], sources: Sequence[str],
                     settings: Settings) -> MergeMethod:
  """A data-aware ``method`` bound to each expert's examples, for a merge of checkpoint files
  (``mergejax-merge``, ``mergejax-yaml``): the experts, and the base where the method uses it
  (AdaMerging; RegMean and Fisher learn from the experts alone), are loaded whole
  (:func:`mergejax.models.from_pretrained`, one device), their statistics computed from the examples of
  ``sources[t]``, and the merge then streams from the files as any method's. The examples are tokenized
  with the base's tokenizer where it is loaded, else the first expert's."""
  # seqio, TensorFlow and the model families only for a data-aware merge
  from mergejax import models  # pylint: disable=g-import-not-at-top
  from mergejax.tasks import vocab as suite_vocab  # pylint: disable=g-import-not-at-top
  load = lambda p: models.from_pretrained(p, vocabulary=suite_vocab.get_vocabulary())  # noqa: E731
  base_lm = load(base) if base and method.traits.uses_base else None
  expert_lms = [load(e) for e in experts]
  reference = base_lm or expert_lms[0]
  if reference.vocabulary is None:
    raise ValueError(f"{reference.path}: no tokenizer (tokenizer.json or tokenizer.model) to read the examples with")
  examples = ExpertExamples(settings)
  examples.read(reference.vocabulary, sources)
  data = examples.for_experts(reference.adapter, reference.vocabulary, sources, keys=range(len(experts)))
  return data.bind(method, base_lm.params if base_lm else None, [lm.params for lm in expert_lms])
