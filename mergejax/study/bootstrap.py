r"""Hierarchical bootstrap of the study's normalized scores, keeping the pairing of the design.

A study's numbers vary with the world's training (world seeds), with which experts a subset merges
(expert-subset seeds; at N = all categories, DARE's mask seeds) and with which test examples each task
happens to hold. :func:`replicate` resamples all three, outermost first, each with replacement and the
**same draw for every model and cell it touches**, so that contrasts stay paired:

1. **worlds** (rows' ``world``), when there is more than one;
2. **seeds within each N**: one draw of the N's seeds, shared by every base kind, size and method
   (they merge the same subsets). A deterministic method's single row at N = all categories stands for
   every seed; a cell then averages its drawn seeds, so each (kind, size, N, method) cell weighs the
   same whatever its number of rows;
3. **test examples within each task**: one draw of example indices per task, applied to every model
   scored on it (merges, experts, bases, multitask), from per-example correctness. Rows that store only
   per-task counts get an independent binomial draw per model instead (the pairing on examples is lost,
   which widens intervals); rows with scores only skip this level.

A few top-level units make a plain percentile bootstrap too narrow: the resampled mean of S values
varies (S - 1) / S as much as the mean itself, and with S = 3 or 4 the sample variance is itself so
uncertain that a t quantile (3.18 for 3 degrees of freedom) replaces the normal one (1.96). So each
statistic (:meth:`Replicates.statistic`) separates the design levels' deviation from the test-level
replicates and scales it by :math:`\sqrt{S / (S - 1)}` per resampled set of S units and by
:math:`t_{\nu}/z` at the interval's level, :math:`\nu` the degrees of freedom of the seeds the
statistic touches (the sum of S - 1 over its (world, N) strata; W - 1 for W worlds): with few seeds
the intervals widen as a t interval would. Replicate 0 of every array is the
observed value (all weights 1), so estimates and replicates come from the same code. Held-in scores
are recomputed in every replicate from per-task scores (the paper's ratio or chance-corrected
retention, :mod:`mergejax.evaluation.normalize`), leaving out excluded categories; rows without
per-task scores contribute their stored ``heldin_norm`` / ``heldout_norm``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from mergejax.evaluation import normalize

KINDS_ORDER = ("pretrained", "instruction_tuned")
TEST_LEVELS = ("examples", "counts", "scores")


@dataclasses.dataclass(frozen=True)
class Observation:
  """One model's score on one task, with what the bootstrap can resample it from."""

  score: float
  correct: np.ndarray | None = None  # per-example correctness (0/1), in the split's example order
  count: tuple[int, int] | None = None  # (correct, total)
  scale: float = 100.0  # score = scale * correct / total (1: fractions, 100: percentages)

  @property
  def level(self) -> str:
    return "examples" if self.correct is not None else "counts" if self.count is not None else "scores"


def parse_correct(value: Any) -> np.ndarray:
  """Per-example correctness as stored in a row ("0110...", or a list of 0/1) -> uint8 array."""
  if isinstance(value, str):
    if set(value) - {"0", "1"}:
      raise ValueError(f"per-example correctness must be a string of 0 and 1, got {value[:20]!r}...")
    return np.frombuffer(value.encode(), np.uint8) - ord("0")
  return np.asarray(value, np.uint8)


def observations(row: Mapping[str, Any], scores_key: str, split: str) -> dict[str, Observation]:
  """task -> :class:`Observation` of a row's ``scores_key`` (e.g. "heldin_test"), with the row's
  ``<split>_correct`` strings or ``<split>_counts`` pairs where it stores them."""
  correct = row.get(f"{split}_correct") or {}
  counts = row.get(f"{split}_counts") or {}
  out = {}
  for t, s in (row.get(scores_key) or {}).items():
    c = parse_correct(correct[t]) if t in correct else None
    k = tuple(int(v) for v in counts[t]) if t in counts else None
    if c is not None:
      k = (int(c.sum()), int(c.size))
    scale = _scale(row, t, float(s), k) if k is not None else 100.0
    out[t] = Observation(float(s), c, k, scale)
  return out


