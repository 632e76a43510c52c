"""The study runner: for every cell and method, select hyperparameters on validation, then score
the chosen merge once on the test splits, and append one row to the results store.

    run_study(config, workdir)   # builds (or finds) the world, runs what is missing, writes the report

Merges happen on device (``mergejax.merge`` over resident params) and are evaluated without writing
a checkpoint. Every process of a multi-host run executes the same program; only process 0 writes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import pathlib
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from mergejax import methods as methods_lib
from mergejax import models
from mergejax import tasks
from mergejax import world as world_lib
from mergejax.evaluation import normalize
from mergejax.evaluation.aggregate import EvalResults
from mergejax.models.adapter import builtin_adapter
from mergejax.evaluation import suites as suites_lib
from mergejax.evaluation.evaluator import Evaluator
from mergejax.evaluation.leak_guard import SELECTION_SPLIT, SplitGuard
from mergejax.models import io as models_io
from mergejax.study import grid as grid_lib
from mergejax.study import report as report_lib
from mergejax.study import store as store_lib
from mergejax.study import verdicts as verdicts_lib
from mergejax.study.candidates import CandidateMerger, task_vectors
from mergejax.study.store import ResultsStore
from mergejax.training import recipes

TEST_SPLIT = "test"
# What a row holds; part of every row's fingerprint, so rows of an older layout are recomputed.
ROW_FORMAT = 2


class StudyConfigError(ValueError):
  """A bad study configuration, reported before any work."""


@dataclasses.dataclass(frozen=True)
class StudySpec:
  kinds: tuple[str, ...]
  sizes: tuple[str, ...]
  ns: tuple[int, ...]
  seeds: int
  methods: tuple[str, ...]
  grids: dict[str, list[dict[str, Any]]]
  categories: tuple[str, ...]
  world_dir: pathlib.Path
  build_world: bool
  batch_size: int
  multitask: bool = True
  world_steps: dict[str, int] = dataclasses.field(default_factory=dict)  # recipe -> training steps
  design: str = "balanced"  # expert subsets: grid.DESIGNS
  verdicts: verdicts_lib.Settings = verdicts_lib.Settings()


def _values(cfg: Any, field: str, kind: type) -> tuple:
  """A tuple-valued config field (a single value stands for itself), each item of type ``kind``."""
  value = cfg.get(field)
  items = tuple(value) if isinstance(value, (tuple, list)) else (() if value is None else (value,))
  for v in items:
    if not isinstance(v, kind) or isinstance(v, bool):
      raise StudyConfigError(f"{field}={value!r}: expected a tuple of {kind.__name__} values")
  return items


def validate(cfg: Any, workdir: str | pathlib.Path) -> StudySpec:
  """Checks the whole configuration up front; StudyConfigError names the first problem."""
  kinds = _values(cfg, "kinds", str)
  for k in kinds:
    if k not in world_lib.KINDS:
      raise StudyConfigError(f"unknown base kind {k!r}: choose from {list(world_lib.KINDS)}")
  sizes = _values(cfg, "sizes", str)
  for s in sizes:
    if s not in models.SIZES:
      raise StudyConfigError(f"unknown model size {s!r}: choose from {sorted(models.SIZES)}")
  categories = _values(cfg, "categories", str) or tuple(tasks.HELDIN_CATEGORIES)
  for c in categories:
    if c not in tasks.HELDIN_CATEGORIES:
      raise StudyConfigError(f"unknown held-in category {c!r}: choose from {list(tasks.HELDIN_CATEGORIES)}")
  ns = _values(cfg, "num_experts", int)
  for n in ns:
    if not 1 <= n <= len(categories):
      raise StudyConfigError(f"num_experts {n} is out of range: there are {len(categories)} experts per base")
  if int(cfg.subset_seeds) < 1:
    raise StudyConfigError(f"subset_seeds={cfg.subset_seeds} must be >= 1")
  design = cfg.get("design", "balanced")
  if design not in grid_lib.DESIGNS:
    raise StudyConfigError(f"design={design!r}: choose from {grid_lib.DESIGNS}")
  try:
    settings = verdicts_lib.Settings(**dict(cfg.get("verdicts") or {}))
  except (TypeError, ValueError) as e:
    raise StudyConfigError(f"verdicts: {e}") from None
  if int(cfg.get("cpu_devices", 0)) < 0:
    raise StudyConfigError(f"cpu_devices={cfg.cpu_devices} must be >= 0 (0: one per core)")
  names = _values(cfg, "methods", str)
  grids = {}
  for m in names:
    if m not in methods_lib.names():
      raise StudyConfigError(f"unknown merge method {m!r}: choose from {methods_lib.names()}")
    try:
      grids[m] = grid_lib.candidates(m, dict(cfg.grids.get(m) or {}) if "grids" in cfg else {})
    except (ValueError, TypeError) as e:
      raise StudyConfigError(f"grids.{m}: {e}") from None
  world_steps = {}
  for recipe, steps in dict(cfg.get("world_steps") or {}).items():
    if recipe not in recipes.RECIPES:
      raise StudyConfigError(f"world_steps: unknown recipe {recipe!r}: choose from {list(recipes.RECIPES)}")
    if steps is not None:
      if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise StudyConfigError(f"world_steps.{recipe}={steps!r} must be a positive integer")
      world_steps[recipe] = steps
  world_dir = pathlib.Path(cfg.world_dir) if cfg.get("world_dir") else pathlib.Path(workdir) / "world"
  build = bool(cfg.build_world)
  multitask = bool(cfg.get("multitask", True))
  if not build:
    for size in sizes:
      for kind in kinds:
        needed = [world_lib.checkpoint_path(world_dir, size, kind, "base")]
        needed += [world_lib.checkpoint_path(world_dir, size, kind, "expert", c) for c in categories]
        if multitask:
          needed.append(world_lib.checkpoint_path(world_dir, size, kind, "multitask"))
        for p in needed:
          if not models.is_complete(p):
            raise StudyConfigError(f"missing checkpoint {p} (set build_world=True to train it)")
  return StudySpec(kinds, sizes, ns, int(cfg.subset_seeds), names, grids, categories, world_dir, build,
                   int(cfg.eval_batch_size), multitask, world_steps, design, settings)


class Scorer:
  """Per-task scores of params on one or more suites of one split, in one evaluation pass.

  One :class:`~mergejax.evaluation.Evaluator` per (size, split) holds every task the study reads on
  that split (validation: the held-in tasks of the study's categories; test: those and the held-out
  tasks), sharing its data between sizes; a call scores only the requested suites' tasks. Every
  evaluator is bound to the split guard, so none of them reads a test split while a selection is open.
  """

  SPLITS = (SELECTION_SPLIT, TEST_SPLIT)

  def __init__(self, guard: SplitGuard, batch_size: int, categories: Sequence[str] | None = None):
    self.guard, self.batch_size = guard, batch_size
    if categories is None:  # every held-in category
      self._split_suites = {SELECTION_SPLIT: ["heldin"], TEST_SPLIT: ["all"]}
    else:
      heldin = [f"heldin_{c}" for c in categories]
      self._split_suites = {SELECTION_SPLIT: heldin, TEST_SPLIT: heldin + ["heldout"]}
    self._evaluators: dict[tuple, Evaluator] = {}
    self._building: dict[str, concurrent.futures.Future] = {}
    self._suite_tasks: dict[str, list[str]] = {}
    self.seconds = 0.0
    self.calls = 0

  def _new_evaluator(self, adapter, split: str) -> Evaluator:
    return Evaluator(adapter, suites_lib.union(self._split_suites.get(split, ["all"])), split,
                     batch_size=self.batch_size, guard=self.guard)

  def prepare(self, adapter) -> None:
    """Starts building both splits' evaluators (seqio reading, tokenization, packing) on background
    threads, one per split, so that they overlap each other and the models' loading. One process only
    (a multi-host run places batches on global meshes in lockstep)."""
    if jax.process_count() > 1:
      return
    for split in self.SPLITS:
      if split not in self._building:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"evaluator-{split}")
        self._building[split] = pool.submit(lambda sp=split: self._new_evaluator(adapter, sp).prepare())
        pool.shutdown(wait=False)

  def warm_up(self, adapter, params) -> None:
    """Compiles the evaluation programs of one model size (see :meth:`Evaluator.warm_up`), the
    validation split's first (it is ready first). Safe on a background thread after :meth:`prepare`."""
    for split in self.SPLITS:
      if split in self._building:
        self._building[split].result().with_adapter(adapter).warm_up(params)

  def evaluator(self, size: str, adapter, split: str) -> Evaluator:
    key = (size, split)
    ev = self._evaluators.get(key)
    if ev is None:
      other = next((e for (_, sp), e in self._evaluators.items() if sp == split), None)
      if other is None and split in self._building:
        other = self._building[split].result()
      ev = (other.with_adapter(adapter) if other is not None  # same data, another model size
            else self._new_evaluator(adapter, split))
      self._evaluators[key] = ev
    return ev

  def __call__(self, size: str, adapter, params, suites: str | Sequence[str], split: str, *,
               per_example: bool = False) -> EvalResults:
    suites = [suites] if isinstance(suites, str) else list(suites)
    ev = self.evaluator(size, adapter, split)
    tasks = []
    for suite in suites:
      if suite not in self._suite_tasks:
        self._suite_tasks[suite] = suites_lib.task_names(suite)
      tasks += [t for t in self._suite_tasks[suite] if t not in tasks]
    t0 = time.perf_counter()
    res = ev.evaluate(params, tasks, per_example=per_example)
    self.seconds += time.perf_counter() - t0
    self.calls += 1
    return res


