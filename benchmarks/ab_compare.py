r"""Two mergejax checkouts side by side on merge_bench's workload: byte-identical outputs and wall times.

For a change that must not alter results or speed (a refactor), run the same ``mergejax-merge``
commands with checkout A (``--old``, e.g. a ``git worktree`` of the previous commit) and B (``--new``,
default: this checkout), alternating A and B in every round so that both see the same machine load:

* ``cmp``: every output file of every method (safetensors and orbax output) and of ``yaml_bench.py``'s
  recipes through ``mergejax-yaml`` must be byte-identical,
  except files that record times, paths or random ids (the manifest; orbax's OCDBT data files, which
  differ between two runs of the same code): orbax outputs are compared by their other files and by
  their restored arrays, bit for bit;
* timing: per method, the median over ``--repeats`` rounds of whole-process wall time with a cold and
  a warm persistent compilation cache, and of the merge phase (manifest ``elapsed_s``); the ratio B/A;
* ``--methods_bench``: ``benchmarks/methods_bench.py`` of each checkout, alternated, medians per method;
  ``--methods_cpu_layers``: the same library merges timed by CPU time, which varies far less than wall
  time on a loaded machine.

    git worktree add ../old <commit>
    .venv/bin/python benchmarks/ab_compare.py --old=../old --layers=2 --vocab=4000 --repeats=1   # quick
    .venv/bin/python benchmarks/ab_compare.py --old=../old --repeats=3 --methods_bench            # full
    .venv/bin/python benchmarks/ab_compare.py --old=../old --nocmp --ab_methods= --methods_cpu_layers=3
"""

from __future__ import annotations

import filecmp
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import merge_bench  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import recipes  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import yaml_bench  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]

# merge_bench's flags apply too: --preset, --layers, --hidden, --intermediate, --vocab, --experts,
# --workdir (reused if it holds a workload), --keep, --repeats (timed rounds per method, A and B alternated in each),
# --out_json.
_OLD = flags.DEFINE_string("old", None, "Checkout A (the reference).", required=True)
_NEW = flags.DEFINE_string("new", str(REPO), "Checkout B.")
_METHODS = flags.DEFINE_list("ab_methods", ["linear", "task_arithmetic", "ties", "ties_global", "dare_linear",
                                            "dare_ties"], "Methods (merge_bench's names, plus dare_linear).")
_RECIPES = flags.DEFINE_list("ab_recipes", ["ties_gradient", "lora_ta", "union_linear"], "yaml_bench's recipes, "
                             "run by mergejax-yaml of each checkout and compared byte for byte.")
_FORMATS = flags.DEFINE_list("formats", ["safetensors", "orbax"], "Output formats compared byte for byte.")
_METHODS_BENCH = flags.DEFINE_bool("methods_bench", False, "Also run methods_bench.py of A and B, alternated.")
_CMP = flags.DEFINE_bool("cmp", True, "Compare outputs (False: timing only).")
_METHODS_CPU = flags.DEFINE_integer("methods_cpu_layers", 0, "If > 0: mergejax.merge of methods_bench's model with "
                                    "this many layers, CPU time per method in-process, A and B alternated.")

# methods_bench's model and methods, timed in one process by CPU time (best of 5 after a compile).
_METHODS_CPU_CODE = """
import inspect, json, sys, time
import jax, mergejax
sys.path.insert(0, "benchmarks")
import methods_bench as mb
base, experts = mb.make_models(mb.transformer_like(1024, int(sys.argv[1]), 16384), 4)
kw = {"allow_nonfinite": True} if "allow_nonfinite" in inspect.signature(mergejax.merge).parameters else {}
out = {}
for name, hp in mb.METHODS:
  m = mergejax.methods.get(name, **hp)
  jax.block_until_ready(mergejax.merge(base, experts, m, seed=0, **kw))
  cpu = []
  for r in range(5):
    c = time.process_time()
    jax.block_until_ready(mergejax.merge(base, experts, m, seed=r, **kw))
    cpu.append(time.process_time() - c)
  out[name + str(hp)] = min(cpu)
print(json.dumps(out))
"""

# merge_bench's timer, plus the child's CPU time (user + system): on a loaded machine CPU time varies much
# less than wall time.
_TIMER = ("import resource, subprocess, sys, time\n"
          "t = time.perf_counter()\n"
          "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
          "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
          "sys.stderr.write(r.stderr.decode(errors='replace')[-2000:] if r.returncode else '')\n"
          "print(w, u.ru_maxrss * 1024, r.returncode, u.ru_utime + u.ru_stime)\n")
