"""The study runner: for every cell and method, select hyperparameters on validation, then score
the chosen merge once on the test splits, and append one row to the results store.

    run_study(config, workdir)   # builds (or finds) the world, runs what is missing, writes the report

The checkpoints come from a manifest (:mod:`mergejax.study.manifest`: ``config.models``, or the one the
embedded world's builder writes) and are loaded with :func:`mergejax.models.from_pretrained`; the suites
and split names come from the config. Merges happen on device (``mergejax.merge`` over resident params)
and are evaluated without writing a checkpoint. Every process of a multi-host run executes the same
program; only process 0 writes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import pathlib
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import seqio
from absl import logging
from tqdm.auto import tqdm

from mergejax import expert_data as expert_data_lib
from mergejax import methods as methods_lib
from mergejax import models
from mergejax import sharding as sharding_lib
from mergejax import tasks
from mergejax import world as world_lib
from mergejax.evaluation import normalize
from mergejax.evaluation.aggregate import EvalResults
from mergejax.evaluation import suites as suites_lib
from mergejax.evaluation import evaluator as evaluator_lib
from mergejax.evaluation.evaluator import Evaluator
from mergejax.evaluation.leak_guard import SplitGuard
from mergejax.study import grid as grid_lib
from mergejax.study import manifest as manifest_lib
from mergejax.study import plan as plan_lib
from mergejax.study import report as report_lib
from mergejax.study import store as store_lib
from mergejax.study import verdicts as verdicts_lib
from mergejax.study import candidates as candidates_lib
from mergejax.study.candidates import CandidateMerger, task_vectors
from mergejax.study.store import ResultsStore
from mergejax.tasks import per_vocabulary
from mergejax.tasks import vocab as suite_vocab
from mergejax.training import recipes

# What a row holds; part of every row's fingerprint, so rows of an older layout are recomputed.
ROW_FORMAT = 3


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
  models: pathlib.Path | None = None  # the manifest file (None: the embedded world's)
  manifest: manifest_lib.Manifest | None = None  # the checkpoints, once read (see with_manifest)
  heldin_suite: str = "heldin_{category}"  # a category's held-in suite
  heldout_suite: str = "heldout"
  validation_split: str = "validation"  # where hyperparameters are selected
  test_split: str = "test"  # where the chosen merges are scored once
  dry_run: bool = False
  world_seeds: tuple[int, ...] = (0,)  # training seeds of the embedded world: one world each (world_dir_for)
  world: str = ""  # the world this spec's rows belong to: "" with one world seed, else world_id(seed)
  mesh: tuple[tuple[str, int], ...] = (("data", -1), ("model", 1))  # axis name -> size (-1: the rest)
  task_vector_dtype: str = "float32"  # candidates.TASK_VECTOR_DTYPES
  dry_run_chip: str = ""  # plan.CHIPS key the dry run's time estimate assumes ("": the devices' own, if known)
  merge_data: expert_data_lib.Settings = expert_data_lib.Settings()  # each expert's examples, for data-aware methods

  @property
  def device_mesh(self) -> jax.sharding.Mesh:
    """The mesh every model of the study is loaded onto, merged and evaluated on (:func:`study_mesh`)."""
    return study_mesh(self.mesh)

  def for_world(self, seed: int) -> "StudySpec":
    """This spec for the embedded world trained with ``seed``: its directory (checkpoints read again) and
    its rows' world id."""
    return dataclasses.replace(self, world_dir=world_dir_for(self.world_dir, seed), manifest=None,
                               world=world_id(seed) if len(self.world_seeds) > 1 else "")

  def key(self, key: str) -> str:
    """A row's key in the store: prefixed by the world id when the study has several worlds."""
    return f"{self.world}/{key}" if self.world else key

  def heldin(self, category: str) -> str:
    """The held-in suite of ``category``."""
    return self.heldin_suite.format(category=category)

  def suites(self, categories: Sequence[str], heldout: bool = False) -> list[str]:
    """The held-in suites of ``categories`` (and the held-out suite): scored in one evaluation pass."""
    return [self.heldin(c) for c in categories] + ([self.heldout_suite] if heldout else [])

  def path(self, kind: str, size: str, role: str, category: str | None = None) -> pathlib.Path:
    """A checkpoint's directory, from the manifest."""
    return self.manifest.entry(kind, size).path(role, category)


@functools.lru_cache(maxsize=8)
def study_mesh(axes: tuple[tuple[str, int], ...]) -> jax.sharding.Mesh:
  """The study's mesh from ``config.mesh`` (:func:`mergejax.sharding.mesh_from_axes`): parameters are split
  FSDP over every axis but "model" and tensor parallel over "model"
  (:func:`mergejax.models.pretrained.param_spec`); evaluation batches split over "data"."""
  return sharding_lib.mesh_from_axes(dict(axes))


def world_dir_for(world_dir: str | pathlib.Path, seed: int) -> pathlib.Path:
  """Where the world of training seed ``seed`` lives: ``world_dir`` for seed 0, ``<world_dir>_seed<k>``
  for seed k (so a directory never holds models of two seeds)."""
  world_dir = pathlib.Path(world_dir)
  return world_dir if seed == 0 else world_dir.with_name(f"{world_dir.name}_seed{seed}")