def _scale(row: Mapping[str, Any], task: str, score: float, count: tuple[int, int]) -> float:
  """100 if ``score`` is the count as a percentage, 1 if as a fraction (either, for 0 correct)."""
  k, n = count
  if n <= 0 or not 0 <= k <= n:
    raise ValueError(f"row {row.get('key', '?')}: task {task!r} has an impossible count {k}/{n}")
  for scale in (100.0, 1.0):
    if math.isclose(score, scale * k / n, rel_tol=1e-6, abs_tol=1e-9):
      return scale
  raise ValueError(f"row {row.get('key', '?')}: task {task!r} scores {score:g}, which is not its count "
                   f"{k}/{n} as a fraction or a percentage")


def _resampled(obs: Observation, level: str, draw: np.ndarray | None, rng: np.random.Generator, n_boot: int
               ) -> np.ndarray:
  """[n_boot + 1] scores: the observed one, then one per replicate, in the observation's unit."""
  out = np.full(n_boot + 1, obs.score)
  if level == "scores":
    return out
  k, n = obs.count
  if level == "examples":
    out[1:] = obs.scale * (draw @ obs.correct.astype(np.float64)) / n
  else:
    out[1:] = obs.scale * rng.binomial(n, k / n, size=n_boot) / n
  return out


def _resampled_mean(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """(plain, deviation, S) of the means of ``values`` [B + 1, S] (NaN: missing) under ``weights``
  [B + 1, S] (row 0: all ones): the plain mean over the present units, and the resampled mean's
  deviation from it scaled by sqrt(S / (S - 1)) (zero for S < 2)."""
  present = ~np.isnan(values)
  s = int(present[0].sum())
  with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a replicate without any value is NaN, as intended
    plain = np.nanmean(np.where(present, values, np.nan), axis=1)
    w = np.where(present, weights, 0.0)
    drawn = np.sum(w * np.where(present, values, 0.0), axis=1) / w.sum(axis=1)
  if s < 2:
    return plain, np.zeros_like(plain), s
  return plain, math.sqrt(s / (s - 1)) * (drawn - plain), s


def small_sample_factor(df: int, confidence: float) -> float:
  """t quantile over normal quantile at the interval's level: how much wider a t interval with ``df``
  degrees of freedom is than a normal one (1 for no resampled design level)."""
  if df < 1:
    return 1.0
  q = (1 + confidence) / 2
  return float(stats.t.ppf(q, df) / stats.norm.ppf(q))


@dataclasses.dataclass(frozen=True)
class Cell:
  """Replicates of one cell's mean: ``plain`` (every seed, test-level draws only) and ``deviation``
  (what resampling the seeds adds); ``df`` is S - 1 for S resampled seeds (0: one row stands for all)."""

  plain: np.ndarray
  deviation: np.ndarray
  df: int

  @property
  def full(self) -> np.ndarray:
    return self.plain + self.deviation


@dataclasses.dataclass
class Replicates:
  """Bootstrap replicates ([B + 1] arrays, index 0 observed) of the study's cells.

  Attributes:
    cells: (world, kind, size, n, method, metric) -> :class:`Cell`; metric is "heldin" or "heldout";
      method "multitask" is the multitask baseline normalized on each seed's categories (held-in) or
      against the base (held-out).
    world_weights: [B + 1, W] draws of the worlds (sorted).
    worlds: the world ids, sorted.
    seeds: (world, n) -> the seeds resampled at that N.
    test_level: "examples", "counts" or "scores" (the coarsest found among the scores used).
    n_boot: number of replicates (each array has n_boot + 1 entries). Replicates in which a
      denominator was resampled to zero are NaN in the cells they touch.
  """

  cells: dict[tuple, Cell]
  world_weights: np.ndarray
  worlds: list[str]
  seeds: dict[tuple[str, int], list[int]]
  test_level: str
  n_boot: int

  def has(self, *key) -> bool:
    """Whether every world has the cell (kind, size, n, method, metric)."""
    return all((w,) + tuple(key) in self.cells for w in self.worlds)

  def statistic(self, fn: Callable[[Callable[..., np.ndarray]], np.ndarray], confidence: float) -> np.ndarray:
    """[B + 1] replicates of ``fn(get)``, a statistic of cells read as ``get(kind, size, n, method, metric)``.

    ``fn`` runs twice per world, on test-level replicates alone and with the seeds resampled; their
    difference is scaled by :func:`small_sample_factor` for the degrees of freedom of the seeds read
    (module docstring); worlds are then resampled the same way.
    """
    per_world = {}
    for w in self.worlds:
      touched: dict[int, int] = {}

      def plain(*k, w=w):
        cell = self.cells[(w,) + tuple(k)]
        touched[k[2]] = max(touched.get(k[2], 0), cell.df)
        return cell.plain

      base = fn(plain)
      full = fn(lambda *k, w=w: self.cells[(w,) + tuple(k)].full)
      per_world[w] = base + small_sample_factor(sum(touched.values()), confidence) * (full - base)
    values = np.stack([per_world[w] for w in self.worlds], axis=1)
    mean, deviation, n = _resampled_mean(values, self.world_weights)
    return mean + small_sample_factor(n - 1, confidence) * deviation


def merge_row_id(row: Mapping[str, Any]) -> str:
  return row.get("key") or f"merge/{row['kind']}/{row['size']}/n{row['n']}/s{row['seed']}/{row['method']}"


def reference_role(row: Mapping[str, Any]) -> tuple:
  """(kind, size, role) or (kind, size, "expert", category) of a reference row."""
  return (row["kind"], row["size"], row["role"]) + ((row["category"],) if row["role"] == "expert" else ())


def split_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict], dict[tuple, dict]]:
  """(merge rows, {(world,) + reference_role: reference row})."""
  merges, refs = [], {}
  for row in rows:
    if row.get("type") == "merge":
      merges.append(dict(row))
    elif row.get("type") == "reference":
      refs[(str(row.get("world", "")),) + reference_role(row)] = dict(row)
  return merges, refs


