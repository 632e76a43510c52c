"""The embedded default world: bases, experts and multitask baselines for the study.

Layout under a workdir::

    <workdir>/<size>/pretrained/base                     pretrain
    <workdir>/<size>/instruction_tuned/base              instruction_tune (from the pretrained base)
    <workdir>/<size>/<kind>/experts/<category>           expert (one per held-in category, per kind)
    <workdir>/<size>/<kind>/multitask                    multitask (all held-in categories, per kind)
    <workdir>/world.json                                 what the last build did (timings, losses)

Each leaf directory is a model checkpoint (:mod:`mergejax.models.checkpoint`): it appears only once
complete (written under a temporary name and renamed), so :func:`build_world` skips exactly the
finished ones, and resumes a half-trained run from its training checkpoints.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Iterable, Mapping, Sequence

from mergejax import models
from mergejax.training import data as data_lib
from mergejax.training import recipes

KINDS = recipes.KINDS
ROLES = ("base", "expert", "multitask")
DEFAULT_SIZES = ("xs", "s")


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
  import mergejax.tasks  # pylint: disable=g-import-not-at-top
  return tuple(mergejax.tasks.HELDIN_CATEGORIES)


def plan(workdir: str | os.PathLike, sizes: Sequence[str] = DEFAULT_SIZES, *,
         kinds: Sequence[str] = KINDS, categories: Sequence[str] | None = None,
         multitask: bool = True, recipe_overrides: Mapping[str, Mapping[str, Any]] | None = None,
         batch_size: int = recipes.BATCH_SIZE, feature_lengths: Mapping[str, int] | None = None,
         seed: int = 0, mixture_prefix: str = "mj",
         model_overrides: Mapping[str, Any] | None = None) -> list[recipes.RunSpec]:
  """All runs of a world build, in dependency order (bases before what starts from them)."""
  if mixture_prefix == "mj":
    import mergejax.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
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
    steps = o.pop("steps", None)
    return recipes.resolve(recipe, size, workdir, steps=steps, opt_overrides=o,
                           batch_size=batch_size, feature_lengths=feature_lengths, seed=seed,
                           mixture_prefix=mixture_prefix, model_overrides=model_overrides, **kw)

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
                progress: bool = True, checkpoint_every: int = 0, **plan_kw) -> dict[str, Any]:
  """Trains every missing model of the world into ``workdir``; returns (and writes) a summary.

  Complete checkpoints are skipped; incomplete ones (temporary directories) are never taken for
  complete, and with ``checkpoint_every > 0`` an interrupted run resumes from its last training
  checkpoint. Batches of one (recipe, category) are generated once and reused by both base kinds
  and every size (the same data; only the model differs). ``plan_kw`` goes to :func:`plan`.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  runs = plan(workdir, sizes, **plan_kw)
  cache: dict[tuple, list] = {}
  summary: dict[str, Any] = {"workdir": str(workdir), "sizes": list(sizes), "runs": [],
                             "train_flops": train_flops(runs)}
  t0 = time.perf_counter()
  bar = tqdm(runs, desc="world", disable=not progress, dynamic_ncols=True)
  for spec in bar:
    bar.set_postfix_str(spec.label)
    row = {"label": spec.label, "path": str(spec.out), "recipe": spec.recipe, "size": spec.model.name,
           "kind": spec.kind, "category": spec.category, "steps": spec.steps}
    if models.is_complete(spec.out):
      row["skipped"] = True
      summary["runs"].append(row)
      continue
    key = (spec.mixture, spec.steps, spec.batch_size, spec.feature_lengths, spec.data_seed)
    if key not in cache:
      td = time.perf_counter()
      cache[key] = data_lib.materialize(spec.mixture, spec.steps, batch_size=spec.batch_size,
                                        feature_lengths=dict(spec.feature_lengths), seed=spec.data_seed)
      row["data_seconds"] = time.perf_counter() - td
    res = recipes.run(spec, batches=cache[key], checkpoint_every=checkpoint_every,
                      progress=progress)
    row.update(skipped=False, seconds=res.seconds, tokens_per_s=res.tokens_per_s,
               final_loss=res.final_loss, first_loss=res.losses[0][1] if res.losses else None,
               resumed_from=res.resumed_from)
    summary["runs"].append(row)
  summary["seconds"] = time.perf_counter() - t0
  _write_json_atomic(workdir / "world.json", summary)
  return summary


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
  os.replace(tmp, path)


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
