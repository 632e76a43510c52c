"""Training batches from seqio: ``seqio.get_dataset`` with a DecoderFeatureConverter.

Examples are ``inputs`` + ``targets`` pairs trained as a prefix LM with a *causal* decoder: the
converter concatenates inputs and targets into one sequence and puts loss weights on the targets
only (``decoder_loss_weights``). We ignore ``decoder_causal_attention`` (no bidirectional prefix), so
training, scoring and decoding all use the same plain causal model. With ``pack=True`` several short
examples share a row; ``decoder_segment_ids`` / ``decoder_positions`` keep them apart.
"""

from __future__ import annotations

import logging
from typing import Iterator, Mapping

import numpy as np

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")


class _QuietUncachedWarning(logging.Filter):
  """Drops seqio's per-call "uncached FunctionDataset" warning (the suite is generated in memory)."""

  def filter(self, record):
    return "uncached FunctionDataset" not in record.getMessage()


_FILTER = _QuietUncachedWarning()


def _tf_cpu_only():
  absl_logger = logging.getLogger("absl")
  if _FILTER not in absl_logger.filters:
    absl_logger.addFilter(_FILTER)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # ~3 s: only when batches come from seqio
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialized
    pass


def vocab_size(mixture: str) -> int:
  """The vocabulary size of a registered seqio task or mixture's ``targets`` feature."""
  import seqio  # pylint: disable=g-import-not-at-top  # TensorFlow: only when batches come from seqio
  provider = seqio.get_mixture_or_task(mixture)
  return int(provider.output_features["targets"].vocabulary.vocab_size)


def sentencepiece_file(mixture: str) -> str | None:
  """The SentencePiece model file of ``mixture``'s targets vocabulary (None for other vocabularies)."""
  import seqio  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  vocab = seqio.get_mixture_or_task(mixture).output_features["targets"].vocabulary
  return getattr(vocab, "sentencepiece_model_file", None)


def padded_vocab_size(n: int, multiple: int = 128) -> int:
  """Rounds a vocabulary size up to a multiple of 128 (friendlier matmul shapes)."""
  return -(-n // multiple) * multiple


def batches(mixture: str, *, batch_size: int, feature_lengths: Mapping[str, int], seed: int,
            split: str = "train", pack: bool = True, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """An endless, deterministic (given ``seed``) iterator of global batches as int32 numpy arrays.

  Args:
    mixture: a registered seqio Task or Mixture name.
    batch_size: global rows per batch.
    feature_lengths: e.g. {"inputs": 96, "targets": 32}; rows have length inputs + targets.
    seed: shuffling and mixture-sampling seed.
    split: dataset split.
    pack: pack several examples per row.
    skip: batches to skip first (resuming at step ``skip``).
  """
  _tf_cpu_only()
  import seqio  # pylint: disable=g-import-not-at-top  # TensorFlow: only when batches come from seqio
  ds = seqio.get_dataset(
      mixture, task_feature_lengths=dict(feature_lengths), dataset_split=split, shuffle=True,
      num_epochs=None, seed=seed, batch_size=batch_size, verbose=False,
      feature_converter=seqio.DecoderFeatureConverter(pack=pack))
  if skip:
    ds = ds.skip(skip)
  for ex in ds.as_numpy_iterator():
    out = {k: np.asarray(ex[k], np.int32) for k in FEATURES if k in ex}
    if "decoder_segment_ids" not in out:  # unpacked: one segment per row, 0 on padding
      out["decoder_segment_ids"] = (out["decoder_target_tokens"] > 0).astype(np.int32)
      out["decoder_positions"] = np.broadcast_to(
          np.arange(out["decoder_target_tokens"].shape[1], dtype=np.int32),
          out["decoder_target_tokens"].shape).copy()
    yield out


def materialize(mixture: str, steps: int, **kw) -> list[dict[str, np.ndarray]]:
  """The first ``steps`` batches of :func:`batches`, as a list (to reuse one stream across runs)."""
  it = batches(mixture, **kw)
  return [next(it) for _ in range(steps)]