def task_chance(refs: Mapping[tuple, Mapping[str, Any]], world: str, field: str = "task_chance") -> dict[str, float]:
  """task -> chance level (score units), from the reference rows of ``world`` (``field``:
  "task_chance" for the test split, "validation_chance" for validation)."""
  out: dict[str, float] = {}
  for key, row in refs.items():
    if key[0] == world:
      out.update({t: float(v) for t, v in (row.get(field) or {}).items()})
  return out


def replicate(rows: Iterable[Mapping[str, Any]], *, n_boot: int = 2000, seed: int = 0, heldin_metric: str = "ratio",
              excluded: Mapping[str, Sequence[str]] | None = None) -> Replicates:
  """Bootstrap replicates of every (world, kind, size, N, method) cell's mean held-in and held-out score.

  Args:
    rows: the study's stored rows (merge and reference rows; see ``mergejax.study.verdicts``).
    n_boot: number of replicates.
    seed: the resampling seed (the result is a deterministic function of rows and seed).
    heldin_metric: "ratio" (the paper's merged / expert) or "retention" (chance-corrected; needs the
      reference rows' ``task_chance``).
    excluded: world -> held-in categories left out of every held-in score (e.g. chance-level experts).
  """
  if heldin_metric not in ("ratio", "retention"):
    raise ValueError(f"heldin_metric must be 'ratio' or 'retention', not {heldin_metric!r}")
  rng = np.random.default_rng(seed)
  merges, refs = split_rows(rows)
  if not merges:
    raise ValueError("no merge rows to analyse")
  worlds = sorted({str(r.get("world", "")) for r in merges})
  excluded = {w: set(excluded.get(w, ())) for w in worlds} if excluded else {w: set() for w in worlds}

  # Level 3: test examples, one draw per (world, task) shared by every model scored on the task.
  scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (world, model id) -> task -> replicates
  levels_seen = set()
  for world in worlds:
    per_task: dict[str, dict[str, Observation]] = defaultdict(dict)
    for r in merges:
      if str(r.get("world", "")) == world:
        for key in ("heldin_test", "heldout_test"):
          for t, o in observations(r, key, "test").items():
            per_task[t][merge_row_id(r)] = o
    for key, r in refs.items():
      if key[0] == world:
        for sk in ("heldin_test", "heldout_test"):
          for t, o in observations(r, sk, "test").items():
            per_task[t]["/".join(key[1:])] = o
    for t in sorted(per_task):
      obs = per_task[t]
      level = _common_level(obs.values())
      levels_seen.add(level)
      draw = None
      if level == "examples":
        n = next(iter(obs.values())).correct.size
        draw = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
      for model in sorted(obs):
        scores.setdefault((world, model), {})[t] = _resampled(obs[model], level, draw, rng, n_boot)

  # Held-in and held-out replicates of every merge row, and of the multitask model on each row's subset.
  ones = np.ones(n_boot + 1)
  row_values: dict[tuple, dict[int, np.ndarray]] = defaultdict(dict)  # (world, kind, size, n, method, metric)
  subset_of: dict[tuple, tuple[str, ...]] = {}
  for r in merges:
    world = str(r.get("world", ""))
    cell = (world, r["kind"], r["size"], int(r["n"]), r["method"])
    seed_ = int(r["seed"])
    subset_of[(world, r["kind"], r["size"], int(r["n"]), seed_)] = tuple(r["categories"])
    own = scores.get((world, merge_row_id(r)))
    if own is None or not r.get("heldin_test"):  # scores only: the stored normalized values
      if excluded[world] & set(r["categories"]):
        raise ValueError("rows without per-task scores cannot leave categories out of held-in normalization")
      row_values[cell + ("heldin",)][seed_] = r["heldin_norm"] * ones
      row_values[cell + ("heldout",)][seed_] = r["heldout_norm"] * ones
      continue
    row_values[cell + ("heldin",)][seed_] = _heldin(own, r["task_categories"], r["categories"], r["kind"], r["size"],
                                                    world, scores, refs, excluded[world], heldin_metric)
    row_values[cell + ("heldout",)][seed_] = _heldout(own, r["task_categories"], r["kind"], r["size"], world, scores,
                                                      refs)
  for (world, kind, size, n, seed_), cats in subset_of.items():
    mt = scores.get((world, f"{kind}/{size}/multitask"))
    if mt is None:
      continue
    cell = (world, kind, size, n, "multitask")
    base = refs[(world, kind, size, "base")]
    row_values[cell + ("heldin",)][seed_] = _heldin(mt, base["task_categories"], cats, kind, size, world, scores,
                                                    refs, excluded[world], heldin_metric)
    row_values[cell + ("heldout",)][seed_] = _heldout(mt, base["task_categories"], kind, size, world, scores, refs)

  # Level 2: seeds within each N, one draw per (world, N) shared by every kind, size and method.
  seeds: dict[tuple[str, int], list[int]] = {}
  for (world, _, _, n, _, _), per_seed in row_values.items():
    seeds.setdefault((world, n), [])
    seeds[(world, n)] = sorted(set(seeds[(world, n)]) | set(per_seed))
  seed_weights = {}
  for key in sorted(seeds):
    s = len(seeds[key])
    w = np.ones((n_boot + 1, s))
    w[1:] = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot)
    seed_weights[key] = w
  cells = {}
  for key, per_seed in row_values.items():
    world, n = key[0], key[3]
    all_seeds = seeds[(world, n)]
    if len(per_seed) == 1 and len(all_seeds) > 1 and _one_subset(subset_of, world, n):
      only = _finite(next(iter(per_seed.values())))  # a deterministic method's row stands for every seed
      cells[key] = Cell(only, np.zeros_like(only), 0)
      continue
    values = np.full((n_boot + 1, len(all_seeds)), np.nan)
    for j, s in enumerate(all_seeds):
      if s in per_seed:
        values[:, j] = _finite(per_seed[s])
    plain, deviation, s = _resampled_mean(values, seed_weights[(world, n)])
    cells[key] = Cell(plain, deviation, max(s - 1, 0))

  # Level 1: worlds.
  u = np.ones((n_boot + 1, len(worlds)))
  if len(worlds) > 1:
    u[1:] = rng.multinomial(len(worlds), np.full(len(worlds), 1.0 / len(worlds)), size=n_boot)
  level = max(levels_seen, key=TEST_LEVELS.index) if levels_seen else "scores"
  return Replicates(cells, u, worlds, seeds, level, n_boot)