def world_id(seed: int) -> str:
  """The id of a world in rows (``world``) and in the verdicts' bootstrap (its top level)."""
  return f"seed{seed}"


def _world_field(spec: "StudySpec") -> dict[str, str]:
  """``{"world": id}`` for rows of a study with several worlds, else nothing."""
  return {"world": spec.world} if spec.world else {}


def _values(cfg: Any, field: str, kind: type) -> tuple:
  """A tuple-valued config field (a single value stands for itself), each item of type ``kind``."""
  value = cfg.get(field)
  items = tuple(value) if isinstance(value, (tuple, list)) else (() if value is None else (value,))
  for v in items:
    if not isinstance(v, kind) or isinstance(v, bool):
      raise StudyConfigError(f"{field}={value!r}: expected a tuple of {kind.__name__} values")
  return items


def _suite_exists(name: str) -> bool:
  try:
    resolved = suites_lib.resolve(name)
  except ValueError:
    return False
  return resolved in seqio.MixtureRegistry.names() or resolved in seqio.TaskRegistry.names()


def _split_name(cfg: Any, field: str, default: str) -> str:
  value = cfg.get(field, default)
  if not isinstance(value, str) or not value:
    raise StudyConfigError(f"{field}={value!r}: expected a split name")
  return value


def validate(cfg: Any, workdir: str | pathlib.Path) -> StudySpec:
  """Checks the whole configuration up front; StudyConfigError names the first problem. With a manifest
  (``models``) or an existing world (``build_world=False``) it also reads every checkpoint's headers
  (:func:`with_manifest`)."""
  kinds = _values(cfg, "kinds", str)
  for k in kinds:
    if k not in world_lib.KINDS:
      raise StudyConfigError(f"unknown base kind {k!r}: choose from {list(world_lib.KINDS)}")
  models_file = cfg.get("models")
  if models_file is not None and (not isinstance(models_file, str) or not models_file):
    raise StudyConfigError(f"models={models_file!r}: expected the path of a manifest (models.yaml)")
  sizes = _values(cfg, "sizes", str)
  if not models_file:
    sizes = sizes or world_lib.DEFAULT_SIZES
    for s in sizes:
      if s not in models.SIZES:
        raise StudyConfigError(f"unknown model size {s!r}: choose from {sorted(models.SIZES)}")
  heldin_suite, heldout_suite = cfg.get("heldin_suite", "heldin_{category}"), cfg.get("heldout_suite", "heldout")
  if not isinstance(heldin_suite, str) or "{category}" not in heldin_suite:
    raise StudyConfigError(f"heldin_suite={heldin_suite!r}: expected a suite name with '{{category}}' in it")
  if not isinstance(heldout_suite, str) or not _suite_exists(heldout_suite):
    raise StudyConfigError(f"heldout_suite={heldout_suite!r}: no such suite, seqio mixture or task")
  validation_split = _split_name(cfg, "validation_split", "validation")
  test_split = _split_name(cfg, "test_split", "test")
  if validation_split == test_split:
    raise StudyConfigError(f"validation_split and test_split are both {test_split!r}: selection needs its own split")
  categories = _values(cfg, "categories", str)
  if not models_file:
    categories = categories or world_lib.heldin_categories()
    for c in categories:  # the embedded world trains on the synthetic suite's categories
      if c not in tasks.HELDIN_CATEGORIES:
        raise StudyConfigError(f"unknown held-in category {c!r}: choose from {list(tasks.HELDIN_CATEGORIES)}")
  for c in categories:
    if not _suite_exists(heldin_suite.format(category=c)):
      raise StudyConfigError(f"unknown held-in category {c!r}: no suite {heldin_suite.format(category=c)!r}")
  ns = _values(cfg, "num_experts", int)
  for n in ns:
    if categories and not 1 <= n <= len(categories):
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
    for hp in grids[m]:  # what the method can merge, checked before any training or merging
      method = methods_lib.get(m, **hp)
      for n in ns:
        try:
          method.check_experts(n)
        except ValueError as e:
          raise StudyConfigError(f"methods: {e} (num_experts={tuple(ns)})") from None
  world_steps = {}
  for recipe, steps in dict(cfg.get("world_steps") or {}).items():
    if recipe not in recipes.RECIPES:
      raise StudyConfigError(f"world_steps: unknown recipe {recipe!r}: choose from {list(recipes.RECIPES)}")
    if steps is not None:
      if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise StudyConfigError(f"world_steps.{recipe}={steps!r} must be a positive integer")
      world_steps[recipe] = steps
  world_seeds = _values(cfg, "world_seeds", int) or (0,)
  if len(set(world_seeds)) != len(world_seeds) or min(world_seeds) < 0 or world_seeds[0] != 0:
    raise StudyConfigError(f"world_seeds={tuple(world_seeds)!r}: expected distinct seeds >= 0, the first 0 "
                           "(the world in world_dir)")
  if models_file and world_seeds != (0,):
    raise StudyConfigError("world_seeds: several worlds need the embedded world; a manifest (models) names "
                           "one set of checkpoints")
  mesh = tuple((str(k), v) for k, v in dict(cfg.get("mesh") or {"data": -1, "model": 1}).items())
  if "data" not in dict(mesh):
    raise StudyConfigError(f"mesh={dict(mesh)!r}: needs a 'data' axis (evaluation batches split over it)")
  try:
    built = study_mesh(mesh)
  except (ValueError, TypeError) as e:
    raise StudyConfigError(str(e)) from None
  if jax.process_count() > 1 and built.devices.size != jax.device_count():
    raise StudyConfigError(f"mesh={dict(mesh)!r}: a multi-process study's mesh must span all "
                           f"{jax.device_count()} devices (use -1 for one axis)")
  try:
    merge_data = expert_data_lib.Settings(**dict(cfg.get("merge_data") or {}))
  except (TypeError, ValueError) as e:
    raise StudyConfigError(f"merge_data: {e}") from None
  data_methods = [m for m in names if expert_data_lib.needs_data(methods_lib.get(m, **grids[m][0]))]
  if data_methods and merge_data.split == test_split:
    raise StudyConfigError(f"merge_data.split={test_split!r} is the test split: {data_methods[0]} would learn from "
                           "the examples its merge is scored on")
  tv_dtype = cfg.get("task_vector_dtype", "float32")
  if tv_dtype not in candidates_lib.TASK_VECTOR_DTYPES:
    raise StudyConfigError(f"task_vector_dtype={tv_dtype!r}: choose from {candidates_lib.TASK_VECTOR_DTYPES}")
  chip = cfg.get("dry_run_chip") or ""
  if chip and chip not in plan_lib.CHIPS:
    raise StudyConfigError(f"dry_run_chip={chip!r}: choose from {tuple(plan_lib.CHIPS)}")
  world_dir = pathlib.Path(cfg.world_dir) if cfg.get("world_dir") else pathlib.Path(workdir) / "world"
  build = bool(cfg.build_world) and not models_file
  multitask = bool(cfg.get("multitask", True))
  spec = StudySpec(kinds, sizes, ns, int(cfg.subset_seeds), names, grids, categories, world_dir, build,
                   int(cfg.eval_batch_size), multitask, world_steps, design, settings,
                   models=pathlib.Path(models_file).absolute() if models_file else None,
                   heldin_suite=heldin_suite, heldout_suite=heldout_suite, validation_split=validation_split,
                   test_split=test_split, dry_run=bool(cfg.get("dry_run", False)), world_seeds=tuple(world_seeds),
                   mesh=mesh, task_vector_dtype=tv_dtype, dry_run_chip=chip, merge_data=merge_data)
  if build:
    return spec
  for seed in world_seeds[1:]:  # every further world is there too (checked now; read when its turn comes)
    with_manifest(spec.for_world(seed))
  return with_manifest(spec)


