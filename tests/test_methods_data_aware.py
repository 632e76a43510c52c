"""RegMean, Fisher merging and AdaMerging: float64 references on small models whose layer inputs,
Fisher and entropy gradients are written out by hand; the built-in decoder end to end; bad input."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mergejax
from mergejax import data_merge, methods
from mergejax.models import Decoder, get_config
from mergejax.models.decoder import Attention
from tests.reference import data_aware as ref
from tests.test_methods import flat
from tests.test_methods_properties import equal_trees
from tests.test_methods_weight_space import sharded_on_8


@dataclasses.dataclass(frozen=True)
class Mlp:
  """h = relu(x W1 + b1), logits = h W2^T + b2 (the second weight in PyTorch's (out, in) layout)."""

  def logits(self, p, b):
    h = jax.nn.relu(b["x"] @ p["l1"]["w"] + p["l1"]["b"])
    return h @ p["l2"]["w"].T + p["l2"]["b"]

  def mask(self, b):
    return b["mask"]

  def targets(self, b):
    return b["y"]


@dataclasses.dataclass(frozen=True)
class Linear:
  """logits = x W + b."""

  def logits(self, p, b):
    return b["x"] @ p["w"] + p["b"]

  def mask(self, b):
    return jnp.ones(b["x"].shape[:1], bool)

  def targets(self, b):
    return b["y"]


def _mlp_models(n, seed=0):
  rng = np.random.default_rng(seed)
  base = {"l1": {"w": rng.normal(size=(6, 10)), "b": rng.normal(size=(10,)) * 0.1},
          "l2": {"w": rng.normal(size=(4, 10)), "b": rng.normal(size=(4,)) * 0.1}}
  base = jax.tree.map(lambda x: x.astype(np.float32), base)
  experts = [jax.tree.map(lambda x: (x + 0.3 * rng.normal(size=x.shape)).astype(np.float32), base) for _ in range(n)]
  batches = [[{"x": rng.normal(size=(16, 6)).astype(np.float32), "mask": rng.random(16) < 0.8,
               "y": rng.integers(0, 4, 16)} for _ in range(2)] for _ in range(n)]
  return base, experts, batches


def _close(out, want, tol):
  got = flat(out)
  for k, v in want.items():
    scale = max(float(np.max(np.abs(v))), 1e-30)
    err = float(np.max(np.abs(np.asarray(got[k], np.float64) - v))) / scale
    assert err <= tol, f"{k}: relative error {err:.3g}"


@pytest.mark.parametrize("alpha", [0.95, 1.0])
def test_regmean_matches_reference(alpha):
  base, experts, batches = _mlp_models(3)
  method = data_merge.with_data(methods.regmean(alpha=alpha), Mlp(), base, experts, batches)
  out = mergejax.merge(base, experts, method)
  inputs = []
  for e, bs in zip(experts, batches):
    per = [ref.mlp_layer_inputs(e, b["x"], b["mask"]) for b in bs]
    inputs.append({p: np.concatenate([x[p] for x in per]) for p in per[0]})
  _close(out, ref.regmean([flat(e) for e in experts], inputs, alpha), 2e-4)


def test_regmean_properties():
  base, experts, batches = _mlp_models(2, seed=1)
  one = data_merge.with_data(methods.regmean(), Mlp(), base, experts[:1], batches[:1])
  _close(mergejax.merge(None, experts[:1], one), {k: v.astype(np.float64) for k, v in flat(experts[0]).items()}, 2e-5)
  # Equal Gram matrices (every expert sees the same inputs through the same first layer): the plain average.
  same = [jax.tree.map(np.copy, experts[0]) for _ in range(2)]
  same[1]["l2"] = experts[1]["l2"]
  both = data_merge.with_data(methods.regmean(), Mlp(), None, same, [batches[0], batches[0]])
  avg = {k: v.astype(np.float64) for k, v in flat(mergejax.merge(None, same, methods.average())).items()}
  _close(mergejax.merge(None, same, both), avg, 2e-5)


def test_fisher_matches_reference():
  rng = np.random.default_rng(2)
  base = {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  experts = [jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), base) for _ in range(3)]
  batches = [[{"x": rng.normal(size=(12, 5)).astype(np.float32), "y": rng.integers(0, 3, 12)}] for _ in range(3)]
  for normalize, weights in [(True, None), (False, (1.0, 2.0, 0.5))]:
    m = methods.fisher(normalize=normalize, min_fisher=1e-4, weights=weights)
    out = mergejax.merge(None, experts, data_merge.with_data(m, Linear(), None, experts, batches))
    fishers = [ref.linear_fisher(e, b[0]["x"], b[0]["y"]) for e, b in zip(experts, batches)]
    _close(out, ref.fisher_merge(experts, fishers, min_fisher=1e-4, normalize=normalize, weights=weights), 1e-5)


