r"""Every mergekit merge method in mergejax vs ``mergekit-yaml``: agreement, speed and peak memory, side by side.

Workload: an HF Llama-architecture checkpoint (float32 or ``--dtype=bfloat16`` safetensors; hidden 256, 2 layers,
intermediate 704, vocab 2048: ~3.7M parameters) as base + 3 experts (base + 0.002 N(0, 1) noise per
expert), generated in a temporary directory and deleted afterwards. Each method runs as one fresh
process per tool on the very same recipe, written as a mergekit user writes it (per-model ``weight``,
``density``...; ``dtype: float32``, math in float32 as mergejax; ``out_dtype: bfloat16``): ``mergekit-yaml``
and ``mergejax-yaml``. The methods: linear, task_arithmetic, ties,
dare_linear, dare_ties (with ``mergejax: {dare: paper}``, a key mergekit ignores), slerp, nuslerp, multislerp,
karcher, breadcrumbs, breadcrumbs_ties, model_stock, sce, nearswap, della, della_linear, passthrough (slices).

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

Speed and memory: whole-process wall time and peak RSS of each tool per method (one run each; ``--repeats``
for more). On a shared machine these are *measured under load*.

    .venv/bin/python benchmarks/methods_parity.py --mergekit=PATH/TO/mk-venv/bin/mergekit-yaml
    .venv/bin/python benchmarks/methods_parity.py --hidden=1024 --layers=8 --intermediate=2816 --vocab=32000 \
      --dtype=bfloat16 --agreement=False --memory_budget_gb=1 --repeats=3   # merge_bench's 168M workload: speed
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]

# mergekit method -> (global parameters, per-model parameters (a list: one value per model), uses base_model,
# number of models besides the base).
SETTINGS = {
    "linear": ({}, {"weight": [1.0, 2.0, 0.5]}, False, 3),
    "task_arithmetic": ({"lambda": 0.8}, {"weight": [1.0, 0.5, 0.7]}, True, 3),
    "ties": ({}, {"weight": [1.0, 0.5, 0.7], "density": 0.5}, True, 3),
    "dare_linear": ({}, {"weight": 1.0, "density": 0.6}, True, 3),
    "dare_ties": ({}, {"weight": 1.0, "density": 0.6}, True, 3),
    "slerp": ({"t": 0.4}, {}, True, 1),
    "nuslerp": ({}, {"weight": [0.3, 0.7]}, True, 2),
    "multislerp": ({}, {"weight": [1.0, 2.0, 1.0]}, True, 3),
    "karcher": ({}, {}, False, 3),  # both tools default to max_iter 10, tol 1e-5
    "breadcrumbs": ({}, {"weight": 1.0, "density": 0.9, "gamma": 0.01}, True, 3),
    "breadcrumbs_ties": ({}, {"weight": 1.0, "density": 0.9, "gamma": 0.01}, True, 3),
    "model_stock": ({}, {}, True, 3),
    "sce": ({"select_topk": 0.5}, {}, True, 3),
    "nearswap": ({"t": 0.001}, {}, True, 1),
    "della": ({}, {"weight": 1.0, "density": 0.5, "epsilon": 0.15}, True, 3),
    "della_linear": ({}, {"weight": 1.0, "density": 0.5, "epsilon": 0.15}, True, 3),
    "passthrough": ({}, {}, False, 1),  # slices: layer 0 of the base, layers 1.. of expert 0
}
STOCHASTIC = ("della", "della_linear", "dare_linear", "dare_ties")
# mergekit's DARE draws and rescales its own way (torch's RNG, an L1-norm rescale); mergejax-yaml runs its DARE
# (hash-keyed masks, survivors times exactly 1/(1-p)) where the recipe says so (mergekit ignores the key).
OPT_IN = {"dare_linear": "mergejax: {dare: paper}", "dare_ties": "mergejax: {dare: paper}"}

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


def llama_shapes(layers: int, hidden: int, inter: int, vocab: int) -> dict[str, tuple[int, ...]]:
  shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
            "lm_head.weight": (vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"})
    shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                   p + "post_attention_layernorm.weight": (hidden,)})
  return shapes


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


def load_all(d: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  out = {}
  for f in sorted(pathlib.Path(d).glob("*.safetensors")):
    out.update(load_file(str(f)))
  return out


def mergekit_yaml(method, base, experts, out_dtype="bfloat16", n_models=None) -> str:
  """The recipe both tools run, written as a mergekit user writes it: per-model parameters under each model
  (a list in SETTINGS gives one value per model), the rest at the top level."""
  glob, per_model, uses_base, n_default = SETTINGS[method]
  n_models = n_models or n_default
  lines = [f"merge_method: {method}", "dtype: float32", f"out_dtype: {out_dtype}"]
  if method in OPT_IN:
    lines.append(OPT_IN[method])
  if method == "passthrough":
    return "\n".join(lines + ["slices:", f"  - sources: [{{model: {base}, layer_range: [0, 1]}}]",
                               f"  - sources: [{{model: {experts[0]}, layer_range: [1, {_LAYERS.value}]}}]"]) + "\n"
  if uses_base:
    lines.append(f"base_model: {base}")
  if glob:
    lines.append("parameters: " + json.dumps(glob))
  lines.append("models:")
  if method in ("slerp", "nearswap"):  # mergekit: the base is one of the two models
    lines += [f"  - model: {base}"]
  for i, e in enumerate(list(experts)[:n_models]):
    params = {k: (v[i] if isinstance(v, list) else v) for k, v in per_model.items()}
    lines += [f"  - model: {e}"] + ([f"    parameters: {json.dumps(params)}"] if params else [])
  return "\n".join(lines) + "\n"


def timed(cmd: list[str], env=None) -> tuple[float, float]:
  """(wall seconds, peak RSS in MiB) of one process running ``cmd``."""
  t = time.perf_counter()
  with tempfile.TemporaryFile() as log:
    p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if p.returncode:
      log.seek(0)
      raise RuntimeError(f"{cmd[:3]} failed: {log.read().decode(errors='replace')[-2000:]}")
  return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def run_mergejax(method, base, experts, out, root, *, seed=0, dtype="bfloat16", n_experts=None,
                 env=None) -> tuple[float, float]:
  """One ``mergejax-yaml`` run (a fresh process) on the recipe mergekit runs."""
  cfg = root / f"{method}_mj.yml"
  cfg.write_text(mergekit_yaml(method, base, experts, dtype, n_experts))
  shutil.rmtree(out, ignore_errors=True)
  budget = [] if _BUDGET.value is None else [f"--memory_budget_gb={_BUDGET.value}"]
  return timed([sys.executable, "-m", "mergejax.cli.recipe", str(cfg), str(out), f"--seed={seed}", "--progress=False",
                *budget], env=env)


def run_mergekit(method, base, experts, out, root, *, seed=0, out_dtype="bfloat16", n_experts=None, env=None):
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
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
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
          seconds, rss = run(method, base, experts, out, root, env=env)
          row[f"{tool}_s"].append(seconds)
          row[f"{tool}_rss_mib"].append(rss)
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
