"""Behavioural tests of the seqio evaluator: forced answers, padding invariance, score/predict
agreement, KV cache vs recomputation, and 8 simulated devices vs 1."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from mergejax import evaluation
from mergejax.models import adapter as adapter_lib
from mergejax.evaluation import inference as inference_lib
from mergejax.models import Decoder, ModelConfig
from mergejax.tasks import metrics as task_metrics
from mergejax.tasks import preprocessors as task_preprocessors

VOCAB = seqio.ByteVocabulary()  # 0 pad, 1 eos, 2 unk, byte b -> b + 3
V = VOCAB.vocab_size
EOS = 1


def tok(ch: str) -> int:
  return ord(ch) + 3


class Bigram(nn.Module):
  """logits[t] = table[token_t]: a model whose next-token preferences are set by hand."""

  @nn.compact
  def __call__(self, tokens_BxL):
    table = self.param("table", nn.initializers.zeros, (V, V))
    return table[tokens_BxL]


def forced_table():
  t = np.zeros((V, V), np.float32)
  t[tok("A"), tok("a")] = 10.0  # after "A" say "a"
  t[tok("B"), tok("b")] = 10.0
  t[tok("a"), EOS] = 10.0       # then stop
  t[tok("b"), EOS] = 10.0
  return {"table": jnp.asarray(t)}


# 8 examples; the model answers lower(marker); the label agrees in 6 of 8 -> 75 %.
_MARKERS = "ABABABAB"
_LABELS = [0, 1, 0, 1, 0, 1, 1, 0]  # index into ("a", "b"); the last two disagree with the marker
_EXAMPLES = [{"inputs": "q" + "x" * (i % 5) + " " + m, "choices": ["a", "b"], "label": y}
             for i, (m, y) in enumerate(zip(_MARKERS, _LABELS))]


def _dataset_fn(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_generator(
      lambda: iter(_EXAMPLES),
      output_signature={"inputs": tf.TensorSpec([], tf.string), "choices": tf.TensorSpec([None], tf.string),
                        "label": tf.TensorSpec([], tf.int64)})


@seqio.map_over_dataset
def _to_generation(ex):
  return {"inputs": ex["inputs"], "targets": tf.gather(ex["choices"], ex["label"])}


def exact_match(targets, predictions):
  return {"exact_match": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


_FEATURES = {"inputs": seqio.Feature(VOCAB, add_eos=False), "targets": seqio.Feature(VOCAB, add_eos=True)}


def _register():
  for name in ("evtest_gen", "evtest_rank", "evtest_mix"):
    seqio.MixtureRegistry.remove(name)
    seqio.TaskRegistry.remove(name)
  src = seqio.FunctionDataSource(_dataset_fn, splits=("validation",))
  seqio.TaskRegistry.add(
      "evtest_gen", src, _FEATURES,
      preprocessors=[_to_generation, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      metric_fns=[exact_match])
  seqio.TaskRegistry.add(
      "evtest_rank", src, _FEATURES,
      preprocessors=[task_preprocessors.rank_classification, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos],
      postprocess_fn=task_metrics.rank_classification_postprocessor,
      metric_fns=[task_metrics.rank_accuracy])
  seqio.MixtureRegistry.add("evtest_mix", ["evtest_gen", "evtest_rank"], default_rate=1.0)
  evaluation.register_category("evtest_gen", "cat_gen")
  evaluation.register_category("evtest_rank", "cat_rank")


@pytest.fixture(scope="module")
def registered():
  _register()
  yield
  for name in ("evtest_mix",):
    seqio.MixtureRegistry.remove(name)
  for name in ("evtest_gen", "evtest_rank"):
    seqio.TaskRegistry.remove(name)


def test_forced_model_gets_exactly_the_accuracy_it_must(registered):
  adapter = evaluation.from_flax_lm(Bigram())
  assert not adapter.has_cache  # a user model without a KV cache: greedy recomputes the prefix
  ev = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8)
  res = ev.evaluate(forced_table())
  assert res.tasks["evtest_rank"]["accuracy"] == pytest.approx(75.0)
  assert res.tasks["evtest_gen"]["exact_match"] == pytest.approx(75.0)
  assert res.categories == {"cat_gen": pytest.approx(75.0), "cat_rank": pytest.approx(75.0)}
  assert res.score == pytest.approx(75.0)
  # Flip the model's preference: now it answers upper->other letter, the accuracy must be 25 %.
  t = np.array(forced_table()["table"])
  t[tok("A")], t[tok("B")] = t[tok("B")].copy(), t[tok("A")].copy()
  res2 = ev.evaluate({"table": jnp.asarray(t)})
  assert res2.tasks["evtest_rank"]["accuracy"] == pytest.approx(25.0)
  assert res2.tasks["evtest_gen"]["exact_match"] == pytest.approx(25.0)
  table = evaluation.format_table(res2)
  assert "evtest_rank" in table and "25.00" in table


def compiles(fn) -> int:
  """The number of XLA compilations while ``fn()`` runs."""
  seen = []

  def listener(name, secs, **kw):
    del secs, kw
    if name == "/jax/core/compile/backend_compile_duration":
      seen.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return len(seen)


@functools.cache
def _tiny_decoder():
  cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=64)
  model = Decoder(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.meta.unbox(params)
  # Sharpen the logits so greedy choices are far from ties.
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 and x.shape[0] == V else x, params)
  return cfg, params, evaluation.builtin_adapter(cfg)  # one adapter: evaluators share its compiles


def test_kv_cache_decode_matches_recomputation():
  _, params, cached = _tiny_decoder()
  assert cached.has_cache
  recompute = dataclasses.replace(cached, init_cache=None, decode_step=None)
  rng = np.random.default_rng(0)
  inputs = rng.integers(3, V, size=(4, 12)).astype(np.int32)
  inputs[:, 0] = 0
  prompt_len = np.array([3, 12, 7, 1], np.int32)
  f = jax.jit(inference_lib.greedy_decode, static_argnums=(0, 4))
  a = np.asarray(f(cached, params, inputs, prompt_len, 6))
  b = np.asarray(f(recompute, params, inputs, prompt_len, 6))
  np.testing.assert_array_equal(a, b)
  # Each row's continuation depends only on its own prompt: not on the other rows' prompt lengths,
  # nor on whatever follows the prompt in its buffer.
  junk = np.where(np.arange(12)[None] < prompt_len[:, None], inputs, rng.integers(3, V, size=(4, 12)))
  for r in range(4):
    solo = np.asarray(f(cached, params, junk[r:r + 1].astype(np.int32), prompt_len[r:r + 1], 6))
    np.testing.assert_array_equal(solo[0], a[r])


def test_score_and_predict_agree():
  cfg, params, adapter = _tiny_decoder()
  inf = evaluation.Inference(adapter, batch_size=8)
  rng = np.random.default_rng(1)
  n_in, d = 6, 4
  prompts = rng.integers(3, V, size=(8, n_in)).astype(np.int32)
  bos_prompts = np.concatenate([np.zeros((8, 1), np.int32), prompts], axis=1)
  greedy = inf.predict_arrays(params, bos_prompts, np.full((8,), n_in + 1, np.int32), d)
  # Choices: the greedy continuation (without EOS cut, which a random model rarely emits) and
  # variants that change its last token; greedy must score highest, and its score must equal the
  # sum of the max log-probabilities along the decoded path.
  rows_in, rows_tgt, rows_w, owner = [], [], [], []
  for r in range(8):
    g = greedy[r]
    if (g == EOS).any() or (g == 0).any():
      continue
    variants = [g] + [np.concatenate([g[:-1], [v]]) for v in rng.choice(np.setdiff1d(np.arange(3, V), g[-1:]), 3)]
    for c in variants:
      seq = np.concatenate([prompts[r], c])
      rows_tgt.append(seq)
      rows_in.append(np.concatenate([[0], seq[:-1]]))
      rows_w.append(np.r_[np.zeros(n_in), np.ones(d)])
      owner.append(r)
  assert len(set(owner)) >= 4
  pad = (-len(owner)) % 8
  arr = lambda x: np.concatenate([np.stack(x), np.repeat(np.stack(x)[:1], pad, 0)])
  s = inf.score_arrays(params, arr(rows_in).astype(np.int32), arr(rows_tgt).astype(np.int32),
                       arr(rows_w).astype(np.float32))[:len(owner)]
  owner = np.array(owner)
  for r in np.unique(owner):
    sr = s[owner == r]
    assert np.argmax(sr) == 0, (r, sr)
  # Cross-check the score against an independent full forward pass.
  logits = Decoder(cfg).apply({"params": params}, arr(rows_in)[:1].astype(np.int32))
  logp = jax.nn.log_softmax(logits[0], axis=-1)
  ref = sum(float(logp[t, rows_tgt[0][t]]) for t in range(n_in, n_in + d))
  assert s[0] == pytest.approx(ref, rel=1e-5, abs=1e-4)


def test_padding_never_changes_scores(registered):
  cfg, params, adapter = _tiny_decoder()
  ev_small = evaluation.Evaluator(adapter, "evtest_rank", "validation", batch_size=8, length_bucket=1)
  ev_big = evaluation.Evaluator(adapter, "evtest_rank", "validation", batch_size=40, length_bucket=64,
                                sequence_length={"inputs": 40, "targets": 16})
  ds_s = ev_small.seqio_evaluator.cached_model_datasets["evtest_rank"]
  ds_b = ev_big.seqio_evaluator.cached_model_datasets["evtest_rank"]
  a = dict(ev_small.inference.score(params, ds_s))
  b = dict(ev_big.inference.score(params, ds_b))
  assert ev_small.inference.prepare(ds_s).length < ev_big.inference.prepare(ds_b).length
  assert sorted(a) == sorted(b) and len(a) == 16
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-5, atol=1e-4)
  pa = dict(ev_small.inference.predict(params, ds_s))
  pb = dict(ev_big.inference.predict(params, ds_b))
  for k in pa:
    n = min(len(pa[k]), len(pb[k]))
    assert pa[k][:n] == pb[k][:n]


def test_eight_devices_give_the_same_metrics_as_one(registered):
  assert jax.device_count() == 8
  cfg, params, adapter = _tiny_decoder()
  one = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  ev1 = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8, mesh=one)
  ev8 = evaluation.Evaluator(adapter, "evtest_mix", "validation", batch_size=8)
  assert ev8.inference.mesh.size == 8
  r1, r8 = ev1.evaluate(params), ev8.evaluate(params)
  assert r1.tasks == r8.tasks
  # Params sharded over the mesh (FSDP-style: first axis split 8 ways where it divides) stay sharded.
  mesh8 = ev8.inference.mesh
  shard = lambda x: jax.device_put(x, jax.sharding.NamedSharding(
      mesh8, jax.P("data") if x.shape and x.shape[0] % 8 == 0 else jax.P()))
  sharded = jax.tree.map(shard, params)
  assert any(len(x.sharding.spec) for x in jax.tree.leaves(sharded))
  down = lambda t: t["layer_0"]["mlp"]["down"]["kernel"]
  assert down(sharded).sharding.spec == jax.P("data")
  assert down(ev8.inference.place_params(sharded)).sharding == down(sharded).sharding
  assert ev8.evaluate(sharded).tasks == r1.tasks
  ds1 = ev1.seqio_evaluator.cached_model_datasets["evtest_rank"]
  ds8 = ev8.seqio_evaluator.cached_model_datasets["evtest_rank"]
  np.testing.assert_allclose([s for _, s in ev1.inference.score(params, ds1)],
                             [s for _, s in ev8.inference.score(params, ds8)], rtol=1e-5, atol=1e-5)
  assert ev1.inference.predict(params, ev1.seqio_evaluator.cached_model_datasets["evtest_gen"]) == \
      ev8.inference.predict(params, ev8.seqio_evaluator.cached_model_datasets["evtest_gen"])


def test_params_on_device_reuse_the_compiled_program(registered):
  cfg, params, adapter = _tiny_decoder()
  mesh = inference_lib.default_mesh()
  on_mesh = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.P()))
  res_a = evaluation.evaluate(on_mesh, "evtest_rank", "validation", adapter=adapter, batch_size=8, mesh=mesh)
  other = jax.tree.map(lambda x: x * 0.5, on_mesh)  # a new "merge", already on the device
  res = []
  assert compiles(lambda: res.append(evaluation.evaluate(other, "evtest_rank", "validation", adapter=adapter,
                                                         batch_size=8, mesh=mesh))) == 0
  assert set(res_a.tasks) == set(res[0].tasks) == {"evtest_rank"}


def test_bad_inputs_fail_clearly(registered):
  adapter = evaluation.from_flax_lm(Bigram())
  with pytest.raises(ValueError, match="unknown seqio mixture"):
    evaluation.Evaluator(adapter, "no_such_mixture_xyz", "validation")
  with pytest.raises(ValueError, match="batch_size"):
    evaluation.Inference(adapter, batch_size=6)
  with pytest.raises(ValueError, match="no task with split"):
    evaluation.Evaluator(adapter, "evtest_rank", "test")