def _finite(x: np.ndarray) -> np.ndarray:
  return np.where(np.isfinite(x), x, np.nan)


def _one_subset(subset_of: Mapping[tuple, tuple[str, ...]], world: str, n: int) -> bool:
  return len({frozenset(c) for (w, _, _, m, _), c in subset_of.items() if w == world and m == n}) == 1


def _common_level(obs: Iterable[Observation]) -> str:
  obs = list(obs)
  levels = {o.level for o in obs}
  if levels == {"examples"} and len({o.correct.size for o in obs}) == 1:
    return "examples"
  if levels <= {"examples", "counts"}:
    return "counts"
  return "scores"


def _tasks_by_category(task_categories: Mapping[str, str], cats: Iterable[str], available: Mapping[str, Any]
                       ) -> dict[str, list[str]]:
  wanted = set(cats)
  out: dict[str, list[str]] = {}
  for t, c in sorted(task_categories.items()):
    if c in wanted and t in available:
      out.setdefault(c, []).append(t)
  return out


def _heldin(model: Mapping[str, np.ndarray], task_categories: Mapping[str, str], cats: Sequence[str], kind: str,
            size: str, world: str, scores, refs, excluded: set, metric: str) -> np.ndarray:
  kept = [c for c in cats if c not in excluded]
  if not kept:
    return np.full(len(next(iter(model.values()))), np.nan)
  chance = task_chance(refs, world) if metric == "retention" else None
  per_cat = []
  for c, tasks in _tasks_by_category(task_categories, kept, model).items():
    expert = scores.get((world, f"{kind}/{size}/expert/{c}"))
    if expert is None:
      raise KeyError(f"no reference row with test scores for the {kind} {size} expert of {c!r}")
    if chance is None:
      with np.errstate(divide="ignore", invalid="ignore"):
        per_cat.append(sum(normalize.ratio(model[t], expert[t]) for t in tasks) / len(tasks))
      continue
    missing = [t for t in tasks if t not in chance]
    if missing:
      raise KeyError(f"retention needs the chance level of task {missing[0]!r}: no reference row stores it "
                     "(task_chance)")
    # NaN in a replicate whose expert gains nothing over chance there: refused, not divided by
    per_cat.append(normalize.category_retention([model[t] for t in tasks], [expert[t] for t in tasks],
                                                [chance[t] for t in tasks]))
  return sum(per_cat) / len(per_cat)


def _heldout(model: Mapping[str, np.ndarray], task_categories: Mapping[str, str], kind: str, size: str, world: str,
             scores, refs) -> np.ndarray:
  base = scores.get((world, f"{kind}/{size}/base"))
  if base is None:
    raise KeyError(f"no reference row with test scores for the {kind} {size} base")
  base_row = refs[(world, kind, size, "base")]
  heldout_tasks = set(base_row.get("heldout_test") or {})
  cats = sorted({task_categories[t] for t in model if t in heldout_tasks})
  per_cat = []
  for c, tasks in _tasks_by_category({t: task_categories[t] for t in heldout_tasks if t in task_categories},
                                     cats, model).items():
    with np.errstate(divide="ignore", invalid="ignore"):
      per_cat.append(sum(normalize.ratio(model[t], base[t]) for t in tasks) / len(tasks))
  return sum(per_cat) / len(per_cat)
