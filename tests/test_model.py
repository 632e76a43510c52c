"""The PaLM-style decoder: shapes, causality, packing, KV-cache decoding, sizes, checkpoints."""

import concurrent.futures
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mergejax import models, tasks
from mergejax.models import decoder as decoder_lib
from mergejax.training import data

TINY = models.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=16)


def _init(cfg, seed=0, length=8):
  tok = jnp.zeros((1, length), jnp.int32)
  return nn.unbox(models.Decoder(cfg).init(jax.random.key(seed), tok)["params"])


@pytest.mark.parametrize("scan", [False, True])
def test_shapes_param_count_and_causality(scan):
  cfg = TINY.replace(scan_layers=scan)
  params = _init(cfg)
  assert sum(x.size for x in jax.tree.leaves(params)) == models.param_count(cfg)
  model = models.Decoder(cfg)
  tok = jax.random.randint(jax.random.key(1), (3, 12), 0, cfg.vocab_size)
  logits = model.apply({"params": params}, tok)
  assert logits.shape == (3, 12, cfg.vocab_size) and logits.dtype == jnp.float32
  # Changing token t never changes logits before t; it does change logits at t.
  for t in (0, 5, 11):
    tok2 = tok.at[:, t].set((tok[:, t] + 7) % cfg.vocab_size)
    logits2 = model.apply({"params": params}, tok2)
    np.testing.assert_allclose(logits2[:, :t], logits[:, :t], atol=1e-5)
    assert float(jnp.abs(logits2[:, t] - logits[:, t]).max()) > 1e-4


def test_packed_segments_match_separate_sequences():
  params = _init(TINY)
  model = models.Decoder(TINY)
  a = jnp.array([[5, 6, 7, 8, 9]])
  b = jnp.array([[10, 11, 12]])
  packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 3 + [0] * 2])
  pos = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 0]])
  out = model.apply({"params": params}, packed, seg, pos)
  np.testing.assert_allclose(out[:, :5], model.apply({"params": params}, a), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:8], model.apply({"params": params}, b), atol=1e-5)


def test_rope_table_gives_the_per_token_angles_bit_for_bit_and_is_computed_once():
  """The one-hot table of the forward pass equals sin / cos computed per token, exactly; and the compiled
  decoder evaluates sin and cos once (XLA otherwise fuses them into every layer's query and key)."""
  pos_BxL = jax.random.randint(jax.random.key(3), (4, 80), 0, 80)
  for k, base in ((16, 10000.0), (48, 10000.0), (64, 500000.0)):
    table = jax.jit(lambda p, k=k, base=base: decoder_lib.rope_rotation(p, k, base, table=80))(pos_BxL)
    direct = jax.jit(lambda p, k=k, base=base: decoder_lib.rope_rotation(p, k, base))(pos_BxL)
    for a, b in zip(table, direct):
      assert a.shape == b.shape == (4, 80, 1, k // 2)
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  cfg = TINY.replace(n_layers=3)
  params = _init(cfg)
  hlo = jax.jit(lambda p, t: models.Decoder(cfg).apply({"params": p}, t)).lower(
      params, jnp.zeros((2, 12), jnp.int32)).compile().as_text()
  assert hlo.count(" sine(") == 1 and hlo.count(" cosine(") == 1


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decoding_matches_full_forward(scan):
  cfg = TINY.replace(scan_layers=scan)
  params = _init(cfg)
  model = models.Decoder(cfg)
  tok = jax.random.randint(jax.random.key(2), (2, cfg.max_len), 0, cfg.vocab_size)
  full = model.apply({"params": params}, tok)
  cache = model.init(jax.random.key(0), jnp.zeros((2, cfg.max_len), jnp.int32), decode=True)["cache"]
  step = jax.jit(lambda c, t: model.apply({"params": params, "cache": c}, t, decode=True,
                                          mutable=["cache"]))
  outs = []
  for i in range(cfg.max_len):
    logits, v = step(cache, tok[:, i:i + 1])
    cache = v["cache"]
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-4)


def test_every_param_has_logical_axes():
  cfg = TINY.replace(scan_layers=True)
  boxed = models.Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, P))
  shapes = jax.tree.leaves(nn.unbox(boxed))
  assert len(specs) == len(shapes)
  for spec, x in zip(specs, shapes):
    assert len(spec) == x.ndim and all(isinstance(n, str) for n in spec), spec
  assert any(spec[0] == "layers" for spec in specs)


def test_size_table_spans_16x_and_flops():
  counts = {n: models.param_count(c) for n, c in models.SIZES.items()}
  assert max(counts.values()) >= 16 * min(counts.values())
  assert list(counts.values()) == sorted(counts.values())
  # The table's counts are those of the world's checkpoints: training sets vocab_size to the suite's
  # vocabulary rounded up to a multiple of 128, which is the default.
  assert models.ModelConfig().vocab_size == data.padded_vocab_size(tasks.get_vocabulary().vocab_size)
  cfg = models.get_config("xs")
  assert models.flops_per_token(cfg, training=True) == 3 * models.flops_per_token(cfg, training=False)
  assert models.flops_per_token(cfg) > 6 * models.param_count(cfg)
  with pytest.raises(KeyError, match="unknown model size"):
    models.get_config("nope")
  with pytest.raises(ValueError, match="divisible"):
    models.ModelConfig(d_model=30, n_heads=4)


def test_checkpoint_roundtrip_atomic_and_sharded(tmp_path):
  params = _init(TINY)
  path = tmp_path / "ckpt"
  models.save_checkpoint(path, TINY, params, info={"recipe": "test"})
  assert models.is_complete(path)
  assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporaries left behind
  assert json.loads((path / "model_config.json").read_text())["d_model"] == 32
  cfg, restored = models.load_checkpoint(path)
  assert cfg == TINY and models.load_info(path)["recipe"] == "test"
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rep = NamedSharding(mesh, P())
  _, on_mesh = models.load_checkpoint(path, sharding=rep)
  assert all(x.sharding == rep for x in jax.tree.leaves(on_mesh))
  with pytest.raises(FileExistsError):
    models.save_checkpoint(path, TINY, params)


def test_checkpoints_saved_and_loaded_from_several_threads_at_once(tmp_path):
  """The world builder trains runs side by side in threads. Orbax 0.12 is not thread-safe for
  concurrent saves (process-global operation ids and temporary paths): without models'
  ORBAX_LOCK, this fails in most runs (directory races, or a wait until orbax's 300 s timeout)."""
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    for round_ in range(2):
      futs = [pool.submit(models.save_checkpoint, tmp_path / f"r{round_}m{i}", TINY,
                          {"w": np.full((4, 3), i, np.float32)}) for i in range(16)]
      paths = [f.result(timeout=120) for f in futs]
      loaded = [f.result(timeout=120) for f in [pool.submit(models.load_checkpoint, p) for p in paths]]
      for i, (cfg, params) in enumerate(loaded):
        assert cfg == TINY
        np.testing.assert_array_equal(params["w"], np.full((4, 3), i, np.float32))
  assert all(models.is_complete(p) for p in tmp_path.iterdir())


def test_incomplete_checkpoints_are_rejected(tmp_path):
  half = tmp_path / "half"
  half.mkdir()
  (half / "_CHECKPOINT_METADATA").write_text("{}")
  assert not models.is_complete(half)  # no model_config.json
  with pytest.raises(FileNotFoundError, match="not a complete model checkpoint"):
    models.load_checkpoint(half)
  (half / "model_config.json").write_text('{"d_model": 32, "bogus": 1}')
  with pytest.raises(ValueError, match="bogus"):
    models.load_config(half)
