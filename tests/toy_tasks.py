"""Tiny seqio tasks for training / world-builder tests (ByteVocabulary, no files needed).

``register(prefix)`` adds ``<prefix>_pretrain``, ``<prefix>_instruct``, ``<prefix>_heldin_<c>`` for
c in CATEGORIES and ``<prefix>_heldin``, mirroring the names the real suite registers.
"""

import functools

import numpy as np
import seqio
import tensorflow as tf

VOCAB = seqio.ByteVocabulary()
CATEGORIES = ("copy", "reverse")
_WORDS = ("red", "blue", "green", "cat", "dog", "sun", "moon", "tree")
_SPLIT = {"train": 0, "validation": 1, "test": 2}


def _dataset_fn(split, shuffle_files, seed=0, kind="copy", n=256):
  del shuffle_files, seed
  rng = np.random.default_rng(1000 * _SPLIT[split] + sum(map(ord, kind)))
  ins, tgt = [], []
  for _ in range(n):
    w = [str(x) for x in rng.choice(_WORDS, 3)]
    if kind == "pretrain":
      ins.append("")
      tgt.append("the " + " and the ".join(w) + ".")
    else:
      out = {"copy": w, "reverse": w[::-1], "instruct": sorted(w)}[kind]
      ins.append(f"{kind}: " + " ".join(w))
      tgt.append(" ".join(out))
  return tf.data.Dataset.from_tensor_slices({"inputs": ins, "targets": tgt})


def register(prefix: str = "mjtoy") -> None:
  """Registers the toy tasks and mixtures (idempotent)."""
  if f"{prefix}_heldin" in seqio.MixtureRegistry.names():
    return
  feats = {"inputs": seqio.Feature(VOCAB, add_eos=False), "targets": seqio.Feature(VOCAB, add_eos=True)}
  for kind in ("pretrain", "instruct") + CATEGORIES:
    seqio.TaskRegistry.add(
        f"{prefix}_t_{kind}",
        seqio.FunctionDataSource(functools.partial(_dataset_fn, kind=kind),
                                 splits=["train", "validation", "test"]),
        output_features=feats,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos])
  seqio.MixtureRegistry.add(f"{prefix}_pretrain", [f"{prefix}_t_pretrain"], default_rate=1.0)
  seqio.MixtureRegistry.add(f"{prefix}_instruct", [f"{prefix}_t_instruct"], default_rate=1.0)
  for c in CATEGORIES:
    seqio.MixtureRegistry.add(f"{prefix}_heldin_{c}", [f"{prefix}_t_{c}"], default_rate=1.0)
  seqio.MixtureRegistry.add(f"{prefix}_heldin", [f"{prefix}_t_{c}" for c in CATEGORIES],
                            default_rate=1.0)


register("mjtoy")  # importing this module (e.g. --config.task_module=toy_tasks) registers the toy suite
