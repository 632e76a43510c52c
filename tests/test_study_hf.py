"""The study over Hugging Face checkpoints of real families, end to end on 8 simulated devices.

Tiny random Llama and Gemma 2 bases, each with its own tokenizer trained here on the synthetic suite's text
(a Llama-style BPE tokenizer.json, a Gemma-style SentencePiece tokenizer.model), are fine-tuned into one
expert per category by mergejax's trainer (the suite tokenized with the family's tokenizer), saved as Hugging
Face safetensors directories, listed in a models.yaml manifest and studied by the runner.
"""

from __future__ import annotations

import io
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import model_zoo as Z
from mergejax import data_merge, expert_data, models
from mergejax.cli import train as train_cli
from mergejax.configs import train as train_config_lib
from mergejax.configs import study as study_config_lib
from mergejax.study import plan as plan_lib
from mergejax.study import runner
from mergejax.study import verdicts
from mergejax.tasks import per_vocabulary
from mergejax.tasks import registry
from mergejax.tasks import vocab as suite_vocab
from mergejax.training import data as data_lib
from mergejax.training import finetune
from mergejax.training import recipes
from mergejax.training import trainer

CATS = ("sentiment", "summarization")
STEPS, LR = 48, 1e-2  # enough for each expert to beat its random base on its own category's validation split
FEATURE_LENGTHS = {"inputs": 96, "targets": 32}
FAMILIES = {
    # Llama: untied output projection, grouped-query attention; tokenizer.json (BPE, SentencePiece-style spaces)
    # whose id 0 is a text token, as Llama 3's "!" (seqio ids are shifted by one: the adapter's seqio view).
    "llama": dict(Z._BASE, model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=384,
                  max_position_embeddings=256, intermediate_size=64, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=382, eos_token_id=383),
    # Gemma 2: tied embeddings, sandwich norms, soft caps, alternating sliding windows; tokenizer.model.
    "gemma2": dict(Z._BASE, model_type="gemma2", architectures=["Gemma2ForCausalLM"], vocab_size=320, hidden_size=48,
                   intermediate_size=96, head_dim=12, max_position_embeddings=256, hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=12, sliding_window=64, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, rope_theta=10000.0, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1,
                   pad_token_id=0),
}
SIZE = {"llama": "llama-tiny", "gemma2": "gemma-tiny"}


def _tokenizer_files(family: str, directory: pathlib.Path, text: list[str]) -> None:
  """The family's kind of tokenizer, trained on ``text`` with the family's special ids."""
  if family == "llama":  # Llama 3's layout: text tokens from id 0, BOS and EOS the last two ids
    import tokenizers  # pylint: disable=g-import-not-at-top
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tok.decoder = tokenizers.decoders.Metaspace()
    tok.train_from_iterator(text, tokenizers.trainers.BpeTrainer(vocab_size=FAMILIES[family]["vocab_size"] - 2,
                                                                 show_progress=False))
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    assert tok.token_to_id("<|begin_of_text|>") == FAMILIES[family]["bos_token_id"]
    tok.save(str(directory / "tokenizer.json"))
  else:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, model_type="bpe",
                                   vocab_size=FAMILIES[family]["vocab_size"], character_coverage=1.0, pad_id=0,
                                   eos_id=1, bos_id=2, unk_id=3, num_threads=1, minloglevel=2)
    (directory / "tokenizer.model").write_bytes(buf.getvalue())