# pylint: disable=protected-access
_LAYERS, _VOCAB, _EXPERTS = merge_bench._LAYERS, merge_bench._VOCAB, merge_bench._EXPERTS
_WORKDIR, _KEEP, _REPEATS, _OUT = merge_bench._WORKDIR, merge_bench._KEEP, merge_bench._REPEATS, merge_bench._OUT
# pylint: enable=protected-access

# Files that record times, paths or random ids rather than merge results: the manifest, the model card
# (README.md: it records the command, whose --config and --output paths name each side's directories), and
# orbax's OCDBT data and manifest files (named by, and holding, random ids: two runs of the same code differ).
_VOLATILE = re.compile(r"mergejax_manifest\.json$|^README\.md$|_CHECKPOINT_METADATA$|commit_success\.txt$|(^|/)d/"
                       r"|^ocdbt\.process_|manifest\.ocdbt$")


def command(method, checkout, base, experts, out, cache, fmt=None):
  cmd = merge_bench.mergejax_cmd("task_arithmetic" if method == "dare_linear" else method, base, experts, out, 1.0,
                                 cache_dir=cache, fmt=fmt)
  cmd = [f"--config={pathlib.Path(checkout) / 'configs' / 'merge.py'}" if a.startswith("--config=") else a for a in cmd]
  if method == "dare_linear":
    cmd = [a for a in cmd if not a.startswith("--config.method.")]
    cmd += ["--config.method.name=dare_linear", "--config.method.drop_rate=0.9", "--config.method.lam=0.5"]
  return cmd


ENVS: dict[str, dict[str, str]] = {}  # checkout -> its children's environment (bytecode compiled once)


def env_for(checkout):
  if str(checkout) not in ENVS:
    ENVS[str(checkout)] = recipes.tool_env(checkout)
  return ENVS[str(checkout)]


def run(cmd, checkout, **kw):
  """``cmd`` with ``checkout`` importable first (``python -m`` also puts the working directory first on
  the path: it runs in the checkout)."""
  return subprocess.run(cmd, env=env_for(checkout), cwd=checkout, **kw)


def timed(cmd, checkout) -> dict:
  """merge_bench's whole-process wall time and peak RSS, run in ``checkout``."""
  r = run([sys.executable, "-c", _TIMER, *cmd], checkout, capture_output=True, text=True)
  wall, rss, rc, cpu = r.stdout.split()
  if int(rc):
    raise RuntimeError(f"{cmd} failed: {r.stderr[-1500:]}")
  return {"wall_s": float(wall), "peak_rss_bytes": int(rss), "cpu_s": float(cpu)}


def compare_dirs(a: pathlib.Path, b: pathlib.Path) -> list[str]:
  """Names of files that differ (or exist on one side only), volatile files excepted."""
  fa = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file() and not _VOLATILE.search(str(p.relative_to(a)))}
  fb = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and not _VOLATILE.search(str(p.relative_to(b)))}
  bad = sorted(fa ^ fb)
  for f in sorted(fa & fb):
    if not filecmp.cmp(a / f, b / f, shallow=False):
      bad.append(f)
  return bad


def orbax_arrays_equal(a: pathlib.Path, b: pathlib.Path, checkout) -> bool:
  """The two orbax outputs restore to bitwise-identical arrays (read with checkout A's reader)."""
  code = ("import sys, numpy as np; from mergejax.checkpoints import open_source\n"
          "a, b = open_source(sys.argv[1]), open_source(sys.argv[2])\n"
          "pa = [s.path for s in a.specs()]; assert pa == [s.path for s in b.specs()]\n"
          "xa, xb = a.read(pa), b.read(pa)\n"
          "ok = all(np.asarray(xa[p]).tobytes() == np.asarray(xb[p]).tobytes() for p in pa)\n"
          "print('EQUAL' if ok else 'DIFFER')\n")
  r = run([sys.executable, "-c", code, str(a), str(b)], checkout, capture_output=True, text=True)
  return r.stdout.strip().endswith("EQUAL")


