"""Real T0 held-out tasks over TFDS (Sanh et al., 2022, "Multitask Prompted Training Enables
Zero-Shot Task Generalization", arXiv 2110.08207), for rank-classification evaluation.

Each dataset gets one promptsource-style template (the T0 paper averages over several; one keeps the
evaluation cheap) and its answer choices; the task ``t0_<name>_rank`` expands every example into one
example per choice (:func:`mergejax.tasks.preprocessors.rank_classification`), the model scores each
choice's log-likelihood, and :func:`mergejax.tasks.metrics.rank_accuracy` picks the highest (T0's
protocol). Categories follow T0's held-out grouping:

============================  ==================================================
sentence_completion           super_glue/copa, hellaswag
nli                           super_glue/rte, super_glue/cb, anli r1, r2, r3
coreference                   super_glue/wsc.fixed, winogrande (xl)
word_sense                    super_glue/wic
============================  ==================================================

Splits: our ``test`` is the labelled TFDS split T0 reports on (``validation``; ANLI's ``test``); our
``validation`` is a slice of TFDS ``train`` (ANLI: ``validation``), for model selection without
touching the reported split. Mixtures: ``t0_heldout_rank`` (all ten) and
``t0_heldout_<category>_rank``.

Usage::

    from mergejax.tasks import t0
    t0.register()                      # the synthetic suite's SentencePiece vocabulary by default
    # TFDS_DATA_DIR=gs://bucket/tensorflow_datasets (prepared with `tfds build super_glue/rte` etc.)

The data must be prepared by TFDS beforehand (nothing is downloaded at evaluation time).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import seqio
import tensorflow as tf

from mergejax.tasks import categories
from mergejax.tasks import metrics
from mergejax.tasks import preprocessors
from mergejax.tasks import registry
from mergejax.tasks import vocab
from mergejax.tasks.categories import RANK_SUFFIX

CATEGORIES = ("sentence_completion", "nli", "coreference", "word_sense")
PREFIX = "t0_"


def _s(x) -> tf.Tensor:
  return tf.strings.strip(tf.cast(x, tf.string))


def _rte(ex):
  inputs = tf.strings.join([_s(ex["premise"]), "\nQuestion: Does this imply that \"", _s(ex["hypothesis"]),
                            "\"? Yes or no?"])
  return inputs, tf.constant(["Yes", "No"]), ex["label"]  # 0 entailment, 1 not_entailment


def _cb(ex):
  inputs = tf.strings.join([_s(ex["premise"]), "\nQuestion: ", _s(ex["hypothesis"]),
                            " True, False, or Neither?"])
  return inputs, tf.constant(["True", "False", "Neither"]), ex["label"]  # entailment, contradiction, neutral


def _anli(ex):
  inputs = tf.strings.join([_s(ex["context"]), "\nQuestion: ", _s(ex["hypothesis"]),
                            " True, False, or Neither?"])
  return inputs, tf.constant(["True", "Neither", "False"]), ex["label"]  # e, n, c


def _lower_first(x):
  x = _s(x)
  return tf.strings.join([tf.strings.lower(tf.strings.substr(x, 0, 1)), tf.strings.substr(x, 1, -1)])


def _copa(ex):
  premise = tf.strings.regex_replace(_s(ex["premise"]), r"\.$", "")
  connector = tf.where(tf.equal(ex["question"], "cause"), " because", " so")
  inputs = tf.strings.join([premise, connector])
  return inputs, tf.stack([_lower_first(ex["choice1"]), _lower_first(ex["choice2"])]), ex["label"]


def _hellaswag(ex):
  return _s(ex["context"]), tf.map_fn(_s, ex["endings"]), ex["label"]


def _winogrande(ex):
  inputs = tf.strings.join([_s(ex["sentence"]), "\nReplace the _ in the above sentence with the correct option:",
                            "\n- ", _s(ex["option1"]), "\n- ", _s(ex["option2"])])
  return inputs, tf.stack([_s(ex["option1"]), _s(ex["option2"])]), ex["label"]  # 0 option1, 1 option2


def _wsc(ex):
  inputs = tf.strings.join([_s(ex["text"]), " In the previous sentence, does the pronoun \"",
                            _s(ex["span2_text"]), "\" refer to ", _s(ex["span1_text"]), "? Yes or no?"])
  return inputs, tf.constant(["No", "Yes"]), ex["label"]  # False, True


def _wic(ex):
  inputs = tf.strings.join(["Does the word \"", _s(ex["word"]), "\" have the same meaning in these two "
                            "sentences? Yes, No?\n", _s(ex["sentence1"]), "\n", _s(ex["sentence2"])])
  return inputs, tf.constant(["No", "Yes"]), ex["label"]  # False, True


@dataclasses.dataclass(frozen=True)
class T0Dataset:
  """One held-out dataset: TFDS name (with version), split mapping, template and category."""

  name: str
  tfds_name: str
  category: str
  template: Callable[[dict[str, tf.Tensor]], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]
  validation_split: str
  test_split: str

  @property
  def task_name(self) -> str:
    return f"{PREFIX}{self.name}{RANK_SUFFIX}"


def datasets(validation_examples: int = 256) -> tuple[T0Dataset, ...]:
  """The ten held-out datasets; ``validation`` reads the first ``validation_examples`` of train."""
  v = f"[:{int(validation_examples)}]"
  return (
      T0Dataset("copa", "super_glue/copa:1.0.2", "sentence_completion", _copa, "train" + v, "validation"),
      T0Dataset("hellaswag", "hellaswag:1.1.0", "sentence_completion", _hellaswag, "train" + v, "validation"),
      T0Dataset("rte", "super_glue/rte:1.0.2", "nli", _rte, "train" + v, "validation"),
      T0Dataset("cb", "super_glue/cb:1.0.2", "nli", _cb, "train" + v, "validation"),
      T0Dataset("anli_r1", "anli/r1:0.1.0", "nli", _anli, "validation" + v, "test"),
      T0Dataset("anli_r2", "anli/r2:0.1.0", "nli", _anli, "validation" + v, "test"),
      T0Dataset("anli_r3", "anli/r3:0.1.0", "nli", _anli, "validation" + v, "test"),
      T0Dataset("wsc", "super_glue/wsc.fixed:1.0.2", "coreference", _wsc, "train" + v, "validation"),
      T0Dataset("winogrande", "winogrande:1.2.0", "coreference", _winogrande, "train_xl" + v, "validation"),
      T0Dataset("wic", "super_glue/wic:1.0.2", "word_sense", _wic, "train" + v, "validation"),
  )


def apply_template(dataset: tf.data.Dataset, template) -> tf.data.Dataset:
  """Raw TFDS examples -> {inputs, targets, choices, label}; drops examples without a valid label
  (unlabelled test splits use -1) and empty choices."""

  def fmt(ex):
    inputs, choices, label = template(ex)
    label = tf.cast(label, tf.int64)
    safe = tf.clip_by_value(label, 0, tf.maximum(tf.cast(tf.shape(choices)[0], tf.int64) - 1, 0))
    target = tf.cond(tf.shape(choices)[0] > 0, lambda: tf.gather(choices, safe), lambda: tf.constant(""))
    return {"inputs": inputs, "targets": target, "choices": choices, "label": label}

  def valid(ex):
    n = tf.cast(tf.shape(ex["choices"])[0], tf.int64)
    return tf.logical_and(ex["label"] >= 0, ex["label"] < n)

  return dataset.map(fmt, num_parallel_calls=tf.data.AUTOTUNE).filter(valid)


class TfdsSource(seqio.TfdsDataSource):
  """seqio.TfdsDataSource that reports an unknown size instead of failing when TFDS has no split
  metadata (as under ``tfds.testing.mock_data``); seqio then simply skips its in-memory cache."""

  def num_input_examples(self, split: str) -> int | None:
    try:
      return super().num_input_examples(split)
    except KeyError:
      return None


def default_vocabulary() -> seqio.Vocabulary:
  return vocab.get_vocabulary()


def register(vocabulary: seqio.Vocabulary | None = None, *, validation_examples: int = 256,
             tfds_data_dir: str | None = None, overwrite: bool = False) -> list[str]:
  """Registers every ``t0_<name>_rank`` task and the ``t0_heldout*_rank`` mixtures.

  Idempotent (an existing registration is kept unless ``overwrite``). Returns the task names.

  Args:
    vocabulary: tokenizer for inputs and targets (default: the synthetic suite's SentencePiece).
    validation_examples: size of our ``validation`` split (a slice of TFDS train).
    tfds_data_dir: where prepared TFDS data lives (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    overwrite: re-register (e.g. with another vocabulary).
  """
  with registry.LOCK:  # every check-then-add and remove-then-add at once (see registry.LOCK)
    return _register(vocabulary, validation_examples, tfds_data_dir, overwrite)


def _register(vocabulary: seqio.Vocabulary | None, validation_examples: int, tfds_data_dir: str | None,
              overwrite: bool) -> list[str]:
  vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
  feats = {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=True)}
  mixtures = ["t0_heldout_rank"] + [f"t0_heldout_{c}_rank" for c in CATEGORIES]
  if overwrite:
    for m in mixtures:
      seqio.MixtureRegistry.remove(m)
  names = []
  for d in datasets(validation_examples):
    names.append(d.task_name)
    categories.register_category(d.task_name, d.category)
    if d.task_name in seqio.TaskRegistry.names():
      if not overwrite:
        continue
      seqio.TaskRegistry.remove(d.task_name)
    source = TfdsSource(d.tfds_name, tfds_data_dir=tfds_data_dir,
                        splits={"validation": d.validation_split, "test": d.test_split})
    seqio.TaskRegistry.add(
        d.task_name, source=source, output_features=feats,
        preprocessors=[functools.partial(apply_template, template=d.template), preprocessors.rank_classification,
                       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=metrics.rank_classification_postprocessor, metric_fns=[metrics.rank_accuracy])
  by_cat: dict[str, list[str]] = {}
  for d in datasets(validation_examples):
    by_cat.setdefault(d.category, []).append(d.task_name)
  for c in CATEGORIES:
    if f"t0_heldout_{c}_rank" not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(f"t0_heldout_{c}_rank", by_cat[c], default_rate=1.0)
  if "t0_heldout_rank" not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add("t0_heldout_rank", names, default_rate=1.0)
  return names


def task_categories() -> dict[str, str]:
  """task name -> category for the T0 held-out tasks."""
  return {d.task_name: d.category for d in datasets()}


def tfds_names() -> dict[str, str]:
  """task name -> TFDS name (what `tfds build` must prepare)."""
  return {d.task_name: d.tfds_name for d in datasets()}
