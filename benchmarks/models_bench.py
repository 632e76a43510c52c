r"""Model families: loading a ~1B-parameter checkpoint, and rank-classification throughput against
lm-evaluation-harness's Hugging Face (PyTorch) backend (issue 16).

    .venv/bin/python benchmarks/models_bench.py --mode=load --workdir=/tmp/mj_models_bench
    .venv/bin/python benchmarks/models_bench.py --mode=rank --workdir=/tmp/mj_models_bench

``load``: writes a random Llama-style bfloat16 checkpoint of ``--load_params`` parameters (sharded
safetensors, 1 GiB shards) under ``--workdir``; then, ``--repeats`` times back to back, measures the file
read bandwidth (every shard read with 64 MiB ``readinto`` calls after dropping its pages from the page
cache) and runs ``from_pretrained`` in a fresh process from a cold cache, reporting its wall time, read
rate (checkpoint bytes / time) and peak resident memory above the process's baseline (``ru_maxrss`` minus
the RSS before loading, imports done), as a multiple of the checkpoint size. Goals: peak < 1.2x, rate
>= 50% of the file read bandwidth (median round). The checkpoint is deleted at the end.

``rank``: a small random Llama-family model with a word-level tokenizer, and a local lm-eval multiple
choice task (``--examples`` questions of ~``--context_words`` words, 4 multi-token choices). The same
task runs through lm-eval with ``--model mergejax`` (this repository's bridge: packed, prefix-shared
scoring) and ``--model hf`` (PyTorch on CPU), one after the other in this run; prints examples/s of
each, the ratio (goal >= 3x) and both accuracies (must be identical).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

from absl import app, flags

_MODE = flags.DEFINE_enum("mode", "rank", ["load", "rank", "load_child"], "What to measure.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mj_models_bench", "Scratch directory (created, then removed).")
_LOAD_PARAMS = flags.DEFINE_float("load_params", 1.0e9, "Parameters of the load benchmark's checkpoint.")
_EXAMPLES = flags.DEFINE_integer("examples", 100, "Multiple-choice questions of the rank benchmark.")
_CONTEXT = flags.DEFINE_integer("context_words", 96, "Words per question.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size of both backends.")
_D = flags.DEFINE_integer("d_model", 512, "Rank benchmark model width.")
_LAYERS = flags.DEFINE_integer("layers", 8, "Rank benchmark model depth.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Load benchmark rounds (bandwidth, then load, each from a cold cache).")


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _write_llama(directory: pathlib.Path, cfg: dict, dtype: str, shard_bytes: int, seed: int = 0) -> int:
  """Random weights for a Llama config, written shard by shard; returns the bytes written."""
  import ml_dtypes
  import numpy as np
  from mergejax.checkpoints.base import LeafSpec
  from mergejax.checkpoints.safetensors import SafetensorsSink
  from mergejax.models import families, llamalike
  dc = families.parse_hf_config(cfg)
  shapes = llamalike.param_shapes(dc)
  np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(np.float32)
  src = directory.parent / (directory.name + ".sidecars")
  src.mkdir(parents=True, exist_ok=True)
  (src / "config.json").write_text(json.dumps(cfg))
  sink = SafetensorsSink(directory, shard_bytes=shard_bytes, sidecar_dir=str(src))
  sink.begin([LeafSpec(n, s, np_dtype) for n, s in shapes.items()])
  rng = np.random.default_rng(seed)
  total = 0
  for n, s in shapes.items():
    scale = 1.0 if "embed" in n else (1.0 if len(s) == 1 else s[-1] ** -0.5)
    x = (rng.standard_normal(s, dtype=np.float32) * scale + (1.0 if len(s) == 1 else 0.0)).astype(np_dtype)
    sink.write({n: x})
    total += x.nbytes
  sink.finalize({"benchmark": "models_bench"})
  shutil.rmtree(src)
  return total


def _read_bandwidth(files) -> float:
  buf = bytearray(64 << 20)
  view = memoryview(buf)
  n = 0
  t = time.perf_counter()
  for f in files:
    with open(f, "rb", buffering=0) as fh:
      while True:
        k = fh.readinto(view)
        if not k:
          break
        n += k
  return n / (time.perf_counter() - t)


def _drop_page_cache(files) -> bool:
  """Asks the kernel to forget the files' cached pages (posix_fadvise DONTNEED); True if it could."""
  try:
    for f in files:
      fd = os.open(f, os.O_RDONLY)
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      os.close(fd)
    return True
  except (AttributeError, OSError):
    return False