@dataclasses.dataclass
class ModelSet:
  """The models of one (kind, size), resident on device (evaluation runs on every device), and host
  copies of base, experts and task vectors, which each cell's :class:`CandidateMerger` places on the
  one device it merges on.
  """

  config: Any
  adapter: Any
  base: Any
  experts: dict[str, Any]
  multitask: Any | None
  base_host: Any = None
  experts_host: dict[str, Any] | None = None
  taus_host: dict[str, Any] | None = None  # float32 task vectors expert - base (candidates.task_vectors)


def _load(path: pathlib.Path):
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(jax.devices()), ("data",)), jax.sharding.PartitionSpec())
  return models.load_checkpoint(path, sharding=sharding)


def load_models(spec: StudySpec, kind: str, size: str, with_multitask: bool = True) -> ModelSet:
  config, base = _load(world_lib.checkpoint_path(spec.world_dir, size, kind, "base"))
  experts = {c: _load(world_lib.checkpoint_path(spec.world_dir, size, kind, "expert", c))[1]
             for c in spec.categories}
  mt_path = world_lib.checkpoint_path(spec.world_dir, size, kind, "multitask")
  multitask = _load(mt_path)[1] if with_multitask and models.is_complete(mt_path) else None
  host = lambda t: jax.tree.map(np.asarray, t)
  base_host = host(base)
  experts_host = {c: host(p) for c, p in experts.items()}
  return ModelSet(config, adapter_for(config), base, experts, multitask, base_host=base_host,
                  experts_host=experts_host, taus_host=task_vectors(base_host, experts_host))


