"""Evaluating any checkpoint: a Hugging Face directory, mergejax-merge outputs (safetensors and orbax) and the
built-in world's checkpoints, tokenized with the checkpoint's own tokenizer; user linen and nnx modules."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

import model_zoo as Z
from mergejax import evaluation, models
from mergejax.cli import eval as eval_cli
from mergejax.evaluation import packed
from mergejax.tasks import generators as G, metrics as M, preprocessors as P, registry as R
from mergejax.tasks import per_vocabulary

WORDS = ["!", "<s>", "</s>", "<unk>", "the", "cat", "sat", "on", "mat", "dog", "sky", "red", "blue", "is", "a",
         "what", "color", "?", "yes", "no"]
EXAMPLES = [
    G.Example(inputs="the cat sat on the", targets="mat", choices=("mat", "dog", "sky"), label=0),
    G.Example(inputs="what color is the sky ?", targets="blue", choices=("red", "blue"), label=1),
    G.Example(inputs="is the dog red !", targets="no", choices=("yes", "no", "the mat"), label=1),
    G.Example(inputs="a cat !", targets="yes", choices=("yes ! no", "no"), label=0),
]
TASK = "mjtest_models_rank"


def _register_task():
  if TASK in seqio.TaskRegistry.names():
    return
  source = seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: R.to_tf_dataset(EXAMPLES),
                                    splits=["validation"])
  seqio.TaskRegistry.add(TASK, source=source, output_features=R.output_features(),
                         preprocessors=[P.rank_classification, seqio.preprocessors.tokenize,
                                        seqio.preprocessors.append_eos_after_trim],
                         postprocess_fn=M.rank_classification_postprocessor, metric_fns=[M.rank_accuracy])


def _hf_checkpoint(path):
  import tokenizers
  d = Z.write_checkpoint("llama", path)  # bos 1, eos [2, 3]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece(prefix="##")
  tok.add_special_tokens(["<s>", "</s>", "<unk>"])
  tok.save(str(d / "tokenizer.json"))
  return d


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return _hf_checkpoint(tmp_path_factory.mktemp("hf") / "llama")


def _direct_scores(lm):
  """log p(choice + EOS | BOS + inputs) of every (example, choice), from the model's own forward pass."""
  tok = lm.text_tokenizer()
  rows = []
  for ex in EXAMPLES:
    x = [lm.bos_id] + tok.encode(ex.inputs, add_special_tokens=False)
    for choice in ex.choices:
      rows.append((x, tok.encode(choice, add_special_tokens=False) + [lm.eos_ids[0]]))
  width = max(len(x) + len(y) for x, y in rows)
  tokens = np.zeros((len(rows), width), np.int32)  # right padding cannot change earlier positions
  for r, (x, y) in enumerate(rows):
    tokens[r, :len(x) + len(y)] = x + y
  z = np.asarray(jax.jit(lm.adapter.apply)(lm.params, jnp.asarray(tokens)), np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  return np.asarray([sum(logp[r, len(x) - 1 + j, t] for j, t in enumerate(y)) for r, (x, y) in enumerate(rows)])


def _accuracy(scores):
  k, right = 0, []
  for ex in EXAMPLES:
    right.append(int(np.argmax(scores[k:k + len(ex.choices)])) == ex.label)
    k += len(ex.choices)
  return float(np.mean(right))


def test_evaluator_scores_with_the_checkpoints_tokenizer_and_bos(hf_dir):
  """Llama-3-like tokenizer (id 0 is the text token "!"): the seqio task re-tokenized with it, BOS 1 in seqio's
  BOS slot; the evaluator's scores are the model's own log-likelihoods, unpacked and packed."""
  _register_task()
  lm = models.from_pretrained(hf_dir)
  assert lm.token_offset == 1
  task = per_vocabulary.with_vocabulary(TASK, lm.vocabulary)
  assert task != TASK and per_vocabulary.with_vocabulary(TASK, lm.vocabulary) == task
  want = _direct_scores(lm)
  ev = evaluation.Evaluator(lm.adapter, task, "validation", batch_size=8)
  got = [s for _, s in sorted(ev.inference.score(lm.params, ev.seqio_evaluator.cached_model_datasets[task]))]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  res = ev.evaluate(lm.params)
  assert res.tasks[task]["accuracy"] == pytest.approx(100 * _accuracy(want))
  # Packed, prefix-shared scoring of the same seqio rows through the adapter's seqio view.
  rows = list(ev.seqio_evaluator.cached_model_datasets[task].as_numpy_iterator())
  feats = {k: np.stack([f[k] for _, f in rows]) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                                            "decoder_loss_weights")}
  idx = np.asarray([i for i, _ in rows])
  host = packed.pack(feats["decoder_input_tokens"], feats["decoder_target_tokens"], feats["decoder_loss_weights"],
                     idx, seq_len=64)
  logp = np.asarray(jax.jit(packed.packed_target_logprobs, static_argnums=(0,))(
      lm.adapter.for_seqio(), lm.params, host.tokens, host.positions, host.example, host.branch, host.gather,
      host.target, host.weight))
  keep = host.row >= 0
  np.testing.assert_allclose(np.bincount(host.row[keep], weights=logp[keep], minlength=len(want)), want,
                             rtol=0, atol=1e-4)


