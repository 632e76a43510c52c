"""Model families against transformers: logits, greedy continuations with the KV cache, rank classification
with the packed prefix-shared scorer, bfloat16, sharding, and the built-in decoder as a family.

The reference outputs are golden fixtures written by transformers (tests/model_zoo.py); where torch is
installed the test also recomputes them with transformers and checks the fixture against it.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

import model_zoo as Z
from mergejax import models
from mergejax.evaluation import inference, packed

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def _rel(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _rank_rows():
  """The RANK_EXAMPLES as seqio-style rows (inputs, targets, weights) and each row's (example, choice)."""
  rows, owners = [], []
  for e, (prompt, choices) in enumerate(Z.RANK_EXAMPLES):
    for c, choice in enumerate(choices):
      rows.append((prompt, choice))
      owners.append((e, c))
  width = max(len(p) + len(c) for p, c in rows)
  inp = np.zeros((len(rows), width), np.int32)
  tgt = np.zeros_like(inp)
  w = np.zeros((len(rows), width), np.float32)
  for r, (p, c) in enumerate(rows):
    full = p + c
    inp[r, :len(full) - 1] = full[:-1]
    tgt[r, :len(full) - 1] = full[1:]
    w[r, len(p) - 1:len(full) - 1] = 1.0
  return inp, tgt, w, owners


def packed_rank_scores(lm) -> np.ndarray:
  """Every (prompt, choice) log-likelihood through ``apply_packed``, prompts scored once per example."""
  inp, tgt, w, _ = _rank_rows()
  host = packed.pack(inp, tgt, w, np.arange(len(inp)), seq_len=32, gather_len=16)
  fn = jax.jit(packed.packed_target_logprobs, static_argnums=(0,))
  logp = np.asarray(fn(lm.adapter, lm.params, host.tokens, host.positions, host.example, host.branch, host.gather,
                       host.target, host.weight))
  keep = host.row >= 0
  return np.bincount(host.row[keep], weights=logp[keep], minlength=len(inp))


def greedy(lm, steps: int = Z.GREEDY_STEPS) -> np.ndarray:
  prompts = jnp.asarray(Z.PROMPTS)
  return np.asarray(inference.greedy_decode(lm.adapter, lm.params, prompts, jnp.full((len(prompts),), prompts.shape[1]),
                                            steps, eos_id=-1))


@pytest.mark.parametrize("family", list(Z.CONFIGS))
def test_family_matches_transformers(family, tmp_path):
  directory = Z.write_checkpoint(family, tmp_path / family)
  gold = Z.golden(family)
  if HAS_TORCH:  # the fixture is what transformers computes today
    ref = Z.reference(family, directory)
    np.testing.assert_allclose(ref["logits"], gold["logits"], rtol=0, atol=1e-5 * np.abs(gold["logits"]).max())
    np.testing.assert_array_equal(ref["greedy"], gold["greedy"])
  lm = models.from_pretrained(directory)
  assert lm.family == Z.CONFIGS[family]["model_type"] and lm.config.dtype == "float32"

  logits = np.asarray(jax.jit(lm.adapter.apply)(lm.params, jnp.asarray(Z.TOKENS)))
  assert logits.dtype == np.float32
  assert _rel(logits, gold["logits"]) <= 1e-4
  np.testing.assert_array_equal(logits.argmax(-1), gold["logits"].argmax(-1))
  np.testing.assert_array_equal(greedy(lm), gold["greedy"])  # KV-cache decoding

  scores = packed_rank_scores(lm)
  np.testing.assert_allclose(scores, gold["rank_scores"], rtol=0, atol=1e-4 * np.abs(gold["rank_scores"]).max())
  _, _, _, owners = _rank_rows()
  for e in range(len(Z.RANK_EXAMPLES)):
    idx = [r for r, (ex, _) in enumerate(owners) if ex == e]
    assert np.argmax(scores[idx]) == np.argmax(gold["rank_scores"][idx])


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_bfloat16_within_tolerance(family, tmp_path):
  """bfloat16 weights and activations: logits within 5% of the float32 reference's largest logit, and the
  same greedy choice wherever float32's top two logits are more than 5% of that scale apart."""
  lm = models.from_pretrained(Z.write_checkpoint(family, tmp_path / family, dtype="bfloat16"))
  assert lm.config.dtype == "bfloat16" and lm.params["model.embed_tokens.weight"].dtype == jnp.bfloat16
  ref = Z.golden(family)["logits"]
  out = np.asarray(jax.jit(lm.adapter.apply)(lm.params, jnp.asarray(Z.TOKENS)))
  assert out.dtype == np.float32
  assert _rel(out, ref) <= 5e-2
  top2 = np.sort(ref, axis=-1)[..., -2:]
  clear = (top2[..., 1] - top2[..., 0]) > 0.05 * np.abs(ref).max()
  np.testing.assert_array_equal(out.argmax(-1)[clear], ref.argmax(-1)[clear])