_ADAPTERS: dict[Any, Any] = {}


def adapter_for(config: Any):
  """One adapter per model config, so both base kinds of a size share compiled programs."""
  if config not in _ADAPTERS:
    _ADAPTERS[config] = builtin_adapter(config)
  return _ADAPTERS[config]


def _suites(categories: Sequence[str], heldout: bool = False) -> list[str]:
  """The held-in suites of ``categories`` (and the held-out suite): scored in one evaluation pass."""
  return [f"heldin_{c}" for c in categories] + (["heldout"] if heldout else [])


@functools.lru_cache(maxsize=None)
def checkpoint_id(path: pathlib.Path) -> str:
  """Identity of a checkpoint as written: a hash of its config, training record and metadata files and
  of every file's name and size. A checkpoint written again (even with equal contents) gets a new one."""
  h = hashlib.sha256()
  for f in sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file()):
    h.update(f"{f.relative_to(path)}:{f.stat().st_size};".encode())
    if f.name in (models_io.CONFIG_FILE, models_io.INFO_FILE, "manifest.ocdbt", "_METADATA", "_CHECKPOINT_METADATA"):
      h.update(f.read_bytes())
  return h.hexdigest()[:16]


def _model_id(spec: StudySpec, size: str, kind: str, role: str, category: str | None = None) -> str:
  return checkpoint_id(world_lib.checkpoint_path(spec.world_dir, size, kind, role, category))


