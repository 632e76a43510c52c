"""seqio preprocessors for the synthetic suite.

`rank_classification` follows T5/T0's preprocessor of the same name (t5.data.preprocessors, not
part of seqio 0.0.20): in "eval" mode each example becomes one example per answer choice with
`inputs`, `targets` = the choice, `idx` = [example index, choice index] and `is_correct`; the model
scores every (inputs, choice) pair and the metric picks the highest-scoring choice per example.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import tensorflow as tf


def as_written(preprocessor: Callable[..., tf.data.Dataset]) -> Callable[..., tf.data.Dataset]:
  """``preprocessor`` with the functions it maps over a dataset traced as written, without AutoGraph.

  tf.data rewrites every mapped function with AutoGraph (Python control flow on tensors becomes TensorFlow
  ops) before tracing it. The project's preprocessors (and seqio's ``tokenize`` and
  ``append_eos_after_trim``) have no such control flow: the rewrite leaves their graphs as they are, yet
  it is about a third of a fresh process's first evaluator set-up (docs/BENCHMARKS.md). A preprocessor
  that did need it fails while its dataset is built (e.g. "iterating over a symbolic tf.Tensor"), never
  silently. The signature stays the preprocessor's, so seqio still passes ``sequence_length`` and
  ``output_features`` where it asks for them.
  """
  plain = tf.autograph.experimental.do_not_convert(preprocessor)

  @functools.wraps(preprocessor)
  def traced_as_written(*args, **kwargs):
    return plain(*args, **kwargs)
  return traced_as_written


def rank_classification(dataset: tf.data.Dataset, mode: str = "eval", keep: Sequence[str] = ()) -> tf.data.Dataset:
  """Expands `{"inputs", "choices", "label"}` examples into one example per choice.

  mode "eval": all choices, for ranking. mode "train": only the correct choice (plain seq2seq).
  keep: scalar fields copied onto every choice's example (e.g. the prompt template's index).
  """
  if mode not in ("eval", "train"):
    raise ValueError(f"rank_classification: mode must be 'eval' or 'train', got {mode!r}")

  def expand(idx, ex):
    n = tf.shape(ex["choices"])[0]
    is_correct = tf.equal(tf.range(n, dtype=tf.int64), tf.cast(ex["label"], tf.int64))
    return {
        "idx": tf.stack([tf.fill([n], tf.cast(idx, tf.int64)), tf.range(n, dtype=tf.int64)], axis=1),
        "inputs": tf.fill([n], ex["inputs"]),
        "targets": ex["choices"],
        "is_correct": is_correct,
        **{k: tf.fill([n], ex[k]) for k in keep},
    }

  ds = dataset.enumerate().map(expand, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.unbatch()
  if mode == "train":
    ds = ds.filter(lambda ex: ex["is_correct"])
  return ds


def drop_choice_fields(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Keeps only `inputs` and `targets` (for training mixtures)."""
  return dataset.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]},
                     num_parallel_calls=tf.data.AUTOTUNE)