def test_sharded_equals_unsharded(tmp_path):
  """FSDP x tensor parallelism on 8 devices: every weight placed with its partition spec as it is read.
  The logits equal one device's up to float32 rounding (partitioned matmuls add their terms in another
  order: about 1e-6 here); argmax, greedy continuation and rank-classification scores are the same."""
  assert jax.device_count() >= 8
  directory = Z.write_checkpoint("qwen3", tmp_path / "q")
  one = models.from_pretrained(directory)
  mesh = jax.make_mesh((4, 2), ("fsdp", "tp"), axis_types=(AxisType.Auto,) * 2)
  lm = models.from_pretrained(directory, mesh=mesh)
  q = lm.params["model.layers.0.self_attn.q_proj.weight"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("tp", "fsdp") and len(q.addressable_shards) == 8
  assert lm.params["model.layers.0.self_attn.o_proj.weight"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tp")
  tokens = jnp.asarray(Z.TOKENS)
  a = np.asarray(jax.jit(one.adapter.apply)(one.params, tokens))
  b = np.asarray(jax.jit(lm.adapter.apply)(lm.params, tokens))
  np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
  np.testing.assert_array_equal(b.argmax(-1), a.argmax(-1))
  np.testing.assert_array_equal(greedy(lm), greedy(one))
  np.testing.assert_allclose(packed_rank_scores(lm), packed_rank_scores(one), rtol=0, atol=1e-4)


def test_prefill_and_decode_match_forward(tmp_path):
  """A multi-token decode step (prefill) then one-token steps give the forward pass's logits, with Mistral's
  sliding window (4) shorter than the sequence."""
  lm = models.from_pretrained(Z.write_checkpoint("mistral", tmp_path / "m"))
  tokens = jnp.asarray(Z.TOKENS)
  full = np.asarray(jax.jit(lm.adapter.apply)(lm.params, tokens))
  cache = lm.adapter.init_cache(2, 16)
  step = jax.jit(lm.adapter.decode_step)
  first, cache = step(lm.params, cache, tokens[:, :7])
  outs = [np.asarray(first)]
  for t in range(7, tokens.shape[1]):
    logits, cache = step(lm.params, cache, tokens[:, t:t + 1])
    outs.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=0, atol=1e-5 * np.abs(full).max())


def test_transformers4_and_5_rope_spellings_agree():
  v4 = dict(Z.CONFIGS["llama"])
  v5 = {k: v for k, v in v4.items() if k not in ("rope_theta", "rope_scaling")}
  v5["rope_parameters"] = dict(v4["rope_scaling"], rope_theta=v4["rope_theta"])
  assert models.parse_hf_config(v4) == models.parse_hf_config(v5)
  g4 = models.parse_hf_config(Z.CONFIGS["gemma3_text"])
  g5 = dict(Z.CONFIGS["gemma3_text"])
  for k in ("rope_theta", "rope_local_base_freq", "rope_scaling", "sliding_window_pattern"):
    g5.pop(k)
  g5["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
  g5["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
  assert models.parse_hf_config(g5) == g4
  assert g4.rope_ids == (1, 0, 1) and g4.windows == (4, 0, 4) and g4.ropes[0].kind == "linear"


def test_builtin_decoder_is_a_family_with_identical_numbers(tmp_path):
  """A built-in decoder checkpoint loads through from_pretrained and gives exactly the Decoder's logits,
  unpacked and packed (with the suite's vocabulary and its BOS 0)."""
  import flax.linen as nn
  from mergejax.models import adapter as adapter_lib
  mc = models.get_config("xs", vocab_size=1024)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 1024, (2, 12)), jnp.int32)
  params = nn.unbox(models.Decoder(mc).init(jax.random.key(3), tokens)["params"])
  from mergejax.tasks import vocab as suite_vocab
  path = models.save_checkpoint(tmp_path / "xs", mc, params, tokenizer_model=suite_vocab.DEFAULT_MODEL)
  lm = models.from_pretrained(path)  # the checkpoint carries its tokenizer.model
  assert lm.family == "builtin" and lm.vocabulary.vocab_size == 1024 and lm.start_id == 0
  bare = models.save_checkpoint(tmp_path / "bare", mc, params)  # no tokenizer: refused unless one is given
  with pytest.raises(ValueError, match="no tokenizer.model"):
    models.from_pretrained(bare)
  assert models.from_pretrained(bare, vocabulary=lm.vocabulary).vocabulary is lm.vocabulary
  ref = adapter_lib.builtin_adapter(mc)
  np.testing.assert_array_equal(np.asarray(jax.jit(lm.adapter.apply)(lm.params, tokens)),
                                np.asarray(jax.jit(ref.apply)(params, tokens)))
  pos = jnp.asarray(np.tile(np.arange(12), (2, 1)))
  mask = jnp.tril(jnp.ones((12, 12), bool))[None].repeat(2, 0)
  gather = jnp.asarray([[3, 7], [0, 11]])
  np.testing.assert_array_equal(np.asarray(jax.jit(lm.adapter.apply_packed)(lm.params, tokens, pos, mask, gather)),
                                np.asarray(jax.jit(ref.apply_packed)(params, tokens, pos, mask, gather)))
  assert lm.seqio_adapter is lm.adapter  # seqio's ids are the decoder's own


def test_saved_orbax_and_sharded_safetensors_reload(tmp_path):
  lm = models.from_pretrained(Z.write_checkpoint("qwen2", tmp_path / "src"))
  tokens = jnp.asarray(Z.TOKENS)
  apply = jax.jit(lm.adapter.apply)
  ref = np.asarray(apply(lm.params, tokens))
  for fmt, kw in (("orbax", {}), ("safetensors", {"shard_bytes": 20_000})):
    out = models.save_pretrained(lm, tmp_path / fmt, output_format=fmt, **kw)
    if fmt == "safetensors":
      assert (out / "model.safetensors.index.json").is_file()
    again = models.from_pretrained(out)
    assert again.family == "qwen2"
    np.testing.assert_array_equal(np.asarray(apply(again.params, tokens)), ref)
