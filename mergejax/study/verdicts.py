"""Verdicts on the paper's five conclusions, with uncertainty, recomputable from the stored rows.

    analysis = verdicts.analyze(rows)            # rows: the results store's rows (or results.csv's)
    for c in analysis.conclusions:
      print(c.verdict, c.claim, [e.text() for e in c.evidence])

Every conclusion is a **paired contrast** at the paper's granularity, estimated from the hierarchical
bootstrap of :mod:`mergejax.study.bootstrap` (worlds, expert-subset and DARE seeds within each N, test
examples within each task, the same draws for every model and cell). Cell means first average their
seeds, then every N, size, base kind and method weighs the same. Sizes are ordered by parameter count.
With estimate ``d`` and the ``confidence`` percentile interval ``[lo, hi]`` of a contrast in the
claim's direction, a minimum effect ``min_effect`` (delta) and an equivalence ``margin`` (epsilon):

=================  ==================================================================================
SUPPORTED          ``lo > 0`` and ``d >= delta``: an effect in the claimed direction, at least delta
CONTRADICTED       ``hi < 0`` and ``d <= -delta``: an effect in the opposite direction
EQUIVALENT         ``-epsilon < lo`` and ``hi < epsilon``: no effect as large as the margin either way
INCONCLUSIVE       anything else
=================  ==================================================================================

so SUPPORTED and CONTRADICTED never rest on an interval that contains 0. A pooled verdict becomes
INCONCLUSIVE when its breakdown (per size, per N or per kind) holds verdicts of both signs, or a
directional one under a pooled EQUIVALENT: the claim then depends on the setting. The contrasts:

1. *Strong bases merge better*: held-in, instruction-tuned minus pretrained, matched on (size, N,
   seed, method); breakdown per size and per N.
2. *Larger models are easier to merge*: held-in, largest minus smallest size, matched on (kind, N,
   seed, method); breakdown per N.
3. *Merging improves generalization; large merges of many experts beat multitask*: (a) held-out
   minus 1 (the base), breakdown per (kind, size); (b) at the largest size and N, held-out of the
   merges minus the multitask model's, per kind. SUPPORTED needs both, CONTRADICTED either.
4. *Larger models can merge more experts*: the held-in drop from the smallest to the largest N at the
   smallest size minus the drop at the largest size, matched on (kind, method); breakdown per kind.
5. *Methods behave very similarly at scale* (a claim of no difference): at the largest size, the
   largest absolute held-in difference between two methods. EQUIVALENT when its interval lies below
   the margin; CONTRADICTED when some pair differs (its interval, Bonferroni-widened over the pairs,
   excludes 0 and the difference is at least delta); shown beside the same at the smallest size.

A (kind, size, category) expert that is not ``z_expert`` standard errors above both its base and chance
on validation (``normalize.check_expert``) is flagged, and its category is left out of every held-in
score of its world (every kind and size, so contrasts keep comparing the same categories).

What rows hold decides what is resampled (``Analysis.levels`` says which): per-example correctness
(``test_correct``: task -> "0110...") or per-task counts (``test_counts``: task -> [correct, total])
add the test-example level; reference rows' ``heldin_validation``, ``validation_counts`` (or
``validation_correct``) and ``task_chance`` enable the expert check and retention; base rows'
``params`` order the sizes. Rows with normalized scores only (results.csv) give the seed level alone.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import itertools
import json
import math
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mergejax import files
from mergejax.evaluation import normalize
from mergejax.study import bootstrap

SUPPORTED, CONTRADICTED, EQUIVALENT, INCONCLUSIVE = "SUPPORTED", "CONTRADICTED", "EQUIVALENT", "INCONCLUSIVE"
NOT_TESTABLE = "NOT TESTABLE"
IT, PT = "instruction_tuned", "pretrained"
C3_RULE = ("two claims joined: SUPPORTED when (a) and (b) both are, CONTRADICTED when either is, each judged on "
           "its own interval and breakdown")
NO_ESTIMATE = ("no estimate: the cells it compares have no scores (e.g. every merged category left out of held-in "
               "normalization, see Experts)")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The verdict rule's parameters (a study config's ``verdicts`` fields).

  Attributes:
    min_effect: smallest effect (normalized units) a SUPPORTED / CONTRADICTED verdict needs.
    margin: equivalence margin: EQUIVALENT when the interval lies inside (-margin, margin).
    confidence: coverage of the percentile intervals.
    n_boot: bootstrap replicates.
    seed: the bootstrap's seed.
    z_expert: an expert must be this many standard errors above its base and chance (validation).
    heldin_metric: "ratio" (the paper's) or "retention" (chance-corrected).
  """

  min_effect: float = 0.02
  margin: float = 0.03
  confidence: float = 0.95
  n_boot: int = 2000
  seed: int = 0
  z_expert: float = 3.0
  heldin_metric: str = "ratio"

  def __post_init__(self):
    if not 0 < self.confidence < 1:
      raise ValueError(f"confidence={self.confidence} must be in (0, 1)")
    if self.min_effect < 0 or self.margin < 0:
      raise ValueError("min_effect and margin must be >= 0")
    if self.n_boot < 100:
      raise ValueError(f"n_boot={self.n_boot}: use at least 100 bootstrap replicates")


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A statistic with its interval and (for contrasts) its verdict."""

  label: str
  value: float
  lo: float
  hi: float
  verdict: str | None = None
  signed: bool = True  # a contrast (printed with its sign), or a level such as a mean or a spread

  def text(self) -> str:
    f = (lambda v: f"{v:+.3f}") if self.signed else (lambda v: f"{v:.3f}")
    if math.isnan(self.value):
      return f"{self.label} -"
    if math.isnan(self.lo) or math.isnan(self.hi):  # too few replicates with a score: no interval
      return f"{self.label} {f(self.value)} [no interval]"
    return f"{self.label} {f(self.value)} [{f(self.lo)}, {f(self.hi)}]"


@dataclasses.dataclass(frozen=True)
class Conclusion:
  """One of the paper's conclusions, judged.

  Attributes:
    evidence: the contrasts the verdict rests on (each with its interval).
    breakdown: the same contrast per size, N or kind (each with its own verdict).
    note: why a verdict was downgraded, or what is missing.
  """

  number: int
  claim: str
  verdict: str
  evidence: tuple[Estimate, ...]
  breakdown: tuple[Estimate, ...] = ()
  note: str = ""


@dataclasses.dataclass(frozen=True)
class FlaggedExpert:
  world: str
  kind: str
  size: str
  category: str
  check: normalize.ExpertCheck
  detail: str = ""  # the tasks on which the expert is below its base, with both validation scores


@dataclasses.dataclass(frozen=True)
class Analysis:
  """Everything the report prints about uncertainty.

  Attributes:
    conclusions: the five conclusions.
    cells: (kind, size, N, method) -> {"heldin": Estimate, "heldout": Estimate} (method "multitask":
      the multitask baseline on the same subsets).
    experts_checked: how many (world, kind, size, category) experts were checked (0: rows lack the
      validation counts the check needs).
    flagged: the experts not clearly above base and chance.
    below_base: experts that pass the check but score below their base on one of their datasets.
    excluded: world -> categories left out of held-in normalization.
    sizes: sizes, smallest first; kinds, ns, methods: as found in the rows.
    levels: one line per bootstrap level: what was resampled, or why not.
  """

  settings: Settings
  conclusions: tuple[Conclusion, ...]
  cells: dict[tuple, dict[str, Estimate]]
  experts_checked: int
  flagged: tuple[FlaggedExpert, ...]
  excluded: dict[str, tuple[str, ...]]
  sizes: tuple[str, ...]
  kinds: tuple[str, ...]
  ns: tuple[int, ...]
  methods: tuple[str, ...]
  levels: tuple[str, ...]
  param_counts: dict[str, int] = dataclasses.field(default_factory=dict)
  below_base: tuple[FlaggedExpert, ...] = ()
  replicates: bootstrap.Replicates | None = dataclasses.field(default=None, compare=False, repr=False)

  def estimate(self, label: str, fn, signed: bool = False) -> Estimate:
    """Any statistic of the cells (``fn(get)``, ``get(kind, size, n, method, metric)``, see
    :meth:`bootstrap.Replicates.statistic`) with its interval, e.g. a pooled curve for a plot."""
    return _estimate(label, self.replicates, fn, self.settings, judge=False, signed=signed)


def decide(value: float, lo: float, hi: float, settings: Settings) -> str:
  """The verdict on a contrast oriented so that the claim predicts a positive value (module docstring)."""
  if any(math.isnan(v) for v in (value, lo, hi)):
    return NOT_TESTABLE
  if lo > 0 and value >= settings.min_effect:
    return SUPPORTED
  if hi < 0 and value <= -settings.min_effect:
    return CONTRADICTED
  if -settings.margin < lo and hi < settings.margin:
    return EQUIVALENT
  return INCONCLUSIVE


def interval(replicates: np.ndarray, confidence: float) -> tuple[float, float, float]:
  """(estimate, lo, hi): replicate 0 and the percentile interval of the others (NaN ones dropped)."""
  est = float(replicates[0])
  rest = replicates[1:][np.isfinite(replicates[1:])]
  if math.isnan(est) or rest.size < 0.9 * (replicates.size - 1):
    return est, float("nan"), float("nan")
  a = (1 - confidence) / 2
  lo, hi = np.percentile(rest, [100 * a, 100 * (1 - a)])
  return est, float(lo), float(hi)


def _estimate(label: str, rep: bootstrap.Replicates, fn, settings: Settings, judge: bool = True,
              confidence: float | None = None, signed: bool = True) -> Estimate:
  """The statistic ``fn`` (see :meth:`bootstrap.Replicates.statistic`) with its interval and verdict."""
  level = confidence or settings.confidence
  est, lo, hi = interval(rep.statistic(fn, level), level)
  return Estimate(label, est, lo, hi, decide(est, lo, hi, settings) if judge else None, signed)


def _combine(pooled: Estimate, parts: Sequence[Estimate], what: str) -> tuple[str, str]:
  """The pooled verdict, INCONCLUSIVE with a note when the breakdown holds verdicts of both signs or
  disagrees with it (module docstring)."""
  pos = [p.label for p in parts if p.verdict == SUPPORTED]
  neg = [p.label for p in parts if p.verdict == CONTRADICTED]
  v = pooled.verdict
  if v == NOT_TESTABLE:
    return v, NO_ESTIMATE
  mixed = (pos and neg) or (v == SUPPORTED and neg) or (v == CONTRADICTED and pos) or (v == EQUIVALENT and (pos or neg))
  if not mixed:
    return v, ""
  detail = "; ".join(x for x in (f"holds at {', '.join(pos)}" if pos else "",
                                 f"reversed at {', '.join(neg)}" if neg else "") if x)
  return INCONCLUSIVE, f"depends on {what} ({detail})"


def _mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
  return np.mean(np.stack(arrays), axis=0)


def _order_sizes(sizes: Sequence[str], refs: Mapping, param_counts,
                 merges: Sequence[Mapping[str, Any]] = ()) -> tuple[list, str, dict[str, int]]:
  counts = dict(param_counts or {})
  for key, row in refs.items():
    if key[3] == "base" and row.get("params") and key[2] not in counts:
      counts[key[2]] = int(row["params"])
  for row in merges:  # results.csv rows carry their size's count
    if row.get("params") and row["size"] not in counts:
      counts[row["size"]] = int(row["params"])
  if all(s in counts for s in sizes):
    ordered = sorted(sizes, key=lambda s: counts[s])
    return ordered, "sizes by parameter count: " + ", ".join(f"{s} {counts[s]:,}" for s in ordered), counts
  return list(sizes), "sizes in the order of the rows (no parameter counts stored)", counts


def flag_experts(refs: Mapping[tuple, Mapping[str, Any]], z: float
                 ) -> tuple[int, list[FlaggedExpert], list[FlaggedExpert]]:
  """(experts checked, flagged experts, clear experts below their base on a dataset) from reference rows
  with validation scores, counts and chance."""
  checked, flagged, below = 0, [], []
  for key, row in sorted(refs.items()):
    world, kind, size, role = key[:4]
    if role != "expert":
      continue
    val = bootstrap.observations(row, "heldin_validation", "validation")
    counts = {t: o.count[1] for t, o in val.items() if o.count is not None}
    chance = {**bootstrap.task_chance(refs, world), **bootstrap.task_chance(refs, world, "validation_chance")}
    tasks = sorted(t for t, c in (row.get("task_categories") or {}).items() if c == key[4] and t in val)
    if not tasks or any(t not in counts or t not in chance for t in tasks):
      continue
    base_row = refs.get((world, kind, size, "base"), {})
    base = base_row.get("heldin_validation")
    check = normalize.check_expert(row["heldin_validation"], base if base and all(t in base for t in tasks) else None,
                                   chance, counts, tasks, z=z, scale=val[tasks[0]].scale)
    checked += 1
    detail = ", ".join(f"{t} {row['heldin_validation'][t]:.1f} vs {base[t]:.1f}" for t in check.below_base)
    if not check.clear:
      flagged.append(FlaggedExpert(world, kind, size, key[4], check, detail))
    elif check.below_base:
      below.append(FlaggedExpert(world, kind, size, key[4], check, detail))
  return checked, flagged, below


ANALYSIS_KEY = "meta/analysis"  # the row holding the report's analysis settings and method order


def analysis_row(settings: Settings, methods: Sequence[str]) -> dict[str, Any]:
  """The row a study stores under :data:`ANALYSIS_KEY`, so that :func:`analyze` on its stored rows alone
  recomputes its report's lines: the verdict settings and the methods' order (which orders the pairs of
  conclusion 5)."""
  return {"type": "meta", "key": ANALYSIS_KEY, "settings": dataclasses.asdict(settings), "methods": list(methods)}


def analyze(rows: Iterable[Mapping[str, Any]], settings: Settings | None = None, *,
            param_counts: Mapping[str, int] | None = None, methods: Sequence[str] | None = None) -> Analysis:
  """Recomputes every verdict, table interval and expert flag from the study's stored rows.

  Args:
    rows: merge and reference rows (``ResultsStore.rows()``, :func:`load_rows`, or :func:`load_csv`).
    settings: the rule's parameters (:class:`Settings`; default: those the study's report used, stored in
      its :data:`ANALYSIS_KEY` row, else :class:`Settings`' defaults).
    param_counts: size -> parameters, where the rows do not store them (orders the sizes).
    methods: the order of the methods in tables and pairs (default: the study's, from the same row, else
      as found in the rows).
  """
  rows = list(rows)
  stored = next((r for r in rows if r.get("key") == ANALYSIS_KEY), {})
  settings = settings or Settings(**stored.get("settings", {}))
  methods = methods if methods is not None else stored.get("methods")
  merges, refs = bootstrap.split_rows(rows)
  if not merges:
    raise ValueError("no merge rows to analyse")
  checked, flagged, below = flag_experts(refs, settings.z_expert)
  excluded: dict[str, tuple[str, ...]] = {}
  for f in flagged:
    excluded[f.world] = tuple(sorted(set(excluded.get(f.world, ())) | {f.category}))
  rep = bootstrap.replicate(rows, n_boot=settings.n_boot, seed=settings.seed,
                            heldin_metric=settings.heldin_metric, excluded=excluded)
  kinds = tuple(k for k in (PT, IT) if any(r["kind"] == k for r in merges)) + tuple(
      dict.fromkeys(r["kind"] for r in merges if r["kind"] not in (PT, IT)))
  sizes, size_note, counts = _order_sizes(list(dict.fromkeys(r["size"] for r in merges)), refs, param_counts,
                                          merges)
  ns = tuple(sorted({int(r["n"]) for r in merges}))
  found = list(dict.fromkeys(r["method"] for r in merges))
  methods = tuple(m for m in (methods or ()) if m in found) + tuple(m for m in found if m not in (methods or ()))
  ctx = _Context(rep, settings, kinds, tuple(sizes), ns, methods)
  conclusions = (ctx.c1(), ctx.c2(), ctx.c3(), ctx.c4(), ctx.c5())
  table = {}
  for kind, size, n, m in itertools.product(kinds, sizes, ns, methods + ("multitask",)):
    entry = {}
    for metric in ("heldin", "heldout"):
      if rep.has(kind, size, n, m, metric):
        entry[metric] = _estimate(metric, rep, lambda g: g(kind, size, n, m, metric), settings, judge=False,
                                  signed=False)
    if entry:
      table[(kind, size, n, m)] = entry
  seeds = sorted({(n, len(s)) for (_, n), s in rep.seeds.items()})
  levels = (
      f"worlds: {len(rep.worlds)}" + ("" if len(rep.worlds) > 1 else
                                 " (training-seed variance absent: set world_seeds to measure it)"),
      "expert-subset seeds per N: " + ", ".join(f"N={n}: {s}" for n, s in seeds),
      {"examples": "test examples: resampled per task from per-example correctness (paired across models)",
       "counts": "test examples: binomial draws from per-task counts (not paired across models: wider intervals)",
       "scores": "test examples: not resampled (rows hold no per-example correctness or counts)"}[rep.test_level],
      size_note,
      f"experts checked against base and chance on validation: {checked}" +
      ("" if checked else " (rows hold no validation counts or chance levels)"),
  )
  return Analysis(settings, conclusions, table, checked, tuple(flagged), excluded, tuple(sizes), kinds, ns, methods,
                  levels, counts, tuple(below), rep)


@dataclasses.dataclass
class _Context:
  rep: bootstrap.Replicates
  s: Settings
  kinds: tuple[str, ...]
  sizes: tuple[str, ...]
  ns: tuple[int, ...]
  methods: tuple[str, ...]

  def _complete(self, kinds, sizes, ns, methods, metric="heldin") -> bool:
    return all(self.rep.has(k, s, n, m, metric) for k, s, n, m in itertools.product(kinds, sizes, ns, methods))

  def _est(self, label: str, fn, judge: bool = True, signed: bool = True, confidence: float | None = None) -> Estimate:
    return _estimate(label, self.rep, fn, self.s, judge, confidence, signed)

  def c1(self) -> Conclusion:
    claim = "1. Merging is more effective when experts come from a strong (instruction-tuned) base."
    if not ({IT, PT} <= set(self.kinds) and self._complete((IT, PT), self.sizes, self.ns, self.methods)):
      return Conclusion(1, claim, NOT_TESTABLE, (), note="needs both base kinds")

    def diff(sizes, ns):
      return lambda g: _mean([g(IT, s, n, m, "heldin") - g(PT, s, n, m, "heldin")
                              for s in sizes for n in ns for m in self.methods])
    pooled = self._est("held-in IT - PT", diff(self.sizes, self.ns))
    per_size = [self._est(s, diff([s], self.ns)) for s in self.sizes]
    per_n = [self._est(f"N={n}", diff(self.sizes, [n])) for n in self.ns]
    verdict, note = _combine(pooled, per_size + per_n, "size or N")
    if verdict != NOT_TESTABLE:
      agree = sum(self._est("", diff([s], [n]), judge=False).value > 0 for s in self.sizes for n in self.ns)
      note = "; ".join(x for x in (note, f"IT ahead in {agree} of {len(self.sizes) * len(self.ns)} (size, N) cells")
                       if x)
    return Conclusion(1, claim, verdict, (pooled,), tuple(per_size + per_n), note)

  def c2(self) -> Conclusion:
    claim = "2. Larger models are easier to merge."
    if len(self.sizes) < 2 or not self._complete(self.kinds, (self.sizes[0], self.sizes[-1]), self.ns, self.methods):
      return Conclusion(2, claim, NOT_TESTABLE, (), note="needs two sizes")
    small, large = self.sizes[0], self.sizes[-1]

    def diff(ns):
      return lambda g: _mean([g(k, large, n, m, "heldin") - g(k, small, n, m, "heldin")
                              for k in self.kinds for n in ns for m in self.methods])
    pooled = self._est(f"held-in {large} - {small}", diff(self.ns))
    per_n = [self._est(f"N={n}", diff([n])) for n in self.ns]
    verdict, note = _combine(pooled, per_n, "N")
    return Conclusion(2, claim, verdict, (pooled,), tuple(per_n), note)

  def c3(self) -> Conclusion:
    claim = ("3. Merging consistently improves generalization (held-out > base), and large merges of many experts "
             "can generalize better than multitask training.")
    if not self._complete(self.kinds, self.sizes, self.ns, self.methods, "heldout"):
      return Conclusion(3, claim, NOT_TESTABLE, (), note="needs held-out scores")
    large, nmax = self.sizes[-1], self.ns[-1]

    def above_base(kinds, sizes):
      return lambda g: _mean([g(k, s, n, m, "heldout") - 1.0 for k in kinds for s in sizes for n in self.ns
                              for m in self.methods])
    a = self._est("(a) held-out - base", above_base(self.kinds, self.sizes))
    per_cell = [self._est(f"(a) {k} {s}", above_base([k], [s])) for k in self.kinds for s in self.sizes]
    va, note_a = _combine(a, per_cell, "kind or size")
    evidence, breakdown, notes = [dataclasses.replace(a, verdict=va)], list(per_cell), [note_a]
    if all(self.rep.has(k, large, nmax, "multitask", "heldout") for k in self.kinds):
      def vs_mt(kinds):
        return lambda g: _mean([_mean([g(k, large, nmax, m, "heldout") for m in self.methods])
                                - g(k, large, nmax, "multitask", "heldout") for k in kinds])
      b = self._est(f"(b) held-out at {large}, N={nmax}: merged - multitask", vs_mt(self.kinds))
      per_kind = [self._est(f"(b) {k} vs multitask", vs_mt([k])) for k in self.kinds]
      vb, note_b = _combine(b, per_kind, "kind")
      evidence.append(dataclasses.replace(b, verdict=vb))
      breakdown += per_kind
      notes.append(note_b)
    else:
      vb = NOT_TESTABLE
      notes.append("no multitask rows: the second half is not tested")
    parts = (va, vb)
    if CONTRADICTED in parts:
      verdict = CONTRADICTED
    elif all(p == SUPPORTED for p in parts):
      verdict = SUPPORTED
    elif all(p == EQUIVALENT for p in parts):
      verdict = EQUIVALENT
    else:
      verdict = INCONCLUSIVE
    notes.append(C3_RULE)
    return Conclusion(3, claim, verdict, tuple(evidence), tuple(breakdown), "; ".join(n for n in notes if n))

  def c4(self) -> Conclusion:
    claim = "4. Larger models can merge more experts (held-in drops less from few to many experts)."
    if len(self.sizes) < 2 or len(self.ns) < 2:
      return Conclusion(4, claim, NOT_TESTABLE, (), note="needs two sizes and two values of N")
    small, large, nmin, nmax = self.sizes[0], self.sizes[-1], self.ns[0], self.ns[-1]
    if not self._complete(self.kinds, (small, large), (nmin, nmax), self.methods):
      return Conclusion(4, claim, NOT_TESTABLE, (), note="needs every method at both sizes and both N")

    def interaction(kinds):
      drop = lambda g, k, s, m: g(k, s, nmin, m, "heldin") - g(k, s, nmax, m, "heldin")
      return lambda g: _mean([drop(g, k, small, m) - drop(g, k, large, m) for k in kinds for m in self.methods])
    pooled = self._est(f"held-in drop N={nmin}->{nmax}, {small} - {large}", interaction(self.kinds))
    per_kind = [self._est(k, interaction([k])) for k in self.kinds]
    verdict, note = _combine(pooled, per_kind, "kind")
    return Conclusion(4, claim, verdict, (pooled,), tuple(per_kind), note)

  def _methods_at(self, size: str) -> tuple[str, Estimate, list[Estimate], list[Estimate]]:
    """(verdict, the deciding pair, every pair's estimate, the pairs that differ) of the equivalence
    of methods at ``size``: EQUIVALENT when every pairwise difference's interval lies inside the margin
    (an intersection-union test: no multiplicity correction), CONTRADICTED when a pair's interval at
    the Bonferroni-corrected level excludes 0 with a difference of at least ``min_effect``."""
    pairs = list(itertools.combinations(self.methods, 2))

    def pair_diff(a, b):
      return lambda g: _mean([g(k, size, n, a, "heldin") - g(k, size, n, b, "heldin") for k in self.kinds
                              for n in self.ns])
    level = 1 - (1 - self.s.confidence) / len(pairs)
    each = [self._est(f"{a} - {b} at {size}", pair_diff(a, b)) for a, b in pairs]
    wide = [self._est(f"{a} - {b} at {size}", pair_diff(a, b), confidence=level) for a, b in pairs]
    differ = [w for w in wide if w.verdict in (SUPPORTED, CONTRADICTED)]
    if any(e.verdict == NOT_TESTABLE for e in each):
      return NOT_TESTABLE, dataclasses.replace(each[0], verdict=NOT_TESTABLE), each, differ
    if differ:
      worst = max(differ, key=lambda e: abs(e.value))
      shown = next(e for e in each if e.label == worst.label)  # the same pair at the stated confidence
      return CONTRADICTED, dataclasses.replace(shown, verdict=CONTRADICTED), each, differ
    binding = max(each, key=lambda e: max(abs(e.lo), abs(e.hi)) if not math.isnan(e.lo) else math.inf)
    inside = all(-self.s.margin < e.lo and e.hi < self.s.margin for e in each)
    verdict = EQUIVALENT if inside else INCONCLUSIVE
    return verdict, dataclasses.replace(binding, verdict=verdict), each, differ

  def c5(self) -> Conclusion:
    claim = "5. Different merging methods behave very similarly at larger scales."
    if len(self.methods) < 2:
      return Conclusion(5, claim, NOT_TESTABLE, (), note="needs two methods")
    large = self.sizes[-1]
    if not self._complete(self.kinds, (large,), self.ns, self.methods):
      return Conclusion(5, claim, NOT_TESTABLE, (), note="needs every method at the largest size")
    verdict, deciding, each, differ = self._methods_at(large)
    n_pairs = len(each)
    if verdict == NOT_TESTABLE:
      return Conclusion(5, claim, NOT_TESTABLE, (), note=NO_ESTIMATE)
    if verdict == CONTRADICTED:
      widest = next(e for e in differ if e.label == deciding.label)  # the interval it was judged on
      level = 1 - (1 - self.s.confidence) / n_pairs
      note = (f"{len(differ)} of {n_pairs} method pairs differ at {large}, judged on {level:.1%} intervals "
              f"(Bonferroni over the {n_pairs} pair{'s' if n_pairs > 1 else ''}; the pair shown: "
              f"[{widest.lo:+.3f}, {widest.hi:+.3f}])")
    else:
      note = (f"the widest of {n_pairs} pairwise intervals at {large} is shown; EQUIVALENT needs all of them "
              f"inside +-{self.s.margin:g}")
    breakdown = [dataclasses.replace(e, verdict=None) for e in each]  # a difference, not a directional claim
    if len(self.sizes) > 1 and self._complete(self.kinds, (self.sizes[0],), self.ns, self.methods):
      small_verdict, small_deciding, _, _ = self._methods_at(self.sizes[0])
      breakdown.append(dataclasses.replace(small_deciding, verdict=small_verdict))
      note += f"; at {self.sizes[0]} for comparison: {small_verdict.lower()}"
    return Conclusion(5, claim, verdict, (deciding,), tuple(breakdown), note)


ROWS_FILE = "rows.jsonl.gz"  # every stored row, one JSON object per line, written beside report.md


def load_rows(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The stored rows of a study: its work directory (``results/rows/*.json``), a report's directory
  (its :data:`ROWS_FILE`, e.g. docs/default_run), or that file itself."""
  path = pathlib.Path(path)
  rows_dir = path / "results" / "rows"
  if rows_dir.is_dir():
    return [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))]
  bundle = path / ROWS_FILE if path.is_dir() else path
  if not bundle.is_file():
    raise FileNotFoundError(f"{path}: no results store (results/rows/) or {ROWS_FILE} here")
  with gzip.open(bundle, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | pathlib.Path) -> None:
  """Writes ``rows`` as :data:`ROWS_FILE`, atomically, in bytes that depend on the set of rows alone."""
  text = "".join(sorted(json.dumps(r, sort_keys=True) + "\n" for r in rows))
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as f:
    f.write(text.encode("utf-8"))
  files.atomic_write(path, buf.getvalue())