def _base(family: str, directory: pathlib.Path, text: list[str]) -> pathlib.Path:
  """A random base (weights seeded by tensor name) with embeddings of std d^-1/2, as trained models have them
  (Gemma multiplies them by sqrt(d): unit-variance inputs to the first layer)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  Z.write_checkpoint(family, directory, config=FAMILIES[family])
  w = Z.weights(family, FAMILIES[family])
  w["model.embed_tokens.weight"] *= np.float32(FAMILIES[family]["hidden_size"] ** -0.5)
  save_file(w, str(directory / "model.safetensors"), metadata={"format": "pt"})
  _tokenizer_files(family, directory, text)
  return directory


def _config(manifest: str):
  cfg = study_config_lib.get_config()
  cfg.models, cfg.kinds, cfg.sizes, cfg.categories = manifest, ("pretrained",), (), CATS
  cfg.num_experts, cfg.subset_seeds, cfg.design = (1, 2), 1, "balanced"
  cfg.methods = ("average", "task_arithmetic")
  cfg.grids.task_arithmetic = dict(lam=(0.5, 1.0))
  cfg.heldout_suite = "heldout_nli"
  cfg.build_world, cfg.progress, cfg.eval_batch_size, cfg.multitask = False, False, 32, False
  cfg.verdicts.n_boot = 200
  return cfg


@pytest.fixture(scope="module")
def hf_study(tmp_path_factory):
  """Bases, experts (mergejax's trainer), the manifest and one study run over them."""
  root = tmp_path_factory.mktemp("hf_study")
  registry.register_all()
  text = suite_vocab.training_text(0, num_docs=1000, num_per_task=20)
  manifest, results = {}, {}
  for family in FAMILIES:
    base = _base(family, root / family / "base", text)
    experts = {}
    for c in CATS:
      experts[c] = root / family / c
      results[(family, c)] = finetune.finetune(
          base, experts[c], mixture=f"mj_heldin_{c}", steps=STEPS, batch_size=8, feature_lengths=FEATURE_LENGTHS,
          opt=trainer.OptimConfig(lr=LR, warmup_steps=2, min_lr_ratio=0.5), log_every=1, progress=False)
    manifest[SIZE[family]] = {"base": f"{family}/base", "experts": {c: f"{family}/{c}" for c in CATS}}
  path = root / "models.yaml"
  path.write_text(yaml.safe_dump({"pretrained": manifest}))
  report = runner.run_study(_config(str(path)), root / "study", progress=False)
  rows = {}
  for p in sorted((root / "study" / "results" / "rows").glob("*.json")):
    row = json.loads(p.read_text())
    rows[row["key"]] = row
  return {"root": root, "train": results, "report": report, "rows": rows, "manifest": str(path)}


def _category_mean(scores: dict, task_categories: dict, category: str) -> float:
  return float(np.mean([s for t, s in scores.items() if task_categories[t] == category]))


def test_finetuned_experts_are_hf_checkpoints_transformers_reads_with_the_same_logits(hf_study):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  for family in FAMILIES:
    expert = hf_study["root"] / family / "sentiment"
    run = hf_study["train"][(family, "sentiment")]
    assert not run.skipped and run.steps == STEPS and math.isfinite(run.final_loss)
    meta = json.loads((expert / "mergejax_manifest.json").read_text())
    assert meta["family"] == family and meta["training"]["steps"] == STEPS
    assert meta["training"]["mixture"] == "mj_heldin_sentiment"
    tokenizer = "tokenizer.json" if family == "llama" else "tokenizer.model"
    assert (expert / tokenizer).read_bytes() == (hf_study["root"] / family / "base" / tokenizer).read_bytes()
    assert json.loads((expert / "config.json").read_text()) == FAMILIES[family]
    # A complete output is not trained again.
    again = finetune.finetune(hf_study["root"] / family / "base", expert, mixture="mj_heldin_sentiment", steps=STEPS)
    assert again.skipped

    lm = models.from_pretrained(expert)
    base = models.from_pretrained(hf_study["root"] / family / "base")
    assert lm.family == family and lm.token_offset == (1 if family == "llama" else 0)
    moved = [n for n in lm.params if not np.array_equal(np.asarray(lm.params[n]), np.asarray(base.params[n]))]
    assert len(moved) == len(lm.params)  # full fine-tuning moved every tensor

    text = "the review said it was great"
    ids = [lm.start_id] + lm.text_tokenizer().encode(text, add_special_tokens=False)
    tokens = np.asarray([ids, ids[:1] + ids[1:][::-1]], np.int32)
    ours = np.asarray(jax.jit(lm.adapter.apply)(lm.params, jnp.asarray(tokens)))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(expert), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
      theirs = model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_first_step_loss_is_the_checkpoints_own_cross_entropy_on_each_packed_segment(hf_study):
  """The trainer's loss on a packed seqio batch equals the base model's cross-entropy computed segment by
  segment in the checkpoint's own ids (BOS first, seqio ids shifted back), so packing, the segment mask and
  the id mapping are right."""
  for family in FAMILIES:
    lm = models.from_pretrained(hf_study["root"] / family / "base")
    mixture = per_vocabulary.with_vocabulary("mj_heldin_sentiment", lm.vocabulary)
    batch = next(data_lib.batches(mixture, batch_size=8, feature_lengths=FEATURE_LENGTHS, seed=0))
    off, rows, scored = lm.token_offset, [], []
    for row in range(batch["decoder_segment_ids"].shape[0]):
      segments = batch["decoder_segment_ids"][row]
      for s in sorted(set(segments.tolist()) - {0}):
        at = np.nonzero(segments == s)[0]
        ids = np.zeros(segments.shape, np.int32)  # right padding: a causal model's earlier logits ignore it
        ids[:len(at)] = batch["decoder_input_tokens"][row, at] - off
        ids[0] = lm.start_id  # seqio's BOS slot (input 0)
        weights = batch["decoder_loss_weights"][row, at]
        scored.append([(j, batch["decoder_target_tokens"][row, at[j]] - off) for j in np.nonzero(weights)[0]])
        rows.append(ids)
    z = np.asarray(jax.jit(lm.adapter.apply)(lm.params, jnp.asarray(np.stack(rows)))).astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    total = -sum(logp[r, j, t] for r, targets in enumerate(scored) for j, t in targets)
    count = sum(map(len, scored))
    first = hf_study["train"][(family, "sentiment")].losses[0]
    assert first[0] == 1 and count > 0
    assert first[1] == pytest.approx(total / count, rel=1e-4)


def test_study_of_llama_and_gemma_checkpoints_through_the_manifest_on_8_devices(hf_study):
  assert len(jax.devices()) == 8
  rows = hf_study["rows"]
  for family, size in SIZE.items():
    base = rows[f"ref/pretrained/{size}/base"]
    assert base["params"] == sum(int(np.prod(s)) for s in models.param_shapes(
        models.parse_hf_config(FAMILIES[family])).values())
    # Each expert beats its random base on its own category's validation tasks by more than 5 points (measured:
    # 22 to 32 points with 48 steps; 64 examples per task).
    for c in CATS:
      expert = rows[f"ref/pretrained/{size}/expert/{c}"]
      cats = expert["task_categories"]
      own = _category_mean(expert["heldin_validation"], cats, c)
      base_own = _category_mean(base["heldin_validation"], {**base["task_categories"], **cats}, c)
      assert own > base_own + 5, (family, c, own, base_own)
    merges = [r for r in rows.values() if r["type"] == "merge" and r["size"] == size]
    assert sorted((r["n"], tuple(r["categories"]), r["method"]) for r in merges) == [
        (1, ("sentiment",), "average"), (1, ("sentiment",), "task_arithmetic"),
        (1, ("summarization",), "average"), (1, ("summarization",), "task_arithmetic"),
        (2, CATS, "average"), (2, CATS, "task_arithmetic")]
    for r in merges:
      scores = [*r["heldin_test"].values(), *r["heldout_test"].values(), r["heldin_norm"], r["heldout_norm"]]
      assert scores and all(math.isfinite(s) for s in scores)
      assert {r["task_categories"][t] for t in r["heldout_test"]} == {"nli"}
      if r["n"] == 1 and r["method"] == "average":  # the average of one expert is that expert: its scores, exactly
        (c,) = r["categories"]
        assert r["heldin_test"] == rows[f"ref/pretrained/{size}/expert/{c}"]["heldin_test"]
        assert r["heldin_norm"] == pytest.approx(1.0)
  # Sizes are ordered by the parameter counts read from the checkpoints, whatever the family.
  spec = runner.validate(_config(hf_study["manifest"]), hf_study["root"] / "study")
  counts = {s: spec.manifest.entry("pretrained", s).base.params for s in spec.sizes}
  assert list(spec.sizes) == sorted(counts, key=counts.get) and set(spec.sizes) == set(SIZE.values())

  # The report renders, with verdicts recomputable from the rows.
  text = pathlib.Path(hf_study["report"]).read_text()
  analysis = verdicts.analyze(verdicts.load_rows(hf_study["root"] / "study"), spec.verdicts, methods=spec.methods)
  for c in analysis.conclusions:
    assert verdicts.conclusion_line(c) in text
  for size in SIZE.values():
    assert size in text
  assert (pathlib.Path(hf_study["report"]).parent / "heldin_vs_n.png").stat().st_size > 1000


def test_data_aware_methods_merge_family_checkpoints_from_each_experts_examples(hf_study):
  cfg = _config(hf_study["manifest"])
  cfg.methods, cfg.num_experts, cfg.heldout_suite = ("regmean", "fisher", "adamerging"), (2,), "heldout_nli"
  cfg.grids.adamerging = dict(steps=(3,), lr=(1e-2,))
  cfg.merge_data.batches, cfg.merge_data.batch_size = 1, 8
  runner.run_study(cfg, hf_study["root"] / "study_data", progress=False)
  rows = [json.loads(p.read_text()) for p in (hf_study["root"] / "study_data" / "results" / "rows").glob("*.json")]
  merges = sorted((r["size"], r["method"]) for r in rows if r["type"] == "merge")
  assert merges == sorted((s, m) for s in SIZE.values() for m in cfg.methods)
  for r in rows:
    if r["type"] == "merge":
      assert all(math.isfinite(v) for v in [*r["heldin_test"].values(), r["heldin_norm"], r["heldout_norm"]])
  # RegMean finds each family's linear layers in its forward pass: every attention and MLP projection of
  # every layer and an untied output layer (Llama's lm_head); embeddings (looked up, and tied to the output
  # in Gemma) and norms are averaged instead.
  spec = runner.validate(cfg, hf_study["root"] / "study_data")
  data = expert_data.ExpertExamples(spec.merge_data)
  sources = [spec.heldin(c) for c in CATS]
  for family, size in SIZE.items():
    ms = runner.load_models(spec, "pretrained", size, with_multitask=False)
    data.read(ms.vocabulary, sources)
    own = data.for_experts(ms.adapter, ms.vocabulary, sources, CATS)
    grams = data_merge.linear_input_grams(own.model, data_merge.on_one_device(ms.experts[CATS[0]]),
                                          own.batches[False][0][0])
    projections = {p for p in models.param_shapes(models.parse_hf_config(FAMILIES[family]))
                   if p.endswith("proj.weight") or p == "lm_head.weight"}
    assert ("lm_head.weight" in projections) == (family == "llama")
    assert projections and set(grams) == projections, (family, sorted(set(grams) ^ projections))
    # The dry run's count of RegMean's Gram bytes (tied and untied output layers) is these, to the byte.
    assert sum(4 * g.size for g, _ in grams.values()) == plan_lib.regmean_gram_bytes(plan_lib.arch_of(ms.config))


def test_mergejax_train_fine_tunes_a_hugging_face_checkpoint(hf_study, tmp_path, capsys):
  """mergejax-train's run for a --config.init that is a Hugging Face directory: the recipe's mixture, a resumable
  train state every 2 steps, an HF directory out; a recipe that does not start from a checkpoint is one line."""
  base = hf_study["root"] / "llama" / "base"
  cfg = train_config_lib.get_config()
  cfg.recipe, cfg.category, cfg.init, cfg.output = "expert", "summarization", str(base), str(tmp_path / "summ")
  cfg.steps, cfg.checkpoint_every, cfg.batch_size, cfg.progress = 3, 2, 8, False
  assert train_cli.finetune_checkpoint(cfg) == 0
  assert "expert of" in capsys.readouterr().out
  meta = json.loads((tmp_path / "summ" / "mergejax_manifest.json").read_text())
  assert meta["training"]["recipe"] == "expert" and meta["training"]["mixture"] == "mj_heldin_summarization"
  assert meta["training"]["steps"] == 3 and meta["training"]["optim"]["lr"] == recipes.DEFAULTS["expert"]["lr"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["summ"]  # the train state is gone once complete
  lm = models.from_pretrained(tmp_path / "summ")
  assert lm.family == "llama" and set(lm.params) == set(models.from_pretrained(base).params)
  cfg.recipe, cfg.output = "pretrain", str(tmp_path / "pt")
  with pytest.raises(ValueError, match="recipe 'pretrain' does not start from a checkpoint"):
    train_cli.finetune_checkpoint(cfg)
  assert not (tmp_path / "pt").exists()
