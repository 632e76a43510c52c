r"""Every mergekit merge method in mergejax vs ``mergekit-yaml``: do the outputs agree?

Workload: an HF Llama-architecture checkpoint (float32 or ``--dtype=bfloat16`` safetensors; hidden 256, 2 layers,
intermediate 704, vocab 2048: ~3.7M parameters) as base + 3 experts (base + 0.002 N(0, 1) noise per
expert), generated in a temporary directory and deleted afterwards. Each method runs as one fresh
process per tool on the very same recipe (``recipes.SETTINGS``, the recipes ``merge_bench.py`` times):
``mergekit-yaml`` and ``mergejax-yaml``. The methods: linear, task_arithmetic, ties,
dare_linear, dare_ties (with ``mergejax: {dare: paper}``, a key mergekit ignores), slerp, nuslerp, multislerp,
karcher, breadcrumbs, breadcrumbs_ties, model_stock, sce, nearswap, della, della_linear, ram, ramplus_tl,
arcee_fusion, passthrough (slices).

Agreement, per method:

* deterministic methods: entries that differ, more than one bf16 ulp apart, and beyond float32
  arithmetic (see :func:`deterministic_agreement`; the goal: none);
* ``della``, ``della_linear``, ``dare_linear``, ``dare_ties`` (random; each tool its own random stream; DARE
  is DELLA with ``epsilon`` 0): in distribution, from runs
  with one expert and float32 output, where ``merged - base`` is the kept, rescaled task vector: the
  kept fraction (goal: ``density`` within 4 binomial standard deviations, both tools), the rescale (DELLA
  and mergekit's DARE keep each tensor's L1 norm; mergejax's DARE multiplies by exactly 1/(1-p)) and its
  factor against its expectation; and from ``--seeds`` runs with
  three experts, the mean over seeds of each tool: the two means' squared difference, averaged over
  entries, against its expectation from the per-entry variances over seeds (goal: a ratio in [0.8, 1.25]).

The whole-process wall time and peak RSS of each run are printed too, but at this size they are mostly
start-up: speed and memory against mergekit are ``merge_bench.py``'s (the same recipes on its Llama workload).

    .venv/bin/python benchmarks/methods_parity.py --mergekit=PATH/TO/mk-venv/bin/mergekit-yaml
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
from absl import app, flags

from recipes import SETTINGS, STOCHASTIC, llama_shapes, load_all, timed
import recipes

REPO = pathlib.Path(__file__).resolve().parents[1]

_MERGEKIT = flags.DEFINE_string("mergekit", shutil.which("mergekit-yaml") or "",
                                "mergekit-yaml executable.")
_METHODS = flags.DEFINE_list("methods", list(SETTINGS), "mergekit method names.")
_LAYERS = flags.DEFINE_integer("layers", 2, "Decoder layers.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Hidden size.")
_INTER = flags.DEFINE_integer("intermediate", 704, "MLP size.")
_VOCAB = flags.DEFINE_integer("vocab", 2048, "Vocabulary.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the generated checkpoints. "
                           "bfloat16 task vectors are quantized: rank selections (breadcrumbs, sce) then meet ties "
                           "at their thresholds, which each tool breaks its own way (mergekit by torch.sort's order).")
_BUDGET = flags.DEFINE_float("memory_budget_gb", None, "mergejax-yaml --memory_budget_gb (default: its own, 4 GB): "
                             "the host memory its leaf groups in flight may take; merge_bench uses 1.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Runs per tool for the mean over seeds of the random methods.")
_AGREEMENT = flags.DEFINE_bool("agreement", True, "Check agreement (False: time only; della's distribution checks "
                                "run extra merges).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs per tool and method (the summary gives medians).")
_OUT = flags.DEFINE_string("out_json", None, "Write all results as JSON here.")
_KEEP = flags.DEFINE_string("keep", None, "Keep the workload and the last outputs in this directory (default: a "
                            "temporary directory, deleted).")


def write_model(path: pathlib.Path, shapes, config, seed: int | None) -> None:
  """The base (seed None) or base + 0.002 N(0, 1) noise, one safetensors file of ``--dtype``."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path.mkdir(parents=True)
  tensors = {}
  for i, (name, s) in enumerate(shapes.items()):
    x = np.random.default_rng([0, i]).standard_normal(s, dtype=np.float32) * 0.02
    if name.endswith("norm.weight"):
      x += 1.0
    if seed is not None:
      x += np.random.default_rng([seed, i, 7]).standard_normal(s, dtype=np.float32) * 0.002
    tensors[name] = x.astype(ml_dtypes.bfloat16 if _DTYPE.value == "bfloat16" else np.float32)
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  (path / "config.json").write_text(json.dumps(config, indent=2))