def load_child(path: str) -> None:
  """Runs in a fresh process: from_pretrained and its memory."""
  import jax
  from mergejax import models
  from mergejax.models import pretrained  # noqa: F401  (imports seqio and TensorFlow: not part of the load)
  jax.devices()
  base = _rss_bytes()
  t = time.perf_counter()
  lm = models.from_pretrained(path)
  jax.block_until_ready(lm.params)
  dt = time.perf_counter() - t
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  n = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(lm.params))
  print(json.dumps({"seconds": dt, "param_bytes": n, "baseline_rss": base, "peak_rss": peak}))


def bench_load(workdir: pathlib.Path) -> None:
  target = _LOAD_PARAMS.value
  d, vocab, ff_ratio = 2048, 32000, 2.75
  per_layer = 4 * d * d * 0.75 + 3 * d * int(d * ff_ratio)
  layers = max(1, round((target - 2 * vocab * d) / per_layer))
  cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=d,
             intermediate_size=int(d * ff_ratio), num_hidden_layers=layers, num_attention_heads=16,
             num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
  ckpt = workdir / "llama_1b"
  t = time.perf_counter()
  nbytes = _write_llama(ckpt, cfg, "bfloat16", 1 << 30)
  print(f"wrote {nbytes / 1e9:.2f} GB ({nbytes / 2 / 1e9:.2f} B params, {layers} layers) in "
        f"{time.perf_counter() - t:.0f} s")
  files = sorted(str(p) for p in ckpt.glob("*.safetensors"))
  rounds = []
  for _ in range(_REPEATS.value):  # back to back, so that both see the same machine load
    cold = _drop_page_cache(files)
    bw = _read_bandwidth(files)
    _drop_page_cache(files)
    out = subprocess.run([sys.executable, __file__, "--mode=load_child", f"--workdir={ckpt}"], check=True,
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    rate = nbytes / res["seconds"]
    extra = (res["peak_rss"] - res["baseline_rss"]) / nbytes
    rounds.append((bw, res["seconds"], rate, rate / bw, extra))
    print(f"| load | {nbytes / 1e9:.2f} GB bf16 | {res['seconds']:.1f} s | {rate / 1e9:.2f} GB/s | "
          f"{rate / bw:.0%} of {bw / 1e9:.2f} GB/s ({'cold' if cold else 'page cache not dropped'}) | {extra:.2f}x |",
          flush=True)
  med = sorted(rounds, key=lambda r: r[3])[len(rounds) // 2]
  print(f"median round: from_pretrained at {med[3]:.0%} of the file read bandwidth (goal >= 50%), peak RSS "
        f"{max(r[4] for r in rounds):.2f}x the checkpoint at most (goal < 1.2x)")
  shutil.rmtree(ckpt)


def _rank_setup(workdir: pathlib.Path):
  import random
  import tokenizers
  words = [f"w{i}" for i in range(2000)]
  rng = random.Random(0)
  docs = []
  for _ in range(_EXAMPLES.value):
    q = " ".join(rng.choice(words) for _ in range(_CONTEXT.value))
    choices = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(4)]
    docs.append({"question": q, "choices": choices, "label": rng.randrange(4)})
  ckpt = workdir / "llama_small"
  vocab = ["<unk>", "<s>", "</s>", "Q:", "A:"] + words
  d = _D.value
  cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=len(vocab) + 48, hidden_size=d,
             intermediate_size=3 * d, num_hidden_layers=_LAYERS.value, num_attention_heads=d // 64,
             num_key_value_heads=max(1, d // 128), max_position_embeddings=2048, rms_norm_eps=1e-5,
             rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, torch_dtype="float32")
  _write_llama(ckpt, cfg, "float32", 4 << 30)
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece(prefix="##")
  tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  tok.save(str(ckpt / "tokenizer.json"))
  (ckpt / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
  data = workdir / "mc.jsonl"
  data.write_text("".join(json.dumps(x) + "\n" for x in docs))
  tasks = workdir / "tasks"
  tasks.mkdir(exist_ok=True)
  (tasks / "mj_bench_mc.yaml").write_text(
      f"task: mj_bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
      "output_type: multiple_choice\ndoc_to_text: 'Q: {{question}} A:'\ndoc_to_choice: '{{choices}}'\n"
      "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
  return ckpt, tasks, docs


def _seqio_rank_task(docs, vocabulary) -> str:
  """The same questions and choices as a seqio rank-classification task (mergejax-eval's path): inputs
  "Q: ... A:", targets " choice" without EOS, as lm-eval scores them."""
  import seqio
  import tensorflow as tf
  from mergejax.tasks import metrics as M, preprocessors as P

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [f"Q: {d['question']} A:" for d in docs],
        "targets": [" " + d["choices"][d["label"]] for d in docs],
        "choices": tf.ragged.constant([[" " + c for c in d["choices"]] for d in docs]),
        "label": tf.constant([d["label"] for d in docs], tf.int64)})

  name = "mj_bench_rank_seqio"
  feats = {k: seqio.Feature(vocabulary, add_eos=False) for k in ("inputs", "targets")}
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=["test"]), output_features=feats,
                         preprocessors=[P.rank_classification, seqio.preprocessors.tokenize],
                         postprocess_fn=M.rank_classification_postprocessor, metric_fns=[M.rank_accuracy])
  return name