def with_manifest(spec: StudySpec) -> StudySpec:
  """``spec`` with its checkpoints read and checked (:mod:`mergejax.study.manifest`): the manifest file
  ``spec.models``, else the embedded world's ``<world_dir>/models.yaml`` once built, else (an existing
  world, ``build_world=False``) the manifest of the world's layout. Kinds, size labels (ordered by the
  bases' parameter counts) and categories then come from the manifest. StudyConfigError: one line."""
  def known(c: str) -> str | None:
    return None if _suite_exists(spec.heldin(c)) else f"no held-in suite {spec.heldin(c)!r}"

  kw = dict(kinds=spec.kinds, known_category=known, categories=spec.categories, multitask=spec.multitask,
            sizes=spec.sizes)
  world_file = spec.world_dir / world_lib.MANIFEST
  try:
    if spec.models is not None:
      m = manifest_lib.load(spec.models, **kw)
    elif spec.build_world and world_file.is_file():
      m = manifest_lib.load(world_file, **kw)
    else:
      raw = world_lib.manifest(spec.sizes, kinds=spec.kinds, categories=spec.categories, multitask=spec.multitask)
      m = manifest_lib.validate(manifest_lib.parse(raw, str(spec.world_dir), spec.world_dir.absolute()),
                                str(spec.world_dir), **kw)
  except manifest_lib.ManifestError as e:
    hint = "" if spec.models is not None or spec.build_world else " (set build_world=True to train it)"
    raise StudyConfigError(f"{e}{hint}") from None
  categories = tuple(next(iter(m.entries.values())).experts)
  for n in spec.ns:
    if not 1 <= n <= len(categories):
      raise StudyConfigError(f"num_experts {n} is out of range: there are {len(categories)} experts per base")
  return dataclasses.replace(spec, manifest=m, kinds=m.kinds, sizes=m.sizes, categories=categories)