def reference_fingerprint(spec: StudySpec, kind: str, size: str, role: str, category: str | None = None) -> str:
  """What a reference row depends on: the model's checkpoint and the tasks it is scored on."""
  return store_lib.fingerprint({"format": ROW_FORMAT, "model": _model_id(spec, size, kind, role, category),
                                "categories": category or spec.categories,
                                "splits": (SELECTION_SPLIT, TEST_SPLIT)})


def merge_fingerprint(spec: StudySpec, cell: grid_lib.Cell, method_name: str) -> str:
  """What a merge row depends on: method and grid, the design and its subset, the seed, the base's and
  the merged experts' checkpoints (whose validation scores select and whose test scores normalize)."""
  return store_lib.fingerprint({
      "format": ROW_FORMAT, "method": method_name, "grid": spec.grids[method_name], "design": spec.design,
      "study_categories": spec.categories, "categories": cell.categories, "seed": cell.seed,
      "base": _model_id(spec, cell.size, cell.kind, "base"),
      "experts": [_model_id(spec, cell.size, cell.kind, "expert", c) for c in cell.categories],
      "splits": (SELECTION_SPLIT, TEST_SPLIT)})


def _split_heldout(scores: Mapping[str, float], cats: Mapping[str, str], heldin_cats: Sequence[str]):
  """(held-in scores, held-out scores) of a combined evaluation, by task category."""
  hi = {t: v for t, v in scores.items() if cats[t] in heldin_cats}
  ho = {t: v for t, v in scores.items() if cats[t] not in heldin_cats}
  return hi, ho


def reference_rows(store: ResultsStore, scorer: Scorer, spec: StudySpec, kind: str, size: str,
                   ms: ModelSet) -> dict[str, Any]:
  """Evaluates (once; cached in the store) the base, each expert and the multitask baseline.

  Rows keep per-task scores, per-example correctness and chance levels (what the verdicts' bootstrap
  and expert check read): the base and the multitask model on the test split (held-in over every
  study category, and held-out), the base and each expert also on validation.
  """
  refs: dict[str, Any] = {}

  def full_reference(role: str, params) -> dict[str, Any]:
    """Held-in (every category) and held-out scores of a base or multitask model, cached."""
    key = f"ref/{kind}/{size}/{role}"
    fp = reference_fingerprint(spec, kind, size, role)
    row = store.get(key, fp)
    if row is None:
      res = scorer(size, ms.adapter, params, _suites(spec.categories, heldout=True), TEST_SPLIT, per_example=True)
      hi, ho = _split_heldout(res.task_scores, res.task_categories, spec.categories)
      row = {"type": "reference", "role": role, "kind": kind, "size": size, "heldin_test": hi, "heldout_test": ho,
             "task_categories": res.task_categories, "test_correct": res.correct, "task_chance": res.chance}
      if role == "base":
        val = scorer(size, ms.adapter, params, _suites(spec.categories), SELECTION_SPLIT, per_example=True)
        row.update(heldin_validation=val.task_scores, validation_correct=val.correct,
                   validation_chance=val.chance, params=models.param_count(ms.config))
      row = store.put(key, row, fp)
    return row

  refs["base"] = full_reference("base", ms.base)
  for c, params in ms.experts.items():
    key = f"ref/{kind}/{size}/expert/{c}"
    fp = reference_fingerprint(spec, kind, size, "expert", c)
    row = store.get(key, fp)
    if row is None:
      test = scorer(size, ms.adapter, params, f"heldin_{c}", TEST_SPLIT, per_example=True)
      val = scorer(size, ms.adapter, params, f"heldin_{c}", SELECTION_SPLIT, per_example=True)
      row = store.put(key, {"type": "reference", "role": "expert", "kind": kind, "size": size, "category": c,
                            "heldin_test": test.task_scores, "heldin_validation": val.task_scores,
                            "task_categories": test.task_categories, "test_correct": test.correct,
                            "validation_correct": val.correct, "task_chance": test.chance,
                            "validation_chance": val.chance}, fp)
    refs[f"expert/{c}"] = row
  if ms.multitask is not None:
    refs["multitask"] = full_reference("multitask", ms.multitask)
  return refs