def load_csv(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Merge rows from a report's ``results.csv`` (normalized scores only: the seed level alone; its
  ``params`` column orders the sizes). :data:`ROWS_FILE` beside it holds everything (:func:`load_rows`)."""
  rows = []
  with open(path, newline="") as f:
    for r in csv.DictReader(f):
      rows.append({"type": "merge", "kind": r["kind"], "size": r["size"], "n": int(r["n"]), "seed": int(r["seed"]),
                   "method": r["method"], "hparams": json.loads(r["hparams"]) if r.get("hparams") else {},
                   "categories": r["categories"].split("+"), "heldin_norm": float(r["heldin_norm"]),
                   "heldout_norm": float(r["heldout_norm"]),
                   **({"params": int(r["params"])} if r.get("params") else {})})
  return rows


def conclusion_line(c: Conclusion) -> str:
  """One markdown line: the verdict in bold, the claim, each statistic with its interval."""
  if c.verdict == NOT_TESTABLE:
    return f"- **{c.verdict}**: {c.claim} ({c.note})"
  several = len(c.evidence) > 1
  stats = "; ".join(e.text() + (f" ({e.verdict.lower()})" if several and e.verdict else "") for e in c.evidence)
  line = f"- **{c.verdict}**: {c.claim} {stats}"
  if c.breakdown:
    line += ". Breakdown: " + ", ".join(e.text() + (f" ({e.verdict.lower()})" if e.verdict else "")
                                        for e in c.breakdown)
  return line + (f". {c.note[0].upper()}{c.note[1:]}." if c.note else ".")


def rule_text(settings: Settings) -> str:
  """One paragraph stating the verdict rule with this analysis's parameters."""
  pct = f"{settings.confidence:.0%}"
  return (f"Each verdict rests on a paired contrast with a {pct} bootstrap interval `[lo, hi]` "
          f"({settings.n_boot} replicates, seed {settings.seed}): **SUPPORTED** when the interval lies above 0 "
          f"and the estimate is at least {settings.min_effect:g} (the minimum effect), **CONTRADICTED** when "
          f"it lies below 0 and the estimate is at most -{settings.min_effect:g}, **EQUIVALENT** when it lies "
          f"inside (-{settings.margin:g}, {settings.margin:g}) (the equivalence margin: no effect that large "
          "either way), **INCONCLUSIVE** otherwise, and INCONCLUSIVE as well when the breakdown by size, N or "
          "kind holds verdicts of both signs. Conclusion 3 joins two claims, (a) and (b), each judged so: "
          "SUPPORTED when both are, CONTRADICTED when either is. Conclusion 5 (no difference between methods) "
          f"is CONTRADICTED when a pair of methods differs at the Bonferroni-corrected level (its {pct} interval "
          "is shown). Cells average their seeds first; every N, size, kind and method then weighs the same.")


