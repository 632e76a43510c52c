"""from_pretrained on bad inputs (one line naming the file and field or tensor), tokenizers as seqio
vocabularies, and the seqio view of a model (shifted ids, the checkpoint's BOS in seqio's BOS slot)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as Z
from mergejax import models
from mergejax.checkpoints.base import CheckpointError


def _edit_config(directory, **changes):
  cfg = json.loads((directory / "config.json").read_text())
  for k, v in changes.items():
    if v is None:
      cfg.pop(k, None)
    else:
      cfg[k] = v
  (directory / "config.json").write_text(json.dumps(cfg))


def _expect(directory, *needles):
  with pytest.raises(CheckpointError) as e:
    models.from_pretrained(directory)
  msg = str(e.value)
  assert "\n" not in msg
  for n in needles:
    assert n in msg, msg
  return msg


def test_directory_without_config_or_weights(tmp_path):
  _expect(tmp_path, str(tmp_path), "no config.json")
  (tmp_path / "config.json").write_text(json.dumps(Z.CONFIGS["llama"]))
  _expect(tmp_path, str(tmp_path), "no weights")
  (tmp_path / "config.json").write_text("{not json")
  _expect(tmp_path, "config.json", "not valid JSON")


@pytest.mark.parametrize("changes,needles", [
    ({"model_type": "gpt_neox"}, ["config.json", "'model_type'", "gpt_neox"]),
    ({"model_type": None}, ["config.json", "'model_type' is missing"]),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, ["config.json", "rope_scaling.rope_type", "yarn"]),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "beta": 2}}, ["rope_scaling.beta"]),
    ({"hidden_act": "relu"}, ["config.json", "'hidden_act'", "relu"]),
    ({"quantization_config": {"bits": 4}}, ["'quantization_config'"]),
    ({"logit_scale": 0.5}, ["'logit_scale'", "not understood by the llama family"]),
    ({"num_hidden_layers": None}, ["'num_hidden_layers' is missing"]),
])
def test_unsupported_config_names_the_field(tmp_path, changes, needles):
  d = Z.write_checkpoint("llama", tmp_path / "m")
  _edit_config(d, **changes)
  _expect(d, *needles)


def test_harmless_and_disabled_fields_are_accepted(tmp_path):
  d = Z.write_checkpoint("llama", tmp_path / "m")
  _edit_config(d, transformers_version="4.46.0", use_cache=True, some_new_feature=False, initializer_range=0.02,
               pretraining_tp=1)
  assert models.from_pretrained(d).family == "llama"
  # Qwen2.5's released configs carry a window they do not use (use_sliding_window false).
  qwen = dict(Z.CONFIGS["qwen2"], use_sliding_window=False, sliding_window=32768, max_window_layers=24,
              use_mrope=False)
  assert not any(models.parse_hf_config(qwen).windows)


def test_missing_extra_and_misshapen_tensors(tmp_path):
  from safetensors.numpy import save_file
  w = Z.weights("mistral")
  cases = {
      "missing": ({k: v for k, v in w.items() if k != "model.layers.1.mlp.up_proj.weight"},
                  ["'model.layers.1.mlp.up_proj.weight' is missing"]),
      "extra": ({**w, "model.layers.2.mlp.up_proj.weight": w["model.layers.1.mlp.up_proj.weight"]},
                ["unexpected tensor 'model.layers.2.mlp.up_proj.weight'"]),
      "shape": ({**w, "model.norm.weight": np.ones((31,), np.float32)},
                ["'model.norm.weight' has shape (31,)", "(32,)"]),
  }
  for name, (tensors, needles) in cases.items():
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(Z.CONFIGS["mistral"]))
    save_file(tensors, str(d / "model.safetensors"))
    _expect(d, str(d), *needles)


def _word_tokenizer(path, words):
  import tokenizers
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  tok.save(str(path))


def test_tokenizer_json_vocabulary_shifts_when_id0_is_text(tmp_path):
  import tensorflow as tf
  d = Z.write_checkpoint("llama", tmp_path / "m")  # eos ids [2, 3], bos 1
  words = ["!", "<s>", "</s>", "<unk>", "the", "cat", "sat"] + [f"w{i}" for i in range(40)]
  _word_tokenizer(d / "tokenizer.json", words)
  lm = models.from_pretrained(d)
  v = lm.vocabulary
  assert lm.token_offset == 1 and v.eos_id == 3 and v.vocab_size == len(words) + 1
  ids = v.encode("the cat ! sat")
  assert ids == [5, 6, 1, 7]  # "!" is id 0 of the tokenizer, 1 in seqio
  assert v.decode(ids) == "the cat! sat"
  assert list(v.encode_tf(tf.constant("the cat")).numpy()) == [5, 6]
  assert v.decode_tf(tf.constant([[5, 6, 3, 7]])).numpy().tolist() == [b"the cat"]
  # seqio view: id 0 at the start is the BOS slot, t > 0 is token t - 1, logit column i scores seqio id i.
  seq = jnp.asarray([[0, 5, 6, 1, 7]])
  a = np.asarray(lm.seqio_adapter.apply(lm.params, seq))
  b = np.asarray(lm.adapter.apply(lm.params, jnp.asarray([[1, 4, 5, 0, 6]])))
  assert np.all(np.isneginf(a[..., 0]))
  np.testing.assert_array_equal(a[..., 1:], b)


def test_tokenizer_larger_than_embedding_is_rejected(tmp_path):
  d = Z.write_checkpoint("llama", tmp_path / "m")
  _word_tokenizer(d / "tokenizer.json", ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(70)])
  _expect(d, "tokenizer.json", "73 tokens", "64 rows")


def test_sentencepiece_vocabulary(tmp_path):
  import seqio
  from mergejax.tasks import vocab as suite_vocab
  from mergejax.models import tokenizer as tok_lib
  d = tmp_path / "sp"
  d.mkdir()
  (d / "tokenizer.model").write_bytes(suite_vocab.DEFAULT_MODEL.read_bytes())
  ids = {"bos": None, "eos": [1], "pad": 0}
  vocab, offset = tok_lib.load_vocabulary(d, ids, 1024)
  assert isinstance(vocab, seqio.SentencePieceVocabulary) and offset == 0
  assert vocab.decode(vocab.encode("the river")) == "the river"
  with pytest.raises(ValueError,
                     match=r"tokenizer.model: the tokenizer has 1024 tokens but the embedding table has 512 rows"):
    tok_lib.load_vocabulary(d, ids, 512)


def test_dtype_override_and_gemma_embedding_scale_rounding(tmp_path):
  """bfloat16 loading rounds sqrt(D) to bfloat16 before scaling the embedding, as transformers does."""
  d = Z.write_checkpoint("gemma2", tmp_path / "g")
  lm = models.from_pretrained(d, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(lm.params))
  assert lm.config.embed_scale == pytest.approx(32 ** 0.5)
  assert float(jnp.asarray(lm.config.embed_scale, jnp.float32).astype(jnp.bfloat16)) == 5.65625