class Scorer:
  """Per-task scores of params on one or more suites of one split, in one evaluation pass.

  One :class:`~mergejax.evaluation.Evaluator` per (model, vocabulary, split) holds every task the study
  reads on that split (validation: the held-in suites of the study's categories; test: those and the
  held-out suite), tokenized with the checkpoints' own vocabulary
  (:func:`mergejax.tasks.per_vocabulary.with_vocabulary`); models with the same vocabulary share the
  data. A call scores only the requested suites' tasks. Every evaluator is bound to the split guard, so
  none of them reads a test split while a selection is open.
  """

  def __init__(self, guard: SplitGuard, batch_size: int, split_suites: Mapping[str, Sequence[str]],
               mesh: jax.sharding.Mesh | None = None):
    self.guard, self.batch_size, self.mesh = guard, batch_size, mesh
    self._split_suites = {split: list(s) for split, s in split_suites.items()}
    self._evaluators: dict[tuple, Evaluator] = {}
    self._building: dict[tuple, concurrent.futures.Future] = {}
    self._suite_tasks: dict[tuple, list[str]] = {}
    self.seconds = 0.0
    self.calls = 0

  @property
  def splits(self) -> list[str]:
    return list(self._split_suites)

  def _mixture(self, split: str, vocabulary) -> str:
    return per_vocabulary.with_vocabulary(suites_lib.union(self._split_suites[split]), vocabulary)

  def _new_evaluator(self, adapter, vocabulary, split: str) -> Evaluator:
    return Evaluator(adapter, self._mixture(split, vocabulary), split, batch_size=self.batch_size, guard=self.guard,
                     mesh=self.mesh)

  def prepare(self, adapter, vocabulary) -> None:
    """Starts building both splits' evaluators (seqio reading, tokenization, packing) on background
    threads, one per split, so that they overlap each other and the models' loading. One process only
    (a multi-host run places batches on global meshes in lockstep)."""
    if jax.process_count() > 1:
      return
    tag = per_vocabulary.vocabulary_tag(vocabulary)
    for split in self.splits:
      if (tag, split) not in self._building:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"evaluator-{split}")
        self._building[(tag, split)] = pool.submit(
            lambda sp=split: self._new_evaluator(adapter, vocabulary, sp).prepare())
        pool.shutdown(wait=False)

  def warm_up(self, ms: "ModelSet", params) -> None:
    """Compiles the evaluation programs of one model set (see :meth:`Evaluator.warm_up`), the validation
    split's first (it is ready first). Safe on a background thread after :meth:`prepare`."""
    tag = per_vocabulary.vocabulary_tag(ms.vocabulary)
    for split in self.splits:
      if (tag, split) in self._building:
        self._building[(tag, split)].result().with_adapter(ms.adapter).warm_up(params)

  def evaluator(self, ms: "ModelSet", split: str) -> Evaluator:
    tag = per_vocabulary.vocabulary_tag(ms.vocabulary)
    key = (id(ms.adapter), tag, split)
    ev = self._evaluators.get(key)
    if ev is None:
      other = next((e for (_, t, sp), e in self._evaluators.items() if (t, sp) == (tag, split)), None)
      if other is None and (tag, split) in self._building:
        other = self._building[(tag, split)].result()
      ev = (other.with_adapter(ms.adapter) if other is not None  # same data, another model
            else self._new_evaluator(ms.adapter, ms.vocabulary, split))
      self._evaluators[key] = ev
    return ev

  def __call__(self, ms: "ModelSet", params, suites: str | Sequence[str], split: str, *,
               per_example: bool = False) -> EvalResults:
    suites = [suites] if isinstance(suites, str) else list(suites)
    ev = self.evaluator(ms, split)
    tag = per_vocabulary.vocabulary_tag(ms.vocabulary)
    tasks = []
    for suite in suites:
      if (suite, tag) not in self._suite_tasks:
        self._suite_tasks[(suite, tag)] = suites_lib.task_names(
            per_vocabulary.with_vocabulary(suites_lib.resolve(suite), ms.vocabulary))
      tasks += [t for t in self._suite_tasks[(suite, tag)] if t not in tasks]
    t0 = time.perf_counter()
    res = ev.evaluate(params, tasks, per_example=per_example)
    self.seconds += time.perf_counter() - t0
    self.calls += 1
    return res


@dataclasses.dataclass
class ModelSet:
  """The models of one (kind, size) and the experts' task vectors, each leaf sharded over the study's mesh
  (:func:`load_models`); merges and evaluation read them there. The host holds no copy.
  """

  config: Any  # the decoder's DecoderConfig
  adapter: Any  # the checkpoints' ModelAdapter (mergejax.models.from_pretrained)
  vocabulary: Any  # their tokenizer, as a seqio vocabulary
  params_count: int  # parameters of the base, read from its checkpoint
  base: Any
  experts: dict[str, Any]
  multitask: Any | None
  taus: dict[str, Any] | None = None  # task vectors expert - base (candidates.task_vectors), on the mesh


_VOCABULARIES: dict[str, Any] = {}  # tokenizer files' hash -> one vocabulary object (one tokenization each)
_VOCABULARIES_LOCK = threading.Lock()


def _vocabulary(checkpoint: manifest_lib.Checkpoint, vocabulary):
  """One vocabulary object per tokenizer content, the synthetic suite's own for its SentencePiece model,
  so that checkpoints with equal tokenizers share their evaluators' data and a built-in world's models
  read the suite's tasks as registered."""
  with _VOCABULARIES_LOCK:
    if not _VOCABULARIES:
      own = suite_vocab.get_vocabulary()
      _VOCABULARIES[manifest_lib.tokenizer_hash({"tokenizer.model": own.sentencepiece_model_file})] = own
    return _VOCABULARIES.setdefault(checkpoint.vocabulary or per_vocabulary.vocabulary_tag(vocabulary), vocabulary)