def select(candidates: Sequence[dict[str, Any]], score_fn: Callable[[dict[str, Any]], float]) -> tuple[dict, list]:
  """The candidate with the highest validation objective (the first one on ties)."""
  scored = [(score_fn(hp), i, hp) for i, hp in enumerate(candidates)]
  best = max(scored, key=lambda x: (x[0], -x[1]))
  return best[2], [{"hparams": hp, "validation": s} for s, _, hp in scored]


def run_cell_method(store: ResultsStore, scorer: Scorer, guard: SplitGuard, spec: StudySpec,
                    cell: grid_lib.Cell, method_name: str, ms: ModelSet, refs: Mapping[str, Any]) -> dict:
  """One (cell, method) of the paper's protocol: every candidate of the grid is merged and scored on the
  validation split of the merged experts' held-in tasks (normalized by the experts' validation scores);
  the best one (the first of equal maxima) is scored once on the test splits, held-in and held-out, and
  normalized as the paper does (:mod:`mergejax.evaluation.normalize`). Appends and returns the row."""
  key = f"merge/{cell.key}/{method_name}"
  fp = merge_fingerprint(spec, cell, method_name)
  row = store.get(key, fp)
  if row is not None:
    return row
  merger = CandidateMerger(method_name, ms.base_host, [ms.experts_host[c] for c in cell.categories],
                           [ms.taus_host[c] for c in cell.categories] if ms.taus_host else None, seed=cell.seed)
  experts = [r for k, r in refs.items() if k.startswith("expert/")]
  expert_val, val_cats = normalize.expert_table({r["category"]: r["heldin_validation"] for r in experts})
  timings = {"merge_s": 0.0, "select_eval_s": 0.0, "test_eval_s": 0.0}

  def merged(hp):  # deterministic: merging the chosen candidate again gives the same params
    t0 = time.perf_counter()
    out = jax.block_until_ready(merger(hp))
    timings["merge_s"] += time.perf_counter() - t0
    return out

  def validation_objective(hp) -> float:
    params = merged(hp)
    t0 = time.perf_counter()
    res = scorer(cell.size, ms.adapter, params, _suites(cell.categories), SELECTION_SPLIT)
    timings["select_eval_s"] += time.perf_counter() - t0
    return normalize.held_in(res.task_scores, expert_val, {**val_cats, **res.task_categories}, cell.categories).score

  candidates = spec.grids[method_name]
  with guard.selecting():
    if len(candidates) == 1:
      chosen, tried = candidates[0], [{"hparams": candidates[0], "validation": None}]
    else:
      chosen, tried = select(candidates, validation_objective)
  params = merged(chosen)
  t0 = time.perf_counter()
  res = scorer(cell.size, ms.adapter, params, _suites(cell.categories, heldout=True), TEST_SPLIT, per_example=True)
  timings["test_eval_s"] = time.perf_counter() - t0
  cats = res.task_categories
  hi, ho = _split_heldout(res.task_scores, cats, cell.categories)
  hi_cats = {t: cats[t] for t in hi}
  ho_cats = {t: cats[t] for t in ho}
  expert_test, exp_cats = normalize.expert_table({r["category"]: r["heldin_test"] for r in experts})
  n_hi = normalize.held_in(hi, expert_test, {**exp_cats, **hi_cats}, cell.categories)
  n_ho = normalize.held_out(ho, refs["base"]["heldout_test"], ho_cats)
  return store.put(key, {
      "type": "merge", "kind": cell.kind, "size": cell.size, "n": cell.n, "seed": cell.seed,
      "categories": list(cell.categories), "method": method_name, "hparams": chosen, "candidates": tried,
      "heldin_test": hi, "heldout_test": ho, "task_categories": {**hi_cats, **ho_cats}, "test_correct": res.correct,
      "heldin_norm": n_hi.score, "heldout_norm": n_ho.score,
      "heldin_norm_by_category": n_hi.per_category, "heldout_norm_by_category": n_ho.per_category,
      **timings}, fp)


