"""Inputs with different vocabularies (experts with added tokens, resized embeddings): rows mapped by token
string to the output vocabulary of tokenizer_source base / union / an input, with mergekit's fallback for
tokens only some inputs have, checked against a NumPy transcription of mergekit's PermutedVocabulary;
the merged tokenizer is written and loads with transformers."""

import json

import numpy as np
import pytest

from mergejax.checkpoints import open_source
from mergejax.cli import merge as merge_cli
from test_checkpoints_fixtures import bits
from test_cli_merge import _cfg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "merging models is fun", "tokens and rows"] * 20


def _tokenizer():
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"])
  tok.train_from_iterator(CORPUS, trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                              eos_token="</s>")


def _model(vocab, seed):
  cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=32)
  torch.manual_seed(seed)
  return transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("vocab")
  tok = _tokenizer()
  base = _model(len(tok), 0)
  base.save_pretrained(root / "base")
  tok.save_pretrained(root / "base")
  paths = [root / "base"]
  for i, extra in enumerate([["<tool>", "ciao"], ["ciao", "<img>", "zzz"]]):
    m = _model(len(tok), 0)
    with torch.no_grad():
      for p in m.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(10 + i)).to(p.dtype))
    t = _tokenizer()
    t.add_tokens(extra)
    m.resize_token_embeddings(len(t))
    with torch.no_grad():  # distinctive rows for the added tokens
      for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = dict(m.named_parameters())[name]
        w[len(tok):] = torch.randn(w[len(tok):].shape, generator=torch.Generator().manual_seed(20 + i)).to(w.dtype)
    m.save_pretrained(root / f"e{i}")
    t.save_pretrained(root / f"e{i}")
    paths.append(root / f"e{i}")
  return paths


def _tensors(d):
  src = open_source(d)
  return {s.path: np.asarray(src.read([s.path])[s.path]) for s in src.specs()}


def _mapped_rows(models, vocabs, out_vocab, base, name):
  """mergekit's PermutedVocabulary (one-input rule, then base, then mean), in float32, by token string."""
  rows = []
  for m, v in enumerate(vocabs):
    x = np.asarray(models[m][name], np.float32)
    out = np.zeros((len(out_vocab), x.shape[1]), np.float32)
    for t, j in out_vocab.items():
      if t in v:
        out[j] = x[v[t]]
        continue
      have = [k for k in range(len(vocabs)) if t in vocabs[k]]
      if len(have) == 1:
        out[j] = np.asarray(models[have[0]][name], np.float32)[vocabs[have[0]][t]]
      elif base is not None and t in vocabs[base]:
        out[j] = np.asarray(models[base][name], np.float32)[vocabs[base][t]]
      else:
        acc = np.zeros(x.shape[1], np.float32)
        for k in have:
          acc = acc + np.asarray(models[k][name], np.float32)[vocabs[k][t]]
        out[j] = acc / np.float32(len(have))
    rows.append(out)
  return rows


@pytest.mark.parametrize("source", ["union", "base", "e1"])
def test_task_arithmetic_over_mapped_vocabularies_matches_mergekit_semantics(world, tmp_path, source):
  base, e0, e1 = world
  tok_src = str(e1) if source == "e1" else source
  out = merge_cli.merge_checkpoints(str(base), [str(e0), str(e1)], str(tmp_path / "o"),
                                    _cfg(method__name="task_arithmetic"), tokenizer_source=tok_src)
  got = _tensors(out)
  out_tok = transformers.AutoTokenizer.from_pretrained(out)
  out_vocab = out_tok.get_vocab()
  want_tokens = {"union": {"<tool>", "ciao", "<img>", "zzz"}, "base": set(), "e1": {"ciao", "<img>", "zzz"}}[source]
  assert {t for t in out_vocab if t not in _tokenizer().get_vocab()} == want_tokens
  assert json.loads((out / "config.json").read_text())["vocab_size"] == len(out_vocab)
  models = [_tensors(p) for p in world]
  vocabs = [transformers.AutoTokenizer.from_pretrained(p).get_vocab() for p in world]
  for name in ("model.embed_tokens.weight", "lm_head.weight"):
    b, x0, x1 = _mapped_rows(models, vocabs, out_vocab, 0, name)
    want = (b + ((x0 - b) + (x1 - b))).astype(got[name].dtype)
    assert got[name].shape == want.shape
    np.testing.assert_array_equal(bits(got[name]), bits(want), err_msg=name)
  for name, x in got.items():  # every other leaf: plain task arithmetic
    if "embed" not in name and "lm_head" not in name:
      b, x0, x1 = (np.asarray(m[name], np.float32) for m in models)
      np.testing.assert_array_equal(bits(x), bits((b + ((x0 - b) + (x1 - b))).astype(x.dtype)), err_msg=name)
  model = transformers.AutoModelForCausalLM.from_pretrained(out)
  ids = out_tok("ciao the cat", return_tensors="pt").input_ids
  assert model(ids).logits.shape[-1] == len(out_vocab)


def test_resized_vocabulary_without_a_tokenizer_source_says_how(world, tmp_path):
  base, e0, _ = world
  with pytest.raises(ValueError) as err:
    merge_cli.merge_checkpoints(str(base), [str(e0)], str(tmp_path / "o"), _cfg(method__name="task_arithmetic"))
  line = merge_cli.error_line(err.value)
  assert "has shape" in line and "--tokenizer_source=union or base" in line
  assert not (tmp_path / "o").exists()


def test_recipe_tokenizer_overrides_and_padding(world, tmp_path):
  from mergejax.recipes import mergekit as mk, run as run_lib  # pylint: disable=g-import-not-at-top
  base, e0, e1 = world
  text = f"""
merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 1.0}}
  - model: {e0}
    parameters: {{weight: 1.0}}
  - model: {e1}
    parameters: {{weight: 2.0}}
tokenizer:
  source: union
  pad_to_multiple_of: 16
  tokens:
    ciao: {{source: {{kind: zero}}, force: true}}
    the: {{source: {{kind: model_token, model: {e1}, token: cat}}, force: true}}
dtype: float32
"""
  out = run_lib.run(mk.plan(mk.parse(text)), str(tmp_path / "o"))
  got = _tensors(out)
  vocab = transformers.AutoTokenizer.from_pretrained(out).get_vocab()
  n = len(vocab)
  emb = got["model.embed_tokens.weight"].astype(np.float32)
  assert emb.shape[0] == -(-n // 16) * 16 == json.loads((out / "config.json").read_text())["vocab_size"]
  np.testing.assert_array_equal(emb[vocab["ciao"]], 0)  # forced zero in every input
  vocabs = [transformers.AutoTokenizer.from_pretrained(p).get_vocab() for p in world]
  rows = [_tensors(p)["model.embed_tokens.weight"].astype(np.float32) for p in world]
  cat_e1 = rows[2][vocabs[2]["cat"]]
  assert got["model.embed_tokens.weight"].dtype == np.float32  # mergekit: out_dtype, else dtype
  np.testing.assert_array_equal(emb[vocab["the"]], cat_e1)  # forced: every input takes e1's "cat" row
  bad = text.replace("    ciao:", f"    <img>: {{source: {e0}}}\n    ciao:")  # e0 lacks <img>: refused, as mergekit
  with pytest.raises(ValueError, match=r"token '<img>': its source .*e0 does not have it"):
    run_lib.run(mk.plan(mk.parse(bad)), str(tmp_path / "o2"))
  assert not (tmp_path / "o2").exists()