def load_models(spec: StudySpec, kind: str, size: str, with_multitask: bool = True) -> ModelSet:
  """Loads the (kind, size) models of the manifest with :func:`mergejax.models.from_pretrained` onto the
  study's mesh, each tensor read straight into its shards (FSDP over the mesh's data axes, tensor parallel
  over "model": :func:`mergejax.models.pretrained.param_spec`; a leaf no axis divides is replicated), and
  computes the experts' task vectors there, sharded alike, in ``spec.task_vector_dtype``."""
  entry = spec.manifest.entry(kind, size)
  mesh = spec.device_mesh
  load = lambda ck: models.from_pretrained(ck.path, mesh=mesh, vocabulary=suite_vocab.get_vocabulary())
  base_lm = load(entry.base)
  experts = {c: load(entry.experts[c]).params for c in spec.categories}
  multitask = load(entry.multitask).params if with_multitask and entry.multitask is not None else None
  return ModelSet(base_lm.config, base_lm.adapter, _vocabulary(entry.base, base_lm.vocabulary), entry.base.params,
                  base_lm.params, experts, multitask,
                  taus=task_vectors(base_lm.params, experts, spec.task_vector_dtype))


_checkpoint_id = functools.lru_cache(maxsize=None)(manifest_lib.checkpoint_id)


def _model_id(spec: StudySpec, size: str, kind: str, role: str, category: str | None = None) -> str:
  return _checkpoint_id(spec.path(kind, size, role, category))


def _suites_id(spec: StudySpec) -> dict[str, Any]:
  return {"heldin_suite": spec.heldin_suite, "heldout_suite": spec.heldout_suite,
          "splits": (spec.validation_split, spec.test_split)}


def reference_fingerprint(spec: StudySpec, kind: str, size: str, role: str, category: str | None = None) -> str:
  """What a reference row depends on: the model's checkpoint and the suites and splits it is scored on."""
  return store_lib.fingerprint({"format": ROW_FORMAT, "model": _model_id(spec, size, kind, role, category),
                                "categories": category or spec.categories, **_suites_id(spec)})


def merge_fingerprint(spec: StudySpec, cell: grid_lib.Cell, method_name: str) -> str:
  """What a merge row depends on: method and grid, the dtype task vectors are merged in, the design and
  its subset, the seed, the base's and the merged experts' checkpoints (whose validation scores select
  and whose test scores normalize), the suites and splits; for a data-aware method, the examples it
  learns from (``merge_data``)."""
  data = learns_from_data(spec, method_name)
  return store_lib.fingerprint({
      **({"merge_data": dataclasses.asdict(spec.merge_data)} if data else {}),
      "format": ROW_FORMAT, "method": method_name, "grid": spec.grids[method_name],
      "task_vector_dtype": spec.task_vector_dtype, "design": spec.design,
      "study_categories": spec.categories, "categories": cell.categories, "seed": cell.seed,
      "base": _model_id(spec, cell.size, cell.kind, "base"),
      "experts": [_model_id(spec, cell.size, cell.kind, "expert", c) for c in cell.categories],
      **_suites_id(spec)})


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
    key = spec.key(f"ref/{kind}/{size}/{role}")
    fp = reference_fingerprint(spec, kind, size, role)
    row = store.get(key, fp)
    if row is None:
      res = scorer(ms, params, spec.suites(spec.categories, heldout=True), spec.test_split, per_example=True)
      hi, ho = _split_heldout(res.task_scores, res.task_categories, spec.categories)
      row = {"type": "reference", "role": role, "kind": kind, "size": size, "heldin_test": hi, "heldout_test": ho,
             **_world_field(spec),
             "task_categories": res.task_categories, "test_correct": res.correct, "task_chance": res.chance}
      if role == "base":
        val = scorer(ms, params, spec.suites(spec.categories), spec.validation_split, per_example=True)
        row.update(heldin_validation=val.task_scores, validation_correct=val.correct,
                   validation_chance=val.chance, params=ms.params_count)
      row = store.put(key, row, fp)
    return row

  refs["base"] = full_reference("base", ms.base)
  for c, params in ms.experts.items():
    key = spec.key(f"ref/{kind}/{size}/expert/{c}")
    fp = reference_fingerprint(spec, kind, size, "expert", c)
    row = store.get(key, fp)
    if row is None:
      test = scorer(ms, params, spec.heldin(c), spec.test_split, per_example=True)
      val = scorer(ms, params, spec.heldin(c), spec.validation_split, per_example=True)
      row = store.put(key, {"type": "reference", "role": "expert", "kind": kind, "size": size, "category": c,
                            **_world_field(spec),
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


def learns_from_data(spec: StudySpec, method_name: str) -> bool:
  """Whether a method of the study is data-aware (read from its first candidate)."""
  return expert_data_lib.needs_data(methods_lib.get(method_name, **spec.grids[method_name][0]))


def expert_key(spec: StudySpec, kind: str, size: str, category: str) -> tuple[str, ...]:
  """What names an expert and its examples in the statistics cache: (world, kind, size, category), its
  checkpoint's path and identity, and the suite its examples come from."""
  return (spec.world, kind, size, category, str(spec.path(kind, size, "expert", category)),
          _model_id(spec, size, kind, "expert", category), spec.heldin(category))


def cell_data(data: expert_data_lib.ExpertExamples | None, spec: StudySpec, kind: str, size: str, ms: ModelSet,
              categories: Sequence[str], method_name: str) -> expert_data_lib.ExpertData | None:
  """The examples of the experts of ``categories`` for ``method_name`` if it is data-aware, else None."""
  if data is None or not learns_from_data(spec, method_name):
    return None
  keys = [expert_key(spec, kind, size, c) for c in categories]
  return data.for_experts(ms.adapter, ms.vocabulary, [spec.heldin(c) for c in categories], keys)


def run_cell_method(store: ResultsStore, scorer: Scorer, guard: SplitGuard, spec: StudySpec,
                    cell: grid_lib.Cell, method_name: str, ms: ModelSet, refs: Mapping[str, Any],
                    data: expert_data_lib.ExpertExamples | None = None) -> dict:
  """One (cell, method) of the paper's protocol: every candidate of the grid is merged and scored on the
  validation split of the merged experts' held-in tasks (normalized by the experts' validation scores);
  the best one (the first of equal maxima) is scored once on the test splits, held-in and held-out, and
  normalized as the paper does (:mod:`mergejax.evaluation.normalize`). A data-aware method learns from
  the merged experts' own examples (``data``, read before). Appends and returns the row."""
  key = spec.key(f"merge/{cell.key}/{method_name}")
  fp = merge_fingerprint(spec, cell, method_name)
  row = store.get(key, fp)
  if row is not None:
    return row
  merger = CandidateMerger(method_name, ms.base, [ms.experts[c] for c in cell.categories],
                           [ms.taus[c] for c in cell.categories] if ms.taus else None, seed=cell.seed,
                           data=cell_data(data, spec, cell.kind, cell.size, ms, cell.categories, method_name))
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
    res = scorer(ms, params, spec.suites(cell.categories), spec.validation_split)
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
  res = scorer(ms, params, spec.suites(cell.categories, heldout=True), spec.test_split, per_example=True)
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
      **_world_field(spec), **timings}, fp)