class MergeWarmup:
  """Compiles every merge and evaluation program the study will need, on a background thread, per size.

  XLA compiles release the GIL, so while the evaluators are set up the other core compiles the packed
  scoring programs (:meth:`Scorer.warm_up`) and the merge programs of every (method, N) for each size,
  by merging the first base kind's real experts (the first N categories) with every candidate of each
  grid once. Real task vectors, not random ones: TIES' threshold search runs data-dependent passes,
  whose programs random data would not all reach.
  :meth:`wait` blocks until a size's programs are compiled, so the study never compiles the same
  program twice. One process only: a multi-host run merges on every process in lockstep and compiles
  in place.
  """

  def __init__(self, spec: StudySpec, model_sets: Mapping[str, "ModelSet"], scorer: Scorer | None = None):
    self._done = {size: threading.Event() for size in spec.sizes}
    self.error: BaseException | None = None
    threading.Thread(target=self._run, args=(spec, dict(model_sets), scorer), name="merge-warmup",
                     daemon=True).start()

  def _run(self, spec: StudySpec, model_sets: Mapping[str, "ModelSet"], scorer: Scorer | None) -> None:
    try:
      for size, ms in model_sets.items():
        if scorer is not None:  # the evaluation programs of this size too (waits for the evaluator's data)
          scorer.warm_up(ms.adapter, ms.base)
        for n in spec.ns:
          cats = spec.categories[:n]
          for name in spec.methods:
            merger = CandidateMerger(name, ms.base_host, [ms.experts_host[c] for c in cats],
                                     [ms.taus_host[c] for c in cats] if ms.taus_host else None, seed=0)
            for hp in spec.grids[name]:
              jax.block_until_ready(merger(hp))
        self._done[size].set()
    except BaseException as e:  # pylint: disable=broad-except
      self.error = e  # reported by wait(); the study then compiles in place
    finally:
      for ev in self._done.values():
        ev.set()

  def wait(self, size: str) -> None:
    self._done[size].wait()
    if self.error is not None:
      logging.warning("merge warm-up stopped (%s: %s); compiling in place", type(self.error).__name__, self.error)
      self.error = None