def expert_lines(analysis: Analysis) -> list[str]:
  """Markdown lines on the expert check: which experts were flagged and left out, with the count."""
  s = analysis.settings
  if not analysis.experts_checked:
    return ["Experts were not checked against their base and chance: the rows hold no validation counts "
            "or chance levels."]
  below = [f"{f.kind} {f.size} {f.category} ({f.detail})" for f in analysis.below_base]
  below_text = ("" if not below else
                (" 1 of them scores below its base on one of its datasets" if len(below) == 1 else
                 f" {len(below)} of them score below their base on one of their datasets")
                + " (validation, expert vs base), though clearly above it on the category's mean: "
                + "; ".join(below) + ".")
  if not analysis.flagged:
    return [f"All {analysis.experts_checked} experts are at least {s.z_expert:g} standard errors above their "
            "base (on their category's mean) and above chance (on each of their datasets) on validation."
            + below_text]
  lines = [f"**{len(analysis.flagged)} of {analysis.experts_checked} experts are not clearly above their base "
           f"and chance** ({s.z_expert:g} standard errors on validation), so held-in normalization leaves "
           "their categories out everywhere in their world: "
           + "; ".join(", ".join(cats) + (f" (world {w})" if w else "") for w, cats in sorted(analysis.excluded.items()))
           + "." + below_text, "",
           "| base | size | category | expert | base | chance | z vs chance | least z vs chance of a dataset | "
           "z vs base |", "|---|---|---|---|---|---|---|---|---|"]
  for f in analysis.flagged:
    c = f.check
    lines.append(f"| {f.kind} | {f.size} | {f.category} | {c.expert:.1f} | "
                 f"{'-' if math.isnan(c.base) else f'{c.base:.1f}'} | {c.chance:.1f} | {c.z_chance:.1f} | "
                 f"{c.z_chance_tasks:.1f} | "
                 f"{'-' if math.isinf(c.z_base) else f'{c.z_base:.1f}'} |")
  return lines


def cell_text(e: Estimate | None) -> str:
  """A table cell: "0.757 [0.720, 0.790]" ("-" when missing)."""
  if e is None or math.isnan(e.value):
    return "-"
  if math.isnan(e.lo):
    return f"{e.value:.3f}"
  return f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def table_rows(analysis: Analysis, metric: str) -> list[dict[str, Any]]:
  """One row per (kind, size, N): base, size, N, then each method's and the multitask model's
  estimate ("heldin" or "heldout"), as :class:`Estimate` or None."""
  rows = []
  for kind, size, n in itertools.product(analysis.kinds, analysis.sizes, analysis.ns):
    row: dict[str, Any] = {"base": kind, "size": size, "N": n}
    for m in analysis.methods + ("multitask",):
      row[m] = analysis.cells.get((kind, size, n, m), {}).get(metric)
    rows.append(row)
  return rows
