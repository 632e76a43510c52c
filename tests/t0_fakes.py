"""Fake TFDS examples for the T0 datasets, generated from each builder's own feature spec, for
``tfds.testing.mock_data(as_dataset_fn=fake_as_dataset)``: nothing is downloaded, and the real loading
(seqio's TFDS source), rendering and tokenization code runs on them.

Values follow the spec (text as short sentences of common words, class labels in range, sequences of
3-5 items); a few datasets get the invariants their real data has and their templates rely on (COPA's
question is "cause" or "effect", an ARC or QASC answer key names one of the choices, a HellaSwag label
indexes its endings, ...)."""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

WORDS = "the a cat dog sat ran on mat big small red it was is and why when who they them he".split()
NUM_EXAMPLES = 6  # per split: enough for every template of every dataset, few enough to stay fast


def _text(rng) -> str:
  return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))).capitalize() + "."


def _value(name: str, feature, rng):
  if isinstance(feature, tfds.features.FeaturesDict):
    return {k: _value(k, f, rng) for k, f in feature.items()}
  if isinstance(feature, tfds.features.Sequence):
    n = int(rng.integers(3, 6))  # every sequence of these datasets has a variable length
    items = [_value(name, feature.feature, rng) for _ in range(n)]
    if isinstance(feature.feature, tfds.features.FeaturesDict):
      return {k: [it[k] for it in items] for k in feature.feature.keys()}
    return items
  if isinstance(feature, tfds.features.ClassLabel):
    return int(rng.integers(feature.num_classes))
  dtype = tf.dtypes.as_dtype(feature.np_dtype)
  if dtype == tf.string:
    return _text(rng)
  if dtype == tf.bool:
    return bool(rng.integers(2))
  if dtype.is_integer:
    return int(rng.integers(4))
  return float(rng.random())


def _fix(name: str, config: str | None, ex: dict, i: int, rng) -> dict:
  """The invariants of the real data the templates rely on."""
  if name == "super_glue" and config == "copa":
    ex["question"] = ("cause", "effect")[i % 2]
  elif name == "super_glue" and config == "record":
    ex["query"] = "The @placeholder sat on the mat."
    ex["entities"] = ex["entities"][:3]
    ex["answers"] = ex["entities"][:1]
  elif name == "super_glue" and config == "wsc.fixed":
    words = ex["text"].rstrip(".").split(" ")
    ex["span1_index"], ex["span2_index"] = 0, len(words) - 1
    ex["span1_text"], ex["span2_text"] = words[0], ("they", "it")[i % 2]
    ex["text"] = " ".join(words[:-1] + [ex["span2_text"]]) + "."
  elif name == "qasc":
    n = len(ex["choices"]["text"])
    ex["choices"]["label"] = list("ABCDEFGH"[:n])
    ex["answerKey"] = ex["choices"]["label"][i % n]
  elif name == "ai2_arc":
    n = len(ex["choices"]["text"])
    ex["choices"]["label"] = list(range(n))
    ex["answerKey"] = i % n
  elif name in ("hellaswag", "story_cloze"):
    ex["endings"] = ex["endings"][:4] if name == "hellaswag" else ex["endings"][:2]
    ex["label"] = i % len(ex["endings"]) + (1 if name == "story_cloze" else 0)
  elif name == "squad":
    if i % 3 == 2:  # unanswerable
      ex["answers"] = {"text": [], "answer_start": []}
    ex["is_impossible"] = i % 3 == 2
  elif name == "wiki_bio":
    ex["input_text"]["table"]["column_header"][0] = "article_title"
    ex["input_text"]["table"]["column_header"][1] = "birth_date"
  elif name == "gem":  # train has one target per example; validation has every reference
    ex["references"] = [ex["target"], _text(rng)] if i % 2 else []
  return ex


def examples(builder, split: str, n: int = NUM_EXAMPLES) -> list[dict]:
  """``n`` deterministic fake examples of ``builder``'s ``split``."""
  config = builder.builder_config.name if builder.builder_config else None
  rng = np.random.default_rng(zlib.crc32(f"{builder.name}/{config}/{split}".encode()))
  return [_fix(builder.name, config, _value("", builder.info.features, rng), i, rng) for i in range(n)]


def fake_as_dataset(self, split, **kwargs) -> tf.data.Dataset:
  """Replaces ``DatasetBuilder._as_dataset`` under ``tfds.testing.mock_data`` (``split`` may be a slice
  such as ``train[:256]``: the slice is applied, as TFDS would)."""
  del kwargs
  name = str(split)
  base, _, sl = name.partition("[")
  rows = examples(self, base)
  if sl:
    lo, _, hi = sl.rstrip("]").partition(":")
    rows = rows[int(lo) if lo else None:int(hi) if hi else None]
  spec = self.info.features.get_tensor_spec()
  return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)


def mock_tfds(**kwargs):
  """``tfds.testing.mock_data`` serving :func:`fake_as_dataset`."""
  return tfds.testing.mock_data(as_dataset_fn=fake_as_dataset, **kwargs)
