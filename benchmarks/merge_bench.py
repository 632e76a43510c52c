r"""Checkpoint merges with every method mergekit shares: mergejax vs ``mergekit-yaml``, side by side in one run.

Workload (issue 3): an HF Llama-architecture checkpoint of 168,313,856 bf16 parameters (hidden 1024,
8 layers, intermediate 2816, vocab 32000; ~336 MB), base + 4 experts, safetensors in 200 MB shards,
generated under a temporary directory (``--workdir``, default: a new one from ``tempfile``) and deleted
afterwards. Output: safetensors, bf16.

Methods (``--methods``, default all 17 that mergekit 0.1.5 shares): linear, task_arithmetic, ties and
dare_ties run issue 18's ``mergejax-merge`` commands (weights 1, density 0.2, every expert; ties also with
the paper's global scope, mergejax only); every other method runs its recipe from ``recipes.SETTINGS``
(the recipes ``methods_parity.py`` checks for agreement) through ``mergejax-yaml``, and mergekit runs the
same YAML. Goals (issue 19): >= 10x mergekit's wall time for the sparsifying methods, >= 4x for the
others, peak RSS no higher than mergekit's.

For each method both tools run as fresh processes (page cache warm: every input is read once before
timing); whole-process wall time and peak RSS come from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper
process that runs one command. mergejax runs twice per method: ``cold`` with an empty persistent
compilation cache (every kernel compiled: a user's first merge) and ``warm`` with the cache the cold
run filled (every later merge of the same architecture). Each method runs ``--repeats`` rounds of
(mergejax cold, mergejax warm, mergekit), back to back, and the summary gives medians and each round's
own ratio: single runs on a shared 2-core VM vary by 20-40%. Also reported: the merge phase alone
(manifest ``elapsed_s``), GB/s of (bytes read + bytes written) against the machine's measured copy
bandwidth, the page-cache read and write bandwidths (writing one model's bytes, the output, is a floor
under the merge loop), agreement with mergekit's output, and bounded-memory runs (safetensors and orbax output)
whose inputs are several times ``--config.memory_budget_gb``.

    .venv/bin/python benchmarks/merge_bench.py --mergekit=PATH/TO/mk-venv/bin/mergekit-yaml
    .venv/bin/python benchmarks/merge_bench.py --layers=2 --vocab=4000 --methods=ties,della --mergekit= --repeats=1 \
      --small_budget_gb=0   # quick smoke run
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors.numpy)
import numpy as np
from absl import app, flags

import recipes
from recipes import llama_shapes, load_all, timed

REPO = pathlib.Path(__file__).resolve().parents[1]

# Issue 18's shapes (bf16 Llama layout, base + 3 experts unless --experts says otherwise); explicit shape
# flags override a preset's values.
PRESETS = {
    "llama100m": {"layers": 8, "hidden": 768, "intermediate": 2048, "vocab": 32000, "experts": 3},  # 105.8M
    "llama1b": {"layers": 16, "hidden": 2048, "intermediate": 5632, "vocab": 32000, "experts": 3},  # 953.6M
}

_PRESET = flags.DEFINE_enum("preset", None, list(PRESETS), "A workload shape of issue 18 (overrides the shape "
                            "flags' defaults; flags given explicitly win).")
_MERGEKIT = flags.DEFINE_string("mergekit", shutil.which("mergekit-yaml") or "", "mergekit-yaml executable ('' skips).")
# Issue 18's merges through mergejax-merge (its hyperparameters: density 0.2, weights 1); every other method
# mergekit shares runs recipes.SETTINGS' recipe through mergejax-yaml.
NATIVE = ("linear", "task_arithmetic", "ties", "dare_ties")
_METHODS = flags.DEFINE_list("methods", list(recipes.SETTINGS), "mergekit method names (default: every method "
                             f"mergekit shares). {', '.join(NATIVE)} run issue 18's mergejax-merge commands; the others "
                             "the recipe of benchmarks/recipes.py through mergejax-yaml.")
_LAYERS = flags.DEFINE_integer("layers", 8, "Decoder layers.")
_HIDDEN = flags.DEFINE_integer("hidden", 1024, "Hidden size.")
_INTER = flags.DEFINE_integer("intermediate", 2816, "MLP size.")
_VOCAB = flags.DEFINE_integer("vocab", 32000, "Vocabulary.")
_EXPERTS = flags.DEFINE_integer("experts", 4, "Experts.")
_SHARD_MB = flags.DEFINE_integer("shard_mb", 200, "Input shard size (MB).")
_BUDGET = flags.DEFINE_float("memory_budget_gb", 1.0, "mergejax --config.memory_budget_gb for the timed runs.")
_SMALL_BUDGET = flags.DEFINE_float("small_budget_gb", 0.25, "Budget of the bounded-memory run.")
_BUDGET_METHOD = flags.DEFINE_string("budget_method", "task_arithmetic", "Method of the bounded-memory runs.")
_BUDGET_FORMATS = flags.DEFINE_list("budget_formats", ["safetensors", "orbax"], "Output formats of the bounded-memory runs.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to generate the workload (default: a new temporary directory).")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the generated workload.")
_OUT = flags.DEFINE_string("out_json", None, "Write all results as JSON here.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds per method, interleaved (mergejax cold, warm, mergekit); the "
                                "summary reports medians, since single runs on a shared VM vary by 20-40%.")

def shape_flags() -> dict:
  """layers, hidden, intermediate, vocab, experts: the preset's, with explicitly given flags winning."""
  holders = {"layers": _LAYERS, "hidden": _HIDDEN, "intermediate": _INTER, "vocab": _VOCAB, "experts": _EXPERTS}
  preset = PRESETS.get(_PRESET.value, {})
  return {k: (h.value if flags.FLAGS[h.name].present or k not in preset else preset[k]) for k, h in holders.items()}


