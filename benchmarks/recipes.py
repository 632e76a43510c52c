r"""The mergekit recipes the benchmarks run through both tools, and what the runners share (no flags).

``SETTINGS`` holds one recipe per method mergekit 0.1.5 and mergejax share, written as a mergekit user
writes it (per-model ``weight``, ``density``...; ``dtype: float32``, math in float32 as mergejax;
``out_dtype: bfloat16``). ``merge_bench.py`` times every one of them with ``mergejax-yaml`` against
``mergekit-yaml`` on its Llama workload; ``methods_parity.py`` checks the tools' outputs agree.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors.numpy)
import numpy as np

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
    "ram": ({"epsilon": 1e-3}, {}, True, 3),
    "ramplus_tl": ({"r": 0.3, "alpha": 0.5, "epsilon": 1e-3}, {}, True, 3),
    "arcee_fusion": ({}, {}, True, 1),  # leaves over 1M entries: mergekit samples the quartiles (in distribution)
}
STOCHASTIC = ("della", "della_linear", "dare_linear", "dare_ties")
# Issue 19's speed goals: >= 10x mergekit for the sparsifying methods, >= 4x for the others.
SPARSIFYING = ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce")
# mergekit's DARE draws and rescales its own way (torch's RNG, an L1-norm rescale); mergejax-yaml runs its DARE
# (hash-keyed masks, survivors times exactly 1/(1-p)) where the recipe says so (mergekit ignores the key).
OPT_IN = {"dare_linear": "mergejax: {dare: paper}", "dare_ties": "mergejax: {dare: paper}"}


def goal(method: str) -> float:
  return 10.0 if method in SPARSIFYING else 4.0


def llama_shapes(layers: int, hidden: int, inter: int, vocab: int) -> dict[str, tuple[int, ...]]:
  """Tensor names and shapes of an HF Llama checkpoint (untied embeddings)."""
  shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
            "lm_head.weight": (vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    shapes.update({p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"})
    shapes.update({p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                   p + "post_attention_layernorm.weight": (hidden,)})
  return shapes


def mergekit_yaml(method: str, base, experts, *, layers: int, out_dtype: str = "bfloat16",
                  n_models: int | None = None) -> str:
  """The recipe both tools run: per-model parameters under each model (a list in SETTINGS gives one
  value per model), the rest at the top level; ``layers`` places passthrough's slice boundary."""
  glob, per_model, uses_base, n_default = SETTINGS[method]
  n_models = n_models or n_default
  lines = [f"merge_method: {method}", "dtype: float32", f"out_dtype: {out_dtype}"]
  if method in OPT_IN:
    lines.append(OPT_IN[method])
  if method == "passthrough":
    return "\n".join(lines + ["slices:", f"  - sources: [{{model: {base}, layer_range: [0, 1]}}]",
                               f"  - sources: [{{model: {experts[0]}, layer_range: [1, {layers}]}}]"]) + "\n"
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


def load_all(d) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  out = {}
  for f in sorted(pathlib.Path(d).glob("*.safetensors")):
    out.update(load_file(str(f)))
  return out


_TIMER = ("import resource, subprocess, sys, time\n"
          "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
          "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
          "sys.stderr.write(r.stderr.decode(errors='replace')[-2000:] if r.returncode else '')\n"
          "print(w, u.ru_maxrss * 1024, r.returncode, u.ru_utime + u.ru_stime)\n")


def tool_env(checkout: str | pathlib.Path | None = None) -> dict[str, str]:
  """The environment timed runs get: JAX on the CPU, quiet logs, ``checkout`` (if given) first on the path,
  and bytecode caches used as an installed package uses them. A ``PYTHONDONTWRITEBYTECODE`` inherited from
  the shell would have every mergejax run compile all its modules from source (an editable install has no
  bytecode until a run writes it), a cost installed tools such as mergekit do not pay."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("PYTHONDONTWRITEBYTECODE", None)
  if checkout is not None:
    env["PYTHONPATH"] = str(checkout)
  root = pathlib.Path(checkout) if checkout is not None else pathlib.Path(__file__).resolve().parents[1]
  subprocess.run([sys.executable, "-m", "compileall", "-q", "mergejax", "configs", "benchmarks"], cwd=root, env=env,
                 check=True, capture_output=True)
  return env


def timed(cmd: list[str], env=None) -> dict:
  """Whole-process wall time, peak RSS and CPU time (user + system: on a loaded machine it varies far
  less than wall time) of ``cmd``, run by a wrapper process."""
  r = subprocess.run([sys.executable, "-c", _TIMER, *map(str, cmd)], capture_output=True, text=True, env=env)
  wall, rss, rc, cpu = r.stdout.split()
  if int(rc):
    raise RuntimeError(f"{cmd[:3]} failed: {r.stderr[-1500:]}")
  return {"wall_s": float(wall), "peak_rss_bytes": int(rss), "cpu_s": float(cpu)}