def run_study(cfg: Any, workdir: str | pathlib.Path, *, progress: bool = True,
              guard: SplitGuard | None = None) -> pathlib.Path:
  """Runs (or resumes) the whole study and writes the report; returns the report's path. Selection runs
  under ``guard`` (default: a new :class:`~mergejax.evaluation.leak_guard.SplitGuard`), which every
  evaluator of the study consults before it reads a split."""
  workdir = pathlib.Path(workdir).absolute()
  spec = validate(cfg, workdir)
  is_main = jax.process_index() == 0
  t_start = time.perf_counter()
  store = ResultsStore(workdir / "results")
  world_s = None  # not built here
  if spec.build_world:
    summary = world_lib.build_world(spec.world_dir, spec.sizes, kinds=spec.kinds, categories=spec.categories,
                                    multitask=spec.multitask, progress=progress and is_main,
                                    recipe_overrides={r: {"steps": n} for r, n in spec.world_steps.items()})
    world_s = world_build_seconds(store, spec, time.perf_counter() - t_start,
                                  trained=any(not r.get("skipped") for r in summary["runs"]))
  study_t0 = time.perf_counter()
  checkpoint_id.cache_clear()  # the world may have been (re)built since the last call
  guard = guard if guard is not None else SplitGuard()
  all_categories = tuple(spec.categories) == tuple(world_lib.heldin_categories())
  scorer = Scorer(guard, spec.batch_size, None if all_categories else spec.categories)
  all_cells = grid_lib.cells(spec.kinds, spec.sizes, spec.ns, spec.seeds, spec.categories, spec.design)
  units = [(c, m) for c in all_cells
           for m in grid_lib.runs_in_cell(c, spec.methods, len(spec.categories), spec.grids)]
  merges_missing = any(store.get(f"merge/{c.key}/{m}", merge_fingerprint(spec, c, m)) is None for c, m in units)
  if merges_missing or any(store.get(f"ref/{k}/{s}/base", reference_fingerprint(spec, k, s, "base")) is None
                           for k in spec.kinds for s in spec.sizes):
    scorer.prepare(adapter_for(models.load_config(
        world_lib.checkpoint_path(spec.world_dir, spec.sizes[0], spec.kinds[0], "base"))))
  bar = tqdm(total=len(units), desc="study", disable=not (progress and is_main), dynamic_ncols=True)
  loaded: dict[tuple[str, str], ModelSet] = {}  # the first kind's models, loaded once for the warm-up
  warmup = None
  if jax.process_count() == 1 and merges_missing:
    loaded = {(spec.kinds[0], size): load_models(spec, spec.kinds[0], size) for size in spec.sizes}
    warmup = MergeWarmup(spec, {size: ms for (_, size), ms in loaded.items()}, scorer)
  for kind in spec.kinds:
    for size in spec.sizes:
      todo = [(c, m) for c, m in units if c.kind == kind and c.size == size]
      ms = loaded.pop((kind, size), None) or load_models(spec, kind, size)
      refs = reference_rows(store, scorer, spec, kind, size, ms)
      if warmup is not None:
        warmup.wait(size)
      for cell, method_name in todo:
        bar.set_postfix_str(f"{cell.key} {method_name}")
        run_cell_method(store, scorer, guard, spec, cell, method_name, ms, refs)
        bar.update()
      del ms
  bar.close()
  if store.outdated:
    logging.warning("%d stored rows were computed from other inputs (grid, categories, design or world) and "
                    "were recomputed", len(store.outdated))
  study_s = time.perf_counter() - study_t0
  return report_lib.write_report(store, spec, workdir, timings={"world_s": world_s, "study_s": study_s})


def world_build_seconds(store: ResultsStore, spec: StudySpec, seconds: float, trained: bool) -> float | None:
  """The world's build time across runs: a build that trained models adds its time to the stored total
  (row ``meta/world``); one that found every model complete reports the total so far (None: the world
  was built outside this work directory's records)."""
  key = "meta/world"
  fp = store_lib.fingerprint({"world_dir": str(spec.world_dir), "sizes": spec.sizes, "kinds": spec.kinds,
                              "categories": spec.categories, "multitask": spec.multitask})
  row = store.get(key, fp) or {"type": "meta", "build_s": 0.0}
  if trained:
    row = store.put(key, {"type": "meta", "build_s": row["build_s"] + seconds}, fp)
  return row["build_s"] or None