class MergeWarmup:
  """Compiles every merge and evaluation program the study will need, on a background thread, per size.

  XLA compiles release the GIL, so while the evaluators are set up the other core compiles the packed
  scoring programs (:meth:`Scorer.warm_up`) and the merge programs of every (method, N) for each size,
  by merging the first base kind's real experts (the first N categories) with every candidate of each
  grid once. Real task vectors, not random ones: TIES' threshold search runs data-dependent passes,
  whose programs random data would not all reach.
  :meth:`wait` blocks until a size's programs are compiled, so the study never compiles the same
  program twice. On a background thread only for one process on one device: a mesh of several devices
  runs programs with collectives, which must not run from two threads at once, so there
  (``background=False``) the merges run on the calling thread before any evaluation, while the evaluators'
  data is read on theirs; a multi-host run merges on every process in lockstep and compiles in place.
  Data-aware methods whose statistics are per expert (RegMean, Fisher) warm up too when ``data`` is given
  (its examples read before), and the statistics they compute stay cached until their model set's cells
  are done; others that learn per expert subset (AdaMerging) compile in place.
  """

  def __init__(self, spec: StudySpec, model_sets: Mapping[str, "ModelSet"], scorer: Scorer | None = None,
               background: bool = True, data: expert_data_lib.ExpertExamples | None = None):
    self._done = {size: threading.Event() for size in spec.sizes}
    self.error: BaseException | None = None
    if background:
      threading.Thread(target=self._run, args=(spec, dict(model_sets), scorer, data), name="merge-warmup",
                       daemon=True).start()
    else:
      self._run(spec, dict(model_sets), scorer, data)

  def _run(self, spec: StudySpec, model_sets: Mapping[str, "ModelSet"], scorer: Scorer | None,
           data: expert_data_lib.ExpertExamples | None) -> None:
    try:
      for size, ms in model_sets.items():
        if scorer is not None:  # the evaluation programs of this size too (waits for the evaluator's data)
          scorer.warm_up(ms, ms.base)
        for n in spec.ns:
          cats = spec.categories[:n]
          for name in spec.methods:
            method = methods_lib.get(name, **spec.grids[name][0])
            if expert_data_lib.needs_data(method) and (data is None or not method.compute_stats.per_expert):
              continue
            merger = CandidateMerger(name, ms.base, [ms.experts[c] for c in cats],
                                     [ms.taus[c] for c in cats] if ms.taus else None, seed=0,
                                     data=cell_data(data, spec, spec.kinds[0], size, ms, cats, name))
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
              guard: SplitGuard | None = None) -> pathlib.Path | None:
  """Runs (or resumes) the whole study and writes the report; returns the report's path (None after a dry run,
  which prints the plan and stops). Selection runs
  under ``guard`` (default: a new :class:`~mergejax.evaluation.leak_guard.SplitGuard`), which every
  evaluator of the study consults before it reads a split."""
  workdir = pathlib.Path(workdir).absolute()
  spec = validate(cfg, workdir)
  if spec.dry_run:
    print(dry_run(spec))
    return None
  is_main = jax.process_index() == 0
  t_start = time.perf_counter()
  store = ResultsStore(workdir / "results")
  world_s = None  # not built here
  if spec.build_world:
    clock = WorldClock(store, spec)
    for seed in spec.world_seeds:
      summary = world_lib.build_world(world_dir_for(spec.world_dir, seed), spec.sizes, kinds=spec.kinds,
                                      categories=spec.categories, multitask=spec.multitask, seed=seed,
                                      progress=progress and is_main, on_run_done=clock.lap,
                                      recipe_overrides={r: {"steps": n} for r, n in spec.world_steps.items()})
      if any(not r.get("skipped") for r in summary["runs"]):
        clock.lap()  # the build's last stretch (writing its manifest)
    world_s = world_build_seconds(store, spec, 0.0, trained=False)
  # One spec per world, its manifest read (the one the world builder wrote, or the layout's).
  worlds = [spec.for_world(seed) for seed in spec.world_seeds]
  if spec.manifest is not None:  # seed 0's world, read at start-up
    worlds[0] = dataclasses.replace(worlds[0], manifest=spec.manifest)
  worlds = [w if w.manifest is not None else with_manifest(w) for w in worlds]
  spec = dataclasses.replace(spec, manifest=worlds[0].manifest)
  study_t0 = time.perf_counter()
  _checkpoint_id.cache_clear()  # the world may have been (re)built since the last call
  guard = guard if guard is not None else SplitGuard(spec.validation_split)
  scorer = Scorer(guard, spec.batch_size, {spec.validation_split: spec.suites(spec.categories),
                                           spec.test_split: spec.suites(spec.categories, heldout=True)},
                  mesh=spec.device_mesh)
  data = None  # each expert's examples for the data-aware methods, read outside selections
  if any(learns_from_data(spec, m) for m in spec.methods):
    data = expert_data_lib.ExpertExamples(spec.merge_data, guard)
  all_cells = grid_lib.cells(spec.kinds, spec.sizes, spec.ns, spec.seeds, spec.categories, spec.design)
  units = [(c, m) for c in all_cells
           for m in grid_lib.runs_in_cell(c, spec.methods, len(spec.categories), spec.grids)]
  bar = tqdm(total=len(units) * len(worlds), desc="study", disable=not (progress and is_main), dynamic_ncols=True)
  prepared = False  # the evaluators' data is read and packed once, for every world
  for w in worlds:
    missing = lambda c, m, w=w: store.get(w.key(f"merge/{c.key}/{m}"), merge_fingerprint(w, c, m)) is None  # noqa: E731
    merges_missing = any(missing(c, m) for c, m in units)
    data_missing = lambda todo, w=w: data is not None and any(  # noqa: E731
        learns_from_data(w, m) and missing(c, m) for c, m in todo)
    refs_missing = any(store.get(w.key(f"ref/{k}/{s}/base"), reference_fingerprint(w, k, s, "base")) is None
                       for k in w.kinds for s in w.sizes)
    loaded: dict[tuple[str, str], ModelSet] = {}  # the first kind's models, loaded once for the warm-up
    warmup = None
    # The warm-up executes merges on a thread of its own only where every program runs on one device.
    # Programs on a mesh of several devices exchange shards (collectives); two threads running such
    # programs at once can leave each device waiting in the other's exchange (XLA:CPU aborts). There it
    # merges on this thread before the first evaluation, while the evaluators' data is read.
    if jax.process_count() == 1 and merges_missing:
      first = load_models(w, w.kinds[0], w.sizes[0])
      if not prepared:
        scorer.prepare(first.adapter, first.vocabulary)  # reads and packs the data while the other sizes load
        prepared = True
      loaded = {(w.kinds[0], w.sizes[0]): first}
      loaded.update({(w.kinds[0], size): load_models(w, w.kinds[0], size) for size in w.sizes[1:]})
      warm_data = data if data_missing(units) else None
      if warm_data is not None:  # the warm-up computes the first subsets' per-expert statistics
        for ms in loaded.values():
          warm_data.read(ms.vocabulary, [w.heldin(c) for c in w.categories])
      one_device = w.device_mesh.devices.size == 1
      warmup = MergeWarmup(w, {size: ms for (_, size), ms in loaded.items()}, scorer if one_device else None,
                           background=one_device, data=warm_data)
    elif refs_missing and not prepared:
      loaded = {(w.kinds[0], w.sizes[0]): load_models(w, w.kinds[0], w.sizes[0])}
      first = loaded[(w.kinds[0], w.sizes[0])]
      scorer.prepare(first.adapter, first.vocabulary)
      prepared = True
    for kind in w.kinds:
      for size in w.sizes:
        todo = [(c, m) for c, m in units if c.kind == kind and c.size == size]
        ms = loaded.pop((kind, size), None) or load_models(w, kind, size)
        refs = reference_rows(store, scorer, w, kind, size, ms)
        if data_missing(todo):
          data.read(ms.vocabulary, [w.heldin(c) for c in w.categories])
        if warmup is not None:
          warmup.wait(size)
        for cell, method_name in todo:
          bar.set_postfix_str(f"{w.world + ' ' if w.world else ''}{cell.key} {method_name}")
          run_cell_method(store, scorer, guard, w, cell, method_name, ms, refs, data)
          bar.update()
        del ms
        if data is not None:  # no later cell merges these experts
          data.statistics.discard(lambda e, kind=kind, size=size, w=w: e[:3] == (w.world, kind, size))
  bar.close()
  if store.outdated:
    logging.warning("%d stored rows were computed from other inputs (grid, categories, design, suites or "
                    "checkpoints) and were recomputed", len(store.outdated))
  study_s = study_seconds(store, time.perf_counter() - study_t0)
  analysis = verdicts_lib.analysis_row(spec.verdicts, spec.methods)
  store.put(verdicts_lib.ANALYSIS_KEY, analysis, store_lib.fingerprint(analysis))
  return report_lib.write_report(store, spec, workdir, timings={"world_s": world_s, "study_s": study_s})


