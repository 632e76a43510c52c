"""Registers the synthetic suite with seqio: one Task per dataset, a "_rank" Task per choice dataset,
and the Mixtures of the shared contract (mj_pretrain, mj_instruct, mj_heldin[_<cat>][_rank],
mj_heldout[_<cat>][_rank]). Registration is idempotent and cheap: data is generated on first use.

seqio's registries are process-global and its ``add`` raises on a duplicate name, so every
check-then-add in mergejax (here, in ``evaluation.suites``, the T0 tasks and the training recipes)
runs under :data:`LOCK` through :func:`add_task` and :func:`add_mixture`: threads that build evaluators
at the same time register each name once.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Sequence

import seqio
import tensorflow as tf

from mergejax.tasks import generators
from mergejax.tasks.categories import RANK_SUFFIX
from mergejax.tasks import metrics
from mergejax.tasks import preprocessors as preprocessors_lib
from mergejax.tasks import splits
from mergejax.tasks import vocab


def output_features() -> dict[str, seqio.Feature]:
  vocabulary = vocab.get_vocabulary()
  return {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=True)}


def to_tf_dataset(examples) -> tf.data.Dataset:
  """Raw examples as a tf.data.Dataset of {inputs, targets, choices (ragged), label}."""
  return tf.data.Dataset.from_tensor_slices({
      "inputs": tf.constant([e.inputs for e in examples], tf.string),
      "targets": tf.constant([e.targets for e in examples], tf.string),
      "choices": tf.ragged.constant([list(e.choices) for e in examples], dtype=tf.string,
                                    ragged_rank=1) if examples else tf.ragged.constant([[]], tf.string)[:0],
      "label": tf.constant([e.label for e in examples], tf.int64),
  })


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, task: str) -> tf.data.Dataset:
  del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples when asked.
  return to_tf_dataset(splits.examples(task, split))


def _source(task: str) -> seqio.FunctionDataSource:
  return seqio.FunctionDataSource(functools.partial(_dataset_fn, task=task), splits=splits.SPLITS)


LOCK = threading.RLock()  # held around every check-then-add on seqio's registries (re-entrant: see suites)


def add_task(name: str, *, preprocessors: Sequence[Callable[..., tf.data.Dataset]] = (), **kwargs) -> None:
  """Registers a seqio Task unless one of that name exists (atomic under :data:`LOCK`); its preprocessors
  are traced as written (:func:`mergejax.tasks.preprocessors.as_written`)."""
  with LOCK:
    if name not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add(name, preprocessors=[preprocessors_lib.as_written(p) for p in preprocessors], **kwargs)


def add_mixture(name: str, tasks, default_rate: float | None = 1.0) -> None:
  """Registers a seqio Mixture of ``tasks`` (names or (name, rate) pairs) unless one of that name
  exists or ``tasks`` is empty (atomic under :data:`LOCK`)."""
  with LOCK:
    if name not in seqio.MixtureRegistry.names() and tasks:
      seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)


# Instruction tasks sampled more often than the others (rate 1): mj_it_commit at rate 1 reached only 55%
# in distribution at xs after 900 steps of instruction tuning (at rate 3: 92-94%; it has 4 to keep its
# share beside the format tasks); mj_it_sense (cue -> gloss) and the tasks in the held-in formats
# (generators.IT_FORMATS, which carry the held-in prompt frames over other data) have twice the others'.
INSTRUCT_RATES = {"mj_it_commit": 4.0, "mj_it_sense": 2.0, **{t: 2.0 for t in generators.IT_FORMATS}}


def register_all() -> None:
  """Registers every synthetic Task and Mixture (safe to call more than once, from any thread)."""
  with LOCK:
    _register_all()


def _register_all() -> None:
  feats = output_features()
  tokenize = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  for spec in generators.SPECS.values():
    add_task(spec.name, source=_source(spec.name), output_features=feats, preprocessors=tokenize,
             metric_fns=list(metrics.GENERATION_METRICS))
    if spec.is_choice:
      add_task(spec.name + RANK_SUFFIX, source=_source(spec.name), output_features=feats,
               preprocessors=[preprocessors_lib.rank_classification] + tokenize,
               postprocess_fn=metrics.rank_classification_postprocessor, metric_fns=[metrics.rank_accuracy])
  add_mixture("mj_pretrain", generators.names("pretrain"))
  # The instruction tasks alone; instruction tuning mixes corpus rows in (mergejax.training.recipes).
  add_mixture("mj_instruct", [(t, INSTRUCT_RATES.get(t, 1.0)) for t in generators.names("instruct")])
  for group, cats in (("heldin", generators.HELDIN_CATEGORIES), ("heldout", generators.HELDOUT_CATEGORIES)):
    for cat in cats:
      tasks = generators.names(group, cat)
      add_mixture(f"mj_{group}_{cat}", tasks)
      add_mixture(f"mj_{group}_{cat}{RANK_SUFFIX}", [t + RANK_SUFFIX for t in tasks if generators.SPECS[t].is_choice])
    tasks = generators.names(group)
    add_mixture(f"mj_{group}", tasks)
    add_mixture(f"mj_{group}{RANK_SUFFIX}", [t + RANK_SUFFIX for t in tasks if generators.SPECS[t].is_choice])