def mergekit_yaml(method, base, experts, out_dtype="bfloat16", n_models=None) -> str:
  return recipes.mergekit_yaml(method, base, experts, layers=_LAYERS.value, out_dtype=out_dtype, n_models=n_models)


def run_mergejax(method, base, experts, out, root, *, seed=0, dtype="bfloat16", n_experts=None, env=None) -> dict:
  """One ``mergejax-yaml`` run (a fresh process) on the recipe mergekit runs."""
  cfg = root / f"{method}_mj.yml"
  cfg.write_text(mergekit_yaml(method, base, experts, dtype, n_experts))
  shutil.rmtree(out, ignore_errors=True)
  budget = [] if _BUDGET.value is None else [f"--memory_budget_gb={_BUDGET.value}"]
  return timed([sys.executable, "-m", "mergejax.cli.recipe", str(cfg), str(out), f"--seed={seed}", "--progress=False",
                *budget], env=env)


def run_mergekit(method, base, experts, out, root, *, seed=0, out_dtype="bfloat16", n_experts=None, env=None) -> dict:
  cfg = root / f"{method}.yml"
  cfg.write_text(mergekit_yaml(method, base, experts, out_dtype, n_experts))
  shutil.rmtree(out, ignore_errors=True)
  return timed([_MERGEKIT.value, str(cfg), str(out), "--random-seed", str(seed), "--quiet"], env=env)


