"""The real T0 tasks end to end: TFDS loading (``tfds.testing.mock_data`` serving fake examples built from
each builder's own feature spec: nothing is downloaded), the validation carve, every template, rank
classification and generation metrics aggregated over templates, and the evaluator scoring them with a
tiny model."""

import concurrent.futures

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import t0_fakes
from mergejax import evaluation
from mergejax import tasks
from mergejax.models import Decoder, ModelConfig
from mergejax.tasks import metrics
from mergejax.evaluation import suites
from mergejax.tasks import per_vocabulary
from mergejax.tasks import t0
from mergejax.training import data as training_data

BYTES = seqio.ByteVocabulary()


def test_the_suite_has_the_papers_categories_two_tfds_datasets_each_and_t0s_held_out_datasets():
  heldin = t0.heldin_datasets()
  assert sorted(d.category for d in heldin) == sorted(t0.HELDIN_CATEGORIES * 2)
  assert {d.category for d in t0.heldout_datasets()} == set(t0.HELDOUT_CATEGORIES)
  assert "story_cloze" not in t0.tfds_names() and "story_cloze" in t0.tfds_names(story_cloze=True)
  for d in t0.DATASETS:  # a TFDS builder of that name, config and version exists, with the splits we read
    builder = tfds.builder(d.tfds_name)
    assert str(builder.version) == d.tfds_name.rsplit(":", 1)[1], d.name
    assert len(d.templates) >= (1 if d.name == "wiki_bio" else 3), d.name
  generative = {d.category for d in heldin if d.scoring != t0.RANK}
  assert {"summarization", "struct_to_text"} <= generative


