"""The study's fast evaluator: prefix-shared packed scoring and SuiteEvaluator, checked against plain
per-row scoring and plain seqio.Evaluator runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mergejax import evaluation
from mergejax.evaluation import packed as packed_lib
from mergejax.evaluation.suite_evaluator import SuiteEvaluator

import test_eval  # the toy tasks (evtest_rank, evtest_gen, evtest_mix) and the tiny decoder
from test_eval import Bigram, forced_table, registered  # noqa: F401  pylint: disable=unused-import

V = test_eval.V


def _rows(rng, n_examples, max_choices=4):
  """(inputs, targets, weights, example of each row) of rank-classification rows: a shared prompt of
  3-12 tokens per example, 1-4 choices of 1-6 tokens each (as seqio's DecoderFeatureConverter lays
  them out: BOS + prompt + choice, targets shifted by one, weight 1 on the choice)."""
  width = 1 + 12 + 6
  inp, tgt, w, owner = [], [], [], []
  for e in range(n_examples):
    prompt = rng.integers(3, V, size=rng.integers(3, 13))
    for _ in range(rng.integers(1, max_choices + 1)):
      choice = rng.integers(3, V, size=rng.integers(1, 7))
      seq = np.concatenate([prompt, choice])
      pad = width - len(seq)
      tgt.append(np.r_[seq, np.zeros(pad)])
      inp.append(np.r_[[0], seq[:-1], np.zeros(pad)])
      w.append(np.r_[np.zeros(len(prompt)), np.ones(len(choice)), np.zeros(pad)])
      owner.append(e)
  return (np.stack(inp).astype(np.int32), np.stack(tgt).astype(np.int32), np.stack(w).astype(np.float32),
          np.array(owner))


def _packed_scores(adapter, params, host, n_rows):
  f = jax.jit(packed_lib.packed_target_logprobs, static_argnums=(0,))
  vals = np.asarray(f(adapter, params, host.tokens, host.positions, host.example, host.branch, host.gather,
                      host.target, host.weight))
  keep = host.row >= 0
  return np.bincount(host.row[keep], weights=vals[keep], minlength=n_rows)


def test_packed_scores_equal_scoring_each_row_alone():
  cfg, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  inp, tgt, w, owner = _rows(np.random.default_rng(0), 12)
  n = len(owner)
  host = packed_lib.pack(inp, tgt, w, np.arange(n), seq_len=20, gather_len=6, rows_multiple=8)
  assert host.num_sequences % 8 == 0
  # Shared prompts are laid out once per example (or per chunk of its choices): fewer tokens than rows.
  assert (host.example >= 0).sum() < (tgt != 0).sum()
  # Some examples' choices do not all fit in 20 tokens / 6 targets: their prompt is laid out again.
  assert host.example.max() + 1 > len(set(owner))
  got = _packed_scores(adapter, params, host, n)
  inf = evaluation.Inference(adapter, batch_size=8)
  pad = (-n) % 8
  ext = lambda a: np.concatenate([a, np.repeat(a[:1], pad, 0)])
  want = inf.score_arrays(params, ext(inp), ext(tgt), ext(w))[:n]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_a_row_too_long_for_the_packed_sequence_fails_clearly():
  inp, tgt, w, _ = _rows(np.random.default_rng(1), 2)
  with pytest.raises(ValueError, match="does not fit in seq_len=4"):
    packed_lib.pack(inp, tgt, w, np.arange(len(inp)), seq_len=4)


def test_suite_evaluator_matches_seqio_evaluator(registered):  # noqa: F811
  cfg, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  assert adapter.apply_packed is not None
  plain = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8)
  fast = SuiteEvaluator(adapter, "evtest_mix", "validation", batch_size=8, pack_len=32)
  for p in (params, jax.tree.map(lambda x: x * 0.7, params)):
    want, got = plain.evaluate(p), fast.evaluate(p)
    assert got.tasks == want.tasks and got.categories == want.categories and got.score == want.score
  # A subset of tasks: only those are evaluated and aggregated.
  sub = fast.evaluate(params, tasks=fast.tasks_of(["cat_rank"]))
  assert set(sub.tasks) == {"evtest_rank"}
  assert sub.tasks["evtest_rank"] == plain.evaluate(params).tasks["evtest_rank"]
  # Raw per-row scores equal the per-row path's.
  ds = plain.seqio_evaluator.cached_model_datasets["evtest_rank"]
  rows = [s for _, s in sorted(plain.inference.score(params, ds))]
  packed = fast._packed_scores(fast.inference.place_params(params), ["evtest_rank"])["evtest_rank"]  # pylint: disable=protected-access
  np.testing.assert_allclose(packed, rows, rtol=1e-5, atol=1e-4)
  # New params of the same shapes reuse the one compiled program.
  jitted = fast._packed  # pylint: disable=protected-access
  n = jitted._cache_size()  # pylint: disable=protected-access
  fast.evaluate(jax.tree.map(lambda x: x * 1.1, params))
  assert jitted._cache_size() == n  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="task 'nope' is not in 'evtest_mix'"):
    fast.evaluate(params, tasks=["nope"])


def test_legacy_score_metrics_equal_seqios_metric_objects(registered):  # noqa: F811
  _, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  ev = SuiteEvaluator(adapter, "evtest_mix", "validation", batch_size=8, pack_len=32)
  ev.evaluate(params)  # the first evaluation goes through seqio's metric objects and keeps the targets
  assert ev._legacy_score_metrics("evtest_gen", {}) is None  # a generation task keeps seqio's path  # pylint: disable=protected-access
  n = len(ev._score_targets["evtest_rank"])  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  for scores in (rng.standard_normal(n), np.zeros(n), np.round(rng.standard_normal(n))):  # ties included
    out = {seqio_score(): list(scores)}
    fast = ev._legacy_score_metrics("evtest_rank", out)  # pylint: disable=protected-access
    targets = ev._score_targets.pop("evtest_rank")  # pylint: disable=protected-access
    slow = ev._task_metrics("evtest_rank", out)  # pylint: disable=protected-access
    assert fast is not None and fast == slow and ev._score_targets["evtest_rank"] == targets  # pylint: disable=protected-access


def seqio_score():
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.metrics.ModelOutputType.SCORE


def test_suite_evaluator_without_packing_and_on_one_or_eight_devices(registered):  # noqa: F811
  # A user model without apply_packed is scored row by row, with the same metrics.
  ev = SuiteEvaluator(evaluation.from_flax_lm(Bigram()), "evtest_mix", "validation", batch_size=8)
  res = ev.evaluate(forced_table())
  assert res.tasks["evtest_rank"]["accuracy"] == pytest.approx(75.0)
  assert res.tasks["evtest_gen"]["exact_match"] == pytest.approx(75.0)
  _, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  assert jax.device_count() == 8
  one = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  ev1 = SuiteEvaluator(adapter, "evtest_mix", "validation", mesh=one, batch_size=8, pack_rows=1, pack_len=16)
  ev8 = SuiteEvaluator(adapter, "evtest_mix", "validation", batch_size=8, pack_rows=1, pack_len=16)
  assert ev8._round_robin and not ev1._round_robin  # pylint: disable=protected-access
  assert ev1.evaluate(params).tasks == ev8.evaluate(params).tasks
  # Whole batches on alternating devices: the raw scores are bitwise the one-device ones.
  raw = lambda ev: ev._packed_scores(ev.inference.place_params(params), ["evtest_rank"])  # pylint: disable=protected-access
  assert raw(ev1) == raw(ev8)
  assert len({next(iter(b["tokens"].devices())) for g in ev8._groups.values() for b in g.batches}) > 1  # pylint: disable=protected-access