def _merge(base, experts, out, fmt):
  proc = subprocess.run([sys.executable, "-m", "mergejax.cli.merge", f"--base={base}", f"--experts={','.join(experts)}",
                         f"--output={out}", f"--output_format={fmt}", "--config.method.name=task_arithmetic",
                         "--config.method.lam=0.5", "--config.progress=False"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return out


def test_mergejax_eval_on_hf_and_merged_checkpoints(hf_dir, tmp_path):
  from safetensors.numpy import load_file, save_file
  expert = tmp_path / "expert"
  expert.mkdir()
  for f in ("config.json", "tokenizer.json"):
    (expert / f).write_bytes((hf_dir / f).read_bytes())
  w = load_file(str(hf_dir / "model.safetensors"))
  save_file({k: v + np.float32(0.01) * np.sign(v) for k, v in w.items()}, str(expert / "model.safetensors"))
  spec = importlib.util.spec_from_file_location("eval_config", pathlib.Path(__file__).resolve().parents[1] /
                                                "configs" / "eval.py")
  eval_config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(eval_config)
  cfg = eval_config.get_config()
  cfg.mixtures = ("heldout_nli",)
  cfg.batch_size = 8
  st = _merge(hf_dir, [str(expert)], tmp_path / "merged_st", "safetensors")
  ob = _merge(hf_dir, [str(expert)], tmp_path / "merged_orbax", "orbax")
  scores = {}
  for name, path in (("hf", hf_dir), ("safetensors", st), ("orbax", ob)):
    results, table = eval_cli.evaluate_checkpoint(str(path), cfg)
    assert results["family"] == "llama"
    (mixture,) = results["mixtures"].values()
    assert set(mixture["categories"]) == {"nli"} and "_v" in mixture["mixture"]
    scores[name] = mixture["score"]
  assert scores["safetensors"] == pytest.approx(scores["orbax"], abs=1e-9)


def test_mergejax_eval_rejects_unsupported_checkpoint(hf_dir, tmp_path):
  bad = tmp_path / "bad"
  bad.mkdir()
  for f in ("model.safetensors", "tokenizer.json"):
    (bad / f).write_bytes((hf_dir / f).read_bytes())
  (bad / "config.json").write_text(json.dumps({**Z.CONFIGS["llama"], "model_type": "falcon"}))
  out = tmp_path / "r.json"
  proc = subprocess.run([sys.executable, "-m", "mergejax.cli.eval", f"--checkpoint={bad}", f"--config.output={out}"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  err = [l for l in proc.stderr.splitlines() if l.startswith("mergejax-eval:")]
  assert len(err) == 1 and "config.json" in err[0] and "'model_type' = 'falcon'" in err[0]
  assert not out.exists()


class LinenLM(nn.Module):
  vocab: int

  @nn.compact
  def __call__(self, tokens_BxL):
    x = nn.Embed(self.vocab, 16)(tokens_BxL)
    x = jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[None, :, None]  # causal mean of the prefix
    return nn.Dense(self.vocab)(nn.tanh(x)).astype(jnp.float32)


class NnxLM(nnx.Module):
  def __init__(self, vocab: int, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, 16, rngs=rngs)
    self.out = nnx.Linear(16, vocab, rngs=rngs)

  def __call__(self, tokens_BxL):
    x = self.embed(tokens_BxL)
    x = jnp.cumsum(x, axis=1) / jnp.arange(1, x.shape[1] + 1)[None, :, None]
    return self.out(nnx.tanh(x)).astype(jnp.float32)


def test_user_linen_and_nnx_modules_plug_in():
  """The same function written in linen and nnx, with the same weights, gets the same results."""
  _register_task()
  vocab = R.output_features()["targets"].vocabulary.vocab_size
  linen = LinenLM(vocab)
  params = linen.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  model = NnxLM(vocab, nnx.Rngs(0))
  model.embed.embedding[...] = params["Embed_0"]["embedding"]
  model.out.kernel[...] = params["Dense_0"]["kernel"]
  model.out.bias[...] = params["Dense_0"]["bias"]
  a = evaluation.Evaluator(evaluation.from_flax_lm(linen), TASK, "validation", batch_size=8).evaluate(params)
  nnx_adapter = evaluation.from_flax_lm(model)
  ev = evaluation.Evaluator(nnx_adapter, TASK, "validation", batch_size=8)
  b = ev.evaluate(nnx.state(model, nnx.Param))
  assert a.score == pytest.approx(b.score, abs=1e-6) and a.tasks[TASK]["accuracy"] >= 0
  tokens = jnp.asarray([[3, 5, 7, 9]])
  np.testing.assert_allclose(np.asarray(nnx_adapter.apply(nnx.state(model, nnx.Param), tokens)),
                             np.asarray(linen.apply({"params": params}, tokens)), rtol=1e-6)
