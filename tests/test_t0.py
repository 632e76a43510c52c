"""The real T0 held-out tasks, end to end through TFDS loading, templates, rank classification and
the evaluator, with tfds.testing.mock_data standing in for the (undownloadable) data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from mergejax import evaluation
from mergejax.models import Decoder, ModelConfig
from mergejax.tasks import t0

BYTES = seqio.ByteVocabulary()


_WORDS = "the a cat dog sat ran on mat big small red it was is and".split()


def _fake_as_dataset(self, split, **kwargs):
  """Deterministic fake examples from the builder's own feature spec (labels in range: TFDS's random
  mock draws hellaswag's integer label from the whole int32 range)."""
  del kwargs
  feats = self.info.features
  rng = np.random.default_rng(len(self.name) + len(split))
  text = lambda: " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 7))))

  def value(name, f):
    if isinstance(f, tfds.features.ClassLabel):
      return int(rng.integers(f.num_classes))
    if isinstance(f, tfds.features.Text):
      return "option_" + text() if name.startswith("option") else text()
    if isinstance(f, tfds.features.Sequence):
      return [text() for _ in range(4)]
    return int(rng.integers(4)) if name == "label" else 0

  examples = [{k: value(k, f) for k, f in feats.items()} for _ in range(5)]
  if "question" in feats:  # COPA's question is "cause" or "effect"
    for i, ex in enumerate(examples):
      ex["question"] = ("cause", "effect")[i % 2]
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=feats.get_tensor_spec())


def test_every_t0_task_evaluates_end_to_end_on_mock_tfds():
  names = t0.register(overwrite=True)  # the synthetic suite's SentencePiece vocabulary
  assert len(names) == 10 and set(t0.task_categories().values()) == set(t0.CATEGORIES)
  vocab = t0.default_vocabulary()
  cfg = ModelConfig(vocab_size=vocab.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)
  params = jax.jit(Decoder(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.meta.unbox(params)
  with tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset):
    ev = evaluation.Evaluator(evaluation.builtin_adapter(cfg), "t0_heldout_rank", "test", batch_size=8,
                              sequence_length={"inputs": 48, "targets": 16})
    res = ev.evaluate(params)
  for name in names:  # each template gives one correct choice per example, >= 2 choices, EOS-ended
    by_ex = {}
    for r in ev.seqio_evaluator.cached_task_datasets[name].as_numpy_iterator():
      by_ex.setdefault(int(r["idx"][0]), []).append(bool(r["is_correct"]))
      assert r["inputs_pretokenized"] and r["targets"][-1] == 1
    assert by_ex, name
    assert all(sum(v) == 1 and len(v) >= 2 for v in by_ex.values()), name
  assert set(res.tasks) == set(names)
  assert set(res.categories) == set(t0.CATEGORIES)
  assert all(0.0 <= v <= 100.0 for v in res.task_scores.values())


class Bigram(nn.Module):

  @nn.compact
  def __call__(self, tokens_BxL):
    return self.param("table", nn.initializers.zeros, (BYTES.vocab_size, BYTES.vocab_size))[tokens_BxL]


_RTE = [("The cat sat.", "A cat sat.", 0), ("It rained.", "It was dry.", 1), ("Bob ran.", "Bob moved.", 0),
        ("Sun is hot.", "Sun is cold.", 1), ("Ann ate.", "Ann had food.", 0), ("X.", "Y.", 0)]


def _rte_as_dataset(self, split, **kwargs):
  del kwargs
  assert self.name == "super_glue" and self.builder_config.name == "rte", self.name
  assert split == "validation"  # our "test" reads TFDS validation
  return tf.data.Dataset.from_tensor_slices({
      "premise": [p for p, _, _ in _RTE], "hypothesis": [h for _, h, _ in _RTE],
      "label": np.array([y for _, _, y in _RTE], np.int64), "idx": np.arange(len(_RTE), dtype=np.int32)})


def test_t0_rte_template_and_a_model_that_always_says_yes():
  t0.register(BYTES, overwrite=True)
  try:
    c = lambda ch: ord(ch) + 3
    table = np.zeros((BYTES.vocab_size, BYTES.vocab_size), np.float32)
    for a, b in (("?", "Y"), ("Y", "e"), ("e", "s")):
      table[c(a), c(b)] = 10.0
    table[c("s"), 1] = 10.0  # EOS after "Yes"
    with tfds.testing.mock_data(as_dataset_fn=_rte_as_dataset):
      task = seqio.get_mixture_or_task("t0_rte_rank")
      rows = list(task.get_dataset(None, split="test", shuffle=False).as_numpy_iterator())
      assert rows[0]["inputs_pretokenized"].decode() == (
          'The cat sat.\nQuestion: Does this imply that "A cat sat."? Yes or no?')
      assert [r["targets_pretokenized"].decode() for r in rows[:2]] == ["Yes", "No"]
      ev = evaluation.Evaluator(evaluation.from_flax_lm(Bigram()), "t0_rte_rank", "test", batch_size=8)
      res = ev.evaluate({"table": jnp.asarray(table)})
    # "Yes" (entailment) is right for labels 0: 4 of 6.
    assert res.tasks["t0_rte_rank"]["accuracy"] == pytest.approx(100.0 * 4 / 6)
    assert res.task_categories["t0_rte_rank"] == "nli"
  finally:
    t0.register(overwrite=True)
