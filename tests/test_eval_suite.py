"""The evaluator's packed path: prefix-shared packed scoring checked against per-row scoring and
against seqio.Evaluator's own metric computation."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from mergejax import evaluation
from mergejax import sharding
from mergejax.evaluation import packed as packed_lib
from mergejax.evaluation.aggregate import to_float

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


def _seqio_reference(mixture, adapter, params, *, score_fn=None):
  """Metrics computed by seqio.Evaluator itself, every (prompt, choice) row scored on its own."""
  ev = seqio.Evaluator(mixture, feature_converter=seqio.DecoderFeatureConverter(pack=False), eval_split="validation",
                       use_memory_cache=True, async_compute_metrics=False)
  inf = evaluation.Inference(adapter, batch_size=8)
  metrics, _ = ev.evaluate(compute_metrics=True, score_fn=score_fn or functools.partial(inf.score, params),
                           predict_fn=functools.partial(inf.predict, params))
  return {t: {k: to_float(v) for k, v in m.items()} for t, m in metrics.result().items()}


def test_packed_evaluator_matches_seqio_evaluator(registered):  # noqa: F811
  cfg, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  ev = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8, pack_len=32)
  assert ev.packed
  for p in (params, jax.tree.map(lambda x: x * 0.7, params)):
    assert ev.evaluate(p).tasks == _seqio_reference("evtest_mix", adapter, p)
  # A subset of tasks: only those are evaluated and aggregated.
  sub = ev.evaluate(params, tasks=ev.tasks_of(["cat_rank"]))
  assert set(sub.tasks) == {"evtest_rank"} and set(sub.categories) == {"cat_rank"}
  assert sub.tasks["evtest_rank"] == ev.evaluate(params).tasks["evtest_rank"]
  # Raw per-row scores equal the per-row path's (an adapter without apply_packed).
  rows = evaluation.Evaluator(dataclasses.replace(adapter, apply_packed=None), "evtest_rank", "validation",
                              batch_size=8)
  assert not rows.packed
  got = ev.model_outputs(params, ["evtest_rank"])["evtest_rank"][seqio_score()]
  want = rows.model_outputs(params)["evtest_rank"][seqio_score()]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # New params of the same shapes reuse the compiled programs.
  assert test_eval.compiles(lambda: ev.evaluate(jax.tree.map(lambda x: x * 1.1, params))) == 0
  with pytest.raises(ValueError, match="task 'nope' is not in 'evtest_mix'"):
    ev.evaluate(params, tasks=["nope"])


def test_score_function_metrics_equal_seqios_metric_objects(registered):  # noqa: F811
  """After a task's first evaluation the evaluator calls its score functions directly; the metrics
  must equal what seqio computes from the same scores, ties included."""
  _, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  ev = evaluation.Evaluator(adapter, "evtest_rank", "validation", batch_size=8, pack_len=32)
  ev.evaluate(params)
  n = len(ev.model_outputs(params)["evtest_rank"][seqio_score()])
  rng = np.random.default_rng(0)
  for scores in (rng.standard_normal(n), np.zeros(n), np.round(rng.standard_normal(n))):
    got = ev.task_metrics("evtest_rank", {seqio_score(): list(scores)})
    want = _seqio_reference("evtest_rank", adapter, params,
                            score_fn=lambda ds, s=scores: [(i, float(s[i])) for i, _ in ds])["evtest_rank"]
    assert {k: to_float(v) for k, v in got.items()} == want


def seqio_score():
  return seqio.metrics.ModelOutputType.SCORE


def test_evaluator_without_packing_and_on_one_or_eight_devices(registered, monkeypatch):  # noqa: F811
  # A user model without apply_packed is scored row by row, with the same metrics.
  ev = evaluation.Evaluator(evaluation.from_flax_lm(Bigram()), "evtest_mix", "validation", batch_size=8)
  res = ev.evaluate(forced_table())
  assert res.tasks["evtest_rank"]["accuracy"] == pytest.approx(75.0)
  assert res.tasks["evtest_gen"]["exact_match"] == pytest.approx(75.0)
  _, params, adapter = test_eval._tiny_decoder()  # pylint: disable=protected-access
  assert jax.device_count() == 8
  one = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  ev1 = evaluation.Evaluator(adapter, "evtest_mix", "validation", mesh=one, batch_size=8, pack_rows=1, pack_len=16)
  ev8 = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8, pack_rows=1, pack_len=16)
  assert ev1.evaluate(params).tasks == ev8.evaluate(params).tasks
  # The packed batches spread over 8 devices give bitwise the one-device scores.
  raw = lambda ev: ev.model_outputs(params, ["evtest_rank"])["evtest_rank"][seqio_score()]
  assert raw(ev1) == raw(ev8)
  # Whole batches take turns on at most one device per core (fewer compiles where a host is split finer).
  for cores in (2, 3):
    monkeypatch.setattr(sharding, "host_cores", lambda c=cores: c)
    ev = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8, pack_rows=1, pack_len=16)
    assert raw(ev) == raw(ev1)
    batches = [b for g in ev._packed_categories.values() for b in g.batches]  # pylint: disable=protected-access
    assert len(batches) > cores and len({d for b in batches for d in b["tokens"].devices()}) == cores
