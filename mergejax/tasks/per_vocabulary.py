"""Any registered seqio task or mixture, tokenized with another vocabulary (a checkpoint's own tokenizer).

Suites register their tasks once, with their own vocabulary (the synthetic suite's SentencePiece model).
:func:`with_vocabulary` registers, once per vocabulary, a copy of every task of a mixture whose output
features use the given vocabulary (same source, preprocessors, postprocessor and metrics), under the
task's name plus a short tag of the vocabulary, and a mixture of the copies; it returns the mixture's
name. So every suite (the synthetic one, T0 over TFDS, a user's) can be evaluated with any checkpoint's
tokenizer. Categories follow the original tasks. Thread-safe.
"""

from __future__ import annotations

import hashlib
import threading

import seqio

from mergejax.tasks import categories

_LOCK = threading.Lock()


def vocabulary_tag(vocabulary: seqio.Vocabulary) -> str:
  """A short, stable name for a vocabulary (its class, files and special ids)."""
  parts = [type(vocabulary).__name__, str(getattr(vocabulary, "sentencepiece_model_file", "")),
           str(getattr(vocabulary, "path", "")), str(getattr(vocabulary, "offset", "")), str(vocabulary.eos_id),
           str(vocabulary.vocab_size)]
  return "v" + hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]


def _same(a: seqio.Vocabulary, b: seqio.Vocabulary) -> bool:
  return a is b or (type(a) is type(b) and vocabulary_tag(a) == vocabulary_tag(b))


def with_vocabulary(mixture_or_task: str, vocabulary: seqio.Vocabulary | None) -> str:
  """The name of ``mixture_or_task`` re-tokenized with ``vocabulary`` (registering it on first use); the
  name itself when the tasks already use that vocabulary or ``vocabulary`` is None."""
  if vocabulary is None:
    return mixture_or_task
  mt = seqio.get_mixture_or_task(mixture_or_task)
  tasks = list(mt.tasks) if isinstance(mt, seqio.Mixture) else [mt]
  if all(_same(f.vocabulary, vocabulary) for t in tasks for f in t.output_features.values()):
    return mixture_or_task
  tag = vocabulary_tag(vocabulary)
  with _LOCK:
    names = []
    for t in tasks:
      name = f"{t.name}_{tag}"
      if name not in seqio.TaskRegistry.names():
        feats = {k: seqio.Feature(vocabulary, add_eos=f.add_eos, required=f.required, dtype=f.dtype, rank=f.rank)
                 for k, f in t.output_features.items()}
        seqio.TaskRegistry.add_provider(name, t.replace(name=name, output_features=feats))
        categories.register_category(name, categories.task_category(t.name))
      names.append(name)
    if not isinstance(mt, seqio.Mixture):
      return names[0]
    mixture = f"{mt.name}_{tag}"
    if mixture not in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.add(mixture, names, default_rate=1.0)
    return mixture
