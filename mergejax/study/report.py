"""The study's report: the paper's tables (CSV + markdown), plots in the spirit of its figures, and
for each of its five conclusions whether this run supports it, with the numbers."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

from mergejax import files
from mergejax import models
from mergejax.evaluation import normalize

KIND_LABEL = {"pretrained": "pretrained base", "instruction_tuned": "instruction-tuned base"}


def _mean(xs: Iterable[float]) -> float:
  xs = [x for x in xs if x is not None and not math.isnan(x)]
  return sum(xs) / len(xs) if xs else float("nan")


def multitask_norm(refs: Mapping[str, Any], kind: str, size: str, cats: Sequence[str]) -> tuple[float, float]:
  """The multitask baseline normalized like a merge of ``cats`` (held-in) and vs the base (held-out)."""
  mt = refs.get((kind, size, "multitask"))
  if mt is None:
    return float("nan"), float("nan")
  expert, task_cats = normalize.expert_table({c: refs[(kind, size, "expert", c)]["heldin_test"] for c in cats})
  hi = normalize.held_in(mt["heldin_test"], expert, task_cats, cats).score
  base = refs[(kind, size, "base")]
  ho_cats = {t: base["task_categories"][t] for t in base["heldout_test"]}
  ho = normalize.held_out(mt["heldout_test"], base["heldout_test"], ho_cats).score
  return hi, ho


def collect(store) -> tuple[list[dict], dict]:
  merges, refs = [], {}
  for row in store.rows():
    if row.get("type") == "merge":
      merges.append(row)
    elif row.get("type") == "reference":
      key = (row["kind"], row["size"], row["role"]) + ((row["category"],) if row["role"] == "expert" else ())
      refs[key] = row
  return merges, refs


def table(merges: Sequence[dict], refs: Mapping, metric: str, kinds, sizes, ns, methods) -> list[dict]:
  """One row per (kind, size, N): each method's normalized score (mean over seeds) + multitask."""
  by = defaultdict(list)
  for r in merges:
    by[(r["kind"], r["size"], r["n"], r["method"])].append(r)
  rows = []
  for kind in kinds:
    for size in sizes:
      for n in ns:
        row = {"base": kind, "size": size, "N": n}
        for m in methods:
          rs = by.get((kind, size, n, m), [])
          row[m] = _mean(r[metric] for r in rs)
        mts = [multitask_norm(refs, kind, size, r["categories"]) for r in by.get((kind, size, n, methods[0]), [])]
        row["multitask"] = _mean(x[0 if metric == "heldin_norm" else 1] for x in mts)
        rows.append(row)
  return rows


def _md(rows: Sequence[dict], cols: Sequence[str]) -> str:
  out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
  return "\n".join(out)


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.3f}"
  return str(v)


