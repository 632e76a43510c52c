"""Rebuilds the suite's SentencePiece model (see mergejax/tasks/vocab.py); deterministic.

  python -m mergejax.tasks.build_vocab --out=mergejax/tasks/data/mj.model --vocab_size=1024
"""

from absl import app, flags

from mergejax.tasks import vocab

_OUT = flags.DEFINE_string("out", str(vocab.DEFAULT_MODEL), "Where to write the .model file.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", vocab.DEFAULT_VOCAB_SIZE, "Number of pieces.")
_SEED = flags.DEFINE_integer("seed", 0, "World seed of the training text.")


def main(argv):
  del argv
  path = vocab.build(_OUT.value, _VOCAB_SIZE.value, _SEED.value)
  print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
  app.run(main)