def run_methods_bench(checkout) -> dict[str, float]:
  r = run([sys.executable, str(pathlib.Path(checkout) / "benchmarks" / "methods_bench.py")], checkout,
          capture_output=True, text=True)
  out = {}
  for line in r.stdout.splitlines():
    cells = [c.strip() for c in line.split("|")]
    if len(cells) > 4 and cells[1] and cells[1] not in ("method", "---"):
      out[f"{cells[1]}({cells[2]})"] = float(cells[3])
  return out


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="ab_compare_"))
  root.mkdir(parents=True, exist_ok=True)
  sides = {"A": pathlib.Path(_OLD.value).resolve(), "B": pathlib.Path(_NEW.value).resolve()}
  shape = merge_bench.shape_flags()  # --preset, or the shape flags (default: merge_bench's 168M workload)
  shapes = merge_bench.llama_shapes(shape["layers"], shape["hidden"], shape["intermediate"], shape["vocab"])
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}
  results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "A": str(sides["A"]), "B": str(sides["B"]),
             "params": sum(int(np.prod(s)) for s in shapes.values()), "cmp": {}, "runs": []}
  try:
    base = root / "base"
    experts = [root / f"expert{i}" for i in range(shape["experts"])]
    if _METHODS.value and not base.exists():
      merge_bench.write_model(base, shapes, 0, None, 200 * 10**6, config)
      for i, e in enumerate(experts):
        merge_bench.write_model(e, shapes, i + 1, 0, 200 * 10**6, config)
    for d in [base, *experts]:  # warm the page cache
      for f in d.glob("*.safetensors"):
        f.read_bytes()
    # 1. Byte-identical outputs, every method and format.
    for method in (_METHODS.value if _CMP.value else []):
      for fmt in _FORMATS.value:
        outs = {}
        for side, checkout in sides.items():
          out = root / f"out_{side}_{method}_{fmt}"
          shutil.rmtree(out, ignore_errors=True)
          r = run(command(method, checkout, base, experts, out, "none", fmt), checkout, capture_output=True, text=True)
          if r.returncode:
            raise RuntimeError(f"{side} {method} {fmt} failed: {r.stderr[-2000:]}")
          outs[side] = out
        bad = compare_dirs(outs["A"], outs["B"])
        entry = {"compared_files": sorted(str(p.relative_to(outs["A"])) for p in outs["A"].rglob("*")
                                          if p.is_file() and not _VOLATILE.search(str(p.relative_to(outs["A"])))),
                 "differing_files": bad}
        if fmt == "orbax":
          entry["arrays_equal"] = orbax_arrays_equal(outs["A"], outs["B"], sides["A"])
        results["cmp"][f"{method}/{fmt}"] = entry
        print(f"cmp {method:16s} {fmt:12s} {'IDENTICAL' if not bad else 'DIFFER: ' + ', '.join(bad)}"
              + (f" (arrays {'equal' if entry['arrays_equal'] else 'DIFFER'})" if fmt == "orbax" else ""), flush=True)
        for out in outs.values():
          shutil.rmtree(out, ignore_errors=True)
    # 2. mergejax-yaml recipes (per-layer values, LoRA applied while merging, vocabulary mapping): the same.
    if _CMP.value and _RECIPES.value:
      rroot = root / "recipes"
      rroot.mkdir(exist_ok=True)
      rbase, rexperts = yaml_bench.make_workload(rroot, shape)
      texts = yaml_bench.recipes(rroot, rbase, rexperts)
      for name in _RECIPES.value:
        cfg = rroot / f"{name}.yml"
        cfg.write_text(texts[name])
        outs = {}
        for side, checkout in sides.items():
          out = root / f"out_{side}_{name}"
          shutil.rmtree(out, ignore_errors=True)
          r = run([sys.executable, "-m", "mergejax.cli.recipe", str(cfg), str(out), "--noprogress"], checkout,
                  capture_output=True, text=True)
          if r.returncode:
            raise RuntimeError(f"{side} {name} failed: {r.stderr[-2000:]}")
          outs[side] = out
        bad = compare_dirs(outs["A"], outs["B"])
        results["cmp"][f"recipe {name}"] = {"differing_files": bad, "compared_files": sorted(
            str(p.relative_to(outs["A"])) for p in outs["A"].rglob("*")
            if p.is_file() and not _VOLATILE.search(str(p.relative_to(outs["A"]))))}
        print(f"cmp recipe {name:16s} {'IDENTICAL' if not bad else 'DIFFER: ' + ', '.join(bad)}", flush=True)
        for out in outs.values():
          shutil.rmtree(out, ignore_errors=True)
    # 3. Timing, A and B alternated (the order flips every round).
    for method in _METHODS.value:
      for k in range(_REPEATS.value):
        for side in (("A", "B") if k % 2 == 0 else ("B", "A")):
          checkout = sides[side]
          out, cache = root / f"t_{side}", root / f"cache_{side}_{method}"
          shutil.rmtree(cache, ignore_errors=True)
          for state in ("cold", "warm"):
            shutil.rmtree(out, ignore_errors=True)
            r = timed(command(method, checkout, base, experts, out, str(cache)), checkout)
            man = json.loads((out / "mergejax_manifest.json").read_text())
            row = {"method": method, "side": side, "round": k, "cache": state, **r, "merge_phase_s": man["elapsed_s"],
                   "loadavg_1m": os.getloadavg()[0]}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
          shutil.rmtree(out, ignore_errors=True)
    if _METHODS_BENCH.value:
      results["methods_bench"] = {"A": [], "B": []}
      for k in range(_REPEATS.value):
        for side in (("A", "B") if k % 2 == 0 else ("B", "A")):
          results["methods_bench"][side].append(run_methods_bench(sides[side]))
          print(side, json.dumps(results["methods_bench"][side][-1]), flush=True)
    if _METHODS_CPU.value:
      results["methods_cpu"] = {"A": [], "B": []}
      for k in range(_REPEATS.value):
        for side in (("A", "B") if k % 2 == 0 else ("B", "A")):
          r = run([sys.executable, "-c", _METHODS_CPU_CODE, str(_METHODS_CPU.value)], sides[side], capture_output=True,
                  text=True)
          results["methods_cpu"][side].append(json.loads(r.stdout.strip().splitlines()[-1]))
          print(side, "cpu", r.stdout.strip().splitlines()[-1], flush=True)
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2))
  summary(results)