def bench_rank(workdir: pathlib.Path) -> None:
  import lm_eval
  from lm_eval.tasks import TaskManager
  import mergejax.evaluation.lm_harness  # noqa: F401  registers "mergejax"
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  ckpt, tasks, docs = _rank_setup(workdir)
  n = _EXAMPLES.value
  from lm_eval.models.huggingface import HFLM
  from mergejax.evaluation.lm_harness import MergejaxLM
  res = {}
  for name in ("mergejax", "hf"):
    if name == "mergejax":
      model = MergejaxLM(pretrained=str(ckpt), batch_size=_BATCH.value)
    else:
      model = HFLM(pretrained=str(ckpt), dtype="float32", device="cpu", batch_size=_BATCH.value)
    kw = dict(model=model, tasks=["mj_bench_mc"], log_samples=False,
              task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    if name == "mergejax":  # compile once (same shapes), outside the timed run
      lm_eval.simple_evaluate(**kw, limit=2)
    t = time.perf_counter()
    out = lm_eval.simple_evaluate(**kw)
    res[name] = (time.perf_counter() - t, out["results"]["mj_bench_mc"]["acc,none"])
  from mergejax import evaluation, models
  lm = models.from_pretrained(ckpt)
  task = _seqio_rank_task(docs, lm.vocabulary)
  evaluators = [("Evaluator (packed, prefix-shared)", evaluation.Evaluator(lm.adapter, task, "test",
                                                                         batch_size=_BATCH.value))]
  for label, ev in evaluators:
    ev.evaluate(lm.params)  # compiles
    t = time.perf_counter()
    out = ev.evaluate(lm.params)
    ts, acc_s = time.perf_counter() - t, out.score / 100
    print(f"| rank | mergejax-eval's {label} (seqio, same questions and choices) | {n / ts:.1f} ex/s (acc {acc_s:.3f}) "
          f"| {res['hf'][0] / ts:.1f}x the hf backend |", flush=True)
  (tm, am), (th, ah) = res["mergejax"], res["hf"]
  print(f"| rank | {n} questions x 4 choices, d={_D.value} L={_LAYERS.value} | mergejax {n / tm:.1f} ex/s "
        f"(acc {am:.3f}) | hf {n / th:.1f} ex/s (acc {ah:.3f}) | {th / tm:.1f}x | accuracies "
        f"{'identical' if am == ah else 'DIFFER'} |")
  shutil.rmtree(workdir, ignore_errors=True)


def main(argv):
  del argv
  if _MODE.value == "load_child":
    load_child(_WORKDIR.value)
    return
  workdir = pathlib.Path(_WORKDIR.value)
  if workdir.exists():
    raise SystemExit(f"{workdir} exists; pass a new --workdir")
  workdir.mkdir(parents=True)
  try:
    (bench_load if _MODE.value == "load" else bench_rank)(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
