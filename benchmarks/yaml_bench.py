r"""mergekit recipes: ``mergejax-yaml`` vs ``mergekit-yaml`` on the same YAML, side by side in one run.

Recipes (issue 18), on HF Llama-architecture bf16 checkpoints generated in a temporary directory (base + 3 experts,
safetensors shards; see ``merge_bench.py`` for the generator):

* ``ties_gradient``: per-tensor TIES with per-layer gradients (density [0.2 -> 0.4] across layers,
  per-model weight gradients, an ``mlp`` filter), ``normalize``, dtype float32 -> out bf16;
* ``lora_ta``: task arithmetic of two full experts and ``BASE+LORA`` (a PEFT adapter of rank 16 on
  every projection; mergekit merges it with PEFT into ``--lora-merge-cache`` first, mergejax applies it
  leaf by leaf while merging);
* ``union_linear``: linear merge of the base and two experts with added tokens (resized embeddings),
  ``tokenizer_source: union``.

Each recipe runs ``--repeats`` rounds of (mergejax cold compilation cache, mergejax warm, mergekit) as
fresh processes, page cache warm; wall time and peak RSS from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper.
Outputs are compared with mergekit's: bitwise per tensor (for the union vocabulary, row by token
string), with TIES differences at trim-threshold ties counted apart (mergekit keeps exactly k entries
by sort order, mergejax every entry tied with the k-th); ``lora_ta`` thereby also checks mergejax's LoRA
application against the PEFT that mergekit's venv has.

    .venv/bin/python benchmarks/yaml_bench.py --mergekit=PATH/TO/mk-venv/bin/mergekit-yaml
    .venv/bin/python benchmarks/yaml_bench.py --layers=2 --vocab=4000 --repeats=1   # quick smoke run
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import merge_bench  # noqa: E402  (the workload generator and the timer)
import recipes  # noqa: E402  (the timed runs' environment)

REPO = pathlib.Path(__file__).resolve().parents[1]
BF16 = np.dtype(ml_dtypes.bfloat16)

# The workload's flags (--mergekit, --preset, --layers, --hidden, --intermediate, --vocab, --shard_mb, --repeats,
# --workdir, --keep, --out_json) are merge_bench's; these are this benchmark's own.
_RECIPES = flags.DEFINE_list("recipes", ["ties_gradient", "lora_ta", "union_linear"], "Recipes to run.")
_RANK = flags.DEFINE_integer("lora_rank", 16, "LoRA rank.")
_ADDED = flags.DEFINE_integer("added_tokens", 64, "Tokens each union expert adds (half shared between them).")
# pylint: disable=protected-access
_SHARD_MB, _REPEATS, _WORKDIR = merge_bench._SHARD_MB, merge_bench._REPEATS, merge_bench._WORKDIR
_KEEP, _OUT = merge_bench._KEEP, merge_bench._OUT
_MERGEKIT = merge_bench._MERGEKIT
# pylint: enable=protected-access

GOAL = 4.0  # issue 18: mergejax-yaml >= 4x faster than mergekit-yaml, peak RSS no higher


def _write_tokenizer(d: pathlib.Path, vocab: int, extra: list[str]) -> None:
  """A word-level fast tokenizer of ``vocab`` tokens plus ``extra`` added tokens (tokenizer.json + config)."""
  words = {f"w{i}": i for i in range(vocab - 3)}
  words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{k: v + 3 for k, v in words.items()}}
  added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
            "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
  added += [{"id": vocab + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": True, "special": False} for i, t in enumerate(extra)]
  tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
         "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
         "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"}}
  (d / "tokenizer.json").write_text(json.dumps(tok))
  (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                       "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}))


def _resize(src: pathlib.Path, dst: pathlib.Path, extra: int, seed: int) -> None:
  """A copy of ``src`` whose embed_tokens and lm_head have ``extra`` more rows (random), and config to match."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst)
  index = json.loads((dst / "model.safetensors.index.json").read_text())
  r = np.random.default_rng(seed)
  for name in ("model.embed_tokens.weight", "lm_head.weight"):
    f = dst / index["weight_map"][name]
    t = load_file(str(f))
    rows = (r.standard_normal((extra, t[name].shape[1]), dtype=np.float32) * 0.02).astype(BF16)
    t[name] = np.concatenate([t[name], rows])
    save_file(t, str(f), metadata={"format": "pt"})
  cfg = json.loads((dst / "config.json").read_text())
  cfg["vocab_size"] += extra
  (dst / "config.json").write_text(json.dumps(cfg, indent=2))


