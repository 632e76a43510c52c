"""The study's report: for each of the paper's five conclusions a verdict with its statistic and 95%
interval (:mod:`mergejax.study.verdicts`), the paper's tables with intervals (CSV + markdown), plots
in the spirit of its figures with error bars, the experts left out of held-in normalization and the
hyperparameter choices that sat on a grid's edge."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np

from mergejax import files
from mergejax import methods as methods_lib
from mergejax.study import design as design_lib
from mergejax.study import verdicts as verdicts_lib

KIND_LABEL = {"pretrained": "pretrained base", "instruction_tuned": "instruction-tuned base"}


def _mean(xs: Iterable[float]) -> float:
  xs = [x for x in xs if x is not None and not math.isnan(x)]
  return sum(xs) / len(xs) if xs else float("nan")


def collect(rows: Iterable[dict]) -> tuple[list[dict], dict]:
  """(merge rows, {(kind, size, role[, category]): reference row})."""
  merges, refs = [], {}
  for row in rows:
    if row.get("type") == "merge":
      merges.append(row)
    elif row.get("type") == "reference":
      key = (row["kind"], row["size"], row["role"]) + ((row["category"],) if row["role"] == "expert" else ())
      refs[key] = row
  return merges, refs


def table(analysis: verdicts_lib.Analysis, metric: str) -> list[dict]:
  """One row per (kind, size, N): each method's and the multitask model's estimate (mean over seeds)
  with its interval, as :class:`verdicts.Estimate` (None where there is no cell)."""
  return verdicts_lib.table_rows(analysis, metric)


def _md(rows: Sequence[dict], cols: Sequence[str]) -> str:
  out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
  return "\n".join(out)


def _fmt(v: Any) -> str:
  if isinstance(v, verdicts_lib.Estimate) or v is None:
    return verdicts_lib.cell_text(v)
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.3f}"
  return str(v)


def _write_csv(path: pathlib.Path, rows: Sequence[dict], cols: Sequence[str]) -> None:
  """Rows as CSV; an Estimate column becomes three: the mean, ``<col>_lo`` and ``<col>_hi``."""
  buf = io.StringIO()
  flat = []
  for r in rows:
    out = {}
    for c in cols:
      v = r.get(c)
      if isinstance(v, verdicts_lib.Estimate) or (v is None and c not in ("base", "size", "N")):
        out.update({c: v.value if v else float("nan"), f"{c}_lo": v.lo if v else float("nan"),
                    f"{c}_hi": v.hi if v else float("nan")})
      else:
        out[c] = v
    flat.append(out)
  fields = list(dict.fromkeys(k for r in flat for k in r)) if flat else list(cols)
  w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
  w.writeheader()
  for r in flat:
    w.writerow({c: (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c)) for c in fields})
  files.atomic_write(path, buf.getvalue())


def _errorbar(ax, xs, ests, **kw) -> None:
  """Points with their intervals (missing estimates are left out)."""
  pts = [(x, e) for x, e in zip(xs, ests) if e is not None and not math.isnan(e.value)]
  if not pts:
    return
  x = [p[0] for p in pts]
  y = np.array([p[1].value for p in pts])
  lo = np.array([p[1].lo if not math.isnan(p[1].lo) else p[1].value for p in pts])
  hi = np.array([p[1].hi if not math.isnan(p[1].hi) else p[1].value for p in pts])
  ax.errorbar(x, y, yerr=np.stack([y - lo, hi - y]), capsize=2, marker="o", markersize=3, **kw)


def plots(out_dir: pathlib.Path, analysis: verdicts_lib.Analysis) -> list[str]:
  """The report's figures, every point with its interval."""
  import matplotlib  # pylint: disable=g-import-not-at-top  # ~0.5 s, only when a report is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  kinds, sizes, ns, methods = analysis.kinds, analysis.sizes, analysis.ns, analysis.methods
  written = []
  colors = dict(zip(list(methods) + ["multitask"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  cell = lambda kind, size, n, m, metric: analysis.cells.get((kind, size, n, m), {}).get(metric)
  label = {"heldin": "normalized held-in", "heldout": "normalized held-out"}

  def save(fig, fname):
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    files.atomic_write(out_dir / fname, buf.getvalue())
    plt.close(fig)
    written.append(fname)

  for metric in ("heldin", "heldout"):
    fig, axes = plt.subplots(len(kinds), len(sizes), figsize=(3.6 * len(sizes), 3 * len(kinds)), squeeze=False,
                             sharey=True)
    for i, kind in enumerate(kinds):
      for j, size in enumerate(sizes):
        ax = axes[i][j]
        for m in list(methods) + ["multitask"]:
          _errorbar(ax, list(ns), [cell(kind, size, n, m, metric) for n in ns], label=m, color=colors[m],
                    linestyle="--" if m == "multitask" else "-")
        ax.set_title(f"{KIND_LABEL.get(kind, kind)}, {size}", fontsize=9)
        ax.set_xticks(list(ns))
        ax.set_xlabel("experts merged (N)")
        if metric == "heldout":
          ax.axhline(1.0, color="gray", lw=0.8)
      axes[i][0].set_ylabel(label[metric])
    if axes[0][-1].get_legend_handles_labels()[0]:
      axes[0][-1].legend(fontsize=7)
    save(fig, f"{metric}_vs_n.png")

  x_size = {s: analysis.param_counts.get(s, i + 1) for i, s in enumerate(sizes)}
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for ax, metric in zip(axes, ("heldin", "heldout")):
    for kind in kinds:
      for m in methods:
        ests = [analysis.estimate(f"{kind} {m} {s}", lambda g, s=s, m=m, kind=kind: np.mean(
            np.stack([g(kind, s, n, m, metric) for n in ns]), axis=0)) if all(cell(kind, s, n, m, metric) for n in ns)
                else None for s in sizes]
        _errorbar(ax, [x_size[s] for s in sizes], ests, color=colors[m],
                  linestyle="-" if kind == "instruction_tuned" else ":",
                  label=f"{m} ({'IT' if kind == 'instruction_tuned' else 'PT'})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters" if analysis.param_counts else "size")
    ax.set_ylabel(label[metric] + " (mean over N)")
  if axes[1].get_legend_handles_labels()[0]:
    axes[1].legend(fontsize=6)
  save(fig, "vs_size.png")

  large = sizes[-1]
  kind = "instruction_tuned" if "instruction_tuned" in kinds else kinds[0]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, metric in zip(axes, ("heldin", "heldout")):
    width = 0.8 / len(ns)
    for k, n in enumerate(ns):
      ests = [cell(kind, large, n, m, metric) for m in methods]
      y = [e.value if e else float("nan") for e in ests]
      err = np.array([[e.value - e.lo, e.hi - e.value] if e and not math.isnan(e.lo) else [0.0, 0.0] for e in ests]).T
      ax.bar(np.arange(len(methods)) + k * width, y, width, yerr=err, capsize=2, label=f"N={n}")
    ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2)
    ax.set_xticklabels(methods, fontsize=7)
    ax.set_title(f"{metric} at {large} ({KIND_LABEL.get(kind, kind)})", fontsize=9)
  if axes[0].get_legend_handles_labels()[0]:
    axes[0].legend(fontsize=7)
  save(fig, "methods_at_largest.png")

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for ax, metric in zip(axes, ("heldin", "heldout")):
    for kind in kinds:
      for s in sizes:
        ests = [analysis.estimate(f"{kind} {s} N={n}", lambda g, s=s, n=n, kind=kind: np.mean(
            np.stack([g(kind, s, n, m, metric) for m in methods]), axis=0)) if all(cell(kind, s, n, m, metric)
                                                                               for m in methods) else None for n in ns]
        _errorbar(ax, list(ns), ests, linestyle="-" if kind == "instruction_tuned" else ":",
                  label=f"{'IT' if kind == 'instruction_tuned' else 'PT'} {s}")
    ax.set_xlabel("experts merged (N)")
    ax.set_ylabel(f"{label[metric]} (mean of methods)")
  if axes[1].get_legend_handles_labels()[0]:
    axes[1].legend(fontsize=7)
  save(fig, "it_vs_pretrained.png")
  return written


def _design_text(spec, merges: Sequence[dict]) -> str:
  per_n = {}
  for r in merges:
    if r["kind"] == spec.kinds[0] and r["size"] == spec.sizes[0]:
      per_n.setdefault(r["n"], {})[r["seed"]] = tuple(r["categories"])
  parts = []
  for n in sorted(per_n):
    subsets = list(per_n[n].values())
    counts = design_lib.appearances(subsets).values()
    balance = "every category equally often" if len(set(counts)) == 1 and len(list(design_lib.appearances(
        subsets))) == len(spec.categories) else f"categories appear {min(counts)}-{max(counts)} times"
    parts.append(f"N={n}: {len(subsets)} subset{'s' if len(subsets) > 1 else ''} ({balance})")
  return f"design {spec.design}: " + "; ".join(parts)


def _hparam_bounds(method: str, hparam: str) -> tuple[float | None, float | None]:
  """The closed ends of a method's hyperparameter range (its schema), None where open or unbounded."""
  hp = next((h for h in methods_lib.schema(method) if h.name == hparam), None) if method in methods_lib.names() else None
  if hp is None or hp.range is None:
    return None, None
  low, high, low_open, high_open = hp.range
  return (None if low_open or low == -math.inf else low), (None if high_open or high == math.inf else high)


def _grid_lines(merges: Sequence[dict]) -> list[str]:
  edges = design_lib.grid_edges(merges, _hparam_bounds)
  if not edges:
    return ["No method had a grid of more than one value per hyperparameter."]
  lines = ["| method | size | hyperparameter | values tried | merges | at the smallest | at the largest |",
           "|---|---|---|---|---|---|---|"]
  bound = " (its bound)"
  for e in edges:
    lines.append(f"| {e.method} | {e.size} | {e.hparam} | "
                 f"{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in e.values)}"
                 f" | {e.merges} | {e.low}{bound if e.low_bounded else ''} | {e.high}{bound if e.high_bounded else ''} |")
  warnings = design_lib.edge_warnings(edges)
  if warnings:
    lines += [""] + [f"- **Warning**: {w}" for w in warnings]
  return lines


def _retention_lines(rows: Sequence[dict], spec) -> list[str]:
  """The held-in conclusions judged again on chance-corrected retention."""
  try:
    a = verdicts_lib.analyze(rows, dataclasses.replace(spec.verdicts, heldin_metric="retention"), methods=spec.methods)
  except (KeyError, ValueError) as e:
    return [f"Chance-corrected retention is not available for this run ({e})."]
  lines = ["The held-in conclusions judged on chance-corrected retention (per category, the merge's summed gain over chance "
           "on its datasets divided by the expert's, docs/STUDY.md) "
           "instead of the paper's ratio:", ""]
  for c in a.conclusions:
    if c.number != 3:
      lines.append(verdicts_lib.conclusion_line(c))
  return lines


def write_report(store, spec, workdir: str | os.PathLike, timings: Mapping[str, float | None] | None = None
                 ) -> pathlib.Path:
  """Writes report.md, CSVs and PNGs into ``workdir`` (process 0 only); returns report.md's path."""
  workdir = pathlib.Path(workdir)
  report_path = workdir / "report.md"
  if jax.process_index() != 0:
    return report_path
  rows = list(store.rows())
  merges, refs = collect(rows)
  analysis = verdicts_lib.analyze(rows, spec.verdicts, methods=spec.methods)
  methods = list(analysis.methods)
  cols = ["base", "size", "N"] + methods + ["multitask"]
  tables = {"heldin": table(analysis, "heldin"), "heldout": table(analysis, "heldout")}
  _write_csv(workdir / "table_heldin.csv", tables["heldin"], cols)
  _write_csv(workdir / "table_heldout.csv", tables["heldout"], cols)
  flat_cols = ["kind", "size", "params", "n", "seed", "method", "hparams", "heldin_norm", "heldout_norm", "merge_s",
               "select_eval_s", "test_eval_s", "categories"]
  _write_csv(workdir / "results.csv", [{**r, "params": analysis.param_counts.get(r["size"], ""),
                                        "hparams": json.dumps(r["hparams"], sort_keys=True),
                                        "categories": "+".join(r["categories"])} for r in merges], flat_cols)
  verdicts_lib.write_rows(rows, workdir / verdicts_lib.ROWS_FILE)
  figs = plots(workdir, analysis)

  def size_text(s):
    n = analysis.param_counts.get(s)
    return f"{s} ({n:,} params)" if n else s
  lines = ["# What Matters for Model Merging at Scale? - mergejax study report", ""]
  lines.append(f"Base kinds: {', '.join(analysis.kinds)}; sizes: {', '.join(size_text(s) for s in analysis.sizes)}; "
               f"N in {list(analysis.ns)}; {_design_text(spec, merges)}; methods: {', '.join(methods)}. "
               f"{len(merges)} merges. Hyperparameters chosen on the validation split of the merged "
               "experts' held-in tasks; scores below are on test splits.")
  if timings:
    world = timings.get("world_s")
    lines += ["", "Time: " + ", ".join(
        [f"world {world:.0f} s" if world is not None else "world built before (no build time recorded here)"]
        + [f"{k.replace('_s', '')} {v:.0f} s" for k, v in timings.items() if k != "world_s" and v is not None])]
  lines += ["", "## The paper's conclusions, checked on this run", ""]
  lines += [verdicts_lib.conclusion_line(c) for c in analysis.conclusions]
  lines += ["", verdicts_lib.rule_text(spec.verdicts), "", "Resampled: " + "; ".join(analysis.levels) + "."]
  lines += ["", "## Experts", ""] + verdicts_lib.expert_lines(analysis)
  lines += ["", "## Chance-corrected retention", ""] + _retention_lines(rows, spec)
  lines += ["", "## Hyperparameter grids: choices on an edge", ""] + _grid_lines(merges)
  excluded = sorted({c for cats in analysis.excluded.values() for c in cats})
  note = f" Categories left out: {', '.join(excluded)}." if excluded else ""
  for key, title in (("heldin", "Normalized held-in (merged / expert, on the merged experts' tasks)"),
                     ("heldout", "Normalized held-out (merged / base)")):
    lines += ["", f"## {title}", "", "Mean over seeds [95% interval]." + (note if key == "heldin" else ""), "",
              _md(tables[key], cols)]
  lines += ["", "## Reference models (raw test scores, mean over tasks)", "",
            "| base | size | model | held-in | held-out |", "|---|---|---|---|---|"]
  for (kind, size, role, *cat), row in sorted(refs.items()):
    name = role + (f" ({cat[0]})" if cat else "")
    lines.append(f"| {kind} | {size} | {name} | {_fmt(_mean(row['heldin_test'].values()))} | "
                 f"{_fmt(_mean(row.get('heldout_test', {}).values())) if row.get('heldout_test') else '-'} |")
  lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in figs]
  lines += ["", f"Files: results.csv (one row per merge), table_heldin.csv, table_heldout.csv (mean, _lo, _hi per "
            f"column), {verdicts_lib.ROWS_FILE} (every stored row, as in results/rows/*.json): "
            f"`mergejax.study.verdicts.analyze(verdicts.load_rows(DIR))` recomputes every verdict, interval and "
            "expert flag above from it (docs/STUDY.md)."]
  files.atomic_write(report_path, "\n".join(lines) + "\n")
  return report_path


def summary_table(report_path: pathlib.Path) -> str:
  """A short plain-text summary to print at the end of a run (the held-in and held-out tables)."""
  text = report_path.read_text()
  start = text.find("## The paper's conclusions")
  end = text.find("## Reference models")
  return text[start:end].strip()
