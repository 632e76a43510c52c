"""The embedded default world: bases, experts and multitask baselines for the study.

Layout under a workdir::

    <workdir>/<size>/pretrained/base                     pretrain
    <workdir>/<size>/instruction_tuned/base              instruction_tune (from the pretrained base)
    <workdir>/<size>/<kind>/experts/<category>           expert (one per held-in category, per kind)
    <workdir>/<size>/<kind>/multitask                    multitask (all held-in categories, per kind)
    <workdir>/world.json                                 what the last build did (timings, losses)
    <workdir>/models.yaml                                the study's manifest of these checkpoints

Each leaf directory is a model checkpoint (:mod:`mergejax.models.io`): it appears only once
complete (written under a temporary name and renamed), so :func:`build_world` skips exactly the
finished ones, and resumes a half-trained run from its training checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import yaml
from tqdm.auto import tqdm

from mergejax import files
from mergejax import models
from mergejax import tasks
from mergejax.training import data as data_lib
from mergejax.training import recipes
from mergejax.training import trainer as trainer_lib

KINDS = recipes.KINDS
ROLES = ("base", "expert", "multitask")
DEFAULT_SIZES = ("xs", "s")
MANIFEST = "models.yaml"
_MANIFEST_HEADER = "# mergejax world manifest: the checkpoints of this world (mergejax-study --config.models=...)\n"


def checkpoint_path(workdir: str | os.PathLike, size: str, kind: str, role: str,
                    category: str | None = None) -> pathlib.Path:
  """Where a world model lives (see the module docstring)."""
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")
  root = pathlib.Path(workdir) / size / kind
  if role == "base":
    return root / "base"
  if role == "expert":
    if not category:
      raise ValueError("role 'expert' needs a category")
    return root / "experts" / category
  if role == "multitask":
    return root / "multitask"
  raise ValueError(f"unknown role {role!r}; known: {ROLES}")


def heldin_categories() -> tuple[str, ...]:
  """The 8 held-in categories of the synthetic suite."""
  return tuple(tasks.HELDIN_CATEGORIES)


_ROLE = {"pretrain": "base", "instruction_tune": "base", "expert": "expert", "multitask": "multitask"}


def run_spec(recipe: str, size: str | models.ModelConfig, workdir: str | os.PathLike | None = None, *,
             kind: str = "pretrained", category: str | None = None, out: str | os.PathLike | None = None,
             init: str | os.PathLike | None = None, **resolve_kw: Any) -> recipes.RunSpec:
  """A recipe's :class:`~mergejax.training.recipes.RunSpec` with its output and starting checkpoint in
  the world layout under ``workdir`` (unless ``out`` / ``init`` are given); ``resolve_kw`` goes to
  :func:`mergejax.training.recipes.resolve`."""
  kind = recipes.run_kind(recipe, kind)
  if recipe == "expert" and not category:
    raise ValueError("recipe 'expert' needs a category")
  size_name = size if isinstance(size, str) else (size.name or "custom")

  def path(*args) -> pathlib.Path:
    if workdir is None:
      raise ValueError(f"recipe {recipe!r}: give a workdir or explicit output / init paths")
    return checkpoint_path(workdir, size_name, *args)

  if out is None:
    out = path(kind, _ROLE[recipe], category if recipe == "expert" else None)
  if init is None and recipe != "pretrain":
    init = path("pretrained" if recipe == "instruction_tune" else kind, "base")
  return recipes.resolve(recipe, size, out=out, init=init, category=category, kind=kind, **resolve_kw)


def plan(workdir: str | os.PathLike, sizes: Sequence[str] = DEFAULT_SIZES, *,
         kinds: Sequence[str] = KINDS, categories: Sequence[str] | None = None,
         multitask: bool = True, recipe_overrides: Mapping[str, Mapping[str, Any]] | None = None,
         batch_size: int = recipes.BATCH_SIZE, feature_lengths: Mapping[str, int] | None = None,
         seed: int = 0, mixture_prefix: str = "mj",
         model_overrides: Mapping[str, Any] | None = None) -> list[recipes.RunSpec]:
  """All runs of a world build, in dependency order (bases before what starts from them)."""
  categories = tuple(categories) if categories is not None else heldin_categories()
  for k in kinds:
    if k not in KINDS:
      raise ValueError(f"unknown kind {k!r}; known: {KINDS}")
  over = {r: dict(v) for r, v in dict(recipe_overrides or {}).items()}
  for r in over:
    if r not in recipes.RECIPES:
      raise ValueError(f"recipe_overrides: unknown recipe {r!r}; known: {recipes.RECIPES}")

  def spec(recipe, size, **kw):
    o = dict(over.get(recipe, {}))
    if recipe == "multitask":  # its budget follows the experts' at this size (their steps summed over the categories)
      o = {**recipes.multitask_defaults(len(categories), over.get("expert"), size=size),
           **{k: v for k, v in o.items() if v is not None}}
    steps = o.pop("steps", None)
    return run_spec(recipe, size, workdir, steps=steps, opt_overrides=o, batch_size=batch_size,
                    feature_lengths=feature_lengths, seed=seed, mixture_prefix=mixture_prefix,
                    model_overrides=model_overrides, **kw)

  runs = []
  for size in sizes:
    runs.append(spec("pretrain", size))
    if "instruction_tuned" in kinds:
      runs.append(spec("instruction_tune", size))
    for kind in kinds:
      for c in categories:
        runs.append(spec("expert", size, kind=kind, category=c))
      if multitask:
        runs.append(spec("multitask", size, kind=kind))
  return runs


def train_flops(runs: Sequence[recipes.RunSpec]) -> float:
  r"""Training compute of a plan: :math:`\sum_\text{runs} \text{steps} \cdot B \cdot T \cdot
  \text{FLOPs/token}(T)` with B rows of T tokens per step (PaLM's 6N + 12LHd_hT per token); the
  budget the default world is held to, independent of how loaded the machine is."""
  total = 0.0
  for spec in runs:
    length = sum(dict(spec.feature_lengths).values())
    total += spec.steps * spec.batch_size * length * models.flops_per_token(spec.model, length)
  return total


def build_world(workdir: str | os.PathLike, sizes: Sequence[str] = DEFAULT_SIZES, *,
                progress: bool = True, checkpoint_every: int = 0,
                devices: Sequence[Any] | None = None, on_run_done: Callable[[], None] | None = None,
                **plan_kw) -> dict[str, Any]:
  """Trains every missing model of the world into ``workdir``; returns (and writes) a summary.

  Complete checkpoints are skipped; incomplete ones (temporary directories) are never taken for
  complete, and with ``checkpoint_every > 0`` an interrupted run resumes from its last training
  checkpoint. Batches of one (recipe, category) are generated once (in a background thread, ahead
  of the runs that need them) and reused by both base kinds and every size. ``plan_kw`` goes to
  :func:`plan`.

  Scheduling: in a single process with several local devices (e.g. ``jax_num_cpu_devices`` = cores
  on a CPU host), every run trains on ONE device and independent runs train concurrently, one per
  device (the sizes' pretrain -> instruction-tune chains side by side, then the experts and
  multitask baselines as their bases appear; longest remaining chain first). A run's result does
  not depend on which device it ran on or what ran beside it (tested bit-identical). Otherwise
  (one device, or multi-process) runs go one after another over a data-parallel mesh of all
  devices. On a CPU host at most one concurrent run per core (more only adds compilations).
  ``devices`` overrides the device list: several -> concurrent runs, one per device; one ->
  every run on that device, one after another. ``on_run_done`` is called (from the thread that trained
  it) as each run's checkpoint is complete, e.g. to record progress that survives a kill.
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  _check_manifest_ours(workdir / MANIFEST)  # refused before any training, not after
  runs = plan(workdir, sizes, **plan_kw)
  summary: dict[str, Any] = {"workdir": str(workdir), "sizes": list(sizes), "runs": [],
                             "train_flops": train_flops(runs)}
  if devices is None and jax.process_count() == 1 and len(jax.local_devices()) > 1:
    devices = jax.local_devices()
    if devices[0].platform == "cpu":  # more concurrent runs than cores only adds compilations
      devices = devices[:max(1, os.cpu_count() or 1)]
    if len(devices) == 1:
      devices = None
  t0 = time.perf_counter()
  if devices is not None and len(devices) > 1:
    rows = _build_concurrent(runs, list(devices), checkpoint_every=checkpoint_every, progress=progress,
                             on_run_done=on_run_done)
    summary["devices"] = len(devices)
  else:
    mesh = None if devices is None else trainer_lib.data_mesh(list(devices))
    rows = _build_sequential(runs, checkpoint_every=checkpoint_every, progress=progress, mesh=mesh,
                             on_run_done=on_run_done)
    summary["devices"] = 1
  summary["runs"] = rows
  summary["seconds"] = time.perf_counter() - t0
  if jax.process_index() == 0:
    files.atomic_write_json(workdir / "world.json", summary, sort_keys=False)
    write_manifest(workdir, sizes, kinds=plan_kw.get("kinds", KINDS), categories=plan_kw.get("categories"),
                   multitask=plan_kw.get("multitask", True))
  return summary


def manifest(sizes: Sequence[str] = DEFAULT_SIZES, *, kinds: Sequence[str] = KINDS,
             categories: Sequence[str] | None = None, multitask: bool = True) -> dict[str, Any]:
  """The study's manifest of a world (``mergejax.study.manifest``): per kind and size the base, the
  experts by category and the multitask model, as paths relative to the world's directory."""
  categories = tuple(categories) if categories is not None else heldin_categories()
  rel = lambda *a: str(checkpoint_path(".", *a))
  out: dict[str, Any] = {}
  for kind in kinds:
    for size in sizes:
      entry: dict[str, Any] = {"base": rel(size, kind, "base"),
                               "experts": {c: rel(size, kind, "expert", c) for c in categories}}
      if multitask:
        entry["multitask"] = rel(size, kind, "multitask")
      out.setdefault(kind, {})[size] = entry
  return out


def _check_manifest_ours(path: pathlib.Path) -> None:
  if path.exists() and not (path.is_file() and path.read_text().startswith(_MANIFEST_HEADER)):
    raise FileExistsError(f"{path}: exists and was not written by mergejax; move it away to build this world")


def write_manifest(workdir: str | os.PathLike, sizes: Sequence[str] = DEFAULT_SIZES, **manifest_kw) -> pathlib.Path:
  """Adds the models of :func:`manifest` to ``<workdir>/models.yaml``, atomically; a models.yaml that
  mergejax did not write is left alone (FileExistsError)."""
  path = pathlib.Path(workdir) / MANIFEST
  _check_manifest_ours(path)
  listed = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
  for kind, by_size in manifest(sizes, **manifest_kw).items():  # what earlier builds listed stays listed
    for size, entry in by_size.items():
      old = listed.setdefault(kind, {}).setdefault(size, {})
      old.update({**entry, "experts": {**old.get("experts", {}), **entry["experts"]}})
  return files.atomic_write(path, _MANIFEST_HEADER + yaml.safe_dump(listed, sort_keys=False))


def _row(spec: recipes.RunSpec) -> dict[str, Any]:
  return {"label": spec.label, "path": str(spec.out), "recipe": spec.recipe, "size": spec.model.name,
          "kind": spec.kind, "category": spec.category, "steps": spec.steps}


def _data_key(spec: recipes.RunSpec) -> tuple:
  """Runs with one key read one batch stream, each its first ``steps`` batches (sizes may train
  different step counts on the same data)."""
  return (spec.mixture, spec.batch_size, spec.feature_lengths, spec.data_seed)


def _stream_steps(runs) -> dict[tuple, int]:
  """Per data key, the most steps any of ``runs`` takes from its stream."""
  steps: dict[tuple, int] = {}
  for spec in runs:
    key = _data_key(spec)
    steps[key] = max(steps.get(key, 0), spec.steps)
  return steps


def _materialize(spec: recipes.RunSpec, steps: int) -> tuple[list, float]:
  td = time.perf_counter()
  b = data_lib.materialize(spec.mixture, steps, batch_size=spec.batch_size,
                           feature_lengths=dict(spec.feature_lengths), seed=spec.data_seed)
  return b, time.perf_counter() - td


def _finish_row(row: dict[str, Any], res) -> None:
  row.update(skipped=False, seconds=res.seconds, tokens_per_s=res.tokens_per_s,
             final_loss=res.final_loss, first_loss=res.losses[0][1] if res.losses else None,
             resumed_from=res.resumed_from)


def _build_sequential(runs, *, checkpoint_every: int, progress: bool, mesh=None,
                      on_run_done: Callable[[], None] | None = None) -> list[dict[str, Any]]:
  """One run after another, each over ``mesh`` (default: the data-parallel mesh of all devices)."""
  cache: dict[tuple, list] = {}
  stream_steps = _stream_steps([spec for spec in runs if not models.is_complete(spec.out)])
  out = []
  bar = tqdm(runs, desc="world", disable=not progress, dynamic_ncols=True)
  for spec in bar:
    bar.set_postfix_str(spec.label)
    row = _row(spec)
    out.append(row)
    if models.is_complete(spec.out):
      row["skipped"] = True
      continue
    key = _data_key(spec)
    if key not in cache:
      cache[key], row["data_seconds"] = _materialize(spec, stream_steps[key])
    res = recipes.run(spec, batches=cache[key], checkpoint_every=checkpoint_every, progress=progress,
                      mesh=mesh)
    _finish_row(row, res)
    if on_run_done is not None:
      on_run_done()
  return out


def _critical_path(runs) -> dict[int, float]:
  """Per run index: its training FLOPs plus the longest chain of runs that start from its output."""
  by_out = {spec.out: i for i, spec in enumerate(runs)}
  children: dict[int, list[int]] = {i: [] for i in range(len(runs))}
  for i, spec in enumerate(runs):
    if spec.init is not None and spec.init in by_out:
      children[by_out[spec.init]].append(i)
  memo: dict[int, float] = {}
  for i in reversed(range(len(runs))):  # plan order is topological
    memo[i] = train_flops([runs[i]]) + max((memo[c] for c in children[i]), default=0.0)
  return memo


def _build_concurrent(runs, devices, *, checkpoint_every: int, progress: bool,
                      on_run_done: Callable[[], None] | None = None) -> list[dict[str, Any]]:
  """Independent runs concurrently, one per device (a 1-device mesh each), longest chain first.

  XLA releases the GIL while a step runs, so one Python thread per device keeps every device busy;
  batches are generated by one more thread in the order the runs will need them.
  """
  rows = [_row(spec) for spec in runs]
  todo = []
  for i, spec in enumerate(runs):
    if models.is_complete(spec.out):
      rows[i]["skipped"] = True
    else:
      todo.append(i)
  prio = _critical_path(runs)
  by_out = {runs[i].out: i for i in todo}
  deps = {i: {by_out[runs[i].init]} if runs[i].init in by_out else set() for i in todo}
  order = sorted(todo, key=lambda i: (-prio[i], i))
  # Data in the order runs become ready (dependency depth, then priority).
  depth: dict[int, int] = {}
  for i in todo:  # plan order is topological
    depth[i] = 1 + max((depth[d] for d in deps[i]), default=0)
  data_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="world-data")
  futures: dict[tuple, concurrent.futures.Future] = {}
  first_user: dict[tuple, int] = {}
  stream_steps = _stream_steps([runs[i] for i in todo])
  for i in sorted(todo, key=lambda i: (depth[i], -prio[i], i)):
    key = _data_key(runs[i])
    if key not in futures:
      futures[key] = data_pool.submit(_materialize, runs[i], stream_steps[key])
      first_user[key] = i

  cond = threading.Condition()
  done: set[int] = set()
  running: set[int] = set()
  errors: list[BaseException] = []
  bar = tqdm(total=len(runs), desc="world", disable=not progress, dynamic_ncols=True)
  bar.update(len(runs) - len(todo))

  def next_run() -> int | None:
    with cond:
      while True:
        if errors or len(done) == len(todo):
          return None
        ready = [i for i in order if i not in done and i not in running and deps[i] <= done]
        if ready:
          running.add(ready[0])
          return ready[0]
        cond.wait()

  def worker(slot: int, device) -> None:
    mesh = trainer_lib.data_mesh([device])
    while True:
      i = next_run()
      if i is None:
        return
      spec = runs[i]
      try:
        key = _data_key(spec)
        batches, data_s = futures[key].result()
        if first_user[key] == i:
          rows[i]["data_seconds"] = data_s
        res = recipes.run(spec, batches=batches, checkpoint_every=checkpoint_every,
                          progress=progress, mesh=mesh, position=slot + 1)
        _finish_row(rows[i], res)
        rows[i]["device"] = str(device)
        if on_run_done is not None:
          on_run_done()
      except BaseException as e:  # pylint: disable=broad-except
        with cond:
          errors.append(e)
          running.discard(i)
          cond.notify_all()
        return
      with cond:
        running.discard(i)
        done.add(i)
        cond.notify_all()
      bar.set_postfix_str(spec.label)
      bar.update(1)

  threads = [threading.Thread(target=worker, args=(k, d), name=f"world-{k}", daemon=True)
             for k, d in enumerate(devices[:max(1, len(todo))])]
  try:
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  finally:
    bar.close()
    data_pool.shutdown(wait=True, cancel_futures=True)
  if errors:
    raise errors[0]
  return rows


def status(workdir: str | os.PathLike, sizes: Iterable[str] = DEFAULT_SIZES,
           categories: Sequence[str] | None = None) -> dict[str, bool]:
  """{checkpoint path: complete?} for every model of the world."""
  categories = tuple(categories) if categories is not None else heldin_categories()
  out = {}
  for size in sizes:
    for kind in KINDS:
      paths = [checkpoint_path(workdir, size, kind, "base"), checkpoint_path(workdir, size, kind, "multitask")]
      paths += [checkpoint_path(workdir, size, kind, "expert", c) for c in categories]
      for p in paths:
        out[str(p)] = models.is_complete(p)
  return out