def read_bandwidth(files: list[pathlib.Path], cold: bool) -> float:
  """Bytes/s of reading ``files`` whole with ``preadv`` into one reused 64 MiB buffer: from disk after
  dropping them from the page cache (``cold``: ``posix_fadvise(DONTNEED)``), else from the page cache.
  The merge loop's input rate is reported against the page-cache figure (inputs warm, as timed)."""
  buf = memoryview(bytearray(64 << 20))
  total, t = 0, 0.0
  for f in files:
    fd = os.open(f, os.O_RDONLY)
    try:
      if cold:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      t0, off = time.perf_counter(), 0
      while n := os.preadv(fd, [buf], off):
        off += n
      t += time.perf_counter() - t0
      total += off
    finally:
      os.close(fd)
  return total / t


def write_bandwidth(directory: pathlib.Path, nbytes: int) -> float:
  """Bytes/s of writing ``nbytes`` with ``pwrite`` from one reused 64 MiB buffer into a fresh file under
  ``directory`` (into the page cache: no fsync), the file deleted after. A merge writes its output so,
  so ``nbytes`` of one model over this figure is a floor under the merge loop's time."""
  buf = memoryview(bytearray(64 << 20))
  path = directory / f".write_bandwidth.{os.getpid()}"
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  try:
    t0, off = time.perf_counter(), 0
    while off < nbytes:
      off += os.pwrite(fd, buf[:min(len(buf), nbytes - off)], off)
    t = time.perf_counter() - t0
  finally:
    os.close(fd)
    path.unlink()
  return nbytes / t