def _write_csv(path: pathlib.Path, rows: Sequence[dict], cols: Sequence[str]) -> None:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(cols), extrasaction="ignore")
  w.writeheader()
  for r in rows:
    w.writerow({c: (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in cols})
  files.atomic_write(path, buf.getvalue())


def conclusions(merges: Sequence[dict], refs: Mapping, kinds, sizes, ns, methods) -> list[tuple[str, bool | None, str]]:
  """(claim, supported?, evidence) for each of the paper's five conclusions."""
  out = []
  hi = lambda rs: _mean(r["heldin_norm"] for r in rs)
  ho = lambda rs: _mean(r["heldout_norm"] for r in rs)
  sel = lambda **kw: [r for r in merges if all(r[k] == v for k, v in kw.items())]
  small, large = sizes[0], sizes[-1]

  # 1. Strong (instruction-tuned) bases merge better.
  if {"pretrained", "instruction_tuned"} <= set(kinds):
    a, b = hi(sel(kind="instruction_tuned")), hi(sel(kind="pretrained"))
    out.append(("1. Merging is more effective when experts come from a strong (instruction-tuned) base.",
                a > b, f"mean normalized held-in: instruction-tuned {a:.3f} vs pretrained {b:.3f}"))
  else:
    out.append(("1. Merging is more effective when experts come from a strong base.", None, "needs both base kinds"))
  # 2. Larger models are easier to merge.
  if len(sizes) > 1:
    a, b = hi(sel(size=large)), hi(sel(size=small))
    out.append(("2. Larger models are easier to merge.", a > b,
                f"mean normalized held-in: {large} {a:.3f} vs {small} {b:.3f}"))
  else:
    out.append(("2. Larger models are easier to merge.", None, "needs two sizes"))
  # 3. Merging improves generalization; large 8-expert merges can beat multitask held-out.
  frac = _mean(1.0 if r["heldout_norm"] > 1.0 else 0.0 for r in merges)
  nmax = max(ns)
  big = sel(size=large, n=nmax)
  mt = _mean(multitask_norm(refs, r["kind"], r["size"], r["categories"])[1] for r in big)
  out.append(("3. Merging consistently improves generalization (held-out > base), and large merges of many "
              "experts can generalize better than multitask training.", frac >= 0.5 and ho(big) > 1.0,
              f"{frac:.0%} of merges score above the base held-out (mean {ho(merges):.3f}); at {large}, N={nmax}: "
              f"merged held-out {ho(big):.3f} vs multitask {mt:.3f}"))
  # 4. Larger models can merge more experts.
  nmin = min(ns)
  if len(sizes) > 1 and nmin != nmax:
    drop = {s: hi(sel(size=s, n=nmin)) - hi(sel(size=s, n=nmax)) for s in (small, large)}
    out.append(("4. Larger models can merge more experts (held-in drops less from few to many experts).",
                drop[large] < drop[small],
                f"held-in drop N={nmin}->{nmax}: {large} {drop[large]:.3f} vs {small} {drop[small]:.3f}"))
  else:
    out.append(("4. Larger models can merge more experts.", None, "needs two sizes and two values of N"))
  # 5. Methods behave similarly at scale.
  if len(sizes) > 1 and len(methods) > 1:
    spread = {}
    for s in (small, large):
      vals = [hi(sel(size=s, method=m)) for m in methods]
      spread[s] = max(vals) - min(vals)
    out.append(("5. Different merging methods behave very similarly at larger scales.",
                spread[large] < spread[small],
                f"spread of method means (held-in): {large} {spread[large]:.3f} vs {small} {spread[small]:.3f}"))
  else:
    out.append(("5. Different merging methods behave very similarly at larger scales.", None,
                "needs two sizes and two methods"))
  return out


def _save_png(fig, path: pathlib.Path) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  files.atomic_write(path, buf.getvalue())


def plots(out_dir: pathlib.Path, tables: Mapping[str, list[dict]], kinds, sizes, ns, methods) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top  # ~0.5 s, only when a report is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  files = []
  colors = dict(zip(list(methods) + ["multitask"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))

  def vs_n(metric_key: str, title: str, fname: str):
    fig, axes = plt.subplots(len(kinds), len(sizes), figsize=(3.6 * len(sizes), 3 * len(kinds)), squeeze=False,
                             sharey=True)
    for i, kind in enumerate(kinds):
      for j, size in enumerate(sizes):
        ax = axes[i][j]
        rows = [r for r in tables[metric_key] if r["base"] == kind and r["size"] == size]
        for m in list(methods) + ["multitask"]:
          ax.plot([r["N"] for r in rows], [r[m] for r in rows], marker="o", label=m, color=colors[m],
                  linestyle="--" if m == "multitask" else "-")
        ax.set_title(f"{KIND_LABEL.get(kind, kind)}, {size}", fontsize=9)
        ax.set_xticks(list(ns))
        ax.set_xlabel("experts merged (N)")
        if metric_key == "heldout":
          ax.axhline(1.0, color="gray", lw=0.8)
      axes[i][0].set_ylabel(title)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    _save_png(fig, out_dir / fname)
    plt.close(fig)
    files.append(fname)

  vs_n("heldin", "normalized held-in", "heldin_vs_n.png")
  vs_n("heldout", "normalized held-out", "heldout_vs_n.png")

  params = {s: models.param_count(models.get_config(s)) for s in sizes}
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for ax, key, label in ((axes[0], "heldin", "normalized held-in"), (axes[1], "heldout", "normalized held-out")):
    for kind in kinds:
      for m in methods:
        ys = [_mean(r[m] for r in tables[key] if r["base"] == kind and r["size"] == s) for s in sizes]
        ax.plot([params[s] for s in sizes], ys, marker="o", color=colors[m],
                linestyle="-" if kind == "instruction_tuned" else ":",
                label=f"{m} ({'IT' if kind == 'instruction_tuned' else 'PT'})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(label + " (mean over N)")
  axes[1].legend(fontsize=6)
  fig.tight_layout()
  _save_png(fig, out_dir / "vs_size.png")
  plt.close(fig)
  files.append("vs_size.png")

  large = sizes[-1]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, key in ((axes[0], "heldin"), (axes[1], "heldout")):
    width = 0.8 / len(ns)
    for k, n in enumerate(ns):
      kind = "instruction_tuned" if "instruction_tuned" in kinds else kinds[0]
      row = next(r for r in tables[key] if r["base"] == kind and r["size"] == large and r["N"] == n)
      ax.bar(np.arange(len(methods)) + k * width, [row[m] for m in methods], width, label=f"N={n}")
    ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2)
    ax.set_xticklabels(methods, fontsize=7)
    ax.set_title(f"{key} at {large} ({KIND_LABEL.get(kind, kind)})", fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  _save_png(fig, out_dir / "methods_at_largest.png")
  plt.close(fig)
  files.append("methods_at_largest.png")

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, key in ((axes[0], "heldin"), (axes[1], "heldout")):
    for kind in kinds:
      for s in sizes:
        ys = [_mean(r[m] for m in methods for r in tables[key] if r["base"] == kind and r["size"] == s and r["N"] == n)
              for n in ns]
        ax.plot(list(ns), ys, marker="o", linestyle="-" if kind == "instruction_tuned" else ":",
                label=f"{'IT' if kind == 'instruction_tuned' else 'PT'} {s}")
    ax.set_xlabel("experts merged (N)")
    ax.set_ylabel(f"normalized {key} (mean of methods)")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  _save_png(fig, out_dir / "it_vs_pretrained.png")
  plt.close(fig)
  files.append("it_vs_pretrained.png")
  return files


def write_report(store, spec, workdir: str | os.PathLike, timings: Mapping[str, float] | None = None) -> pathlib.Path:
  """Writes report.md, CSVs and PNGs into ``workdir`` (process 0 only); returns report.md's path."""
  workdir = pathlib.Path(workdir)
  report_path = workdir / "report.md"
  if jax.process_index() != 0:
    return report_path
  merges, refs = collect(store)
  kinds, sizes, ns, methods = list(spec.kinds), list(spec.sizes), list(spec.ns), list(spec.methods)
  cols = ["base", "size", "N"] + methods + ["multitask"]
  tables = {"heldin": table(merges, refs, "heldin_norm", kinds, sizes, ns, methods),
            "heldout": table(merges, refs, "heldout_norm", kinds, sizes, ns, methods)}
  _write_csv(workdir / "table_heldin.csv", tables["heldin"], cols)
  _write_csv(workdir / "table_heldout.csv", tables["heldout"], cols)
  flat_cols = ["kind", "size", "n", "seed", "method", "hparams", "heldin_norm", "heldout_norm", "merge_s",
               "select_eval_s", "test_eval_s", "categories"]
  _write_csv(workdir / "results.csv", [{**r, "hparams": json.dumps(r["hparams"], sort_keys=True),
                                        "categories": "+".join(r["categories"])} for r in merges], flat_cols)
  figs = plots(workdir, tables, kinds, sizes, ns, methods)
  concl = conclusions(merges, refs, kinds, sizes, ns, methods)

  lines = ["# What Matters for Model Merging at Scale? - mergejax study report", ""]
  lines.append(f"Base kinds: {', '.join(kinds)}; sizes: {', '.join(f'{s} ({models.param_count(models.get_config(s)):,} params)' for s in sizes)}; "
               f"N in {ns}; {spec.seeds} expert-subset seeds; methods: {', '.join(methods)}. "
               f"{len(merges)} merges. Hyperparameters chosen on the validation split of the merged "
               "experts' held-in tasks; scores below are on test splits.")
  if timings:
    lines.append("")
    lines.append("Time: " + ", ".join(f"{k.replace('_s', '')} {v:.0f} s" for k, v in timings.items()))
  lines += ["", "## The paper's conclusions, checked on this run", ""]
  for claim, ok, evidence in concl:
    verdict = "not testable" if ok is None else ("SUPPORTED" if ok else "NOT supported")
    lines.append(f"- **{verdict}**: {claim} ({evidence})")
  for key, title in (("heldin", "Normalized held-in (merged / expert, on the merged experts' tasks)"),
                     ("heldout", "Normalized held-out (merged / base)")):
    lines += ["", f"## {title}", "", _md(tables[key], cols)]
  lines += ["", "## Reference models (raw test scores, mean over tasks)", "",
            "| base | size | model | held-in | held-out |", "|---|---|---|---|---|"]
  for (kind, size, role, *cat), row in sorted(refs.items()):
    name = role + (f" ({cat[0]})" if cat else "")
    lines.append(f"| {kind} | {size} | {name} | {_fmt(_mean(row['heldin_test'].values()))} | "
                 f"{_fmt(_mean(row.get('heldout_test', {}).values())) if row.get('heldout_test') else '-'} |")
  lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in figs]
  lines += ["", "Files: results.csv (one row per merge), table_heldin.csv, table_heldout.csv, results/rows/*.json."]
  files.atomic_write(report_path, "\n".join(lines) + "\n")
  return report_path


def summary_table(report_path: pathlib.Path) -> str:
  """A short plain-text summary to print at the end of a run (the held-in and held-out tables)."""
  text = report_path.read_text()
  start = text.find("## The paper's conclusions")
  end = text.find("## Reference models")
  return text[start:end].strip()