def bf16_ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance in bf16 ulps (ordered bit patterns) between two bf16 arrays."""
  def key(x):
    i = np.asarray(x, ml_dtypes.bfloat16).view(np.uint16).astype(np.int32)
    return np.where(i & 0x8000, 0x8000 - (i & 0x7FFF), 0x8000 + i)
  return np.abs(key(a) - key(b))


def deterministic_agreement(mj: dict, mk: dict, inputs: list[dict]) -> dict:
  """Entries that differ; more than one bf16 ulp apart; and of those, the ones also farther apart than
  float32 arithmetic explains: 2^-16 of the largest input magnitude at the entry. Where a result cancels
  to near 0, float32 reductions over a whole leaf (norms, dot products of 10^5-10^6 entries, summed in a
  different order by each tool) move it by up to ~1e-5 of its inputs, many ulps of the small result;
  a different decision (an entry kept or dropped, another sign elected) moves it by ~1e-2 of them."""
  n = differ = over = beyond = 0
  worst = 0
  for k, a in mj.items():
    u = bf16_ulps(a, mk[k])
    scale = np.max([np.abs(x[k].astype(np.float32)) for x in inputs], axis=0)
    gap = np.abs(a.astype(np.float32) - mk[k].astype(np.float32))
    n += u.size
    differ += int((u > 0).sum())
    over += int((u > 1).sum())
    beyond += int(((u > 1) & (gap > scale * 2.0**-16)).sum())
    worst = max(worst, int(u.max(initial=0)))
  return {"entries": n, "differing": differ, "over_1_ulp": over, "beyond_rounding": beyond, "max_ulps": worst,
          "ok": beyond == 0}


def della_agreement(method, root, base, experts, env) -> dict:
  """One expert, float32 output (merged - base = the kept, rescaled task vector): the kept fraction, the
  L1 rescale (both tools keep each tensor's L1 norm: max |1 - |d|_1 / |tau|_1| over tensors), its factor
  averaged over all kept entries (against the expectation sum |tau| / sum p |tau| of the documented
  keep probabilities p); then the mean over seeds with three experts."""
  b = {k: v.astype(np.float64) for k, v in load_all(base).items()}
  e0 = {k: v.astype(np.float64) for k, v in load_all(experts[0]).items()}
  density, epsilon = SETTINGS[method][1]["density"], SETTINGS[method][1].get("epsilon", 0.0)  # DARE: epsilon 0
  expect_num = expect_den = 0.0
  for k in b:
    a = np.abs(e0[k] - b[k])
    a2 = a.reshape(1, -1) if a.ndim < 2 else a
    p = (density - epsilon) + 2 * epsilon * a2.argsort(1).argsort(1) / max(a2.shape[1] - 1, 1)
    expect_num, expect_den = expect_num + a2.sum(), expect_den + (p * a2).sum()
  res = {"expected_rescale_factor": expect_num / expect_den}
  for tool in ("mergejax", "mergekit"):
    out = root / f"d_{tool}"
    if tool == "mergejax":
      run_mergejax(method, base, experts, out, root, dtype="float32", n_experts=1, env=env)
    else:
      run_mergekit(method, base, experts, out, root, out_dtype="float32", n_experts=1, env=env)
    o = {k: v.astype(np.float64) for k, v in load_all(out).items()}
    kept = n = 0
    l1_err, num, den = 0.0, 0.0, 0.0
    for k, tau in ((k, e0[k] - b[k]) for k in b):
      d = o[k] - b[k]
      keep = (d != 0) & (tau != 0)
      kept += int(keep.sum())
      n += int((tau != 0).sum())
      l1_err = max(l1_err, abs(1 - np.abs(d).sum() / np.abs(tau).sum()))
      num, den = num + np.abs(d[keep]).sum(), den + np.abs(tau[keep]).sum()
    frac = kept / n
    res[tool] = {"keep_fraction": frac,
                 "keep_fraction_ok": bool(abs(frac - density) <= 4 * np.sqrt(density * (1 - density) / n)),
                 "l1_norm_kept_max_rel_err": float(l1_err), "rescale_factor": float(num / den)}
  means = {}
  for tool in ("mergejax", "mergekit"):
    acc, acc2 = None, None
    for s in range(_SEEDS.value):
      out = root / f"s_{tool}"
      if tool == "mergejax":
        run_mergejax(method, base, experts, out, root, seed=s, dtype="float32", env=env)
      else:
        run_mergekit(method, base, experts, out, root, seed=s, out_dtype="float32", env=env)
      o = np.concatenate([v.astype(np.float64).ravel() for _, v in sorted(load_all(out).items())])
      acc = o if acc is None else acc + o
      acc2 = o * o if acc2 is None else acc2 + o * o
    mean = acc / _SEEDS.value
    var = np.maximum(acc2 - _SEEDS.value * mean * mean, 0.0) / max(_SEEDS.value - 1, 1)  # unbiased, per entry
    means[tool] = (mean, var)
  (m1, v1), (m2, v2) = means["mergejax"], means["mergekit"]
  se2 = (v1 + v2) / _SEEDS.value
  live = se2 > 0
  # Same distribution: E[(m1 - m2)^2] = E[se2] entry by entry, so the ratio of their averages is ~1
  # (a bias of either tool, or a different keep probability or rescale, moves it up).
  ratio = float(np.mean((m1 - m2)[live] ** 2) / np.mean(se2[live]))
  res["mean_over_seeds"] = {"seeds": _SEEDS.value, "msd_over_se2": ratio, "ok": bool(0.8 < ratio < 1.25)}
  return res


def main(argv):
  del argv
  if not _MERGEKIT.value:
    raise SystemExit("methods_parity: mergekit-yaml is not on PATH; pass --mergekit=PATH/TO/mergekit-yaml")
  root = pathlib.Path(_KEEP.value or tempfile.mkdtemp(prefix="methods_parity_"))
  root.mkdir(parents=True, exist_ok=True)
  env = recipes.tool_env(REPO)
  shapes = llama_shapes(_LAYERS.value, _HIDDEN.value, _INTER.value, _VOCAB.value)
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": _HIDDEN.value,
            "intermediate_size": _INTER.value, "num_hidden_layers": _LAYERS.value, "num_attention_heads": 4,
            "num_key_value_heads": 4, "vocab_size": _VOCAB.value, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": _DTYPE.value, "hidden_act": "silu"}
  results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), "dtype": _DTYPE.value,
             "loadavg_1m_start": os.getloadavg()[0], "params": int(sum(np.prod(s) for s in shapes.values())),
             "methods": {}}
  try:
    base = root / "base"
    experts = [root / f"expert{i}" for i in range(3)]
    for i, d in enumerate([base, *experts]):
      if not d.exists():
        write_model(d, shapes, config, i or None)
    for method in _METHODS.value:
      row: dict = {"mergejax_s": [], "mergekit_s": [], "mergejax_rss_mib": [], "mergekit_rss_mib": []}
      mj_out, mk_out = root / "out_mj", root / "out_mk"
      for _ in range(max(1, _REPEATS.value)):
        for tool, run, out in (("mergejax", run_mergejax, mj_out), ("mergekit", run_mergekit, mk_out)):
          r = run(method, base, experts, out, root, env=env)
          row[f"{tool}_s"].append(r["wall_s"])
          row[f"{tool}_rss_mib"].append(r["peak_rss_bytes"] / 2**20)
      row["speedup_median"] = float(np.median(row["mergekit_s"]) / np.median(row["mergejax_s"]))
      if not _AGREEMENT.value:
        row["agreement"] = None
      elif method in STOCHASTIC:
        row["agreement"] = della_agreement(method, root, base, experts, env)
      else:
        inputs = [load_all(base)] + [load_all(e) for e in experts[:SETTINGS[method][3]]]
        row["agreement"] = deterministic_agreement(load_all(mj_out), load_all(mk_out), inputs)
      row["loadavg_1m"] = os.getloadavg()[0]
      results["methods"][method] = row
      print(method, json.dumps(row), flush=True)
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))
  print("method | mergejax s | mergekit s | speed-up | peak RSS MiB mergejax / mergekit | agreement")
  for m, r in results["methods"].items():
    a = r["agreement"]
    if a is None:
      text = "not checked"
    elif m in STOCHASTIC:
      text = (f"keep {a['mergejax']['keep_fraction']:.4f} / {a['mergekit']['keep_fraction']:.4f}, rescale "
              f"{a['mergejax']['rescale_factor']:.4f} / {a['mergekit']['rescale_factor']:.4f} (expected "
              f"{a['expected_rescale_factor']:.4f}; L1 kept to {a['mergejax']['l1_norm_kept_max_rel_err']:.1e} / "
              f"{a['mergekit']['l1_norm_kept_max_rel_err']:.1e}), means over "
              f"{a['mean_over_seeds']['seeds']} seeds: mean squared difference / its expectation "
              f"{a['mean_over_seeds']['msd_over_se2']:.3f}")
    else:
      text = (f"{a['beyond_rounding']} of {a['entries']} entries beyond rounding ({a['over_1_ulp']} > 1 bf16 ulp, "
              f"{a['differing']} differ, max {a['max_ulps']} ulps)")
    print(f"{m} | {np.median(r['mergejax_s']):.2f} | {np.median(r['mergekit_s']):.2f} | {r['speedup_median']:.2f}x | "
          f"{max(r['mergejax_rss_mib']):.0f} / {max(r['mergekit_rss_mib']):.0f} | {text}")


if __name__ == "__main__":
  app.run(main)
