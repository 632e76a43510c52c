"""The split guard at the data layer: an evaluator bound to a guard refuses to read a test split while a
selection is open, whichever thread asks and whichever public method it calls; reads and selections
exclude each other; and the evaluator reports per-example correctness and chance levels."""

import threading
import time

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mergejax import evaluation
from mergejax.evaluation.leak_guard import SplitGuard, SplitLeakError
from mergejax.evaluation.evaluator import Evaluator
from mergejax.tasks import metrics as task_metrics
from mergejax.tasks import preprocessors as task_preprocessors

import test_eval  # the byte vocabulary, the hand-set Bigram model and the tiny decoder

# Validation: the Bigram model answers lower(marker), right on 3 of 4; test: 2 of 4 (other examples).
_SPLITS = {
    "validation": [("q A", 0), ("q B", 1), ("q A", 0), ("q B", 0)],
    "test": [("r A", 0), ("r B", 0), ("r A", 1), ("r B", 1)],
}


def _dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed
  rows = [{"inputs": x, "choices": ["a", "b"], "label": y} for x, y in _SPLITS[split]]
  return tf.data.Dataset.from_generator(
      lambda: iter(rows), output_signature={"inputs": tf.TensorSpec([], tf.string),
                                            "choices": tf.TensorSpec([None], tf.string),
                                            "label": tf.TensorSpec([], tf.int64)})


@pytest.fixture(scope="module")
def guarded_task():
  seqio.TaskRegistry.remove("guardtest_rank")
  seqio.TaskRegistry.add(
      "guardtest_rank", seqio.FunctionDataSource(_dataset_fn, splits=("validation", "test")),
      {"inputs": seqio.Feature(test_eval.VOCAB, add_eos=False), "targets": seqio.Feature(test_eval.VOCAB, add_eos=True)},
      preprocessors=[task_preprocessors.rank_classification, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      postprocess_fn=task_metrics.rank_classification_postprocessor, metric_fns=[task_metrics.rank_accuracy])
  yield "guardtest_rank"
  seqio.TaskRegistry.remove("guardtest_rank")


def test_a_selection_refuses_every_read_of_test_from_every_thread_and_method(guarded_task):
  guard = SplitGuard()
  bigram = evaluation.from_flax_lm(test_eval.Bigram())
  val = Evaluator(bigram, guarded_task, "validation", batch_size=8, guard=guard)
  test = Evaluator(bigram, guarded_task, "test", batch_size=8, guard=guard)
  params = test_eval.forced_table()
  assert test.evaluate(params).score == pytest.approx(50.0)  # no selection open: fine
  _, dec_params, decoder = test_eval._tiny_decoder()  # pylint: disable=protected-access
  other_size = test.with_adapter(decoder)  # a copy for another model shares the guard
  errors = []
  with guard.selecting():
    assert val.evaluate(params).score == pytest.approx(75.0)
    for attempt in (lambda: test.evaluate(params), lambda: other_size.evaluate(dec_params),
                    lambda: Evaluator(bigram, guarded_task, "test", batch_size=8, guard=guard),
                    lambda: test.seqio_evaluator,  # its cached datasets hold the test data
                    lambda: other_size.seqio_evaluator.cached_model_datasets):
      with pytest.raises(SplitLeakError, match="split 'test' of 'guardtest_rank' requested during hyperparameter"):
        attempt()

    def from_another_thread():
      try:
        test.evaluate(params)
      except SplitLeakError as e:
        errors.append(e)
    t = threading.Thread(target=from_another_thread)
    t.start()
    t.join()
    other_size.warm_up(dec_params)  # compiling on zeros of the batch shapes reads no data: allowed
  assert len(errors) == 1
  with pytest.raises(AttributeError):
    test.guard = None  # the guard is fixed at construction
  assert test.guard is guard and val.seqio_evaluator is not None
  assert other_size.evaluate(dec_params).split == "test"  # the selection is closed again
  during = [(what, split) for what, split, selecting in guard.reads if selecting]
  assert during == [(guarded_task, "validation")]


def test_a_selection_waits_for_a_test_read_to_finish():
  guard = SplitGuard()
  events = []
  reading = threading.Event()

  def read_test():
    with guard.reading("mix", "test"):
      reading.set()
      time.sleep(0.2)
      events.append("test read done")

  t = threading.Thread(target=read_test)
  t.start()
  reading.wait()
  with guard.selecting():
    events.append("selection open")
    assert guard.selection_open
  t.join()
  assert events == ["test read done", "selection open"]
  assert not guard.selection_open


def test_per_example_correctness_and_chance(guarded_task):
  ev = Evaluator(evaluation.from_flax_lm(test_eval.Bigram()), guarded_task, "validation", batch_size=8)
  res = ev.evaluate(test_eval.forced_table(), per_example=True)
  assert res.correct == {guarded_task: "1110"} and res.chance == {guarded_task: pytest.approx(50.0)}
  assert res.task_scores[guarded_task] == pytest.approx(75.0)
  assert ev.evaluate(test_eval.forced_table()).correct == {}  # only when asked
  ok, n_choices, n_right = task_metrics.rank_outcomes([((1, 0), True), ((0, 1), True), ((0, 0), False), ((1, 1), False)],
                                                      [0.0, 2.0, 1.0, -1.0])
  assert ok.tolist() == [True, True] and n_choices.tolist() == [2, 2] and n_right.tolist() == [1, 1]
  np.testing.assert_equal(task_metrics.rank_accuracy([((0, 0), True), ((0, 1), False)], [0.0, 1.0])["accuracy"], 0.0)