def test_fisher_gives_one_expert_back_and_equal_experts_unchanged():
  rng = np.random.default_rng(5)
  base = {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  experts = [jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), base) for _ in range(3)]
  batches = [[{"x": rng.normal(size=(12, 5)).astype(np.float32), "y": rng.integers(0, 3, 12)}] for _ in range(3)]
  one = mergejax.merge(None, experts[:1], data_merge.with_data(methods.fisher(), Linear(), None, experts[:1],
                                                                batches[:1]))
  _close(one, experts[0], 1e-6)  # F x / F
  # Equal Fishers (every expert's on the same data and parameters): the (weighted) average.
  same = [experts[0]] * 3
  w = (1.0, 2.0, 0.5)
  eq = mergejax.merge(None, same, data_merge.with_data(methods.fisher(weights=w), Linear(), None, same, batches[:1] * 3))
  _close(eq, experts[0], 1e-6)


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_adamerging_matches_reference(granularity):
  rng = np.random.default_rng(3)
  base = {"w": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
  experts = [jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), base) for _ in range(2)]
  batches = [[{"x": rng.normal(size=(8, 5)).astype(np.float32), "y": np.zeros(8, int)} for _ in range(2)]
             for _ in range(2)]
  m = methods.adamerging(granularity=granularity, init=0.3, lr=0.02, steps=12)
  out = mergejax.merge(base, experts, data_merge.with_data(m, Linear(), base, experts, batches))
  stream = [b for group in zip(*batches) for b in group]
  _close(out, ref.adamerging(base, experts, stream, init=0.3, lr=0.02, steps=12, layer_wise=granularity == "layer"),
         1e-5)
  assert not np.allclose(out["w"], flat(mergejax.merge(base, experts, methods.task_arithmetic(lam=0.3)))["w"])


# --------------------------------------------------------------------------------- the built-in decoder


def _decoder(n, seed=0):
  cfg = dataclasses.replace(get_config("xs"), vocab_size=64)
  model = Decoder(cfg)
  rng = np.random.default_rng(seed)
  tokens = [jnp.asarray(rng.integers(1, 64, size=(4, 12)), jnp.int32) for _ in range(n)]

  def init(k):
    p = model.init(jax.random.key(k), tokens[0])["params"]
    return jax.tree.map(lambda x: np.asarray(x), nn.unbox(p))

  base = init(0)
  experts = [jax.tree.map(lambda b, e: b + 0.05 * (e - b), base, init(i + 1)) for i in range(n)]
  return cfg, base, experts, [[{"tokens": t}] for t in tokens]


def test_decoder_linear_inputs_are_the_layers_inputs():
  """Gram matrices found in the traced forward pass equal those of the inputs flax hands to the MLP's
  Dense layers and to the attention (captured with nn.intercept_methods)."""
  cfg, _, (params,), batches = _decoder(1)
  tokens = batches[0][0]["tokens"]
  seen = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, Attention)):
      seen["/".join(context.module.path)] = np.asarray(args[0], np.float64)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    Decoder(cfg).apply({"params": params}, tokens)
  grams = data_merge.linear_input_grams(data_merge.decoder_model(cfg), params, batches[0][0])
  mask = np.asarray(data_merge.decoder_model(cfg).mask(batches[0][0]))
  for i in range(cfg.n_layers):
    for leaf, module in [("mlp/gate/kernel", "mlp/gate"), ("mlp/up/kernel", "mlp/up"), ("mlp/down/kernel", "mlp/down"),
                         ("attn/query", "attn"), ("attn/key", "attn"), ("attn/value", "attn")]:
      x = seen[f"layer_{i}/{module}"][mask]
      g, axes = grams[f"layer_{i}/{leaf}"]
      assert axes == (0,)
      np.testing.assert_allclose(g, x.T @ x, rtol=2e-4, atol=1e-4)
    assert grams[f"layer_{i}/attn/out"][1] == (0, 1)
  assert "embed/embedding" not in grams  # looked up and tied to the head: averaged
  assert not any("norm" in p for p in grams)


@pytest.mark.parametrize("method", [methods.regmean(), methods.fisher(), methods.adamerging(steps=3)])
def test_decoder_end_to_end_and_the_same_on_8_devices(method):
  """Each method on the built-in decoder, its statistics computed from parameters on one device and from
  the same parameters sharded over 8 (explicit axes): the same statistics and merge, bit for bit."""
  cfg, base, experts, batches = _decoder(2, seed=4)
  model = data_merge.decoder_model(cfg)
  bound = data_merge.with_data(method, model, base, experts, batches)
  one = mergejax.merge(base, experts, bound)
  base8, experts8 = sharded_on_8(base, experts)
  equal_trees(one, mergejax.merge(base8, experts8, data_merge.with_data(method, model, base8, experts8, batches)))
  avg = flat(mergejax.merge(None, experts, methods.average()))
  assert any(not np.allclose(v, avg[k]) for k, v in flat(one).items() if np.ndim(v) == 2)


