"""The suite's SentencePiece vocabulary: shipped as mergejax/tasks/data/mj.model (trained on the suite's
first release and kept fixed since, so worlds of different versions share one tokenization), or trained
from the current suite by :func:`build`.

The model is a BPE SentencePiece model (pad 0, eos 1, unk 2, no bos) trained on the pretraining
corpus and on the inputs, targets and answer choices of every synthetic task. The lexicon of the
world is fixed (only relations depend on the seed), so one model serves every seed.

Train one from the current suite (deterministic, ~7 s on 2 CPU cores; a different model than the
shipped one):

  python -m mergejax.tasks.build_vocab --out=PATH --vocab_size=1024
"""

from __future__ import annotations

import functools
import io
import os
import pathlib
import random

import seqio

from mergejax import files
from mergejax.tasks import facts
from mergejax.tasks import generators

DEFAULT_MODEL = pathlib.Path(__file__).parent / "data" / "mj.model"
DEFAULT_VOCAB_SIZE = 1024


@functools.lru_cache(maxsize=4)
def get_vocabulary(path: str | None = None):
  """The seqio SentencePieceVocabulary of the suite (loaded lazily by seqio; cached)."""
  model = pathlib.Path(path) if path else DEFAULT_MODEL
  if not model.is_file():
    raise FileNotFoundError(f"{model}: SentencePiece model missing; rebuild it with "
                            "`python -m mergejax.tasks.build_vocab`")
  return seqio.SentencePieceVocabulary(str(model))


def training_text(seed: int = 0, num_docs: int = 30000, num_per_task: int = 600) -> list[str]:
  """Sentences the vocabulary is trained on: corpus documents and all task texts."""
  world = facts.make_world(seed)
  rng = random.Random(facts.sub_seed(seed, "vocab"))
  lines = [facts.corpus_document(world, rng) for _ in range(num_docs)]
  for spec in generators.SPECS.values():
    if spec.group == "pretrain":
      continue
    for _ in range(num_per_task):
      ex = spec.generator(world, rng)
      lines += [ex.inputs, ex.targets, *ex.choices]
  return [l for l in lines if l]


def build(out: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0) -> pathlib.Path:
  """Trains the SentencePiece model and writes it atomically to `out`."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top  # only to rebuild the vocabulary
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(training_text(seed)), model_writer=buf, vocab_size=vocab_size,
      model_type="bpe", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=2, input_sentence_size=0, shuffle_input_sentence=False, hard_vocab_limit=True,
      minloglevel=2)
  return files.atomic_write(out, buf.getvalue())