def _write_lora(d: pathlib.Path, shapes: dict, rank: int, seed: int) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  d.mkdir(parents=True)
  r = np.random.default_rng(seed)
  targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
  t = {}
  for name, (out, inp) in ((k, v) for k, v in shapes.items() if any(f".{m}." in k for m in targets)):
    mod = name[:-len(".weight")]
    t[f"base_model.model.{mod}.lora_A.weight"] = (r.standard_normal((rank, inp), dtype=np.float32) * 0.01).astype(BF16)
    t[f"base_model.model.{mod}.lora_B.weight"] = (r.standard_normal((out, rank), dtype=np.float32) * 0.01).astype(BF16)
  save_file(t, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
  (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                     "target_modules": list(targets), "fan_in_fan_out": False,
                                                     "bias": "none", "base_model_name_or_path": None,
                                                     "task_type": "CAUSAL_LM"}))


def recipes(root: pathlib.Path, base, experts) -> dict[str, str]:
  e0, e1, e2 = experts
  return {
      "ties_gradient": f"""merge_method: ties
base_model: {base}
models:
  - model: {e0}
    parameters: {{weight: [1.0, 0.5]}}
  - model: {e1}
    parameters: {{weight: [0.5, 1.0]}}
  - model: {e2}
    parameters:
      weight: [{{filter: mlp, value: 0.8}}, {{value: 1.0}}]
parameters: {{density: [0.2, 0.4], normalize: true}}
dtype: float32
out_dtype: bfloat16
""",
      "lora_ta": f"""merge_method: task_arithmetic
base_model: {base}
models:
  - model: {e0}
    parameters: {{weight: 0.4}}
  - model: {base}+{root / 'lora'}
    parameters: {{weight: 0.8}}
  - model: {e1}
    parameters: {{weight: 0.4}}
parameters: {{lambda: 0.9}}
dtype: float32
out_dtype: bfloat16
""",
      "union_linear": f"""merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 1.0}}
  - model: {root / 'tok_e0'}
    parameters: {{weight: 0.5}}
  - model: {root / 'tok_e1'}
    parameters: {{weight: 0.5}}
tokenizer_source: union
dtype: float32
out_dtype: bfloat16
""",
  }


def _vocab(d: pathlib.Path) -> dict[str, int] | None:
  f = d / "tokenizer.json"
  if not f.is_file():
    return None
  tj = json.loads(f.read_text())
  v = dict(tj["model"]["vocab"])
  v.update({t["content"]: t["id"] for t in tj.get("added_tokens", [])})
  return v


