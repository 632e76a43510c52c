"""The lm-evaluation-harness bridge on a local task and local data (nothing downloaded): multiple choice,
rolling log-likelihood and greedy generation; with torch, the same numbers as lm-eval's Hugging Face backend."""

import importlib.util
import json
import os

import numpy as np
import pytest

import model_zoo as Z

lm_eval = pytest.importorskip("lm_eval")  # the optional extra mergejax[lmeval] (also in the test extra)

HAS_TORCH = importlib.util.find_spec("torch") is not None

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "dog", "sat", "ran", "on", "mat", "a", "red", "blue", "sky",
         "is", "Q:", "A:", "what", "color", "?", "yes", "no", "big", "small"]
DOCS = [
    {"question": "what color is the sky ?", "choices": ["blue", "red", "the mat"], "label": 0, "answer": "blue"},
    {"question": "the cat sat on the", "choices": ["mat", "dog", "sky"], "label": 0, "answer": "mat"},
    {"question": "is the dog big ?", "choices": ["yes", "no"], "label": 1, "answer": "no"},
    {"question": "a red cat ran", "choices": ["on the mat", "is blue", "yes"], "label": 2, "answer": "yes"},
]


def _checkpoint(tmp_path):
  import tokenizers
  d = Z.write_checkpoint("llama", tmp_path / "llama")
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece(prefix="##")
  tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
  return d


def _tasks(tmp_path):
  data = tmp_path / "data.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
  common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "mj_mc.yaml").write_text(
      "task: mj_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: 'Q: {{question}} A:'\n"
      "doc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
  (tmp_path / "tasks" / "mj_ppl.yaml").write_text(
      "task: mj_ppl\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
      "doc_to_target: '{{question}} {{answer}}'\nmetric_list:\n  - metric: word_perplexity\n")
  (tmp_path / "tasks" / "mj_gen.yaml").write_text(
      "task: mj_gen\n" + common + "output_type: generate_until\ndoc_to_text: 'Q: {{question}} A:'\n"
      "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['?']\n  max_gen_toks: 6\n  do_sample: false\n"
      "metric_list:\n  - metric: exact_match\n")
  return str(tmp_path / "tasks")


def _run(model, model_args, tasks_dir):
  from lm_eval.tasks import TaskManager
  import mergejax.evaluation.lm_harness  # noqa: F401  registers "mergejax"
  out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["mj_mc", "mj_ppl", "mj_gen"],
                                task_manager=TaskManager(include_path=tasks_dir, include_defaults=False),
                                batch_size=2, log_samples=True, device="cpu")
  return out


def test_local_tasks_match_the_hf_backend(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  d = _checkpoint(tmp_path)
  tasks_dir = _tasks(tmp_path)
  ours = _run("mergejax", f"pretrained={d}", tasks_dir)
  samples = ours["samples"]
  assert len(samples["mj_mc"]) == len(DOCS) and len(samples["mj_gen"]) == len(DOCS)
  assert all(isinstance(s["resps"][0][0], str) for s in samples["mj_gen"])

  # Multiple choice, checked against the model directly: log p(" choice" | BOS "Q: ... A:"), one batch.
  from mergejax import models
  import jax
  import jax.numpy as jnp
  lm = models.from_pretrained(d)
  tok = lm.text_tokenizer()
  rows, got = [], []
  for s in samples["mj_mc"]:
    ctx = tok.encode(f"Q: {s['doc']['question']} A:")
    for choice, resp in zip(s["doc"]["choices"], s["resps"]):
      rows.append((ctx, tok.encode(" " + choice, add_special_tokens=False)))
      got.append(resp[0][0])
  tokens = np.zeros((len(rows), max(len(c) + len(x) for c, x in rows)), np.int32)
  for r, (c, x) in enumerate(rows):
    tokens[r, :len(c) + len(x)] = c + x
  z = np.asarray(jax.jit(lm.adapter.apply)(lm.params, jnp.asarray(tokens)), np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  want = [sum(logp[r, len(c) - 1 + j, t] for j, t in enumerate(x)) for r, (c, x) in enumerate(rows)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

  if not HAS_TORCH:
    return
  ref = _run("hf", f"pretrained={d},dtype=float32", tasks_dir)
  for task in ("mj_mc", "mj_ppl", "mj_gen"):
    for a, b in zip(ours["samples"][task], ref["samples"][task]):
      ra, rb = a["resps"], b["resps"]
      if task == "mj_gen":
        assert ra == rb
      else:
        np.testing.assert_allclose([r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in ra],
                                   [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in rb], atol=1e-4)
  assert ours["results"]["mj_mc"]["acc,none"] == ref["results"]["mj_mc"]["acc,none"]
  assert ours["results"]["mj_gen"]["exact_match,none"] == ref["results"]["mj_gen"]["exact_match,none"]


def test_sampling_is_refused(tmp_path):
  from mergejax.evaluation.lm_harness import MergejaxLM
  from lm_eval.api.instance import Instance
  model = MergejaxLM(pretrained=str(_checkpoint(tmp_path)))
  req = Instance("generate_until", {}, ("Q: the cat", {"until": ["?"], "do_sample": True, "temperature": 0.7}), 0)
  with pytest.raises(ValueError, match="greedily"):
    model.generate_until([req])