def dry_run(spec: StudySpec) -> str:
  """The plan of the study (:mod:`mergejax.study.plan`) as text; trains, loads and merges nothing. A world
  not built yet is sized from the size table."""
  if spec.manifest is None:  # build_world: use the world's checkpoints if they are all there
    try:
      spec = with_manifest(dataclasses.replace(spec, build_world=False))
    except StudyConfigError:
      pass
  mesh = spec.device_mesh
  if spec.manifest is not None:
    sizes = plan_lib.model_bytes_from_manifest(spec.manifest, spec.categories, mesh)
  else:
    sizes = plan_lib.model_bytes_from_sizes(  # the configs the world's recipes would train
        spec.kinds, spec.sizes, spec.categories, spec.multitask,
        lambda s: models.param_count(world_lib.run_spec("pretrain", s, spec.world_dir).model), mesh.devices.size)
  suites = list(dict.fromkeys(spec.suites(spec.categories, heldout=True)))
  counts = {split: plan_lib.suite_counts(suites, split, suites_lib.task_names)
            for split in (spec.validation_split, spec.test_split)}
  kind = next(iter(mesh.devices.flat)).device_kind
  chip = spec.dry_run_chip or plan_lib.chip_of(kind)
  first = {m: methods_lib.get(m, **spec.grids[m][0]) for m in spec.methods}  # each method's first candidate
  data_methods = {m: (x.compute_stats.kind, bool(x.compute_stats.per_expert)) for m, x in first.items()
                  if expert_data_lib.needs_data(x)}
  text = plan_lib.format_plan(plan_lib.make(
      spec, sizes, {split: c[0] for split, c in counts.items()}, dict(mesh.shape), evaluation_step(mesh),
      tokens={split: c[1] for split, c in counts.items()}, chip=plan_lib.CHIPS[chip] if chip else None,
      data_methods=data_methods))
  if not chip:
    text += f" (these devices, {kind!r}, are not a chip the estimate knows)"
  if spec.manifest is None:
    text += f"\n  (the world at {spec.world_dir} is not built yet: sizes from its recipes' model configs, float32)"
  return text