def agreement(mj: pathlib.Path, mk: pathlib.Path, recipe: str, base, experts, density=None) -> dict:
  """Bitwise agreement per tensor (vocabulary rows matched by token), TIES threshold ties counted apart."""
  a, b = merge_bench.load_all(mj), merge_bench.load_all(mk)
  va, vb = _vocab(mj), _vocab(mk)
  inputs = [merge_bench.load_all(d) for d in [base, *experts]] if recipe == "ties_gradient" else None
  n = diff = at_thr = 0
  worst = 0.0
  only = sorted(set(a) ^ set(b))
  for k in sorted(set(a) & set(b)):
    x, y = a[k], b[k]
    if va and vb and va != vb and x.ndim == 2 and x.shape[0] == len(va) and y.shape[0] == len(vb):  # rows by token
      common = sorted(set(va) & set(vb))
      x, y = x[[va[t] for t in common]], y[[vb[t] for t in common]]
    if x.shape != y.shape or x.dtype != y.dtype:
      only.append(f"{k} {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
      continue
    d = (x.view(np.uint16) != y.view(np.uint16)) if x.dtype.itemsize == 2 else x != y
    n += x.size
    if inputs is not None and d.any():
      b32 = inputs[0][k].astype(np.float32)
      thr = np.zeros(x.shape, bool)
      for e in inputs[1:]:
        m = np.abs(e[k].astype(np.float32) - b32)
        kk = max(1, int(density(k) * m.size))
        thr |= m == np.sort(m.reshape(-1))[::-1][kk - 1]
      at_thr += int((d & thr).sum())
      d &= ~thr
    diff += int(d.sum())
    if d.any():
      worst = max(worst, float(np.abs(x.astype(np.float32) - y.astype(np.float32))[d].max()))
  return {"entries": n, "differing": diff, "differing_at_trim_threshold_ties": at_thr, "max_abs_diff": worst,
          "tensor_mismatch": only[:5]}


def llama_config(shape: dict) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["hidden"],
          "intermediate_size": shape["intermediate"], "num_hidden_layers": shape["layers"], "num_attention_heads": 16,
          "num_key_value_heads": 16, "vocab_size": shape["vocab"], "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu"}


def make_workload(root: pathlib.Path, shape: dict) -> tuple[pathlib.Path, list[pathlib.Path]]:
  """The recipes' inputs under ``root`` (reused if there): base + 3 experts, two experts with added
  tokens (tok_e0, tok_e1), a LoRA; their safetensors read once (page cache warm). Returns base, experts."""
  shapes = merge_bench.llama_shapes(shape["layers"], shape["hidden"], shape["intermediate"], shape["vocab"])
  base, experts = root / "base", [root / f"expert{i}" for i in range(3)]
  if not base.exists():
    t = time.perf_counter()
    merge_bench.write_model(base, shapes, 0, None, _SHARD_MB.value * 10**6, llama_config(shape))
    for i, e in enumerate(experts):
      merge_bench.write_model(e, shapes, i + 1, 0, _SHARD_MB.value * 10**6, llama_config(shape))
    _write_tokenizer(base, shape["vocab"], [])
    half = _ADDED.value // 2
    shared = [f"<shared{i}>" for i in range(half)]
    for i in range(2):
      extra = shared + [f"<own{i}_{j}>" for j in range(_ADDED.value - half)]
      _resize(experts[i], root / f"tok_e{i}", len(extra), 10 + i)
      _write_tokenizer(root / f"tok_e{i}", shape["vocab"], extra)
    _write_lora(root / "lora", shapes, _RANK.value, 7)
    print(f"generated base + 3 experts (+2 resized, a LoRA) in {time.perf_counter() - t:.0f}s under {root}")
  for d in root.iterdir():  # warm the page cache
    for f in list(d.glob("*.safetensors")) if d.is_dir() else []:
      with open(f, "rb") as fh:
        while fh.read(64 << 20):
          pass
  return base, experts


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="yaml_bench_"))
  root.mkdir(parents=True, exist_ok=True)
  shape = merge_bench.shape_flags()  # --preset=llama100m|llama1b, or the shape flags
  layers = shape["layers"]
  params = sum(int(np.prod(s)) for s in merge_bench.llama_shapes(layers, shape["hidden"], shape["intermediate"],
                                                                   shape["vocab"]).values())
  results = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "params": params, "runs": [],
             "preset": merge_bench._PRESET.value, "loadavg_start": os.getloadavg(),  # pylint: disable=protected-access
             "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
  try:
    base, experts = make_workload(root, shape)
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    results["model_bytes"] = model_bytes
    env = recipes.tool_env()
    texts = recipes(root, base, experts)
    for name in _RECIPES.value:
      cfg = root / f"{name}.yml"
      cfg.write_text(texts[name])
      for k in range(max(1, _REPEATS.value)):
        cache = root / f"xla_cache_{name}"
        shutil.rmtree(cache, ignore_errors=True)
        out = root / f"out_mj_{name}"
        for state in ("cold", "warm"):
          shutil.rmtree(out, ignore_errors=True)
          r = merge_bench.timed([sys.executable, "-m", "mergejax.cli.recipe", str(cfg), str(out), "--noprogress"],
                                env={**env, "XDG_CACHE_HOME": str(cache)})
          row = {"recipe": name, "tool": "mergejax", "round": k, "compile_cache": state, **r,
                 "loadavg_1m": os.getloadavg()[0]}
          results["runs"].append(row)
          print(json.dumps(row), flush=True)
        if _MERGEKIT.value:
          mk_out = root / f"out_mk_{name}"
          shutil.rmtree(mk_out, ignore_errors=True)
          lora_cache = root / "mk_lora_cache"
          shutil.rmtree(lora_cache, ignore_errors=True)
          r = merge_bench.timed([_MERGEKIT.value, str(cfg), str(mk_out), "--random-seed", "0", "--lora-merge-cache",
                                 str(lora_cache)], env=env)
          row = {"recipe": name, "tool": "mergekit", "round": k, **r, "loadavg_1m": os.getloadavg()[0]}
          if k == 0:
            dens = (lambda leaf: 0.2 + 0.2 * (lambda i: 0.0 if i is None else i / max(1, layers - 1))(
                _layer(leaf))) if name == "ties_gradient" else None
            row["agreement"] = agreement(out, mk_out, name, base, experts, dens)
          results["runs"].append(row)
          print(json.dumps(row), flush=True)
          shutil.rmtree(mk_out, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))
  print_summary(results)