def test_data_aware_methods_refuse_to_merge_without_data():
  base, experts, batches = _mlp_models(2)
  for m in (methods.regmean(), methods.fisher(), methods.adamerging()):
    with pytest.raises(ValueError, match=f"^{m.name}: needs data "):
      mergejax.merge(base, experts, m)
  with pytest.raises(ValueError, match="regmean: batches has 1 entries but there are 2 experts"):
    data_merge.with_data(methods.regmean(), Mlp(), base, experts, batches[:1])
  with pytest.raises(ValueError, match="fisher: expert 1 has no batches"):
    data_merge.with_data(methods.fisher(), Mlp(), base, experts, [batches[0], []])
  with pytest.raises(ValueError, match="ties: is not a data-aware method"):
    data_merge.with_data(methods.ties(), Mlp(), base, experts, batches)
  with pytest.raises(ValueError, match="adamerging needs a base model"):
    data_merge.with_data(methods.adamerging(), Mlp(), None, experts, batches)
  with pytest.raises(ValueError, match=r"alpha=1.5 is out of range"):
    methods.regmean(alpha=1.5)


def test_per_expert_statistics_cached_equal_those_computed_together():
  base, experts, batches = _mlp_models(3)
  cache = data_merge.StatisticsCache()
  for m in (methods.regmean(), methods.fisher()):
    together = mergejax.merge(base, experts, data_merge.with_data(m, Mlp(), base, experts, batches))
    for order in ((0, 1, 2), (2, 0, 1)):  # the second subset reuses every expert's cached statistics
      cached = data_merge.with_data(m, Mlp(), base, [experts[t] for t in order], [batches[t] for t in order],
                                    cache=cache, expert_keys=order)
      alone = data_merge.with_data(m, Mlp(), base, [experts[t] for t in order], [batches[t] for t in order])
      equal_trees(mergejax.merge(base, [experts[t] for t in order], alone),
                  mergejax.merge(base, [experts[t] for t in order], cached))
    equal_trees(together, mergejax.merge(base, experts, data_merge.with_data(
        m, Mlp(), base, experts, batches, cache=cache, expert_keys=(0, 1, 2))))
  # Other hyperparameters of the statistics are other cache entries: Fisher without its normalization.
  raw = data_merge.with_data(methods.fisher(normalize=False), Mlp(), base, experts, batches)
  cached = data_merge.with_data(methods.fisher(normalize=False), Mlp(), base, experts, batches, cache=cache,
                                expert_keys=(0, 1, 2))
  equal_trees(mergejax.merge(base, experts, raw), mergejax.merge(base, experts, cached))

  def recomputed():
    raise RuntimeError("recomputed")

  key = lambda t: (t, Mlp(), "fisher", (("normalize", "True"),))  # noqa: E731  (as with_data keys them)
  cache.discard(lambda expert: expert == 2)  # expert 2's statistics are freed; 0's and 1's stay
  assert cache.get(key(0), recomputed)
  with pytest.raises(RuntimeError, match="recomputed"):
    cache.get(key(2), recomputed)
  with pytest.raises(ValueError, match="regmean: a statistics cache needs one key per expert"):
    data_merge.with_data(methods.regmean(), Mlp(), base, experts, batches, cache=cache, expert_keys=(0,))


def test_example_mask_counts_the_prompt_and_the_first_answer_position_or_the_answer():
  # One example per row: prompt tokens (loss weight 0), then the answer (loss weight 1), then padding.
  batch = {"decoder_target_tokens": np.array([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 0, 0]]),
           "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]])}
  np.testing.assert_array_equal(data_merge.example_mask(batch, labels=False),
                                [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(data_merge.example_mask(batch, labels=True),
                                [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]])


def test_entropy_of_logits_with_minus_infinity_classes_is_finite_with_a_finite_gradient():
  # A checkpoint's seqio view gives ids its tokenizer lacks logit -inf (mergejax.ModelAdapter.for_seqio).
  logits = jnp.array([[[-jnp.inf, 1.0, 2.0, 0.5], [-jnp.inf, 0.0, 0.0, 0.0]]])
  mask = jnp.array([[True, True]])
  value, grad = jax.value_and_grad(lambda x: data_merge.entropy(x, mask))(logits)
  want = np.mean([-(p * np.log(p)).sum() for p in (np.exp([1.0, 2.0, 0.5]) / np.exp([1.0, 2.0, 0.5]).sum(),
                                                  np.full(3, 1 / 3))])
  assert float(value) == pytest.approx(want, rel=1e-6)
  assert np.isfinite(np.asarray(grad)).all()
