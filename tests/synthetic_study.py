"""Synthetic study rows with a known truth, in the results store's format, for the verdicts' tests.

Each merge keeps a share ``r`` of its experts' gain over chance on every task (accuracy
``chance + r * (expert - chance)``), with ``r`` set by the design: a drop with N, an optional
instruction-tuned or size effect, a subset effect shared by every kind, size and method (they merge
the same subsets) and a small per-row interaction. Every model's per-example correctness is drawn on
the same test examples, correlated through each example's difficulty (as real models are), and stored
as ``test_correct`` strings (or ``test_counts``, or nothing).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

KINDS = ("pretrained", "instruction_tuned")
SIZES = ("xs", "s")
PARAMS = {"xs": 1000, "s": 4000}
CHANCE = 25.0


def simulate(rng: np.random.Generator, *, it_effect: float = 0.0, size_effect: float = 0.0,
             size_n_effect: float = 0.0, n_examples: int = 60, rho: float = 0.7, seeds: int = 4,
             subset_sd: float = 0.05, inter_sd: float = 0.01, cats=("c0", "c1", "c2", "c3"), ns=(2, 4),
             methods=("average", "ties"), method_effect: dict | None = None, level: str = "examples",
             expert_acc: dict | None = None, multitask_ho: float | None = None, heldout_effect: float = 0.0,
             validation: bool = True, world: str = "") -> list[dict]:
  """Rows of one synthetic study (see the module docstring); accuracies in percent."""
  tasks = {f"{c}_t{j}": c for c in cats for j in range(2)}
  ho_tasks = {"h0_t0": "h0", "h1_t0": "h1"}
  all_tasks = {**tasks, **ho_tasks}
  chance = {t: CHANCE for t in all_tasks}
  latent = {(split, t): rng.standard_normal(n_examples) for t in all_tasks for split in ("test", "validation")}

  def draw(split, probs):
    out = {}
    for t, p in probs.items():
      z = rho * latent[(split, t)] + np.sqrt(1 - rho ** 2) * rng.standard_normal(n_examples)
      out[t] = (z < stats.norm.ppf(min(max(p, 1e-6), 1 - 1e-6))).astype(np.uint8)
    return out

  def scored(prefix, split, probs):
    c = draw(split, probs)
    return {t: 100.0 * v.mean() for t, v in c.items()}, {t: "".join(map(str, v)) for t, v in c.items()}

  rows = []

  def add(row, correct):
    row = {"world": world, **row}
    if level == "examples":
      row["test_correct"] = correct.get("test", {})
    elif level == "counts":
      row["test_counts"] = {t: [v.count("1"), len(v)] for t, v in correct.get("test", {}).items()}
    if validation and correct.get("validation"):
      row["validation_counts"] = {t: [v.count("1"), len(v)] for t, v in correct["validation"].items()}
    rows.append(row)

  acc = lambda kind, size, c: (expert_acc or {}).get((kind, size, c), 0.8)
  p_base_ho = 0.6
  for kind in KINDS:
    for size in SIZES:
      hi, hi_c = scored("base", "test", {t: 0.25 for t in tasks})
      ho, ho_c = scored("base", "test", {t: p_base_ho for t in ho_tasks})
      val, val_c = scored("base", "validation", {t: 0.26 for t in tasks})
      add({"type": "reference", "role": "base", "kind": kind, "size": size, "heldin_test": hi, "heldout_test": ho,
           "heldin_validation": val, "task_categories": all_tasks, "task_chance": chance, "params": PARAMS[size]},
          {"test": {**hi_c, **ho_c}, "validation": val_c})
      for c in cats:
        ts = [t for t in tasks if tasks[t] == c]
        te, te_c = scored("expert", "test", {t: acc(kind, size, c) for t in ts})
        va, va_c = scored("expert", "validation", {t: acc(kind, size, c) for t in ts})
        add({"type": "reference", "role": "expert", "kind": kind, "size": size, "category": c, "heldin_test": te,
             "heldin_validation": va, "task_categories": {t: c for t in ts}}, {"test": te_c, "validation": va_c})
      if multitask_ho is not None:
        hi, hi_c = scored("mt", "test", {t: 0.25 + 0.9 * (acc(kind, size, tasks[t]) - 0.25) for t in tasks})
        ho, ho_c = scored("mt", "test", {t: multitask_ho for t in ho_tasks})
        add({"type": "reference", "role": "multitask", "kind": kind, "size": size, "heldin_test": hi,
             "heldout_test": ho, "task_categories": all_tasks}, {"test": {**hi_c, **ho_c}})
  n_cats = len(cats)
  pairs = [tuple(cats[i:i + 2]) for i in range(0, n_cats, 2)] + [tuple(cats[i::2][:2]) for i in range(2)]
  for n in ns:
    subsets = [tuple(cats)] * seeds if n == n_cats else pairs[:seeds]
    for s, sub in enumerate(subsets):
      shared = rng.normal(0, subset_sd)
      for kind in KINDS:
        for size in SIZES:
          for m in methods:
            if n == n_cats and s > 0 and m != "dare_ties":
              continue  # deterministic methods merge the full set once
            r = 0.7 - 0.1 * (n - 2) / 2 + shared + rng.normal(0, inter_sd)
            r += it_effect * (kind == "instruction_tuned") + (size == "s") * (size_effect + size_n_effect * (n - 2))
            r += (method_effect or {}).get(m, 0.0)
            probs = {t: 0.25 + r * (acc(kind, size, tasks[t]) - 0.25) for t in tasks if tasks[t] in sub}
            hi, hi_c = scored("merge", "test", probs)
            ho, ho_c = scored("merge", "test", {t: p_base_ho * (1 + heldout_effect) for t in ho_tasks})
            add({"type": "merge", "kind": kind, "size": size, "n": n, "seed": s, "method": m, "categories": list(sub),
                 "heldin_test": hi, "heldout_test": ho, "task_categories": {t: all_tasks[t] for t in {**hi, **ho}},
                 "hparams": {}, "heldin_norm": float("nan"), "heldout_norm": float("nan"),
                 "key": f"merge/{world}/{kind}/{size}/n{n}/s{s}/{m}"}, {"test": {**hi_c, **ho_c}})
  return rows