def _layer(leaf: str):
  from mergejax.recipes.mergekit import layer_index  # pylint: disable=g-import-not-at-top
  return layer_index(leaf)


def print_summary(results: dict) -> None:
  runs = results["runs"]
  print(f"\nsummary ({results['date']}, {results['machine']}, {results['params']:,} params per model; "
        f"medians over rounds; measured under load unless the machine was idle):\n{results['command']}")
  print("recipe | rounds | mergejax cold s | warm s | mergekit s | speed-up cold | warm | goal 4x | "
        "RSS mergejax / mergekit GB | load | agreement")
  for name in dict.fromkeys(r["recipe"] for r in runs):
    pick = lambda tool, cache=None: [r for r in runs if r["recipe"] == name and r["tool"] == tool
                                     and r.get("compile_cache") == cache]
    cold, warm, mk = pick("mergejax", "cold"), pick("mergejax", "warm"), pick("mergekit")
    med = lambda rows: float(np.median([r["wall_s"] for r in rows]))
    if not cold:
      continue
    if not mk:
      print(f"{name} | {len(cold)} | {med(cold):.2f} | {med(warm):.2f} | - |")
      continue
    ratio, ratio_w = med(mk) / med(cold), med(mk) / med(warm)
    rss, rss_mk = max(r["peak_rss_bytes"] for r in cold + warm), max(r["peak_rss_bytes"] for r in mk)
    loads = [r["loadavg_1m"] for r in cold + mk]
    agr = next((r["agreement"] for r in mk if "agreement" in r), {})
    print(f"{name} | {len(cold)} | {med(cold):.2f} | {med(warm):.2f} | {med(mk):.2f} | {ratio:.1f}x | {ratio_w:.1f}x | "
          f"{'met' if ratio >= GOAL else 'MISSED'} | {rss / 1e9:.2f} / {rss_mk / 1e9:.2f} "
          f"{'lower' if rss <= rss_mk else 'HIGHER'} | {min(loads):.1f}-{max(loads):.1f} | "
          f"{agr.get('differing', '?')} of {agr.get('entries', '?')} differ"
          + (f" (+{agr['differing_at_trim_threshold_ties']} at trim-threshold ties)"
             if agr.get("differing_at_trim_threshold_ties") else ""))


if __name__ == "__main__":
  app.run(main)