def _tiny_decoder():
  vocab = t0.default_vocabulary()
  cfg = ModelConfig(vocab_size=vocab.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=96)
  params = nn.meta.unbox(jax.jit(Decoder(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  return evaluation.builtin_adapter(cfg), params


@pytest.mark.parametrize("mixture", ["t0_heldin_eval", "t0_heldout_rank"])
def test_every_t0_task_evaluates_end_to_end_on_mock_tfds(mixture):
  t0.register(overwrite=True)  # the synthetic suite's SentencePiece vocabulary
  adapter, params = _tiny_decoder()
  with t0_fakes.mock_tfds():
    ev = evaluation.Evaluator(adapter, mixture, "test", batch_size=16, sequence_length={"inputs": 64, "targets": 16})
    res = ev.evaluate(params, per_example=True)
    rows = {t: list(ev.seqio_evaluator.cached_task_datasets[t].as_numpy_iterator()) for t in res.tasks}
  datasets = t0.heldin_datasets() if mixture == "t0_heldin_eval" else t0.heldout_datasets()
  assert sorted(res.tasks) == sorted(d.eval_task_name for d in datasets)
  assert set(res.categories) == set(t0.HELDIN_CATEGORIES if datasets[0].heldin else t0.HELDOUT_CATEGORIES)
  for d in datasets:
    name, m = d.eval_task_name, res.tasks[d.eval_task_name]
    assert rows[name], name
    used = sorted({int(r["template"]) for r in rows[name]})
    assert m["templates"] == len(used) >= min(2, len(d.templates)), name
    primary = {t0.RANK: "accuracy", t0.ROUGE: "rougeL", t0.SQUAD: "f1"}[d.scoring]
    assert res.primary[name] == primary, name
    per_template = [m[f"{primary}/{d.templates[i].name}"] for i in used]  # the median and the mean of these
    assert m[primary] == pytest.approx(np.median(per_template)) and 0.0 <= m[primary] <= 100.0, name
    assert m[f"{primary}_mean"] == pytest.approx(np.mean(per_template)), name
    if d.scoring == t0.RANK:  # one correct answer choice per (example, template), at least two choices
      by_ex = {}
      for r in rows[name]:
        by_ex.setdefault(int(r["idx"][0]), []).append(bool(r["is_correct"]))
        assert r["inputs_pretokenized"] and r["targets"][-1] == 1, name  # EOS-ended
      assert all(sum(v) == 1 and len(v) >= 2 for v in by_ex.values()), name
      assert len(res.correct[name]) == len(by_ex), name  # per-(example, template) correctness for the bootstrap
      assert 0.0 < res.chance[name] < 100.0, name
    else:  # generation: the model's greedy output against every reference
      assert all(r["targets_pretokenized"] for r in rows[name]), name


class Bigram(nn.Module):
  """log p(next byte | byte): a table the test writes."""

  @nn.compact
  def __call__(self, tokens_BxL):
    return self.param("table", nn.initializers.zeros, (BYTES.vocab_size, BYTES.vocab_size))[tokens_BxL]


_RTE = [("The cat sat.", "A cat sat.", 0), ("It rained.", "It was dry.", 1), ("Bob ran.", "Bob moved.", 0),
        ("Sun is hot.", "Sun is cold.", 1), ("Ann ate.", "Ann had food.", 0), ("X.", "Y.", 0)]


def _rte_as_dataset(self, split, **kwargs):
  del kwargs
  assert self.name == "super_glue" and self.builder_config.name == "rte", self.name
  assert split == "validation"  # our "test" reads TFDS validation, the split T0 reports
  return tf.data.Dataset.from_tensor_slices({
      "premise": [p for p, _, _ in _RTE], "hypothesis": [h for _, h, _ in _RTE],
      "label": np.array([y for _, _, y in _RTE], np.int64), "idx": np.arange(len(_RTE), dtype=np.int32)})


def test_rte_scores_per_template_and_reports_the_median_and_the_mean():
  t0.register(BYTES, overwrite=True)
  try:
    c = lambda ch: ord(ch) + 3  # ByteVocabulary: byte b is token b + 3; EOS is 1
    table = np.zeros((BYTES.vocab_size, BYTES.vocab_size), np.float32)
    # After "?", the model says "Yes" (entailment, right for 4 of 6) or "False" (not entailment: 2 of 6).
    for a, b in ("?Y", "Ye", "es", "?F", "Fa", "al", "ls", "se"):
      table[c(a), c(b)] = 10.0
    table[c("s"), 1] = table[c("e"), 1] = 10.0
    with tfds.testing.mock_data(as_dataset_fn=_rte_as_dataset):
      task = seqio.get_mixture_or_task("t0_rte_rank")
      rows = list(task.get_dataset(None, split="test", shuffle=False).as_numpy_iterator())
      ev = evaluation.Evaluator(evaluation.from_flax_lm(Bigram()), "t0_rte_rank", "test", batch_size=8)
      res = ev.evaluate({"table": jnp.asarray(table)})
  finally:
    t0.register(overwrite=True)
  first = [r for r in rows if r["template"] == 0 and r["idx"][1] == 0][0]
  assert first["inputs_pretokenized"].decode() == (
      'The cat sat.\n\nQuestion: Does it follow from this that "A cat sat."? Yes or no?')
  assert {r["targets_pretokenized"].decode() for r in rows if r["template"] == 1} == {"True", "False"}
  m = res.tasks["t0_rte_rank"]
  names = [t.name for t in t0.dataset("rte").templates]
  expected = {n: 100.0 * (2 / 6 if n == "GPT-3 style" else 4 / 6) for n in names}
  assert {n: m[f"accuracy/{n}"] for n in names} == pytest.approx(expected)
  assert m["accuracy"] == pytest.approx(100.0 * 4 / 6)  # the median over the 4 templates
  assert m["accuracy_mean"] == pytest.approx(100.0 * (3 * 4 + 2) / 24)
  assert res.task_categories["t0_rte_rank"] == "nli"


def _many_reviews(self, split, **kwargs):
  """300 distinct IMDB reviews in TFDS train (test: 4)."""
  del kwargs
  assert self.name == "imdb_reviews", self.name
  n = 300 if split == "train" else 4
  return tf.data.Dataset.from_tensor_slices({"text": [f"review {i} of a film." for i in range(n)],
                                             "label": np.arange(n, dtype=np.int64) % 2})


def _review_ids(task: str, split: str) -> list[int]:
  ds = seqio.get_mixture_or_task(task).get_dataset(None, split=split, shuffle=False)
  ids = set()
  for r in ds.as_numpy_iterator():
    text = r["inputs_pretokenized"].decode()
    ids.add(int(text[text.index("review ") + 7:].split(" ")[0]))
  return sorted(ids)


def test_validation_is_carved_from_train_examples_no_expert_trains_on():
  d = t0.dataset("imdb")
  t0.register(BYTES, validation_examples=10, overwrite=True)
  try:
    with tfds.testing.mock_data(as_dataset_fn=_many_reviews):
      train, val = _review_ids("t0_imdb", "train"), _review_ids("t0_imdb", "validation")
      rank_val = _review_ids("t0_imdb_rank", "validation")
      ev = evaluation.Evaluator(evaluation.from_flax_lm(Bigram()), "t0_imdb_rank", "validation", batch_size=16)
      res = ev.evaluate({"table": jnp.zeros((BYTES.vocab_size, BYTES.vocab_size))}, per_example=True)
      reserved = [i for i in range(300) if bool(t0.is_reserved(d, {"text": tf.constant(f"review {i} of a film."),
                                                                     "label": tf.constant(i % 2, tf.int64)}))]
  finally:
    t0.register(overwrite=True)
  assert not set(train) & set(val)  # experts never see a validation example
  assert sorted(set(train) | set(reserved)) == list(range(300))  # every unreserved example is trained on
  assert set(val) <= set(reserved) and len(val) == min(10, len(reserved)) > 0
  assert rank_val == val  # the rank-classification variant evaluates the same examples
  templates = len(d.templates)
  assert res.tasks["t0_imdb_rank"]["templates"] == templates  # model selection reads them all
  assert len(res.correct["t0_imdb_rank"]) == templates * len(val)
  # About reserve_bp / 10000 of train is reserved (the carve is a hash of the example, not of its position).
  assert abs(len(reserved) / 300 - d.reserve_bp / t0.HASH_BUCKETS) < 0.06


def test_template_metrics_are_the_median_and_mean_over_templates():
  # Template 0: 2 of 2 right; template 1: 0 of 2; template 2: 1 of 1.
  targets = [(0, (0, 0), True), (0, (0, 1), False), (0, (1, 0), False), (0, (1, 1), True),
             (1, (2, 0), True), (1, (2, 1), False), (1, (3, 0), True), (1, (3, 1), False),
             (2, (4, 0), False), (2, (4, 1), True)]
  scores = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
  m = metrics.template_rank_accuracy(targets, scores, template_names=("a", "b", "c"))
  assert (m["accuracy/a"], m["accuracy/b"], m["accuracy/c"]) == (100.0, 0.0, 100.0)
  assert (m["accuracy"], m["accuracy_mean"], m["templates"]) == (100.0, pytest.approx(200 / 3), 3.0)
  ok, n_choices, n_right = metrics.rank_outcomes(targets, scores)  # per (example, template) row
  assert ok.tolist() == [True, True, False, False, True] and n_choices.tolist() == [2] * 5
  refs = [(0, ("the cat sat on the mat",)), (1, ("a dog ran", "the dog ran fast"))]
  r = metrics.template_rouge(refs, ["the cat sat on the mat", "the dog ran fast"], template_names=("x", "y"))
  assert r["rougeL/x"] == r["rougeL/y"] == r["rougeL"] == pytest.approx(100.0)
  r = metrics.template_rouge(refs, ["zebra", "the dog ran fast"], template_names=("x", "y"))
  assert (r["rouge1/x"], r["rougeL"]) == (0.0, pytest.approx(50.0))
  s = metrics.template_squad([(0, ("Paris", "paris, france"))], ["The Paris"])
  assert s["exact_match"] == 100.0 and s["f1"] == 100.0  # SQuAD normalization drops articles


def test_registration_is_thread_safe_and_refuses_silent_changes():
  t0.register(overwrite=True)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:  # re-registrations and no-ops at once
    results = list(pool.map(lambda i: t0.register(overwrite=i % 2 == 0), range(8)))
  assert all(r == t0.task_names() for r in results)
  assert set(t0.task_names()) <= set(seqio.TaskRegistry.names())
  assert set(t0.mixture_names()) <= set(seqio.MixtureRegistry.names())
  with pytest.raises(ValueError, match="overwrite=True"):
    t0.register(BYTES)
  with pytest.raises(ValueError, match="not .*elsewhere"):
    t0.ensure_registered("/elsewhere")


def test_story_cloze_is_held_out_only_behind_its_flag():
  t0.register(overwrite=True)
  heldout = [t.name for t in seqio.get_mixture_or_task("t0_heldout_rank").tasks]
  assert "t0_story_cloze_rank" not in heldout and "t0_copa_rank" in heldout
  t0.register(story_cloze=True, overwrite=True)
  try:
    heldout = [t.name for t in seqio.get_mixture_or_task("t0_heldout_sentence_completion_rank").tasks]
    assert "t0_story_cloze_rank" in heldout
  finally:
    t0.register(overwrite=True)
  assert "t0_story_cloze_rank" not in seqio.TaskRegistry.names()


def test_experts_train_on_the_held_in_mixture_of_their_category():
  t0.register(overwrite=True)
  with t0_fakes.mock_tfds():
    it = training_data.batches("t0_heldin_sentiment", batch_size=4, feature_lengths={"inputs": 64, "targets": 8},
                               seed=0)
    batch = next(it)
  vocab = t0.default_vocabulary()
  weights = batch["decoder_loss_weights"]
  assert weights.sum() > 0 and (batch["decoder_target_tokens"][weights == 0] != 0).any()  # prompt, then target
  targets = {vocab.decode([int(x) for x in row[w > 0] if x != 1]) for row, w in
             zip(batch["decoder_target_tokens"], weights)}
  sentiment_words = {c.strip() for d in t0.heldin_datasets("sentiment") for t in d.templates
                     for c in t.answer_choices.split("|||")}
  assert all(any(word in tgt for word in sentiment_words) for tgt in targets), targets


def test_a_checkpoints_own_vocabulary_gets_copies_of_the_t0_tasks():
  t0.register(overwrite=True)
  copy = per_vocabulary.with_vocabulary("t0_all_eval", BYTES)
  originals = seqio.get_mixture_or_task("t0_all_eval").tasks
  copies = seqio.get_mixture_or_task(copy).tasks
  assert len(copies) == len(originals) and copy != "t0_all_eval"
  for o, c in zip(originals, copies):
    assert c.output_features["targets"].vocabulary is BYTES and c.metric_fns == o.metric_fns
    assert tasks.task_category(c.name) == tasks.task_category(o.name)
  t0.register(overwrite=True)  # re-registering drops the copies of the old tasks
  assert copy not in seqio.MixtureRegistry.names()


def test_study_suite_names_resolve_to_the_t0_evaluation_mixtures():
  """The study's heldin_suite="t0_heldin_{category}" and heldout_suite="t0" name T0's evaluation
  variants (rank classification, ROUGE), never the training mixtures experts learn from."""
  for c in t0.HELDIN_CATEGORIES:
    mixture = suites.resolve(f"t0_heldin_{c}")
    assert mixture == f"t0_heldin_{c}_eval"
    names = {t.name for t in seqio.get_mixture_or_task(mixture).tasks}
    assert names == {d.eval_task_name for d in t0.heldin_datasets() if d.category == c}
  assert suites.resolve("t0") == "t0_heldout_rank"