def evaluation_step(mesh: jax.sharding.Mesh) -> plan_lib.Activations:
  """The evaluator's packed step per device (its default packing; rows split over "data", or whole batches
  per device where one CPU process scores them round robin)."""
  rows = evaluator_lib.PACK_ROWS
  round_robin = (jax.process_count() == 1 and mesh.devices.size > 1
                 and next(iter(mesh.devices.flat)).platform == "cpu")
  if not round_robin:
    rows = -(-rows // mesh.shape["data"])
  return plan_lib.Activations(rows=rows, seq_len=evaluator_lib.PACK_LEN, targets=evaluator_lib.PACK_LEN // 2,
                              replica=round_robin)


def study_seconds(store: ResultsStore, seconds: float) -> float:
  """The study's time across the runs of this work directory (row ``meta/study``): each run adds its own,
  so a resumed or re-reported study still reports the time its rows took."""
  key, fp = "meta/study", store_lib.fingerprint({})
  row = store.get(key, fp) or {"type": "meta", "study_s": 0.0}
  return store.put(key, {"type": "meta", "study_s": row["study_s"] + seconds}, fp)["study_s"]


class WorldClock:
  """Adds the world build's time to the stored total as each run completes (:meth:`lap`), so a build
  killed part-way keeps the time of the runs it finished (their checkpoints are kept too)."""

  def __init__(self, store: ResultsStore, spec: StudySpec):
    self._store, self._spec = store, spec
    self._last = time.perf_counter()
    self._lock = threading.Lock()

  def lap(self) -> None:
    with self._lock:
      now = time.perf_counter()
      world_build_seconds(self._store, self._spec, now - self._last, trained=True)
      self._last = now


def world_build_seconds(store: ResultsStore, spec: StudySpec, seconds: float, trained: bool) -> float | None:
  """The world's build time across runs: a build that trained models adds its time to the stored total
  (row ``meta/world``); one that found every model complete reports the total so far (None: the world
  was built outside this work directory's records)."""
  key = "meta/world"
  fp = store_lib.fingerprint({"world_dir": str(spec.world_dir), "sizes": spec.sizes, "kinds": spec.kinds,
                              "categories": spec.categories, "multitask": spec.multitask,
                              **({"world_seeds": spec.world_seeds} if spec.world_seeds != (0,) else {})})
  row = store.get(key, fp) or {"type": "meta", "build_s": 0.0}
  if trained:
    row = store.put(key, {"type": "meta", "build_s": row["build_s"] + seconds}, fp)
  return row["build_s"] or None