def summary(results):
  print("\nmethod | A cold s | B cold s | B/A | A warm s | B warm s | B/A | A merge phase s | B | B/A"
        " | A warm CPU s | B | B/A")
  med = lambda rows, key: float(np.median([r[key] for r in rows]))  # noqa: E731
  for method in dict.fromkeys(r["method"] for r in results["runs"]):
    pick = lambda side, cache: [r for r in results["runs"] if r["method"] == method and r["side"] == side  # noqa: E731
                                and r["cache"] == cache]
    ac, bc, aw, bw = pick("A", "cold"), pick("B", "cold"), pick("A", "warm"), pick("B", "warm")
    cells = [med(ac, "wall_s"), med(bc, "wall_s"), med(aw, "wall_s"), med(bw, "wall_s"),
             med(aw + ac, "merge_phase_s"), med(bw + bc, "merge_phase_s"), med(aw, "cpu_s"), med(bw, "cpu_s")]
    print(f"{method} | {cells[0]:.2f} | {cells[1]:.2f} | {cells[1] / cells[0]:.3f} | {cells[2]:.2f} | {cells[3]:.2f} | "
          f"{cells[3] / cells[2]:.3f} | {cells[4]:.2f} | {cells[5]:.2f} | {cells[5] / cells[4]:.3f} | "
          f"{cells[6]:.2f} | {cells[7]:.2f} | {cells[7] / cells[6]:.3f}")
  mb = results.get("methods_bench")
  if mb:
    print("\nmethods_bench (in-memory, best of 3 per run; medians over runs) | A s | B s | B/A")
    for key in mb["A"][0]:
      a, b = np.median([r[key] for r in mb["A"]]), np.median([r[key] for r in mb["B"]])
      print(f"{key} | {a:.3f} | {b:.3f} | {b / a:.3f}")
  mc = results.get("methods_cpu")
  if mc:
    print("\nmergejax.merge CPU s (best of 5 per process; medians over processes) | A | B | B/A")
    for key in mc["A"][0]:
      a, b = np.median([r[key] for r in mc["A"]]), np.median([r[key] for r in mc["B"]])
      print(f"{key} | {a:.3f} | {b:.3f} | {b / a:.3f}")
  if not results["cmp"]:
    return
  same = all(not e["differing_files"] and e.get("arrays_equal", True) for e in results["cmp"].values())
  print(f"\nbyte-identical outputs: {same} ({len(results['cmp'])} method/format pairs)")


if __name__ == "__main__":
  app.run(main)