def write_model(path: pathlib.Path, shapes, seed: int, base_seed: int | None, shard_bytes: int, config: dict):
  """Writes base (base_seed None) or base + 0.01 noise, tensor by tensor, in shards with an index."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path.mkdir(parents=True)
  names = list(shapes)
  shards, cur, size = [], {}, 0

  def gen(name, s):
    r = np.random.default_rng([base_seed if base_seed is not None else seed, names.index(name)])
    x = r.standard_normal(s, dtype=np.float32) * 0.02
    if base_seed is not None:
      x += np.random.default_rng([seed, names.index(name), 7]).standard_normal(s, dtype=np.float32) * 0.002
    return x.astype(ml_dtypes.bfloat16)

  for n in names:
    nb = int(np.prod(shapes[n])) * 2
    if cur and size + nb > shard_bytes:
      shards.append(cur)
      cur, size = {}, 0
    cur[n] = gen(n, shapes[n])
    size += nb
    if size >= shard_bytes:
      shards.append(cur)
      cur, size = {}, 0
  if cur:
    shards.append(cur)
  weight_map, total = {}, 0
  for i, sh in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(sh, str(path / fname), metadata={"format": "pt"})
    weight_map.update({k: fname for k in sh})
    total += sum(v.nbytes for v in sh.values())
  (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                 "weight_map": weight_map}))
  (path / "config.json").write_text(json.dumps(config, indent=2))
  (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))


def copy_bandwidth() -> float:
  a = np.ones(64 << 20, np.float32)
  b = np.empty_like(a)
  best = 1e9
  for _ in range(5):
    t = time.perf_counter()
    np.copyto(b, a)
    best = min(best, time.perf_counter() - t)
  return 2 * a.nbytes / best


def mergejax_cmd(method: str, base, experts, out, budget, cache_dir="none", fmt=None):
  hp = {"linear": ["--config.method.name=average"],
        "task_arithmetic": ["--config.method.name=task_arithmetic"],
        "ties": ["--config.method.name=ties", "--config.method.density=0.2", "--config.method.scope=tensor"],
        "ties_global": ["--config.method.name=ties", "--config.method.density=0.2", "--config.method.scope=global"],
        "dare_ties": ["--config.method.name=dare_ties", "--config.method.drop_rate=0.8", "--config.method.density=1.0",
                      "--config.method.scope=tensor", "--config.method.aggregate=sum"]}[method]
  base_flag = [] if method == "linear" else [f"--base={base}"]
  return [sys.executable, "-m", "mergejax.cli.merge", *base_flag, f"--experts={','.join(map(str, experts))}",
          f"--output={out}", f"--config={REPO / 'configs' / 'merge.py'}", "--config.progress=False",
          f"--config.memory_budget_gb={budget}", "--config.seed=0", f"--config.compilation_cache_dir={cache_dir}",
          *([f"--output_format={fmt}"] if fmt else []), *hp]


def mergekit_yaml(method: str, base, experts) -> str:
  lines = [f"merge_method: {method}", "dtype: float32", "out_dtype: bfloat16"]
  if method != "linear":
    lines.append(f"base_model: {base}")
  lines.append("models:")
  for e in experts:
    params = {"linear": "{weight: 1.0}", "task_arithmetic": "{weight: 1.0}", "ties": "{weight: 1.0, density: 0.2}",
              "dare_ties": "{weight: 1.0, density: 0.2}"}[method]
    lines += [f"  - model: {e}", f"    parameters: {params}"]
  if method == "ties":
    lines.append("parameters: {normalize: true, lambda: 1.0}")
  return "\n".join(lines) + "\n"


def agreement(a_dir, b_dir) -> dict:
  a, b = load_all(a_dir), load_all(b_dir)
  n = diff = 0
  worst = 0.0
  for k in a:
    x, y = a[k].astype(np.float32), b[k].astype(np.float32)
    d = x != y
    n += x.size
    diff += int(d.sum())
    if d.any():
      worst = max(worst, float(np.abs(x - y).max()))
  return {"entries": n, "differing": diff, "max_abs_diff": worst}


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="merge_bench_"))
  root.mkdir(parents=True, exist_ok=True)
  shape = shape_flags()
  shapes = llama_shapes(shape["layers"], shape["hidden"], shape["intermediate"], shape["vocab"])
  params = sum(int(np.prod(s)) for s in shapes.values())
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["hidden"],
            "intermediate_size": shape["intermediate"], "num_hidden_layers": shape["layers"], "num_attention_heads": 16,
            "num_key_value_heads": 16, "vocab_size": shape["vocab"], "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu"}
  results = {"machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "params": params, "shape": shape,
             "preset": _PRESET.value, "runs": []}
  try:
    base = root / "base"
    experts = [root / f"expert{i}" for i in range(shape["experts"])]
    if not base.exists():
      t = time.perf_counter()
      write_model(base, shapes, 0, None, _SHARD_MB.value * 10**6, config)
      for i, e in enumerate(experts):
        write_model(e, shapes, i + 1, 0, _SHARD_MB.value * 10**6, config)
      print(f"generated {1 + len(experts)} x {params:,} params in {time.perf_counter() - t:.0f}s under {root}")
    model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    inputs = [f for d in [base, *experts] for f in sorted(d.glob("*.safetensors"))]
    read_cold = read_bandwidth(inputs, cold=True)  # also warms the page cache
    read_warm = max(read_bandwidth(inputs, cold=False) for _ in range(2))
    bw = copy_bandwidth()
    write = max(write_bandwidth(root, model_bytes) for _ in range(2))
    results.update(copy_bandwidth_GBps=bw / 1e9, read_bandwidth_cold_GBps=read_cold / 1e9,
                   read_bandwidth_page_cache_GBps=read_warm / 1e9, write_bandwidth_page_cache_GBps=write / 1e9,
                   model_bytes=model_bytes, loadavg_start=os.getloadavg()[0])
    print(f"model {model_bytes / 1e6:.0f} MB x {len(experts) + 1}; numpy copy bandwidth {bw / 1e9:.1f} GB/s; "
          f"read bandwidth (preadv) {read_cold / 1e9:.2f} GB/s from disk, {read_warm / 1e9:.1f} GB/s from the page cache; "
          f"write bandwidth (pwrite into the page cache) {write / 1e9:.2f} GB/s: one model's bytes in "
          f"{model_bytes / write:.2f} s")
    env = recipes.tool_env()
    startup = timed([sys.executable, "-c", "import mergejax.cli.merge, jax; jax.devices()"], env=env)
    results["mergejax_import"] = startup
    print(f"mergejax import + jax init: {startup['wall_s']:.2f}s, RSS {startup['peak_rss_bytes'] / 2**20:.0f} MiB")
    methods = list(_METHODS.value)
    rounds = [(method, k) for method in methods + (["ties_global"] if "ties" in methods else [])
              for k in range(max(1, _REPEATS.value))]
    for method, k in rounds:
      native = method in NATIVE or method == "ties_global"
      if native:
        n_in = len(experts) + (0 if method == "linear" else 1)
      else:  # the recipe's models, and the base where it reads one (passthrough: its first layer's slice)
        _, _, uses_base, n_models = recipes.SETTINGS[method]
        n_in = n_models + (1 if uses_base or method == "passthrough" else 0)
        recipe = root / f"{method}.yml"
        recipe.write_text(recipes.mergekit_yaml(method, base, experts, layers=shape["layers"]))
      moved = (n_in + 1) * model_bytes
      out = root / f"out_mj_{method}"
      # Cold: an empty persistent compilation cache (every kernel compiled, the first run a user does);
      # warm: the same command again with the cache the cold run filled (every later run).
      cache = root / f"xla_cache_{method}"
      shutil.rmtree(cache, ignore_errors=True)
      for cache_state in ("cold", "warm"):
        shutil.rmtree(out, ignore_errors=True)
        cmd = (mergejax_cmd(method, base, experts, out, _BUDGET.value, cache_dir=str(cache)) if native else
               [sys.executable, "-m", "mergejax.cli.recipe", str(recipe), str(out), "--seed=0", "--progress=False",
                f"--memory_budget_gb={_BUDGET.value}", f"--compilation_cache_dir={cache}"])
        r = timed(cmd, env=env)
        man = json.loads((out / "mergejax_manifest.json").read_text())
        man.setdefault("elapsed_s", float("nan"))  # a recipe of slices only (passthrough) merges nothing
        row = {"method": method, "tool": "mergejax", "round": k, "compile_cache": cache_state, **r,
               "loadavg_1m": os.getloadavg()[0],
               "merge_phase_s": man["elapsed_s"], "GBps_whole": moved / r["wall_s"] / 1e9,
               "GBps_merge_phase": moved / man["elapsed_s"] / 1e9, "floor_s": moved / bw,
               "merge_phase_over_floor": man["elapsed_s"] / (moved / bw),
               # the merge loop's input rate against the page-cache read bandwidth (issue 18: >= 50% at 1B)
               "read_GBps_merge_phase": n_in * model_bytes / man["elapsed_s"] / 1e9,
               "read_share_of_page_cache_bw": n_in * model_bytes / man["elapsed_s"] / read_warm}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
      if _MERGEKIT.value and method != "ties_global":
        mk_out = root / f"out_mk_{method}"
        shutil.rmtree(mk_out, ignore_errors=True)
        cfg = root / f"{method}.yml"
        if native:
          cfg.write_text(mergekit_yaml(method, base, experts))
        r = timed([_MERGEKIT.value, str(cfg), str(mk_out), "--random-seed", "0"], env=env)
        mrow = {"method": method, "tool": "mergekit", "round": k, **r, "GBps_whole": moved / r["wall_s"] / 1e9,
                "loadavg_1m": os.getloadavg()[0]}
        if method in ("linear", "task_arithmetic", "ties") and k == 0:
          mrow["agreement_with_mergejax"] = agreement(out, mk_out)
        results["runs"].append(mrow)
        print(json.dumps(mrow), flush=True)
        shutil.rmtree(mk_out, ignore_errors=True)
      shutil.rmtree(out, ignore_errors=True)
    # Bounded memory: inputs several times the budget; peak RSS tracks the budget, not the model.
    # Orbax output is written group by group too (orbax partial-save session), so it is bounded alike.
    for fmt in _BUDGET_FORMATS.value:
      for budget in (_SMALL_BUDGET.value, _SMALL_BUDGET.value * 4) if _SMALL_BUDGET.value > 0 else ():
        out = root / "out_budget"
        shutil.rmtree(out, ignore_errors=True)
        r = timed(mergejax_cmd(_BUDGET_METHOD.value, base, experts, out, budget, fmt=fmt), env=env)
        row = {"method": _BUDGET_METHOD.value, "tool": "mergejax", "output_format": fmt, "memory_budget_gb": budget,
               "inputs_over_budget": (len(experts) + 1) * model_bytes / (budget * 2**30), **r}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))
  print(json.dumps(results, indent=2))
  print_summary(results)





def print_summary(results: dict) -> None:
  """The figures the issue's goals name, per method: wall-time speed-up over mergekit (cold and warm
  compilation cache) as the ratio of the medians over the rounds, each round's own ratio (the runs of
  a round are back to back, so they saw the same machine), and peak RSS (the highest of any run)."""
  runs = [r for r in results["runs"] if "output_format" not in r]
  print(f"\nsummary ({results['date']}, {results['machine']}; {results['params']:,} parameters, "
        f"{results.get('shape', {}).get('experts', '?')} experts; medians over rounds):")
  print(f"read bandwidth: {results.get('read_bandwidth_page_cache_GBps', 0):.1f} GB/s page cache, "
        f"{results.get('read_bandwidth_cold_GBps', 0):.2f} GB/s disk; numpy copy {results['copy_bandwidth_GBps']:.1f} GB/s")
  if results.get("write_bandwidth_page_cache_GBps"):
    wbw = results["write_bandwidth_page_cache_GBps"] * 1e9
    print(f"write bandwidth into the page cache: {wbw / 1e9:.2f} GB/s; writing one model's bytes (a merge's output) "
          f"takes {results['model_bytes'] / wbw:.2f} s, a floor under the merge loop")
  print("method | rounds | mergejax cold s | warm s | mergekit s | speed-up cold (per round) | warm | goal | "
        "CPU s mergejax cold / mergekit (ratio) | merge loop input GB/s (% of page-cache read bw) | "
        "RSS mergejax / mergekit GB | load")
  for m in dict.fromkeys(r["method"] for r in runs):
    goal = recipes.goal(m)
    pick = lambda tool, cache=None: [r for r in runs if r["method"] == m and r["tool"] == tool
                                     and r.get("compile_cache") == cache]
    cold, warm, mk = pick("mergejax", "cold"), pick("mergejax", "warm"), pick("mergekit")
    if not cold or not mk:
      continue
    med = lambda rows: float(np.median([r["wall_s"] for r in rows]))
    ratio, ratio_w = med(mk) / med(cold), med(mk) / med(warm)
    per_round = [b["wall_s"] / a["wall_s"] for a, b in zip(cold, mk)]
    met = sum(x >= goal for x in per_round)
    rss, rss_mk = max(r["peak_rss_bytes"] for r in cold + warm), max(r["peak_rss_bytes"] for r in mk)
    loads = [r["loadavg_1m"] for r in cold + mk]
    cpu = lambda rows: float(np.median([r.get("cpu_s", np.nan) for r in rows]))  # noqa: E731
    read = float(np.median([r["read_GBps_merge_phase"] for r in cold + warm if "read_GBps_merge_phase" in r] or [np.nan]))
    share = float(np.median([r["read_share_of_page_cache_bw"] for r in cold + warm
                             if "read_share_of_page_cache_bw" in r] or [np.nan]))
    print(f"{m} | {len(cold)} | {med(cold):.2f} | {med(warm):.2f} | {med(mk):.2f} | {ratio:.1f}x "
          f"({' / '.join(f'{x:.1f}' for x in per_round)}) | {ratio_w:.1f}x | "
          f"{goal:.0f}x: median {'met' if ratio >= goal else 'MISSED'}, {met} of {len(per_round)} rounds | "
          f"{cpu(cold):.2f} / {cpu(mk):.2f} ({cpu(mk) / cpu(cold):.1f}x) | {read:.2f} ({100 * share:.0f}%) | "
          f"{rss / 1e9:.2f} / {rss_mk / 1e9:.2f} {'lower' if rss <= rss_mk else 'HIGHER'} | "
          f"{min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
  app.run(main)
